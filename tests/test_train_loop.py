"""The shared training loop on a toy stage: losses, NaN stop, evaluation, optimizer pieces.

The toy stage is linear regression y = x @ w_true on an in-memory source; its parameters carry
logical axis names so the sharding tests (test_sharding.py) can use it too.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from configs import common
from mavilt_jax import optimizers, train
from mavilt_jax.stages.base import Stage, TrainState

IN_DIM, OUT_DIM = 8, 4
W_TRUE = np.random.default_rng(123).normal(size=(IN_DIM, OUT_DIM)).astype(np.float32)


class ToyModel(nn.Module):
    @nn.compact
    def __call__(self, x):
        init = nn.with_logical_partitioning(nn.initializers.zeros_init(), ("embed", "mlp"))
        return nn.Dense(OUT_DIM, use_bias=False, kernel_init=init, name="dense")(x)


class ToyStage(Stage):
    """Linear regression; ``config.toy_nan_at`` > 0 makes the loss NaN from that step on."""

    def __init__(self, config):
        super().__init__(config)
        self.model = ToyModel()
        self.tx = optimizers.make_optimizer(config.optimizer, total_steps=config.total_steps)

    def data_source(self, split):
        n, seed = (64, 0) if split == "train" else (20, 1)
        x = np.random.default_rng(seed).normal(size=(n, IN_DIM)).astype(np.float32)
        return [{"x": xi, "y": xi @ W_TRUE} for xi in x]

    def preprocess(self, example: Mapping[str, Any], rng: np.random.Generator):
        return {"x": np.asarray(example["x"]), "y": np.asarray(example["y"])}

    def init_state(self, rng):
        params = self.model.init(rng, jnp.zeros((1, IN_DIM)))["params"]
        return TrainState(step=jnp.int32(0), params=params, opt_state=self.tx.init(params))

    def _loss(self, params, batch):
        return jnp.mean((self.model.apply({"params": params}, batch["x"]) - batch["y"]) ** 2)

    def train_step(self, state, batch, rng):
        loss, grads = jax.value_and_grad(self._loss)(state.params, batch)
        nan_at = self.config.get("toy_nan_at", 0)
        if nan_at:
            loss = jnp.where(state.step + 1 >= nan_at, jnp.nan, loss)
        state, norms = optimizers.apply_gradients(state, grads, self.tx)
        return state, {"loss": loss, **norms}

    def eval_step(self, state, batch):
        err = jnp.mean((self.model.apply({"params": state.params}, batch["x"]) - batch["y"]) ** 2, axis=-1)
        valid = batch["valid"].astype(jnp.float32)
        return {"loss": jnp.sum(err * valid) / jnp.maximum(jnp.sum(valid), 1.0)}


def toy_config(**overrides) -> ml_collections.ConfigDict:
    config = common.base_config(stage="test_train_loop:ToyStage")
    config.total_steps = 12
    config.batch_size = 8
    config.optimizer = common.optimizer_config(learning_rate=0.1, warmup_steps=0)
    config.optimizer.weight_decay = 0.0
    config.optimizer.grad_clip_norm = 0.0
    config.log_every_steps = 4
    config.eval_every_steps = 6
    config.checkpoint.every_steps = 4
    config.disable_most_optimizations = True
    config.toy_nan_at = 0
    config.update(overrides)
    return config


def reference_losses(config, steps: int) -> list[float]:
    """The same training with plain optax and numpy batches, outside the loop."""
    from mavilt_jax.data import pipeline

    stage = ToyStage(config)
    it = iter(pipeline.make_train_dataset(stage.data_source("train"), stage.preprocess, batch_size=config.batch_size,
                                          seed=config.seed, shard_index=0, shard_count=1))
    params = jnp.zeros((IN_DIM, OUT_DIM))
    tx = optax.adamw(optimizers.make_schedule(config.optimizer, config.total_steps), b1=0.9, b2=0.95, eps=1e-8,
                     weight_decay=0.0)
    opt_state = tx.init(params)
    losses = []
    for _ in range(steps):
        b = next(it)
        loss, g = jax.value_and_grad(lambda w, b=b: jnp.mean((b["x"] @ w - b["y"]) ** 2))(params)
        updates, opt_state = tx.update(g, opt_state, params)
        params = optax.apply_updates(params, updates)
        losses.append(float(loss))
    return losses


def test_loop_losses_match_plain_optax_and_fall(tmp_path):
    config = toy_config()
    result = train.train_and_evaluate(config, str(tmp_path))
    losses = [h["loss"] for h in result["history"]]
    np.testing.assert_allclose(losses, reference_losses(config, 12), rtol=1e-5)
    assert losses[-1] < 0.5 * losses[0]
    # Eval: the validation MSE of the final weights, computed here from the checkpoint's values.
    from mavilt_jax import checkpointing

    w = np.asarray(checkpointing.load_subtree(str(tmp_path), "params")["dense"]["kernel"])
    x = np.stack([e["x"] for e in ToyStage(config).data_source("validation")])
    np.testing.assert_allclose(result["eval"]["loss"], np.mean((x @ w - x @ W_TRUE) ** 2), rtol=1e-5)
    assert result["step"] == 12 and max(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit()) == 12
    # Norms are measured: the first update of Adam has norm lr * sqrt(#params) (all |m/sqrt(v)| = 1).
    assert result["history"][0]["update_norm"] == pytest.approx(0.1 * np.sqrt(IN_DIM * OUT_DIM), rel=1e-3)


def test_disable_most_optimizations_holds_only_inside_its_stage(tmp_path, monkeypatch):
    seen = []

    class Spy(ToyStage):
        def train_step(self, state, batch, rng):
            seen.append(jax.config.read("jax_disable_most_optimizations"))  # read while tracing
            return super().train_step(state, batch, rng)

    config = toy_config(total_steps=2, eval_every_steps=0, disable_most_optimizations=True)
    assert jax.config.read("jax_disable_most_optimizations") is False
    monkeypatch.setattr(train, "get_stage_class", lambda name: Spy)
    train.train_and_evaluate(config, str(tmp_path))
    assert seen and all(seen)  # the step compiled without most optimisations
    assert jax.config.read("jax_disable_most_optimizations") is False  # and the process got its flag back


def test_nan_stops_with_step_and_term(tmp_path):
    with pytest.raises(train.NonFiniteLossError, match=r"step 3: loss=nan"):
        train.train_and_evaluate(toy_config(toy_nan_at=3), str(tmp_path))


def test_freeze_patterns_and_accumulation():
    params = {"embed": {"embedding": jnp.ones((3, 2))}, "layer_0": {"kernel": jnp.ones((2, 2))}}
    cfg = common.optimizer_config(learning_rate=1.0, warmup_steps=0)
    cfg.freeze_patterns = (r"^embed/",)
    tx = optimizers.make_optimizer(cfg, params, total_steps=10)
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    assert float(jnp.abs(updates["embed"]["embedding"]).max()) == 0.0
    assert float(jnp.abs(updates["layer_0"]["kernel"]).min()) > 0.5
    cfg.freeze_patterns = ()
    cfg.accumulation_steps = 2
    tx = optimizers.make_optimizer(cfg, total_steps=10)
    state = tx.init(params)
    u1, state = tx.update(grads, state, params)
    assert float(jnp.abs(u1["layer_0"]["kernel"]).max()) == 0.0  # first micro-step: no update yet
    u2, state = tx.update(grads, state, params)
    assert float(jnp.abs(u2["layer_0"]["kernel"]).min()) > 0.5


def test_schedule_warmup_and_cosine_end():
    cfg = common.optimizer_config(learning_rate=1.0, warmup_steps=10)
    cfg.end_lr_factor = 0.1
    sched = optimizers.make_schedule(cfg, total_steps=110)
    assert float(sched(5)) == pytest.approx(0.5)
    assert float(sched(10)) == pytest.approx(1.0)
    # Halfway through the cosine: end + (peak - end) * (1 + cos(pi/2)) / 2.
    assert float(sched(60)) == pytest.approx(0.1 + 0.9 * 0.5, rel=1e-5)
    assert float(sched(110)) == pytest.approx(0.1, rel=1e-5)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))


def test_pipeline_stops_at_a_preempted_step(tmp_path, monkeypatch):
    """A step stopped by SIGTERM (result "preempted") ends the pipeline there: the next step must not
    start from an unfinished model; the same command resumes later."""
    import ml_collections

    from mavilt_jax import train

    calls = []

    def fake_train(config, workdir):
        calls.append(workdir)
        return {"preempted": len(calls) == 2, "step": 7, "train": {}, "eval": {}}

    monkeypatch.setattr(train, "train_and_evaluate", fake_train)
    steps = {name: ml_collections.ConfigDict({"stage": "toy"}) for name in ("a", "b", "c")}
    config = ml_collections.ConfigDict({"pipeline": steps, "order": ("a", "b", "c")})
    results = train.run_pipeline(config, str(tmp_path))
    assert [p.rsplit("/", 1)[1] for p in calls] == ["a", "b"]
    assert results["preempted"] == {"step_name": "b", "step": 7}
    assert not (tmp_path / "pipeline_timings.json").exists()
