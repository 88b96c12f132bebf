"""Two JAX processes on 127.0.0.1 (gloo CPU collectives) train the toy stage through the main CLI,
save a checkpoint (each process writes its own data-iterator state), then both restart and resume;
every step's loss, before and after the restart, equals an uninterrupted single-process run of the
same global batches (plain optax, outside the loop)."""

from __future__ import annotations

import json
import os
import re

import numpy as np
from multiprocess_helpers import start_pair

CONFIG = """
from test_train_loop import toy_config
def get_config(arg=None):
    c = toy_config(total_steps=int(arg), eval_every_steps=0, log_every_steps=1)
    c.optimizer.decay_steps = 6
    c.checkpoint.every_steps = 2
    return c
"""


def _run_pair(config_file, workdir, steps: int) -> list[str]:
    procs = start_pair(config_file, workdir, steps)
    outs = [p.communicate(timeout=240)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-4000:]
    return outs


def _logged_losses(out: str) -> dict[int, float]:
    return {int(s): float(v) for s, v in re.findall(r"\[(\d+)\] .*?train/loss=([0-9.e+-]+)", out)}


def _event_losses(workdir) -> dict[int, float]:
    """train/loss of every step, from the TensorBoard events process 0 wrote (float32, unrounded)."""
    import tensorflow as tf

    losses = {}
    for path in sorted(workdir.glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                if value.tag == "train/loss":
                    losses[int(event.step)] = float(tf.make_ndarray(value.tensor))
    return losses


def _single_process_reference(steps: int) -> list[float]:
    """The toy run on one device, its global batch made of both processes' local batches."""
    import jax
    import jax.numpy as jnp
    import optax
    from test_train_loop import IN_DIM, OUT_DIM, ToyStage

    from mavilt_jax import optimizers
    from mavilt_jax.data import pipeline

    config = _config(steps)
    stage = ToyStage(config)
    iters = [iter(pipeline.make_train_dataset(stage.data_source("train"), stage.preprocess,
                                              batch_size=config.batch_size // 2, seed=config.seed, shard_index=i,
                                              shard_count=2)) for i in range(2)]
    params = jnp.zeros((IN_DIM, OUT_DIM))
    tx = optax.adamw(optimizers.make_schedule(config.optimizer, config.total_steps), b1=0.9, b2=0.95, eps=1e-8,
                     weight_decay=0.0)
    opt_state, losses = tx.init(params), []
    for _ in range(steps):
        parts = [next(it) for it in iters]  # process 0's rows first, as in the global array
        b = {k: np.concatenate([p[k] for p in parts]) for k in ("x", "y")}
        loss, g = jax.value_and_grad(lambda w, b=b: jnp.mean((b["x"] @ w - b["y"]) ** 2))(params)
        updates, opt_state = tx.update(g, opt_state, params)
        params = optax.apply_updates(params, updates)
        losses.append(float(loss))
    return losses


def _config(steps: int):
    namespace: dict = {}
    exec(CONFIG, namespace)
    return namespace["get_config"](str(steps))


def test_two_processes_train_save_and_resume(tmp_path):
    config_file = tmp_path / "toy_mp.py"
    config_file.write_text(CONFIG)
    workdir = tmp_path / "w"

    outs = _run_pair(config_file, workdir, 4)
    assert "Process 1 of 2" in outs[1]
    losses = [_logged_losses(o) for o in outs]
    assert sorted(losses[0]) == [1, 2, 3, 4]
    assert losses[0] == losses[1]  # replicated measurements: both processes see the same numbers
    step_dir = workdir / "checkpoints" / "4"
    assert sorted(f for f in os.listdir(step_dir / "data") if f.startswith("process_")) == [
        "process_0-of-2.json", "process_1-of-2.json"]
    states = [json.loads((step_dir / "data" / f"process_{i}-of-2.json").read_text()) for i in range(2)]
    assert states[0] == states[1]  # same position in each process's own shard after 4 batches

    outs = _run_pair(config_file, workdir, 6)
    assert "Resuming from step 4" in outs[0] and "Resuming from step 4" in outs[1]
    resumed = [_logged_losses(o) for o in outs]
    assert sorted(resumed[0]) == [5, 6] and resumed[0] == resumed[1]
    # The toy regression keeps learning across the restart, exactly as without it: a lost data
    # iterator (other batches) or Adam state (other updates) changes steps 5 and 6 by far more than
    # the float32 rounding of a mean over two devices instead of one.
    assert resumed[0][6] < losses[0][2]
    events = _event_losses(workdir)
    assert sorted(events) == [1, 2, 3, 4, 5, 6]
    np.testing.assert_allclose([events[s] for s in range(1, 7)], _single_process_reference(6), rtol=1e-6)
    assert json.loads((workdir / "result.json").read_text())["step"] == 6
