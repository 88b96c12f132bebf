"""MAViLT in JAX/Flax: Multi-Stage Adaptive Vision-Language Tuning for chest radiographs."""

__version__ = "0.1.0"
