"""MAViLT in JAX/Flax: Multi-Stage Adaptive Vision-Language Tuning for chest radiographs."""

__version__ = "0.1.0"


def load(path, **kwargs):
    """A trained model for inference (`mavilt_jax.inference.load`): a stage-2 workdir or an export bundle."""
    from mavilt_jax.inference import load as _load  # JAX is imported only when a model is loaded

    return _load(path, **kwargs)
