"""Tiny models shared by the tests: random decoders and transformers reference checkpoints.

Nothing here downloads anything; every model is built from a seed.
"""

from __future__ import annotations

import pathlib
from typing import Any

import jax
import numpy as np

from configs.common import LLM_SIZES
from mavilt_jax.data.vocab import VocabLayout
from mavilt_jax.models.llm import LLMConfig, init_params

# The one tiny LLM size (also the configs' ``model=tiny``).
TINY_SIZE: dict[str, int] = LLM_SIZES["tiny"]
assert TINY_SIZE["hidden_size"] == TINY_SIZE["num_heads"] * TINY_SIZE["head_dim"]  # as transformers derives it

# A vocabulary small enough for fast tests: 40 text ids, 16 image codes, 4 codes per image.
TINY_LAYOUT = VocabLayout(text_vocab_size=40, codebook_size=16, codes_per_image=4, eos_id=2)


def tiny_llm_config(vocab_size: int = TINY_LAYOUT.size, **overrides: Any) -> LLMConfig:
    """The tiny size of `configs/common.py` (2 layers, 4 query heads over 2 kv heads), 128 positions."""
    kwargs = dict(vocab_size=vocab_size, max_position_embeddings=128, **TINY_SIZE)
    kwargs.update(overrides)
    return LLMConfig(**kwargs)


def tiny_llm(seed: int = 0, scale: float = 1.0, **overrides: Any) -> tuple[LLMConfig, dict]:
    """(config, params) of a random tiny decoder; ``scale`` multiplies the weights of the default init
    (larger weights give peakier next-token distributions, so greedy paths are not near ties)."""
    config = tiny_llm_config(**overrides)
    params = init_params(config, jax.random.key(seed))
    params = jax.tree.map(lambda x: x * scale if x.ndim > 1 else x, params)
    return config, params


def tiny_hf_checkpoint(directory: str | pathlib.Path, model_type: str = "llama", seed: int = 0, std: float = 0.15,
                       **config_kwargs: Any):
    """Builds a random transformers ``LlamaForCausalLM`` / ``Qwen2ForCausalLM``, saves it as safetensors.

    Every parameter (biases and norm scales included) is drawn at random, so a wrong layout or a
    missing term shows in the logits. Returns the torch model in eval mode.
    """
    import torch  # the reference implementation; test dependency only
    import transformers

    kwargs = dict(vocab_size=64, hidden_size=TINY_SIZE["hidden_size"], intermediate_size=TINY_SIZE["intermediate_size"],
                  num_hidden_layers=TINY_SIZE["num_layers"], num_attention_heads=TINY_SIZE["num_heads"],
                  num_key_value_heads=TINY_SIZE["num_kv_heads"], max_position_embeddings=64, rms_norm_eps=1e-5)
    kwargs.update(config_kwargs)
    if model_type == "llama":
        config, cls = transformers.LlamaConfig(**kwargs), transformers.LlamaForCausalLM
    elif model_type == "qwen2":
        config, cls = transformers.Qwen2Config(**kwargs), transformers.Qwen2ForCausalLM
    else:
        raise ValueError(f"unknown model_type {model_type!r}")
    torch.manual_seed(seed)
    model = cls(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith("layernorm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            else:
                p.copy_(std * torch.randn_like(p))
    model.save_pretrained(str(directory))
    return model


def torch_logits(model, tokens: np.ndarray, positions: np.ndarray | None = None,
                 attention_mask: np.ndarray | None = None) -> np.ndarray:
    """Reference logits [B, T, V] of a transformers model on int tokens [B, T]."""
    import torch

    kwargs = {}
    if positions is not None:
        kwargs["position_ids"] = torch.tensor(np.asarray(positions), dtype=torch.long)
    if attention_mask is not None:
        kwargs["attention_mask"] = torch.tensor(np.asarray(attention_mask), dtype=torch.long)
    with torch.no_grad():
        return model(torch.tensor(np.asarray(tokens), dtype=torch.long), **kwargs).logits.float().numpy()
