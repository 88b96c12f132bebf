"""Deprecated: ``python -m mavilt_jax.tokenize_cli`` is ``python -m mavilt_jax.vqgan_codes`` (the
VQ-GAN's image <-> codes tool; "tokenizer" also named the BPE text tokenizer). Kept so old commands
and imports keep working."""

from __future__ import annotations

import sys

from mavilt_jax.deprecation import moved_module
from mavilt_jax.vqgan_codes import UsageError, decode, encode, main, read_image  # noqa: F401

moved_module(__name__, "mavilt_jax.vqgan_codes")

if __name__ == "__main__":
    print("warning: python -m mavilt_jax.tokenize_cli is deprecated; use python -m mavilt_jax.vqgan_codes",
          file=sys.stderr)
    sys.exit(main())
