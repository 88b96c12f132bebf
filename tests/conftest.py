"""Shared test fixtures."""

from __future__ import annotations

import os
import pathlib

import pytest

PROJECT_ROOT = pathlib.Path(__file__).resolve().parents[1]
# Real CXR material lives beside the project root (never inside it); tests skip without it.
SHARED_DATA = pathlib.Path(os.environ.get("MAVILT_SHARED_DATA", PROJECT_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real CXR material not found at {SHARED_DATA} (set MAVILT_SHARED_DATA to use it)")
    return SHARED_DATA


@pytest.fixture
def compile_fast():
    """Compiles with most XLA optimisations off for one test (fast compiles, same values up to
    float rounding), restoring the setting afterwards."""
    import jax

    previous = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", previous)
