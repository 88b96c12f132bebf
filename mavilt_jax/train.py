"""The training loop shared by every stage: `train_and_evaluate(config, workdir)`.

One function, read top to bottom: setup and metric writers, stage, mesh, input pipeline, train
state (created abstractly and sharded), checkpoint restore / initialisation, the jitted update
step, evaluation, and the loop with NaN checks, periodic samples, checkpoints and preemption.
What differs between stages lives in the `Stage` (`mavilt_jax/stages/base.py`).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from clu import metric_writers, periodic_actions
from etils import epath
from jax.sharding import NamedSharding, PartitionSpec

from mavilt_jax import checkpointing, locks, progress, sharding
from mavilt_jax.stages import get_stage_class
from mavilt_jax.stages.base import Stage, TrainState

# One JSON line per evaluation ({"step": ..., validation figures}) in the workdir: the learning curve.
EVAL_HISTORY = "eval_history.jsonl"


class NonFiniteLossError(FloatingPointError):
    """A measurement of the train step became NaN or Inf; the run stops without saving."""


def check_finite(measurements: dict[str, Any], step: int) -> None:
    """Raises `NonFiniteLossError` naming the step and every non-finite term (loss terms first)."""
    bad = [k for k, v in measurements.items() if not np.all(np.isfinite(v))]
    if bad:
        bad.sort(key=lambda k: "loss" not in k)
        values = ", ".join(f"{k}={np.asarray(measurements[k]).item()}" for k in bad)
        raise NonFiniteLossError(f"non-finite measurement at step {step}: {values} (first: {bad[0]!r})")


class _PreemptionNotice:
    """Turns SIGTERM into a flag the loop polls, so it can save before the process ends.

    Only with one process. With several, JAX's preemption notifier (set up by
    ``jax.distributed.initialize``) takes SIGTERM sent to any of them and the processes agree on
    one step to save at (``reached_preemption``); a Python handler would replace JAX's, and then
    no process would stop."""

    def __init__(self):
        self.received = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread() and jax.process_count() == 1:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        del signum, frame
        logging.warning("SIGTERM received: saving a checkpoint at the current step, then stopping.")
        self.received = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


@contextlib.contextmanager
def xla_optimizations(config: ml_collections.ConfigDict):
    """Within the block, XLA skips most optimisations when ``config.disable_most_optimizations``
    (fast compiles for tests and smoke runs); the process-wide flag is restored on exit, so a later
    stage or evaluation in the same process compiles as its own config says."""
    previous = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", bool(config.get("disable_most_optimizations", False)))
    try:
        yield
    finally:
        jax.config.update("jax_disable_most_optimizations", previous)


@contextlib.contextmanager
def _finally(fn):
    """Runs ``fn`` however the block ends (a pending asynchronous save completes even on errors)."""
    try:
        yield
    finally:
        fn()


def _data_source(stage: Stage, config: ml_collections.ConfigDict, split: str):
    source = stage.data_source(split)
    if source is not None:
        return source
    from mavilt_jax.data import pipeline  # Imported here: the TFDS builders are only needed now.

    return pipeline.load_source(config.data.name, split, data_dir=config.data.get("data_dir"),
                                builder_config=config.data.get("builder_config"))


def _mean(rows: list[dict[str, np.ndarray]]) -> dict[str, float]:
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]} if rows else {}


def abstract_train_state(stage: Stage, mesh: jax.sharding.Mesh, rules, rng: jax.Array) -> tuple[Any, TrainState]:
    """(shardings, abstract state) of ``stage.init_state``: shapes only (``jax.eval_shape``), the
    shardings from the parameters' logical axes (`sharding.logical_shardings`)."""
    with nn.logical_axis_rules(rules):
        boxed_state = jax.eval_shape(stage.init_state, rng)
    state_shardings = sharding.logical_shardings(boxed_state, mesh, rules)
    return state_shardings, checkpointing.abstract_with_shardings(nn.unbox(boxed_state), state_shardings)


def make_update_step(stage: Stage, state_shardings: Any, mesh: jax.sharding.Mesh):
    """The jitted update step of the loop: (state, batch, rng) -> (state, measurements), the state
    donated; call (or ``.lower``) it under ``jax.set_mesh(mesh)`` and the logical axis rules."""

    def update_fn(state: TrainState, batch, rng):
        return stage.train_step(state, batch, jax.random.fold_in(rng, state.step))

    replicated = NamedSharding(mesh, PartitionSpec())
    return jax.jit(update_fn, in_shardings=(state_shardings, sharding.batch_sharding(mesh), replicated),
                   out_shardings=(state_shardings, replicated), donate_argnums=(0,))


@locks.holding_workdir_lock
def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Runs (or resumes) one stage in ``workdir``; returns what it measured.

    Returns a dict: ``step`` (last step), ``preempted`` (stopped by SIGTERM / preemption),
    ``history`` (measurements of every step run in this call, in order), ``train`` (means over
    the last logging window), ``eval`` (last validation measurements), ``state`` (the final,
    sharded `TrainState`).

    A workdir that already finished ``config.total_steps`` (its ``result.json`` says so) is left as
    it is: one line on the terminal, and the stored result comes back with ``history`` empty and
    ``state`` None. Two runs cannot share a workdir: the second raises `locks.WorkdirBusyError`.
    """
    if (finished := _finished_result(workdir, config.total_steps)) is not None:
        progress.show(f"{workdir} already finished at step {finished['step']} (result.json); "
                      "nothing to do, its outputs are left as they are")
        return finished | {"history": [], "state": None}
    with xla_optimizations(config):
        return _train_and_evaluate(config, workdir)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    # ==== Setup ==================================================================================
    epath.Path(workdir).mkdir(parents=True, exist_ok=True)
    writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
    if jax.process_index() == 0:
        (epath.Path(workdir) / "config.json").write_text(config.to_json_best_effort(indent=2))
    logging.info("Devices: %d local, %d global, %d processes.", jax.local_device_count(),
                 jax.device_count(), jax.process_count())

    # ==== Stage ==================================================================================
    stage = get_stage_class(config.stage)(config)
    stage.setup(workdir)

    # ==== Mesh ===================================================================================
    mesh = sharding.make_mesh(config.mesh.shape, config.mesh.axes)
    rules = tuple((name, tuple(axes) if isinstance(axes, list) else axes) for name, axes in config.logical_axis_rules)
    logging.info("Mesh: %s", dict(mesh.shape))
    if config.batch_size % jax.process_count() or config.batch_size % sharding.data_parallel_size(mesh):
        raise ValueError(f"batch_size {config.batch_size} must divide by the process count "
                         f"{jax.process_count()} and the data-parallel size {sharding.data_parallel_size(mesh)}")
    local_batch_size = config.batch_size // jax.process_count()

    # ==== Input pipeline =========================================================================
    from mavilt_jax.data import pipeline

    train_source = _data_source(stage, config, config.data.get("train_split", "train"))
    stage.check_train_source(train_source)
    train_source = stage.prepare_train_source(train_source)
    train_iter = iter(pipeline.make_train_dataset(
        train_source, stage.preprocess, batch_size=local_batch_size, seed=config.seed,
        shard_index=jax.process_index(), shard_count=jax.process_count(),
        worker_count=config.data.get("worker_count", 0)))

    # ==== Train state: abstract -> shardings -> jit(init, out_shardings) ========================
    rng = jax.random.key(config.seed)
    init_rng, train_rng = jax.random.split(rng)
    state_shardings, abstract_state = abstract_train_state(stage, mesh, rules, init_rng)
    replicated = NamedSharding(mesh, PartitionSpec())

    # ==== Restore or initialise (order: workdir, init_from, pretrained, scratch) ================
    ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"), every_steps=config.checkpoint.every_steps,
                                      keep=config.checkpoint.keep, async_save=config.checkpoint.get("async_save", True))
    if (latest := ckpt.latest_step()) is not None:
        logging.info("Resuming from step %d of %s.", latest, workdir)
        state = ckpt.restore(latest, abstract_state, train_iter)
    else:
        # out_shardings place the result, fitted to the mesh (`sharding.logical_shardings`).
        init_fn = jax.jit(lambda r: nn.unbox(stage.init_state(r)), out_shardings=state_shardings)
        state = init_fn(init_rng)
        if config.get("init_from"):
            logging.info("Initialising parameters from %s.", config.init_from)
            state = state.replace(params=checkpointing.load_subtree(config.init_from, "params", abstract_state.params))
            if state.frozen is not None:
                state = state.replace(frozen=checkpointing.load_subtree(config.init_from, "frozen", abstract_state.frozen))
            state = jax.device_put(stage.continue_from(state, config.init_from), state_shardings)
        else:
            state = jax.device_put(stage.restore_pretrained(state), state_shardings)
    logging.info("Train state:\n%s", sharding.describe(state.params))

    # ==== Update and eval steps (jitted once, state donated) ====================================
    def eval_fn(state: TrainState, batch):
        measurements = dict(stage.eval_step(state, batch))
        valid = batch.get("valid")
        measurements["_weight"] = jnp.sum(valid) if valid is not None else jnp.float32(config.batch_size)
        return measurements

    batch_sharding = sharding.batch_sharding(mesh)
    update_step = make_update_step(stage, state_shardings, mesh)
    eval_step = jax.jit(eval_fn, in_shardings=(state_shardings, batch_sharding), out_shardings=replicated)

    def evaluate(state: TrainState) -> dict[str, float]:
        source = _data_source(stage, config, config.data.get("eval_split", "validation"))
        totals: dict[str, float] = {}
        weight = 0.0
        batches = pipeline.make_eval_batches(source, stage.eval_preprocess, batch_size=local_batch_size,
                                             shard_index=jax.process_index(), shard_count=jax.process_count())
        for i, local in enumerate(batches):
            if config.get("eval_max_batches") and i >= config.eval_max_batches:
                break
            with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
                m = jax.device_get(eval_step(state, sharding.make_global_batch(local, mesh)))
            w = float(m.pop("_weight"))
            weight += w
            for k, v in m.items():
                totals[k] = totals.get(k, 0.0) + w * float(v)
        return {k: v / max(weight, 1.0) for k, v in totals.items()}

    # ==== Loop ===================================================================================
    step = int(jax.device_get(state.step))
    total_steps = config.total_steps
    report_progress = periodic_actions.ReportProgress(num_train_steps=total_steps, writer=writer)
    history: list[dict[str, float]] = []
    window: list[dict[str, np.ndarray]] = []
    result: dict[str, Any] = {"train": {}, "eval": {}, "preempted": False}
    logging.info("Training %s from step %d to %d.", config.stage, step, total_steps)
    show_progress = progress.StepProgress(total_steps, start_step=step)
    with _PreemptionNotice() as notice, _finally(ckpt.close):
        while step < total_steps:
            with report_progress.timed("data", wait_jax_async_dispatch=False):
                batch = sharding.make_global_batch(next(train_iter), mesh)
            # Parameter and batch shardings drive the partitioning; with the mesh in context the
            # model's activation constraints (nn.with_logical_constraint) pin the activations too.
            with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
                state, measurements = update_step(state, batch, train_rng)
            step += 1
            measurements = jax.device_get(measurements)
            check_finite(measurements, step)
            history.append({k: float(v) for k, v in measurements.items()})
            window.append(measurements)
            report_progress(step)
            show_progress(step, history[-1])

            if step % config.log_every_steps == 0 or step == total_steps:
                result["train"] = _mean(window)
                writer.write_scalars(step, {f"train/{k}": v for k, v in result["train"].items()})
                window = []
            if config.eval_every_steps and (step % config.eval_every_steps == 0 or step == total_steps):
                with report_progress.timed("eval"):
                    result["eval"] = evaluate(state)
                writer.write_scalars(step, {f"val/{k}": v for k, v in result["eval"].items()})
                if jax.process_index() == 0:  # the learning curve, kept across resumes
                    with (epath.Path(workdir) / EVAL_HISTORY).open("a") as f:
                        f.write(json.dumps({"step": step, **result["eval"]}) + "\n")
            preempted = notice.received if jax.process_count() == 1 else ckpt.manager.reached_preemption(step)
            if preempted or step == total_steps or ckpt.should_save(step):
                ckpt.save(step, state, train_iter, force=True)
            # Samples after the save: host code that may fail must not cost the checkpoint.
            if (config.sample_every_steps and step % config.sample_every_steps == 0) or step == total_steps:
                stage.periodic_eval(state, writer, step, workdir)
            if preempted:
                result["preempted"] = True
                logging.warning("Stopped by preemption at step %d (checkpoint saved).", step)
                break
            writer.flush()

    # ==== Finish =================================================================================
    writer.flush()
    result.update(step=step, history=history)
    if jax.process_index() == 0:
        (epath.Path(workdir) / "result.json").write_text(json.dumps(
            {k: v for k, v in result.items() if k != "history"} | {"first": history[0] if history else {}}, indent=2))
    result["state"] = state
    return result


def _finished_result(workdir: str, total_steps: int) -> dict[str, Any] | None:
    """The stored ``result.json`` of a run that reached ``total_steps`` with its checkpoint, else None."""
    path = epath.Path(workdir) / "result.json"
    try:
        stored = json.loads(path.read_text())
        step = int(stored["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None  # no result yet, or an unreadable one: run (or resume) normally
    if step < total_steps or not (epath.Path(workdir) / "checkpoints" / str(step)).is_dir():
        return None
    return stored


def _fill_workdir(config: ml_collections.ConfigDict, workdir: str) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict(config.to_dict())  # an unlocked copy
    for key, value in config.items():
        if isinstance(value, ml_collections.ConfigDict):
            config[key] = _fill_workdir(value, workdir)
        elif isinstance(value, str) and "{workdir}" in value:
            config[key] = value.replace("{workdir}", workdir)
    return config


def run_pipeline(config: ml_collections.ConfigDict, workdir: str) -> dict[str, dict[str, Any]]:
    """Runs ``config.pipeline[name]`` for each name of ``config.order``, in ``workdir/name``.

    ``{workdir}`` in any string of a step's config becomes ``workdir`` (so a step can name the
    folder of an earlier one). A finished step is resumed at its last step, i.e. skipped.
    A step whose ``stage`` is "evaluation" evaluates an earlier step's model and writes its
    results into ``workdir`` itself (`mavilt_jax.evaluation.pipeline_eval`). The wall time of
    every step is shown at the end and kept in ``workdir/pipeline_timings.json``.
    """
    results, timings = {}, {}
    start = time.time()
    for i, name in enumerate(config.order):
        step_config = _fill_workdir(config.pipeline[name], workdir)
        logging.info("Pipeline step %s in %s/%s.", name, workdir, name)
        t0 = time.time()
        with progress.context(f"[{i + 1}/{len(config.order)} {name}]"):
            if step_config.stage == "evaluation":
                from mavilt_jax.evaluation import pipeline_eval

                filled = ml_collections.ConfigDict({k: _fill_workdir(config.pipeline[k], workdir) for k in config.order})
                with xla_optimizations(step_config):
                    result = pipeline_eval.pipeline_step(step_config, filled, workdir)
                results[name] = {"bars": result.get("bars", {})}
            else:
                result = train_and_evaluate(step_config, os.path.join(workdir, name))
                results[name] = {k: v for k, v in result.items() if k not in ("state", "history")}
        timings[name] = round(time.time() - t0, 1)
        if results[name].get("preempted"):
            # The step stopped early (SIGTERM, preemption): the later steps would start from an
            # unfinished model, so the pipeline stops here; the same command resumes it.
            progress.show(f"[{i + 1}/{len(config.order)} {name}] stopped at step {results[name].get('step')} "
                          f"(checkpoint saved); rerun the same command to resume")
            results["preempted"] = {"step_name": name, "step": results[name].get("step")}
            return results
        progress.show(f"[{i + 1}/{len(config.order)} {name}] done in {progress.format_duration(timings[name])}")
    timings["total"] = round(time.time() - start, 1)
    progress.show("pipeline finished: " + ", ".join(f"{k} {progress.format_duration(v)}" for k, v in timings.items()))
    if jax.process_index() == 0:
        (epath.Path(workdir) / "pipeline_timings.json").write_text(json.dumps(timings, indent=2))
    return results

