"""Where the LLM train step loses to PyTorch: forward+backward of its parts, ours vs torch, interleaved.

  python -m benchmarks.attention_layouts [--parts attention,mlp,head,adamw] [--repeats 5] [--size d512]

Each part runs forward+backward (gradients of a fixed random cotangent) at the train section's
shape (`benchmarks/train.SIZES`). Attention (RMSNorm excluded: projections, rotary, scores, softmax,
values, output projection) is timed in these layouts:
  current      models/llm.py's "xla" path: [B,T,N,H] projections, grouped einsums over
               [B,T,K,G,H] (transposes in and out), a [B,T,S] boolean mask
  heads_major  projections straight to [B,N,T,H] (dot_general output order), scores and values
               as batched dots over (B, N), one [T,S] causal mask from iota (no batch copy)
  dpa_causal   jax.nn.dot_product_attention(is_causal=True, implementation="xla"), no mask tensor
  dpa_mask     jax.nn.dot_product_attention with the [B,1,T,S] mask (attention_impl
               "dot_product_attention")
  causal_blocksC  query blocks of C tokens, each attending only to keys up to its own end (the
               fully masked blocks above the diagonal are never computed: ~(1 + C/T)/2 of the work)
  torch        the same weights through torch.nn.functional.scaled_dot_product_attention(is_causal=True)
MLP (SwiGLU), head (final projection + cross-entropy) and adamw (one optimizer update of all
parameters) compare ours with the same expression in torch. Only ratios measured in one run mean
anything on a loaded machine (`common.median_seconds` interleaves the contenders call by call).
"""

from __future__ import annotations

import argparse
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks.common import median_seconds
from benchmarks.train import SIZES
from mavilt_jax.models import llm

_MASKED = -1e30  # a masked logit, as models/llm.py
ATTENTION = ("current", "heads_major", "dpa_causal", "dpa_mask", "causal_blocks128", "causal_blocks64",
             "heads_major_blocks128", "torch")


def _rope_tables(cfg: llm.LLMConfig, T: int):
    inv_freq = jnp.asarray(llm.rope_inv_freq(cfg))
    positions = jnp.broadcast_to(jnp.arange(T), (1, T))
    return positions, inv_freq


def _attention_jax(cfg: llm.LLMConfig, layout: str, B: int, T: int):
    N, K, H = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    G = N // K
    positions, inv_freq = _rope_tables(cfg, T)
    positions = jnp.broadcast_to(positions, (B, T))
    mask3 = jnp.broadcast_to(jnp.tril(jnp.ones((T, T), bool))[None], (B, T, T))
    scale = H**-0.5

    def proj_btnh(x, w):
        return jax.lax.dot_general(x, w, (((2,), (0,)), ((), ())))

    def f(x, w):
        if layout == "heads_major":
            # [B,T,D] x [D,N,H] -> [B,N,T,H]: the dot writes heads-major, no separate transpose of q/k/v
            q = jnp.einsum("btd,dnh->bnth", x, w["q"])
            k = jnp.einsum("btd,dkh->bkth", x, w["k"])
            v = jnp.einsum("btd,dkh->bkth", x, w["v"])
            q = llm.apply_rope(q, positions, inv_freq, heads_major=True)
            k = llm.apply_rope(k, positions, inv_freq, heads_major=True)
            qg = q.reshape(B, K, G, T, H)
            logits = jnp.einsum("bkgth,bksh->bkgts", qg, k) * scale
            causal = jax.lax.broadcasted_iota(jnp.int32, (T, T), 0) >= jax.lax.broadcasted_iota(jnp.int32, (T, T), 1)
            logits = jnp.where(causal, logits, _MASKED)
            probs = jax.nn.softmax(logits, axis=-1)
            out = jnp.einsum("bkgts,bksh->bkgth", probs, v).reshape(B, N, T, H)
            return jnp.einsum("bnth,nhd->btd", out, w["o"])
        if layout.startswith("heads_major_blocks"):
            # models/llm.py's training path: heads-major projections ([B,N,T,H], the dot writes that
            # order), rotary there, `llm.causal_attention` in query blocks of C
            C = int(layout.removeprefix("heads_major_blocks"))
            q = jnp.einsum("btd,dnh->bnth", x, w["q"])
            k = jnp.einsum("btd,dkh->bkth", x, w["k"])
            v = jnp.einsum("btd,dkh->bkth", x, w["v"])
            q = llm.apply_rope(q, positions, inv_freq, heads_major=True)
            k = llm.apply_rope(k, positions, inv_freq, heads_major=True)
            out = llm.causal_attention(q, k, v, scale, jnp.float32, block=C)
            return jnp.einsum("bnth,nhd->btd", out, w["o"])
        q, k, v = proj_btnh(x, w["q"]), proj_btnh(x, w["k"]), proj_btnh(x, w["v"])
        q, k = llm.apply_rope(q, positions, inv_freq), llm.apply_rope(k, positions, inv_freq)
        if layout == "current":
            qg = q.reshape(B, T, K, G, H)
            logits = jnp.einsum("btkgh,bskh->bkgts", qg, k) * scale
            logits = jnp.where(mask3[:, None, None], logits, _MASKED)
            probs = jax.nn.softmax(logits, axis=-1)
            out = jnp.einsum("bkgts,bskh->btkgh", probs, v).reshape(B, T, N, H)
        elif layout.startswith("causal_blocks"):
            # query block i (of size C) attends keys [0, (i + 1) C) only: the blocks above the
            # diagonal, all masked, are never computed; each block's softmax sees its whole row
            C = int(layout.removeprefix("causal_blocks"))
            qg = q.reshape(B, T, K, G, H)
            diag = jnp.tril(jnp.ones((C, C), bool))
            outs = []
            for i in range(T // C):
                end = (i + 1) * C
                logits = jnp.einsum("btkgh,bskh->bkgts", qg[:, i * C:end], k[:, :end]) * scale
                mask = jnp.concatenate([jnp.ones((C, end - C), bool), diag], axis=1)
                logits = jnp.where(mask, logits, _MASKED)
                probs = jax.nn.softmax(logits, axis=-1)
                outs.append(jnp.einsum("bkgts,bskh->btkgh", probs, v[:, :end]))
            out = jnp.concatenate(outs, axis=1).reshape(B, T, N, H)
        elif layout == "dpa_causal":
            out = jax.nn.dot_product_attention(q, k, v, scale=scale, is_causal=True, implementation="xla")
        elif layout == "dpa_mask":
            out = jax.nn.dot_product_attention(q, k, v, mask=mask3[:, None], scale=scale)
        else:
            raise ValueError(layout)
        return jax.lax.dot_general(out, w["o"], (((2, 3), (0, 1)), ((), ())))

    return f


def _weights(cfg: llm.LLMConfig, rng: np.random.Generator) -> dict[str, np.ndarray]:
    D, N, K, H = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    n = lambda *s: (0.02 * rng.standard_normal(s)).astype(np.float32)  # noqa: E731
    return {"q": n(D, N, H), "k": n(D, K, H), "v": n(D, K, H), "o": n(N, H, D)}


def _jax_fwd_bwd(f, x, w, ct):
    """A zero-argument call: gradients of <f(x, w), ct> with respect to x and w (jitted)."""
    grad = jax.jit(jax.grad(lambda x, w: jnp.vdot(f(x, w), ct), argnums=(0, 1)))
    x, w, ct = jnp.asarray(x), jax.tree.map(jnp.asarray, w), jnp.asarray(ct)
    return lambda: grad(x, w)


def _torch_attention(cfg: llm.LLMConfig, x, w, ct):
    import torch
    import torch.nn.functional as F

    B, T, D = x.shape
    N, K, H = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    inv_freq = torch.as_tensor(llm.rope_inv_freq(cfg))
    freqs = torch.arange(T, dtype=torch.float32)[:, None] * inv_freq[None]
    emb = torch.cat([freqs, freqs], -1)
    cos, sin = emb.cos(), emb.sin()
    xt = torch.tensor(x, requires_grad=True)
    # transformers' layout: Linear weights [out, in], then view + transpose to [B, heads, T, H]
    wt = {k: torch.tensor(v.reshape(D, -1).T.copy() if k != "o" else v.reshape(-1, D).T.copy(), requires_grad=True)
          for k, v in w.items()}
    ctt = torch.tensor(ct)

    def rope(t):
        t1, t2 = t.chunk(2, dim=-1)
        return t * cos + torch.cat([-t2, t1], -1) * sin

    def call():
        for t in [xt, *wt.values()]:
            t.grad = None
        q = F.linear(xt, wt["q"]).view(B, T, N, H).transpose(1, 2)
        k = F.linear(xt, wt["k"]).view(B, T, K, H).transpose(1, 2)
        v = F.linear(xt, wt["v"]).view(B, T, K, H).transpose(1, 2)
        q, k = rope(q), rope(k)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=K != N)
        out = F.linear(out.transpose(1, 2).reshape(B, T, N * H), wt["o"])
        (out * ctt).sum().backward()
        return xt.grad

    return call


def _mlp(cfg, x, ct, rng):
    import torch
    import torch.nn.functional as F

    D, Fd = cfg.hidden_size, cfg.intermediate_size
    w = {k: (0.02 * rng.standard_normal(s)).astype(np.float32) for k, s in
         (("gate", (D, Fd)), ("up", (D, Fd)), ("down", (Fd, D)))}
    autodiff = lambda x, w: (jax.nn.silu(x @ w["gate"]) * (x @ w["up"])) @ w["down"]  # noqa: E731
    written_out = lambda x, w: llm.swiglu_mlp(x, w["gate"], w["up"], w["down"])  # noqa: E731 (the model's)
    xt = torch.tensor(x, requires_grad=True)
    wt = {k: torch.tensor(v.T.copy(), requires_grad=True) for k, v in w.items()}
    ctt = torch.tensor(ct)

    def tcall():
        for t in [xt, *wt.values()]:
            t.grad = None
        out = F.linear(F.silu(F.linear(xt, wt["gate"])) * F.linear(xt, wt["up"]), wt["down"])
        (out * ctt).sum().backward()
        return xt.grad

    return {"ours": _jax_fwd_bwd(written_out, x, w, ct), "ours autodiff": _jax_fwd_bwd(autodiff, x, w, ct),
            "torch": tcall}


def _head(cfg, x, rng):
    import torch
    import torch.nn.functional as F

    B, T, D = x.shape
    V = cfg.vocab_size
    w = (0.02 * rng.standard_normal((D, V))).astype(np.float32)
    targets = rng.integers(0, V, (B, T)).astype(np.int32)

    def jloss(x, w):
        return optax.softmax_cross_entropy_with_integer_labels(x @ w, jnp.asarray(targets)).mean()

    grad = jax.jit(jax.grad(jloss, argnums=(0, 1)))
    xj, wj = jnp.asarray(x), jnp.asarray(w)
    xt, wt = torch.tensor(x, requires_grad=True), torch.tensor(w.T.copy(), requires_grad=True)
    tt = torch.as_tensor(targets, dtype=torch.long)

    def tcall():
        xt.grad = wt.grad = None
        F.cross_entropy(F.linear(xt, wt).reshape(-1, V), tt.reshape(-1)).backward()
        return xt.grad

    return {"ours": lambda: grad(xj, wj), "torch": tcall}


def _adamw(cfg):
    import torch

    params = llm.init_params(cfg, jax.random.key(0))
    tx = optax.adamw(1e-4, weight_decay=0.01)
    grads = jax.tree.map(lambda p: jnp.full_like(p, 1e-3), params)
    state = [params, tx.init(params)]

    @jax.jit
    def update(p, s):
        u, s = tx.update(grads, s, p)
        return optax.apply_updates(p, u), s

    update = jax.jit(update, donate_argnums=(0, 1))

    def jcall():
        state[0], state[1] = update(state[0], state[1])
        return state[0]

    tparams = [torch.zeros(p.shape, requires_grad=True) for p in jax.tree.leaves(params)]
    for p in tparams:
        p.grad = torch.full(p.shape, 1e-3)
    opt = torch.optim.AdamW(tparams, lr=1e-4, weight_decay=0.01)
    return {"ours": jcall, "torch": lambda: opt.step()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.attention_layouts", description=__doc__.split("\n")[0])
    parser.add_argument("--parts", default="attention,mlp,head,adamw")
    parser.add_argument("--layouts", default=",".join(ATTENTION))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--size", default="d512", choices=sorted(SIZES))
    args = parser.parse_args(argv)
    layouts = args.layouts.split(",")
    blocks = ("causal_blocks", "heads_major_blocks")
    if any(lay not in ATTENTION and not any(lay.startswith(b) and lay.removeprefix(b).isdigit() for b in blocks)
           for lay in layouts):
        print(f"error: --layouts must be a subset of {','.join(ATTENTION)}", file=sys.stderr)
        return 2
    cfg, B, T = SIZES[args.size]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((B, T, cfg.hidden_size)).astype(np.float32)
    ct = rng.standard_normal((B, T, cfg.hidden_size)).astype(np.float32)
    for part in args.parts.split(","):
        if part == "attention":
            w = _weights(cfg, rng)
            calls = {lay: (_torch_attention(cfg, x, w, ct) if lay == "torch" else
                           _jax_fwd_bwd(_attention_jax(cfg, lay, B, T), x, w, ct)) for lay in layouts}
            ref = np.asarray(calls[layouts[0]]()[0]) if layouts[0] != "torch" else None
            for lay in layouts[1:]:  # every layout computes the same gradient
                if ref is not None and lay != "torch":
                    np.testing.assert_allclose(np.asarray(calls[lay]()[0]), ref, rtol=2e-3, atol=2e-6)
        elif part == "mlp":
            calls = _mlp(cfg, x, ct, rng)
        elif part == "head":
            calls = _head(cfg, x, rng)
        elif part == "adamw":
            calls = _adamw(cfg)
        else:
            print(f"error: unknown part {part!r}", file=sys.stderr)
            return 2
        secs = median_seconds(calls, args.repeats)
        base = secs.get("torch", next(iter(secs.values())))
        print(f"{part} ({args.size}, {B}x{T}): " + ", ".join(
            f"{k} {1e3 * s:.1f} ms ({base / s:.2f}x torch)" if "torch" in secs else f"{k} {1e3 * s:.1f} ms"
            for k, s in secs.items()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
