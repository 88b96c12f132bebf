"""The image-extended vocabulary shared by text and image tokens.

Id layout (one contiguous table, so one embedding matrix and one output head serve both):

  [0, text_vocab_size)                                  text tokens of the pretrained tokenizer
  [image_offset, image_offset + codebook_size)          VQ-GAN image codes, image_offset = text_vocab_size
  [special_offset, special_offset + len(SPECIALS))      special tokens, in the order of SPECIALS

The end-of-sequence token stays the text tokenizer's own (``eos_id``), so a pretrained LLM keeps
the stop token it learned.
"""

from __future__ import annotations

import dataclasses

# Special tokens appended after the image codes, in this order.
SPECIALS: tuple[str, ...] = (
    "<boi>",  # begin of image span
    "<eoi>",  # end of image span
    "<pad>",  # padding (never scored)
    "<report2image>",  # task marker: report -> image (stage 1)
    "<image2report>",  # task marker: image -> report (stage 1)
    "<uncond>",  # stands for the dropped report condition (classifier-free guidance)
)


@dataclasses.dataclass(frozen=True)
class VocabLayout:
    """Where each kind of token lives in the extended vocabulary; static, hashable.

    Attributes:
      text_vocab_size: number of ids of the text tokenizer (rows kept from the pretrained LLM).
      codebook_size: number of VQ-GAN codes.
      codes_per_image: number of codes of one image (h * w of the tokenizer's latent grid).
      eos_id: the text tokenizer's end-of-sequence id.
    """

    text_vocab_size: int
    codebook_size: int
    codes_per_image: int
    eos_id: int

    @property
    def image_offset(self) -> int:
        return self.text_vocab_size

    @property
    def special_offset(self) -> int:
        return self.text_vocab_size + self.codebook_size

    @property
    def size(self) -> int:
        """Total vocabulary size (rows of the embedding table and columns of the head)."""
        return self.special_offset + len(SPECIALS)

    def special_id(self, name: str) -> int:
        return self.special_offset + SPECIALS.index(name)

    @property
    def boi_id(self) -> int:
        return self.special_id("<boi>")

    @property
    def eoi_id(self) -> int:
        return self.special_id("<eoi>")

    @property
    def pad_id(self) -> int:
        return self.special_id("<pad>")

    def code_to_id(self, code):
        """Image code(s) in [0, codebook_size) -> vocabulary id(s)."""
        return code + self.image_offset

    def id_to_code(self, token_id):
        """Vocabulary id(s) of image codes -> code(s) in [0, codebook_size)."""
        return token_id - self.image_offset
