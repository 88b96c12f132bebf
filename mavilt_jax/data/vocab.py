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
import json
import os
import pathlib
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import tokenizers

from mavilt_jax.deprecation import moved_attributes

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


# ---- the text tokenizer plus image codes and specials ------------------------------------------

_TOKENIZER_FILE = "tokenizer.json"
_VOCAB_FILE = "extended_vocab.json"
# The end-of-text token of a byte-level BPE trained here from scratch.
BPE_EOS = "<|endoftext|>"


def train_bpe(texts: Iterable[str], vocab_size: int, save_dir: str | os.PathLike | None = None) -> tokenizers.Tokenizer:
    """Trains a byte-level BPE text tokenizer on a corpus (for an LLM trained from scratch).

    Byte-level, so any text round-trips exactly; ``<|endoftext|>`` is id 0 and serves as the end
    of sequence. The image codes and ``SPECIALS`` are not part of it: `ExtendedVocab` appends them.
    With ``save_dir`` the tokenizer is written there as ``tokenizer.json``.
    """
    tokenizer = tokenizers.Tokenizer(tokenizers.models.BPE())
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[BPE_EOS],
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    if save_dir is not None:
        pathlib.Path(save_dir).mkdir(parents=True, exist_ok=True)
        tokenizer.save(str(pathlib.Path(save_dir) / _TOKENIZER_FILE))
    return tokenizer


def _detect_bos(tokenizer: tokenizers.Tokenizer) -> int | None:
    """The id the tokenizer's post-processor puts first (Llama's BOS), or None when it adds none."""
    with_specials = tokenizer.encode("a", add_special_tokens=True).ids
    plain = tokenizer.encode("a", add_special_tokens=False).ids
    if len(with_specials) > len(plain) and with_specials[1:1 + len(plain)] == plain:
        return with_specials[0]
    return None


class ExtendedVocab:
    """The text tokenizer, then the VQ-GAN image codes, then ``SPECIALS`` (the layout above).

    Maps ids both ways and builds the logit masks the sampler and the losses use. A saved vocab
    (``save``/``load``) is a directory with the text tokenizer and the layout, so a checkpoint
    carries everything needed to turn its ids back into text and codes.

    Attributes:
      tokenizer: the text tokenizer (`tokenizers.Tokenizer`); ids [0, num_text_tokens).
      layout: the id layout (`VocabLayout`).
      num_text_tokens: ids the tokenizer really produces; ``layout.text_vocab_size`` may be larger
        when the pretrained embedding table is padded (those rows are never emitted).
      bos_id: the id the tokenizer puts at the start of a text (Llama), or None (SmolLM, GPT-2).
      chat_template: the tokenizer's Jinja chat template, or None (then a plain
        "Instruction: ... Response:" layout is used by `sequences`).
    """

    def __init__(
        self,
        tokenizer: tokenizers.Tokenizer,
        *,
        codebook_size: int,
        codes_per_image: int,
        eos_token: str,
        text_vocab_size: int | None = None,
        chat_template: str | None = None,
        bos_token: str | None = None,
    ):
        self.tokenizer = tokenizer
        self.num_text_tokens = tokenizer.get_vocab_size(with_added_tokens=True)
        text_vocab_size = self.num_text_tokens if text_vocab_size is None else int(text_vocab_size)
        if text_vocab_size < self.num_text_tokens:
            raise ValueError(
                f"text_vocab_size={text_vocab_size} is smaller than the tokenizer's {self.num_text_tokens} ids"
            )
        eos_id = tokenizer.token_to_id(eos_token)
        if eos_id is None:
            raise ValueError(f"end-of-sequence token {eos_token!r} is not in the text tokenizer")
        self.eos_token = eos_token
        self.chat_template = chat_template
        self.bos_token = bos_token
        self.bos_id = _detect_bos(tokenizer)
        self.layout = VocabLayout(
            text_vocab_size=text_vocab_size,
            codebook_size=int(codebook_size),
            codes_per_image=int(codes_per_image),
            eos_id=int(eos_id),
        )

    # ---- construction ------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        *,
        codebook_size: int,
        codes_per_image: int,
        gguf_file: str | None = None,
        text_vocab_size: int | None = None,
    ) -> ExtendedVocab:
        """From a pretrained model's tokenizer: a Hugging Face directory or a GGUF file in ``path``.

        ``text_vocab_size``: rows of the pretrained embedding table when it is padded beyond the
        tokenizer (Qwen2); default: the tokenizer's size.
        """
        from transformers import AutoTokenizer  # heavy import; only this constructor needs it

        kwargs = {} if gguf_file is None else {"gguf_file": gguf_file}
        hf = AutoTokenizer.from_pretrained(str(path), **kwargs)
        return cls.from_hf_tokenizer(hf, codebook_size=codebook_size, codes_per_image=codes_per_image,
                                     text_vocab_size=text_vocab_size)

    @classmethod
    def from_hf_tokenizer(
        cls, hf: Any, *, codebook_size: int, codes_per_image: int, text_vocab_size: int | None = None,
    ) -> ExtendedVocab:
        """From a loaded transformers fast tokenizer (its backend, EOS/BOS strings, chat template)."""
        if hf.eos_token is None:
            raise ValueError("the tokenizer defines no end-of-sequence token")
        template = hf.chat_template if isinstance(hf.chat_template, str) else None
        return cls(
            hf.backend_tokenizer,
            codebook_size=codebook_size,
            codes_per_image=codes_per_image,
            eos_token=hf.eos_token,
            text_vocab_size=text_vocab_size,
            chat_template=template,
            bos_token=hf.bos_token,
        )

    def save(self, directory: str | os.PathLike) -> None:
        """Writes ``tokenizer.json`` and ``extended_vocab.json`` (layout and token strings)."""
        directory = pathlib.Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save(str(directory / _TOKENIZER_FILE))
        meta = {
            "text_vocab_size": self.layout.text_vocab_size,
            "codebook_size": self.layout.codebook_size,
            "codes_per_image": self.layout.codes_per_image,
            "eos_token": self.eos_token,
            "bos_token": self.bos_token,
            "chat_template": self.chat_template,
            "specials": list(SPECIALS),
        }
        (directory / _VOCAB_FILE).write_text(json.dumps(meta, indent=1))

    @classmethod
    def load(cls, directory: str | os.PathLike) -> ExtendedVocab:
        directory = pathlib.Path(directory)
        if not (directory / _VOCAB_FILE).is_file():
            raise FileNotFoundError(f"no {_VOCAB_FILE} in {directory}: not a saved ExtendedVocab")
        meta = json.loads((directory / _VOCAB_FILE).read_text())
        if tuple(meta["specials"]) != SPECIALS:
            raise ValueError(f"{directory} was saved with specials {meta['specials']}, this code has {list(SPECIALS)}")
        return cls(
            tokenizers.Tokenizer.from_file(str(directory / _TOKENIZER_FILE)),
            codebook_size=meta["codebook_size"],
            codes_per_image=meta["codes_per_image"],
            eos_token=meta["eos_token"],
            text_vocab_size=meta["text_vocab_size"],
            chat_template=meta["chat_template"],
            bos_token=meta["bos_token"],
        )

    # ---- ids <-> text and codes ----------------------------------------------------------------
    @property
    def size(self) -> int:
        return self.layout.size

    def encode_text(self, text: str) -> list[int]:
        """Text -> text ids, without BOS/EOS (the sequence builders place those)."""
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode_text(self, ids: Sequence[int] | np.ndarray, skip_special_tokens: bool = True) -> str:
        """Ids -> text; image codes, ``SPECIALS`` and padded rows are dropped."""
        ids = [int(i) for i in np.asarray(ids).reshape(-1) if 0 <= int(i) < self.num_text_tokens]
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    def image_ids(self, codes: np.ndarray) -> np.ndarray:
        """Image codes [..., n] in [0, codebook_size) -> vocabulary ids (int32)."""
        codes = np.asarray(codes)
        if codes.size and (codes.min() < 0 or codes.max() >= self.layout.codebook_size):
            raise ValueError(
                f"image codes must lie in [0, {self.layout.codebook_size}), got [{codes.min()}, {codes.max()}]")
        return self.layout.code_to_id(codes.astype(np.int32))

    def codes(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """The image codes among ``ids``, in order (other ids such as ``<boi>``/``<eoi>`` dropped)."""
        ids = np.asarray(ids).reshape(-1)
        keep = (ids >= self.layout.image_offset) & (ids < self.layout.special_offset)
        return self.layout.id_to_code(ids[keep]).astype(np.int32)

    def special_id(self, name: str) -> int:
        return self.layout.special_id(name)

    # ---- logit masks -----------------------------------------------------------------------------
    def text_mask(self) -> np.ndarray:
        """bool [V]: the ids the tokenizer can emit (padded rows, codes and specials excluded)."""
        mask = np.zeros(self.layout.size, bool)
        mask[: self.num_text_tokens] = True
        return mask

    def image_mask(self) -> np.ndarray:
        """bool [V]: the image-code ids."""
        mask = np.zeros(self.layout.size, bool)
        mask[self.layout.image_offset : self.layout.special_offset] = True
        return mask

    # ---- chat format ---------------------------------------------------------------------------
    def render_chat(self, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
        """Renders ``messages`` with the tokenizer's chat template (as Hugging Face does)."""
        if self.chat_template is None:
            raise ValueError("this vocabulary's tokenizer has no chat template")
        return _compile_template(self.chat_template).render(
            messages=messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=self.bos_token or "",
            eos_token=self.eos_token,
        )


_TEMPLATE_CACHE: dict[str, Any] = {}


def _compile_template(source: str):
    """Compiles a chat template in the sandboxed Jinja environment Hugging Face uses."""
    if source not in _TEMPLATE_CACHE:
        import jinja2.sandbox

        def raise_exception(message):
            raise jinja2.exceptions.TemplateError(message)

        env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = raise_exception
        _TEMPLATE_CACHE[source] = env.from_string(source)
    return _TEMPLATE_CACHE[source]


# Parameter surgery moved beside the model code (old names kept for a while).
__getattr__ = moved_attributes(__name__, {
    name: f"mavilt_jax.models.embeddings:{name}" for name in ("extend_embeddings", "EMBED_PATH", "HEAD_PATH")})
