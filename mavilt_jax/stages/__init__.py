"""Training stages and the name -> class table the training loop reads ``config.stage`` from.

Each entry is imported only when asked for, so a stage whose module (or its dependencies) is
missing does not break the others.
"""

from __future__ import annotations

import importlib
import warnings

from mavilt_jax.stages.base import Stage, TrainState

# config.stage -> (module, class). Explicit and greppable on purpose.
STAGES: dict[str, tuple[str, str]] = {
    "cxr_encoder": ("mavilt_jax.stages.cxr_encoder", "CxrEncoderStage"),
    "vqgan": ("mavilt_jax.stages.vqgan", "VQGANStage"),
    "text_pretrain": ("mavilt_jax.stages.text_pretrain", "TextPretrainStage"),
    "stage1": ("mavilt_jax.stages.multimodal", "Stage1"),
    "stage2": ("mavilt_jax.stages.multimodal", "Stage2"),
}
# Old stage names (workdirs and configs written before a rename) -> current names.
DEPRECATED_NAMES: dict[str, str] = {"tokenizer": "vqgan"}


def get_stage_class(name: str) -> type[Stage]:
    """The Stage class registered under ``name``; a ``"package.module:Class"`` path also works
    (tests and experiments use it for stages outside this table)."""
    if ":" in name:
        module_name, class_name = name.split(":", 1)
    elif name in STAGES or name in DEPRECATED_NAMES:
        if name in DEPRECATED_NAMES:
            warnings.warn(f"stage {name!r} is now called {DEPRECATED_NAMES[name]!r}", DeprecationWarning, stacklevel=2)
            name = DEPRECATED_NAMES[name]
        module_name, class_name = STAGES[name]
    else:
        raise ValueError(f"unknown stage {name!r}; known: {sorted(STAGES)} or 'module:Class'")
    cls = getattr(importlib.import_module(module_name), class_name)
    if not (isinstance(cls, type) and issubclass(cls, Stage)):
        raise TypeError(f"{name!r} is not a Stage subclass")
    return cls


__all__ = ["DEPRECATED_NAMES", "STAGES", "Stage", "TrainState", "get_stage_class"]
