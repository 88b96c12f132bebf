"""Loss functions of MAViLT, as plain functions.

- Tokenizer (Eq. 4): the clinical information-preserving reconstruction loss, the vector-quantizer
  terms and the GAN terms with the adaptive generator weight.
- Multimodal training (Eq. 11-12): the weight anchor ||theta - theta_pretrained||^2.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# ==== Tokenizer losses (Eq. 4, VQ, GAN) ==========================================================

# ==== Weight anchor (Eq. 11) =====================================================================
