"""Old import paths kept working for a while after a move, with a DeprecationWarning naming the new one."""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable
from typing import Any


def moved_attributes(module: str, moved: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` serving ``moved`` ({old name: "new.module:name"}) with a warning."""

    def __getattr__(name: str) -> Any:
        if name not in moved:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        new_module, new_name = moved[name].split(":")
        warnings.warn(f"{module}.{name} moved to {new_module}.{new_name}", DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(new_module), new_name)

    return __getattr__


def moved_module(old: str, new: str) -> None:
    """Warns that the module ``old`` (a re-export shim) is now ``new``."""
    warnings.warn(f"module {old} moved to {new}", DeprecationWarning, stacklevel=3)
