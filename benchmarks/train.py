"""LLM train step, ours vs transformers' PyTorch reference, on the same config, batch and sequence.

Ours: `models/llm.py`'s `Decoder`, next-token cross-entropy (optax), ``optax.adamw``, one jitted
step with the state donated. Theirs: ``transformers.LlamaForCausalLM`` (its default attention),
the same cross-entropy on its logits, ``torch.optim.AdamW``. Both f32, random initialisation,
the same token batch. Achieved FLOP/s use `common.llama_train_flops` (6 N per token + attention).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks.common import Row, llama_train_flops, median_seconds, torch_device
from mavilt_jax.models import llm

# (name, config, batch, sequence): the demo pipeline's stage-1 shape (model "cpu", 2 x 8 sequences
# of 224 tokens, a ~1k vocabulary) and the larger Llama-style shape of issue 12.
SIZES = {
    "demo": (llm.LLMConfig(vocab_size=1024, hidden_size=128, intermediate_size=344, num_layers=4, num_heads=4,
                           num_kv_heads=2, head_dim=32), 16, 224),
    "d512": (llm.LLMConfig(vocab_size=8192, hidden_size=512, intermediate_size=1376, num_layers=8, num_heads=8,
                           num_kv_heads=8, head_dim=64), 4, 512),
}


def matmul_params(cfg: llm.LLMConfig) -> int:
    D, F, N, K, H = cfg.hidden_size, cfg.intermediate_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    per_layer = D * (N + 2 * K) * H + N * H * D + 3 * D * F
    return cfg.num_layers * per_layer + D * cfg.vocab_size


def ours_step(cfg: llm.LLMConfig, tokens: np.ndarray):
    """A zero-argument call running one train step of ours (the state carried between calls)."""
    model = llm.Decoder(cfg)
    tx = optax.adamw(1e-4, weight_decay=0.01)
    params = llm.init_params(cfg, jax.random.key(0))
    state = [params, tx.init(params)]
    inputs, targets = jnp.asarray(tokens[:, :-1]), jnp.asarray(tokens[:, 1:])
    positions = jnp.broadcast_to(jnp.arange(inputs.shape[1]), inputs.shape)

    def loss_fn(p):
        logits, _ = model.apply({"params": p}, inputs, positions)
        return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()

    @jax.jit
    def step(params, opt_state):
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    step = jax.jit(step, donate_argnums=(0, 1))

    def call():
        state[0], state[1], loss = step(state[0], state[1])
        return loss

    return call


def torch_step(cfg: llm.LLMConfig, tokens: np.ndarray):
    import torch
    import transformers

    torch.manual_seed(0)
    hf = transformers.LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
        head_dim=cfg.head_dim, rms_norm_eps=cfg.rms_norm_eps, rope_theta=cfg.rope_theta,
        tie_word_embeddings=cfg.tie_embeddings, max_position_embeddings=max(2048, tokens.shape[1]))
    device = torch_device()
    model = transformers.LlamaForCausalLM(hf).train().to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    inputs = torch.as_tensor(tokens[:, :-1], dtype=torch.long, device=device)
    targets = torch.as_tensor(tokens[:, 1:], dtype=torch.long, device=device)

    def call():
        opt.zero_grad(set_to_none=True)
        logits = model(input_ids=inputs).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))
        loss.backward()
        opt.step()
        return loss.item()

    return call


def run(limits: dict[str, float], repeats: int = 3, sizes=("demo", "d512"), torch_ref: bool = True,
        **overrides) -> list[Row]:
    rows = []
    for name in sizes:
        cfg, batch, seq = SIZES[name]
        cfg = dataclasses.replace(cfg, **overrides)
        tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (batch, seq + 1)).astype(np.int32)
        calls = {"ours": ours_step(cfg, tokens)}
        if torch_ref:
            calls["transformers"] = torch_step(cfg, tokens)
        secs = median_seconds(calls, repeats)
        n_tokens = batch * seq
        flops = llama_train_flops(n_params_matmul=matmul_params(cfg), layers=cfg.num_layers, seq=seq,
                                  d_attn=cfg.num_heads * cfg.head_dim, tokens=n_tokens)
        peak = limits.get("matmul_float32")
        shape = f"{name}: d{cfg.hidden_size} L{cfg.num_layers} V{cfg.vocab_size} {batch}x{seq}"
        for who, sec in secs.items():
            extra = {"ms_per_step": 1e3 * sec, "GFLOP/s": flops / sec / 1e9, "flops_per_step": flops}
            if peak:
                extra["of_peak"] = flops / sec / peak
            if who == "ours" and "transformers" in secs:
                extra["ours/theirs"] = secs["transformers"] / sec
            rows.append(Row("train", f"{shape} {who}", n_tokens / sec, "tok/s", extra))
    return rows
