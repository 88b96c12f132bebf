"""Text pretraining of a small LLM on radiology report text (before the multimodal stages).

Corpus: synthetic reports (`mavilt_jax.data.synthetic_reports` over sampled findings; no images
are rendered) plus, when ``text.iu_reports_csv`` points to ``indiana_reports.csv``, the IU X-ray
reports (findings + impression). The last ``text.validation_fraction`` of the corpus is the
validation split.

Tokenizer: with ``model.pretrained`` (an imported LLM, continued on reports) its own tokenizer;
otherwise a byte-level BPE trained on the training split (`vocab.train_bpe`). Either way the
vocabulary is saved in ``workdir/vocab`` (an `ExtendedVocab` with no image codes: text ids, then
the specials, so ``<pad>`` has a row); stage 1 reads it from there.

The step is the shared one of `mavilt_jax.stages.lm` with L = L_task (next-token
cross-entropy on the text).
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from absl import logging
from etils import epath

from mavilt_jax import checkpointing
from mavilt_jax.data import phantoms, synthetic_reports
from mavilt_jax.data.vocab import BPE_EOS, ExtendedVocab, train_bpe
from mavilt_jax.models.embeddings import extend_embeddings
from mavilt_jax.stages.base import TrainState
from mavilt_jax.stages.lm import VOCAB_DIR, LMStage, load_pretrained_llm, pretrained_text_vocab


def synthetic_report_texts(num: int, seed: int) -> list[str]:
    """``num`` synthetic reports (FINDINGS + IMPRESSION), deterministic in ``seed``."""
    texts = []
    for i in range(num):
        rng = np.random.default_rng([seed, i])
        texts.append(synthetic_reports.compose_report(phantoms.sample_findings(rng), rng).text)
    return texts


def iu_report_texts(csv_path: str) -> list[str]:
    """Reports of IU X-ray's ``indiana_reports.csv`` with a findings or impression section."""
    texts = []
    with open(csv_path, newline="") as f:
        for row in csv.DictReader(f):
            findings, impression = (row.get("findings") or "").strip(), (row.get("impression") or "").strip()
            if findings or impression:
                texts.append(f"FINDINGS: {findings}\nIMPRESSION: {impression}")
    return texts


class TextPretrainStage(LMStage):
    """Next-token pretraining on report text; see the module docstring."""

    def setup(self, workdir: str) -> None:
        text = self.config.text
        corpus = synthetic_report_texts(text.num_synthetic, text.synthetic_seed)
        if text.get("iu_reports_csv"):
            iu = iu_report_texts(text.iu_reports_csv)
            logging.info("Adding %d IU X-ray reports to %d synthetic ones.", len(iu), len(corpus))
            # Interleave deterministically so both sources are in both splits.
            corpus = [t for t in corpus + iu]
            order = np.random.default_rng(text.synthetic_seed).permutation(len(corpus))
            corpus = [corpus[i] for i in order]
        num_val = max(1, int(len(corpus) * text.validation_fraction))
        self.splits = {"train": corpus[:-num_val], "validation": corpus[-num_val:]}

        saved = epath.Path(workdir) / VOCAB_DIR
        if saved.exists():
            vocab = ExtendedVocab.load(saved)
        elif self.config.model.pretrained:
            vocab = pretrained_text_vocab(self.config.model.pretrained, codebook_size=0, codes_per_image=0,
                                          text_vocab_size=self.config.model.get("text_vocab_size") or None)
        else:
            tokenizer = train_bpe(self.splits["train"], text.bpe_vocab_size)
            vocab = ExtendedVocab(tokenizer, codebook_size=0, codes_per_image=0, eos_token=BPE_EOS)
        self._finish_setup(vocab)
        self.save_vocab(workdir)

    def data_source(self, split: str) -> list[dict[str, str]]:
        return [{"text": t} for t in self.splits["train" if split == "train" else "validation"]]

    def preprocess(self, example: Mapping[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
        del rng
        out = self.builder.text_example(example["text"])
        return {k: out[k] for k in ("tokens", "targets", "loss_mask", "positions")}

    def periodic_eval(self, state: TrainState, writer: Any, step: int, workdir: str) -> None:
        """Greedy continuations of the first words of ``num_samples`` validation reports."""
        num = int(self.config.get("num_samples", 0))
        if not num:
            return
        texts = self.splits["validation"][:num]
        prompts = [(self.vocab.bos_id is not None and [self.vocab.bos_id] or []) + self.vocab.encode_text(t)[:8]
                   for t in texts]
        out = self.generate(state.params, prompts, mode="text", max_new_tokens=64)
        self.write_samples(writer, step, workdir, {
            f"report_{i}": f"prompt: {self.vocab.decode_text(p)}\n\ncontinued: {self.vocab.decode_text(o)}"
            for i, (p, o) in enumerate(zip(prompts, out))})

    def restore_pretrained(self, state: TrainState) -> TrainState:
        """An imported LLM (``model.pretrained``) grown by the specials' rows; else from scratch."""
        if not self.config.model.pretrained:
            return state
        _, params = load_pretrained_llm(self.config.model.pretrained)
        params, _ = extend_embeddings(params, self.layout, self.layout.text_vocab_size, jax.random.key(self.config.seed))
        return self.fresh_opt_state(state.replace(params=params))


def load_text_llm(workdir: str) -> tuple[ExtendedVocab, Any]:
    """(vocab, params) of a text-pretraining workdir."""
    return ExtendedVocab.load(epath.Path(workdir) / VOCAB_DIR), checkpointing.load_subtree(workdir, "params")

