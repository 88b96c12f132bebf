"""Multimodal stage 1 (pretraining, Eq. 5-7) and stage 2 (instruction tuning, Eq. 8-10).

Both use the step of `mavilt_jax.stages.lm.LMStage` (Eq. 12: L_task + lambda_recon * L_recon +
lambda_reg * L_reg) and add what needs images:

- L_recon: Eq. 4's terms through the frozen VQ-GAN decoder, applied to the model's predicted
  image-code distribution: at every scored image position the softmax restricted to the image
  codes weights the codebook (as the decoder sees it), the expected vectors are decoded, and the
  result is compared with the decoding of the true codes (the best image the tokenizer can give,
  so the term measures the LLM's error only).
- the frozen arrays: the VQ-GAN, the anchor of Eq. 11 (lambda_reg > 0), phi (lambda_feat > 0).
A zero weight removes a term and its cost (no anchor stored, no decoder pass).

Images -> codes: the training split is encoded once before training (`PrecomputedCodes`: each
study's codes and, with L_recon, the decoding of those codes, the term's target) when it fits in
``data.precompute_codes_gib`` of host memory; the frozen VQ-GAN gives every study the same codes
at every visit, so the step need not encode it again (stage 1 sees each study ~4 times in the demo).
Otherwise the codes come on the fly from the frozen VQ-GAN encoder INSIDE the jitted step:
preprocessing (numpy, grain) builds the sequences with placeholder codes and passes the image; the
step encodes the batch and writes the code ids into the placeholder slots (the slots are the only
image ids of a sequence). A pretokenized source (examples with ``codes``) skips the encoder.

Shape legend: B batch (sequences), L sequence length, V vocabulary, K codebook size,
n codes per image (= h * w), D decoder latent channels, R image side.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from etils import epath

from mavilt_jax import checkpointing, losses, progress
from mavilt_jax.data import sequences
from mavilt_jax.data.vocab import ExtendedVocab, VocabLayout
from mavilt_jax.deprecation import moved_attributes
from mavilt_jax.models import cxr_encoder, vqgan
from mavilt_jax.models.embeddings import extend_embeddings
from mavilt_jax.stages import lm
from mavilt_jax.stages.base import Batch, Measurements, StageDataError, TrainState, eval_rng, zeros_like_init

# The shared LM stage moved to `mavilt_jax.stages.lm` (old names kept for a while).
__getattr__ = moved_attributes(__name__, {
    name: f"mavilt_jax.stages.lm:{name}" for name in (
        "VOCAB_DIR", "LMStage", "llm_config", "load_pretrained_llm", "pretrained_text_vocab", "rebox",
        "masked_cross_entropy")})


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


def previous_valid_rows(valid: jax.Array) -> jax.Array:
    """For a bool [B] mask, the row whose image each valid row borrows in the wrong-image control:
    the previous VALID row, cyclically (padding rows, copies of a real example, never lend their
    image); an invalid row keeps its own. int [B]."""
    rank = jnp.cumsum(valid) - 1
    count = jnp.maximum(jnp.sum(valid), 1)
    valid_first = jnp.argsort(~valid, stable=True)  # the valid rows' indices, in order, then the rest
    return jnp.where(valid, valid_first[(rank - 1) % count], jnp.arange(valid.shape[0]))


class PrecomputedCodes:
    """A training source whose examples carry their VQ-GAN ``codes`` [n] instead of the ``image``,
    and, when given, ``recon_target`` [R, R, 1]: the decoding of those codes (L_recon's target).
    Random access like the source it wraps; the arrays are indexed by the source's index."""

    def __init__(self, source: Any, codes: np.ndarray, recon_targets: np.ndarray | None):
        if len(codes) != len(source) or (recon_targets is not None and len(recon_targets) != len(source)):
            raise ValueError(f"{len(codes)} codes for a source of {len(source)} studies")
        self.source, self.codes, self.recon_targets = source, codes, recon_targets

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        example = {k: v for k, v in self.source[index].items() if k != "image"}
        example["codes"] = self.codes[index]
        if self.recon_targets is not None:
            example["recon_target"] = self.recon_targets[index]
        return example


# ==== Stage 1 and stage 2 ======================================================================

class Stage1(lm.LMStage):
    """Multimodal pretraining on image-report pairs, both directions (Eq. 5-7).

    Config: ``model`` (LLM size; ``model.pretrained`` for an imported LLM), ``text_checkpoint``
    (a text-pretraining workdir: its LLM and tokenizer), ``tokenizer_checkpoint`` (the VQ-GAN
    workdir), ``phi_checkpoint`` (the CXR encoder, for lambda_feat > 0), ``sequence``, ``loss``.
    """

    # Rows of the flattened [2B, L] batch that can hold an image target: each pair is (image ->
    # report, report -> image), so the odd rows (Eq. 6). None: any row (stage 2 draws tasks).
    recon_rows: slice | None = slice(1, None, 2)

    def setup(self, workdir: str) -> None:
        cfg = self.config
        if cfg.tokenizer_checkpoint:
            self.vq_config, self._vq_params = vqgan.load_vqgan(cfg.tokenizer_checkpoint)
        elif cfg.vqgan.get("allow_random", False):  # tests, compile checks: a random VQ-GAN of the configured shape
            self.vq_config, self._vq_params = vqgan.vqgan_config(cfg.vqgan.model), None
        else:
            raise ValueError(f"{cfg.stage} needs a trained VQ-GAN: tokenizer_checkpoint (variant tokenizer=DIR, a "
                             "vqgan training workdir) is empty; vqgan.allow_random=True trains on a random one (tests)")
        self.vqgan = vqgan.VQGAN(self.vq_config)
        codebook, n = self.vq_config.codebook_size, self.vq_config.codes_per_image
        saved = epath.Path(workdir) / lm.VOCAB_DIR
        source = cfg.get("init_from") and epath.Path(checkpointing.checkpoint_dir(cfg.init_from)).parent / lm.VOCAB_DIR
        if saved.exists():
            vocab = ExtendedVocab.load(saved)
        elif source and source.exists():
            vocab = ExtendedVocab.load(source)
        elif cfg.text_checkpoint:
            text_vocab = ExtendedVocab.load(epath.Path(cfg.text_checkpoint) / lm.VOCAB_DIR)
            vocab = ExtendedVocab(text_vocab.tokenizer, codebook_size=codebook, codes_per_image=n,
                                  eos_token=text_vocab.eos_token, text_vocab_size=text_vocab.layout.text_vocab_size,
                                  chat_template=text_vocab.chat_template, bos_token=text_vocab.bos_token)
        elif cfg.model.pretrained:
            vocab = lm.pretrained_text_vocab(cfg.model.pretrained, codebook_size=codebook, codes_per_image=n,
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
            if not cfg.get("phi_checkpoint"):
                raise ValueError("loss.lambda_feat > 0 needs phi_checkpoint (a trained CXR encoder workdir)")
            phi_cfg, self._phi_params = cxr_encoder.load_cxr_encoder(cfg.phi_checkpoint)
            self.phi = cxr_encoder.CxrEncoder(phi_cfg)
            self.phi_image_size = checkpointing.read_workdir_config(cfg.phi_checkpoint)["model"]["image_size"]
        self.save_vocab(workdir)

    # ---- data -----------------------------------------------------------------------------------
    # Studies per jitted call of the training split's encoding (`precompute_codes`).
    precompute_batch = 64

    def prepare_train_source(self, source: Any) -> Any:
        """The training split as `PrecomputedCodes` (codes and, with L_recon, their decoding,
        computed here once with the step's VQ-GAN) when its images fit in
        ``data.precompute_codes_gib`` GiB of host memory; else ``source`` as it is (the step encodes
        each batch). Also as it is: a pretokenized source, a random VQ-GAN (``vqgan.allow_random``:
        its weights are drawn with the state), a budget of 0, a run that visits fewer studies than
        the split holds (encoding them all would cost more than it saves)."""
        budget = float(self.config.data.get("precompute_codes_gib", 0.0))
        if not budget or self._vq_params is None or not len(source) or "image" not in source[0]:
            return source
        if self.config.total_steps * self.config.batch_size <= len(source):
            logging.info("%d steps of %d visit at most the %d training studies once: the step encodes each batch.",
                         self.config.total_steps, self.config.batch_size, len(source))
            return source
        R, n = self.vq_config.image_size, self.layout.codes_per_image
        need = len(source) * (4 * n + (4 * R * R if self.lambda_recon else 0)) / 2**30
        if need > budget:
            logging.warning("The training split's codes%s would take %.2f GiB (data.precompute_codes_gib = %g): "
                            "the step encodes each batch instead.", " and L_recon targets" if self.lambda_recon else "",
                            need, budget)
            return source
        vq_params = self._vq_params
        if self.config.get("init_from"):  # the step's VQ-GAN is then the one in init_from's frozen arrays
            abstract = jax.eval_shape(lambda: self.vqgan.init(jax.random.key(0), jnp.zeros((1, R, R, 1)))["params"])
            vq_params = checkpointing.load_subtree(self.config.init_from, "frozen", {"vqgan": abstract})["vqgan"]
        what = "codes and L_recon targets" if self.lambda_recon else "codes"
        progress.show(f"encoding the {len(source)} training studies once ({what}, {need:.2f} GiB)")
        start = time.perf_counter()
        source = self.precompute_codes(source, vq_params)
        progress.show(f"encoded in {progress.format_duration(time.perf_counter() - start)}")
        return source

    def precompute_codes(self, source: Any, vq_params: Any) -> PrecomputedCodes:
        """Every study of ``source`` (with ``image``) encoded by the VQ-GAN ``vq_params`` in batches
        of `precompute_batch`, and with L_recon the codes decoded."""
        encode = jax.jit(functools.partial(self._encode_for_cache, with_targets=bool(self.lambda_recon)))
        R, k = self.vq_config.image_size, self.precompute_batch
        codes, targets = [], []
        for start in range(0, len(source), k):
            index = [min(i, len(source) - 1) for i in range(start, start + k)]  # the last batch padded: one shape
            images = np.stack([vqgan.to_model_range(np.asarray(source[i]["image"]), R) for i in index])
            c, x = jax.device_get(encode(vq_params, images.astype(np.float32)))
            keep = min(k, len(source) - start)
            codes.append(c[:keep])
            targets.append(None if x is None else x[:keep])
        return PrecomputedCodes(source, np.concatenate(codes).astype(np.int32),
                                np.concatenate(targets) if self.lambda_recon else None)

    def _encode_for_cache(self, vq_params: Any, images: jax.Array, *, with_targets: bool
                          ) -> tuple[jax.Array, jax.Array | None]:
        """images [B, R, R, 1] -> (codes [B, n], their decoding [B, R, R, 1] or None)."""
        vq = {"params": vq_params}
        codes = self.vqgan.apply(vq, images, method="encode")
        return codes, self.vqgan.apply(vq, codes, method="decode") if with_targets else None

    def _codes_and_image(self, example: Mapping[str, Any]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        if "codes" in example:  # pretokenized or precomputed source
            extra = {}
            if "recon_target" in example:
                extra["recon_target"] = np.asarray(example["recon_target"], np.float32)
            return np.asarray(example["codes"], np.int32), extra
        image = vqgan.to_model_range(np.asarray(example["image"]), self.vq_config.image_size)
        return np.zeros(self.layout.codes_per_image, np.int32), {"image": image.astype(np.float32)}

    def preprocess(self, example: Mapping[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
        codes, extra = self._codes_and_image(example)
        out = self.builder.stage1_example(example, codes, rng)  # arrays [2, L]
        return {**{k: out[k] for k in ("tokens", "targets", "loss_mask", "positions", "is_image_target")}, **extra}

    # ---- state ----------------------------------------------------------------------------------
    def init_frozen(self, rng: jax.Array, params: Any) -> Any:
        """The frozen arrays: the VQ-GAN, the anchor of Eq. 11 and phi.

        A trained VQ-GAN and phi (loaded in ``setup``) replace theirs after initialisation
        (`restore_pretrained`, or stage 1's frozen arrays through ``init_from``), so here they are
        zeros of their shapes: compiling their random initialisers was most of a stage's start-up
        (12 of 16 s for the smoke-size model with XLA's optimisations off, 46 s with them on).
        Only a random VQ-GAN (``vqgan.allow_random``) is initialised here."""
        size = self.vq_config.image_size
        init_vqgan = lambda: self.vqgan.init(rng, jnp.zeros((1, size, size, 1)))["params"]  # noqa: E731
        frozen = {"vqgan": init_vqgan() if self._vq_params is None else zeros_like_init(init_vqgan)}
        if self.lambda_reg:
            plain = nn.unbox(params)
            frozen["anchor"] = lm.rebox(params, losses.make_anchor(plain, self.layout.text_vocab_size))
        if self.phi is not None:
            frozen["phi"] = zeros_like_init(lambda: self.phi.init(
                rng, jnp.zeros((1, self.phi_image_size, self.phi_image_size, 1)))["params"])
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
            _, params = lm.load_pretrained_llm(cfg.model.pretrained)
            logging.info("Stage 1 starts from the pretrained LLM %s.", cfg.model.pretrained)
        else:
            return state.replace(frozen=self._trained_frozen(state.frozen, state.params))
        init = cfg.code_embedding_init
        codebook = None
        if init["rule"] == "codebook":  # the tokenizer checkpoint's codebook (tests: the random frozen one)
            vq_params = self._vq_params if self._vq_params is not None else state.frozen["vqgan"]
            codebook = np.asarray(vq_params["quantizer"]["codebook"])
        params, _ = extend_embeddings(params, self.layout, text_rows, jax.random.key(cfg.seed), init["rule"],
                                      noise_scale=float(init["noise_scale"]), codebook=codebook)
        expected = jax.tree.map(lambda x: x.shape, state.params)
        got = jax.tree.map(lambda x: x.shape, params)
        if expected != got:
            raise ValueError(f"pretrained LLM does not match config.model: {got} vs {expected}")
        state = state.replace(params=params, frozen=self._trained_frozen(state.frozen, params))
        return self.fresh_opt_state(state)

    def _trained_frozen(self, frozen: Any, params: Any) -> Any:
        """``frozen`` with the trained VQ-GAN and phi loaded in ``setup`` and the anchor of ``params``."""
        frozen = dict(frozen)
        if self._vq_params is not None:
            frozen["vqgan"] = self._vq_params
        if self.lambda_reg:
            frozen["anchor"] = losses.make_anchor(nn.unbox(params), self.layout.text_vocab_size)
        if self.phi is not None:
            frozen["phi"] = self._phi_params
        return frozen

    # ---- samples --------------------------------------------------------------------------------
    def report_prompt(self, codes: np.ndarray) -> list[int]:
        return self.builder.image_to_report_prompt(codes)

    def image_prompt(self, report: str, uncond: bool) -> list[int]:
        return self.builder.report_to_image_prompt(report, uncond=uncond)

    def periodic_eval(self, state: TrainState, writer: Any, step: int, workdir: str) -> None:
        """Greedy reports for ``num_samples`` validation images and guided images for their reports
        (image summaries: true image | its tokenizer reconstruction | generated image)."""
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

    def eval_step(self, state: TrainState, batch: Batch) -> Measurements:
        """The validation losses, and how much the radiograph tells the model: the text CE again with
        every example given the PREVIOUS example's radiograph (``text_ce_other_image``) and the
        difference ``image_gain`` (nats per scored text token; 0: the image is ignored). Logged at
        every evaluation, it is the learning curve of reading (``eval_history.jsonl``)."""
        m = dict(super().eval_step(state, batch))
        if "image" in batch:  # pre-tokenized batches carry codes in the tokens: no image to swap
            valid = batch.get("valid")
            source = previous_valid_rows(valid) if valid is not None else jnp.roll(jnp.arange(batch["image"].shape[0]), 1)
            other = dict(super().eval_step(state, dict(batch, image=batch["image"][source])))
            m["text_ce_other_image"] = other["text_ce"]
            m["image_gain"] = other["text_ce"] - m["text_ce"]
        return m

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
        if "recon_target" in batch:  # precomputed: one per example, the same for its rows
            rows_per_example = seq["tokens"].shape[0] // batch["recon_target"].shape[0]
            seq["recon_target"] = jnp.repeat(batch["recon_target"], rows_per_example, axis=0)
        return seq

    def _phi_features(self, phi_params: Any, images: jax.Array) -> list[jax.Array]:
        if images.shape[1] != self.phi_image_size:
            B, _, _, C = images.shape
            images = jax.image.resize(images, (B, self.phi_image_size, self.phi_image_size, C), "bilinear")
        return self.phi.apply({"params": phi_params}, images, method=cxr_encoder.CxrEncoder.features)

    def recon_loss(self, frozen: Any, logits: jax.Array, seq: dict[str, jax.Array]) -> tuple[jax.Array, dict]:
        """Eq. 4's terms between decode(E_p[codebook]) and decode(true codes), over rows with an image target."""
        if self.recon_rows is not None:
            # Only these rows can hold an image target: decoding the others would cost as much for
            # a zero term (the mean below is over image rows either way, so the value is the same).
            logits, seq = logits[self.recon_rows], {k: v[self.recon_rows] for k, v in seq.items()}
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
        if "recon_target" in seq:  # decode(true codes), precomputed (`prepare_train_source`)
            x = jax.lax.stop_gradient(seq["recon_target"])  # [B, R, R, 1]
        else:
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

    recon_rows = None  # one task per row, drawn per example

    # How many training studies `check_train_source` looks at (the source's first ones).
    checked_studies = 256

    def check_train_source(self, source: Any) -> None:
        """Stops before training when no study among the first ones has the data of a configured
        task (the stream would skip them all); warns with the share that will be skipped."""
        n = min(len(source), self.checked_studies)
        usable = sum(self.builder.supports_configured_task(source[i]) for i in range(n))
        tasks = self.builder.configured_tasks
        if n and not usable:
            raise StageDataError(f"none of the first {n} training studies has the data of a configured stage-2 task "
                                 f"{tasks}: set sequence.task_weights to tasks this dataset has")
        if usable < n:
            logging.warning("%d of the first %d training studies have the data of none of the tasks %s; "
                            "such studies are skipped in training and score nothing in evaluation.",
                            n - usable, n, tasks)

    def preprocess(self, example: Mapping[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray] | None:
        codes, extra = self._codes_and_image(example)
        try:
            out = self.builder.stage2_example(example, codes, rng, split="train")
        except sequences.NoTaskForStudy:
            return None  # skipped: grain leaves a None out of the stream
        keys = ("tokens", "targets", "loss_mask", "positions", "is_image_target", "task_id")
        return {**{k: out[k] for k in keys}, **extra}

    def report_prompt(self, codes: np.ndarray) -> list[int]:
        return self.builder.instruction_prompt("report", codes=codes)

    def image_prompt(self, report: str, uncond: bool) -> list[int]:
        return self.builder.instruction_prompt("report_to_image", report=report, uncond=uncond)

    def eval_preprocess(self, example: Mapping[str, Any]) -> dict[str, np.ndarray]:
        codes, extra = self._codes_and_image(example)
        try:
            out = self.builder.stage2_example(example, codes, eval_rng(example), split="eval")
        except sequences.NoTaskForStudy:
            # Evaluation batches keep every study in place: this one scores nothing.
            out = {**self.builder.unscored(), "task_id": np.int32(-1)}
        keys = ("tokens", "targets", "loss_mask", "positions", "is_image_target", "task_id")
        return {**{k: out[k] for k in keys}, **extra}
