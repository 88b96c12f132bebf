"""Training the VQ-GAN (the image tokenizer) with the clinical information-preserving loss (Eq. 4).

One jitted step updates both players:
  generator (``params``/``opt_state``): L1 + lambda_grad * gradient term + lambda_feat * phi term
    + VQ terms + gan_weight * adaptive weight * disc_factor * generator GAN loss;
  discriminator (``extra["disc_params"]``/``extra["disc_opt_state"]``): hinge or non-saturating
    loss on real images vs the step's reconstructions, switched on at ``disc_start``;
  frozen phi (``frozen["phi"]``): the trained CXR encoder, loaded by ``restore_pretrained``.
Dead codes are restarted inside the step: ``extra["code_ema"]`` tracks how often each code is
chosen; every ``restart_every`` steps codes below ``restart_threshold`` are replaced by random
encoder outputs of the batch (in the lookup space).

Decoder tuning (``config.init_from``, `configs/vqgan.py`'s ``decoder_of=DIR``): the run starts from
another VQ-GAN's generator and discriminator; with the encoder and codebook frozen
(``optimizer.freeze_patterns``, restarts off) the codes of every image stay those of ``DIR`` and
only the drawing from them is trained again, with its own loss weights. This separates what the
codes carry (set by a strongly weighted feature term) from how faithfully they are drawn.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from mavilt_jax import checkpointing, losses, optimizers, progress
from mavilt_jax.evaluation import image_metrics
from mavilt_jax.models import cxr_encoder, discriminator, vqgan
from mavilt_jax.stages.base import Batch, Measurements, Stage, TrainState, zeros_like_init


def model_config(config: ml_collections.ConfigDict) -> vqgan.VQGANConfig:
    """The frozen `VQGANConfig` of ``config.model``."""
    return vqgan.vqgan_config(config.model)


class VQGANStage(Stage):
    """VQ-GAN + PatchGAN training on radiographs; see the module docstring."""

    def __init__(self, config: ml_collections.ConfigDict):
        super().__init__(config)
        self.model_config = model_config(config)
        self.model = vqgan.VQGAN(self.model_config)
        self.disc = discriminator.PatchDiscriminator(discriminator.DiscriminatorConfig(**config.discriminator.to_dict()))
        loss = config.loss
        self.lambda_grad = float(loss.lambda_grad)
        self.lambda_feat = float(loss.lambda_feat)
        self.gan_weight = float(loss.gan_weight)
        self.d_loss_fn, self.g_loss_fn = losses.GAN_LOSSES[loss.gan_loss]
        # phi's architecture: from its checkpoint when one is given, so the two never disagree.
        phi_cfg = None
        if self.lambda_feat:
            if config.phi.checkpoint:
                saved = checkpointing.read_workdir_config(config.phi.checkpoint)
                phi_cfg = cxr_encoder.cxr_encoder_config(saved["model"])
                self.phi_image_size = saved["model"]["image_size"]
            elif config.phi.get("allow_random", False):
                phi_cfg = cxr_encoder.cxr_encoder_config(config.phi)
                self.phi_image_size = config.phi.image_size
            else:
                raise ValueError("loss.lambda_feat > 0 needs phi.checkpoint (a trained CXR encoder workdir)")
        self.phi = cxr_encoder.CxrEncoder(phi_cfg) if phi_cfg else None
        if self.lambda_grad and not self.lambda_feat and not config.get("init_from"):
            # configs/vqgan.py turns the feature term off when no phi is given: say so, since the
            # tokenizer then trains without part of Eq. 4 (the ablation turns both terms off).
            progress.show("vqgan: Eq. 4's feature term is off (loss.lambda_feat = 0); give phi=DIR, a trained "
                          "CXR encoder workdir, to train with it")
        self.tx = optimizers.make_optimizer(config.optimizer, total_steps=config.total_steps)
        self.disc_tx = optax.adam(config.disc_optimizer.learning_rate, b1=config.disc_optimizer.b1,
                                  b2=config.disc_optimizer.b2)

    # ---- data ---------------------------------------------------------------------------------
    def preprocess(self, example: Mapping[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
        del rng
        return {"image": vqgan.to_model_range(example["image"], self.model_config.image_size)}

    # ---- state --------------------------------------------------------------------------------
    def init_state(self, rng: jax.Array) -> TrainState:
        model_rng, disc_rng, phi_rng = jax.random.split(rng, 3)
        size = self.model_config.image_size
        images = jnp.zeros((1, size, size, 1))
        params = self.model.init(model_rng, images)["params"]
        disc_params = self.disc.init(disc_rng, images)["params"]
        extra = {
            "disc_params": disc_params,
            "disc_opt_state": self.disc_tx.init(disc_params),
            "code_ema": jnp.ones((self.model_config.codebook_size,), jnp.float32),
        }
        frozen = None
        if self.phi is not None:
            phi_in = jnp.zeros((1, self.phi_image_size, self.phi_image_size, 1))
            init_phi = lambda: self.phi.init(phi_rng, phi_in)["params"]  # noqa: E731
            # A trained phi replaces it in `restore_pretrained`: zeros then, not a compiled initialiser.
            frozen = {"phi": zeros_like_init(init_phi) if self.config.phi.checkpoint else init_phi()}
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=self.tx.init(params),
                          extra=extra, frozen=frozen)

    def restore_pretrained(self, state: TrainState) -> TrainState:
        if self.phi is None or not self.config.phi.checkpoint:
            return state
        _, phi_params = cxr_encoder.load_cxr_encoder(self.config.phi.checkpoint)
        logging.info("Loaded frozen phi from %s.", self.config.phi.checkpoint)
        return state.replace(frozen={"phi": phi_params})

    def continue_from(self, state: TrainState, workdir: str) -> TrainState:
        """After the loop took the generator and phi of ``workdir`` (``init_from``): its
        discriminator and code statistics too, so the adversarial game resumes where it was."""
        saved = checkpointing.read_workdir_config(workdir)
        if vqgan.vqgan_config(saved["model"]) != self.model_config:
            raise ValueError(f"init_from {workdir!r}: its VQ-GAN differs from config.model")
        if self.phi is not None and saved.get("phi", {}).get("checkpoint") != self.config.phi.checkpoint:
            # The loop takes phi from init_from's frozen arrays; a different phi.checkpoint would be dropped.
            raise ValueError(f"phi.checkpoint {self.config.phi.checkpoint!r} differs from the phi of init_from "
                             f"{workdir!r} ({saved.get('phi', {}).get('checkpoint')!r}), whose frozen phi is used")
        extra = checkpointing.load_subtree(workdir, "extra", jax.eval_shape(lambda: state.extra))
        return state.replace(extra={**state.extra, "disc_params": extra["disc_params"], "code_ema": extra["code_ema"]})

    # ---- losses -------------------------------------------------------------------------------
    def _phi_features(self, phi_params, images: jax.Array) -> list[jax.Array]:
        if images.shape[1] != self.phi_image_size:
            B, _, _, C = images.shape
            images = jax.image.resize(images, (B, self.phi_image_size, self.phi_image_size, C), "bilinear")
        return self.phi.apply({"params": phi_params}, images, method=cxr_encoder.CxrEncoder.features)

    def reconstruction_loss(self, frozen, images: jax.Array, recon: jax.Array):
        """Eq. 4's reconstruction part with this stage's weights."""
        phi_fn = functools.partial(self._phi_features, frozen["phi"]) if self.lambda_feat else None
        return losses.clinical_reconstruction_loss(
            images, recon, lambda_grad=self.lambda_grad, lambda_feat=self.lambda_feat, phi_features_fn=phi_fn)

    # ---- the step -----------------------------------------------------------------------------
    def train_step(self, state: TrainState, batch: Batch, rng: jax.Array) -> tuple[TrainState, Measurements]:
        images = batch["image"]
        disc_params = state.extra["disc_params"]
        disc_factor = losses.discriminator_factor(state.step, self.config.loss.disc_start)
        use_gan = self.gan_weight > 0

        def generator_loss(params):
            recon, aux = self.model.apply({"params": params}, images, return_penultimate=use_gan)
            nll, terms = self.reconstruction_loss(state.frozen, images, recon)
            gan_g, d_weight = jnp.zeros(()), jnp.zeros(())
            if use_gan:
                # Adaptive weight: gradients of nll and of the GAN term with respect to the
                # decoder's last layer, reusing this forward pass through vjps.
                h = jax.lax.stop_gradient(aux.pop("penultimate"))
                conv_out = params["decoder"]["conv_out"]
                head = lambda k: jax.lax.conv_general_dilated(  # noqa: E731
                    h, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")) + conv_out["bias"]
                _, head_vjp = jax.vjp(head, jax.lax.stop_gradient(conv_out["kernel"]))
                _, nll_vjp = jax.vjp(lambda x: self.reconstruction_loss(state.frozen, images, x)[0], recon)
                gan_g, g_vjp = jax.vjp(lambda x: self.g_loss_fn(self.disc.apply({"params": disc_params}, x)), recon)
                (nll_grads,) = head_vjp(nll_vjp(jnp.ones(()))[0])
                (g_grads,) = head_vjp(g_vjp(jnp.ones(()))[0])
                d_weight = losses.adaptive_generator_weight(nll_grads, g_grads,
                                                            max_weight=self.config.loss.max_adaptive_weight)
            total = nll + aux["vq_loss"] + self.gan_weight * d_weight * disc_factor * gan_g
            return total, (recon, aux, terms, gan_g, d_weight)

        (total, (recon, aux, terms, gan_g, d_weight)), grads = jax.value_and_grad(generator_loss, has_aux=True)(state.params)
        state, norms = optimizers.apply_gradients(state, grads, self.tx)

        measurements = {"loss": total, "nll": terms["l1"] + self.lambda_grad * terms["grad"] + self.lambda_feat * terms["feat"],
                        "l1": terms["l1"], "grad_term": terms["grad"], "feat_term": terms["feat"],
                        "vq_loss": aux["vq_loss"], "codebook_loss": aux["codebook_loss"],
                        "commitment_loss": aux["commitment_loss"], **norms}
        extra = dict(state.extra)
        if use_gan:
            fake = jax.lax.stop_gradient(recon)

            def disc_loss(dp):
                real_logits = self.disc.apply({"params": dp}, images)
                fake_logits = self.disc.apply({"params": dp}, fake)
                return disc_factor * self.d_loss_fn(real_logits, fake_logits), (real_logits, fake_logits)

            (d_loss, (real_logits, fake_logits)), d_grads = jax.value_and_grad(disc_loss, has_aux=True)(disc_params)
            updates, extra["disc_opt_state"] = self.disc_tx.update(d_grads, state.extra["disc_opt_state"], disc_params)
            extra["disc_params"] = optax.apply_updates(disc_params, updates)
            measurements.update(gan_g_loss=gan_g, adaptive_weight=d_weight, disc_factor=disc_factor, disc_loss=d_loss,
                                logits_real=jnp.mean(real_logits), logits_fake=jnp.mean(fake_logits))

        # Codebook statistics and dead-code restarts.
        counts = aux["code_counts"]
        restart = self.config.quantizer_restart
        code_ema = restart.decay * state.extra["code_ema"] + (1 - restart.decay) * counts
        params = state.params
        if restart.every:
            due = (state.step % restart.every == 0)
            dead = (code_ema < restart.threshold) & due
            latents = jax.lax.stop_gradient(aux["lookup_latents"])  # [B*h*w, E]
            picks = jax.random.randint(rng, (self.model_config.codebook_size,), 0, latents.shape[0])
            codebook = params["quantizer"]["codebook"]
            new_codebook = jnp.where(dead[:, None], latents[picks].astype(codebook.dtype), codebook)
            params = {**params, "quantizer": {**params["quantizer"], "codebook": new_codebook}}
            # A restarted code gets the average use, so it has time to be chosen before it is judged.
            code_ema = jnp.where(dead, jnp.mean(code_ema), code_ema)
            measurements["codes_restarted"] = jnp.sum(dead).astype(jnp.float32)
        extra["code_ema"] = code_ema
        measurements.update(
            perplexity=aux["perplexity"],
            codebook_usage=image_metrics.codebook_usage(counts),
            psnr=image_metrics.psnr(images, jnp.clip(recon, -1, 1)),
        )
        return state.replace(params=params, extra=extra), measurements

    def eval_step(self, state: TrainState, batch: Batch) -> Measurements:
        images = batch["image"]
        recon, aux = self.model.apply({"params": state.params}, images)
        recon = jnp.clip(recon, -1, 1)
        nll, terms = self.reconstruction_loss(state.frozen, images, recon)
        return {"nll": nll, "l1": terms["l1"], "grad_term": terms["grad"], "feat_term": terms["feat"],
                "psnr": image_metrics.psnr(images, recon), "ssim": image_metrics.ssim(images, recon),
                "perplexity": aux["perplexity"], "codebook_usage": image_metrics.codebook_usage(aux["code_counts"])}

    # ---- samples ------------------------------------------------------------------------------
    def periodic_eval(self, state: TrainState, writer: Any, step: int, workdir: str) -> None:
        """Originals above reconstructions of the first validation images: an image summary and a PNG."""
        from PIL import Image

        source = self.source(self.config.data.get("eval_split", "validation"))
        n = min(self.config.get("num_samples", 8), len(source))
        images = np.stack([self.preprocess(source[i], None)["image"] for i in range(n)])
        recon = self._reconstruct(jax.device_get(state.params), images)
        grid = np.concatenate([np.concatenate(list(vqgan.to_uint8(images)), axis=1),
                               np.concatenate(list(vqgan.to_uint8(recon)), axis=1)], axis=0)
        writer.write_images(step, {"reconstructions": grid[None].repeat(3, axis=-1)})
        os.makedirs(os.path.join(workdir, "samples"), exist_ok=True)
        Image.fromarray(grid[..., 0]).save(os.path.join(workdir, "samples", f"reconstructions_{step}.png"))

    @functools.cached_property
    def _reconstruct(self):
        return jax.jit(lambda params, images: jnp.clip(self.model.apply({"params": params}, images)[0], -1, 1))
