"""Runs one training stage: ``python -m mavilt_jax.main --config=configs/stage1.py:runlocal --workdir=DIR``.

Overrides: ``--config.total_steps=100 --config.optimizer.learning_rate=1e-4``.
Several processes (multi-host TPU / GPU / CPU): ``jax.distributed.initialize`` is called when
``--coordinator_address`` / ``--num_processes`` / ``--process_id`` are given, or on a Cloud TPU
pod / SLURM job (``--distributed=auto``), where JAX finds them itself.
"""

from __future__ import annotations

import os
import re
import sys

# TensorFlow (read by TFDS for PNG decoding only) prints C++ INFO lines at import, among them the
# oneDNN notice; the terminal is for the run's progress.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from mavilt_jax import allocator, cli, prerequisites

_CONFIG = config_flags.DEFINE_config_file("config", None, "Stage config file (path[:variant]).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and samples.")
_DISTRIBUTED = flags.DEFINE_enum("distributed", "auto", ["auto", "on", "off"],
                                 "auto: initialise jax.distributed on TPU pods, SLURM jobs, or when an address is given.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Index of this process.")
_HEARTBEAT_TIMEOUT = flags.DEFINE_integer(
    "heartbeat_timeout_seconds", 100, "Several processes: one silent this long counts as dead and JAX stops the others.")
_ALLOCATOR = flags.DEFINE_enum(
    "allocator", "auto", ["auto", "system"],
    "auto: restart with tcmalloc preloaded when the system has it (LLM steps 1.3-1.9x faster on 2-core CPU VMs); "
    "system: the C library's malloc.")
flags.mark_flags_as_required(["config", "workdir"])


def _want_distributed() -> bool:
    if _DISTRIBUTED.value != "auto":
        return _DISTRIBUTED.value == "on"
    if _COORDINATOR.value or os.environ.get("JAX_COORDINATOR_ADDRESS"):
        return True
    in_slurm = int(os.environ.get("SLURM_NTASKS", "1")) > 1
    on_tpu_pod = bool(os.environ.get("TPU_WORKER_HOSTNAMES", "").count(","))
    return in_slurm or on_tpu_pod


def _log_to_file(workdir: str) -> None:
    """Library logs (orbax, TFDS, JAX; every level) go to ``WORKDIR/main.INFO``; the terminal shows
    the run's progress lines (`mavilt_jax.progress`) and the errors the run reports itself, one line
    each. ``--alsologtostderr`` (or ``--stderrthreshold``) shows the logs too."""
    os.makedirs(workdir, exist_ok=True)
    logging.get_absl_handler().use_absl_log_file("main", workdir)
    import logging as std_logging

    std_logging.captureWarnings(True)  # library warnings (orbax, TFDS) to the log file as well
    # A log file that cannot be written (full disk, file-size limit) must not bury the run's own
    # error under "--- Logging error ---" tracebacks.
    std_logging.raiseExceptions = False
    if not flags.FLAGS["stderrthreshold"].present:
        # Not even ERROR: a failed checkpoint write makes orbax log a traceback from each of its
        # writer threads, some after the run's own one-line error (`CheckpointSaveError`).
        flags.FLAGS.stderrthreshold = "fatal"
    import tensorflow_datasets as tfds  # its dataset-build progress bars would fill the terminal

    tfds.disable_progress_bar()


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        cli.usage_exit(f"unexpected arguments: {' '.join(argv[1:])}")
    variant = config_flags.get_config_filename(flags.FLAGS["config"]).partition(":")[2]
    try:  # before anything starts: a missing input is named with the command that makes it
        prerequisites.check(_CONFIG.value, _WORKDIR.value, runlocal="runlocal" in variant.split(","))
    except prerequisites.MissingPrerequisite as e:
        cli.usage_exit(str(e))
    # Before anything else runs: the restart (os.execve) starts the process over.
    malloc = allocator.restart_with_tcmalloc() if _ALLOCATOR.value == "auto" else allocator.in_use()
    _log_to_file(_WORKDIR.value)
    if _want_distributed():
        # CPU devices exchange collectives over gloo (no effect on TPU/GPU devices).
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                                   heartbeat_timeout_seconds=_HEARTBEAT_TIMEOUT.value)
    logging.info("Process %d of %d.", jax.process_index(), jax.process_count())
    from mavilt_jax import progress

    if jax.default_backend() == "cpu":
        why = {"auto": " (no tcmalloc found; Debian: libtcmalloc-minimal4, see README)",
               "system": " (--allocator=system)"}[_ALLOCATOR.value] if malloc == "glibc malloc" else ""
        progress.show(f"C allocator: {malloc}{why}")

    from mavilt_jax import checkpointing, locks, train  # after distributed initialisation: it creates devices lazily
    from mavilt_jax.stages.base import StageDataError

    try:
        if "pipeline" in _CONFIG.value:  # several stages in sequence (configs/demo.py)
            results = train.run_pipeline(_CONFIG.value, _WORKDIR.value)
            logging.info("Pipeline finished: %s", results)
        else:
            result = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
            logging.info("Finished at step %d: %s", result["step"], result["train"])
    except (locks.WorkdirBusyError, StageDataError) as e:  # a user error: one line, status 2
        cli.usage_exit(str(e))
    except checkpointing.CheckpointSaveError as e:  # the run stops; the message names the folder
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except Exception as e:
        if jax.process_count() == 1 or not _PEER_LOST.search(str(e)):
            raise
        # A collective failed because another process is gone. Exit now: the exit-time
        # jax.distributed.shutdown would wait at a barrier for the dead process until the heartbeat
        # timeout and then abort with a stack trace.
        print(f"error: {_peer_lost_message(e, _WORKDIR.value)}", file=sys.stderr, flush=True)
        logging.flush()
        os._exit(1)


# How a collective reports a peer that is gone: gloo (CPU) and NCCL (GPU) over TCP sockets.
_PEER_LOST = re.compile(r"(gloo|nccl).*(connection (reset|closed|refused)|closed by peer|broken pipe|timed out)",
                        re.IGNORECASE | re.DOTALL)


def _peer_lost_message(error: Exception, workdir: str) -> str:
    """One line: which process is gone (the only other one, with two), the failed collective, what to do."""
    me, count = jax.process_index(), jax.process_count()
    others = [i for i in range(count) if i != me]
    gone = f"process {others[0]}" if len(others) == 1 else f"one of processes {', '.join(map(str, others))}"
    steps = [int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit()] \
        if os.path.isdir(os.path.join(workdir, "checkpoints")) else []
    resume = f"they resume from step {max(steps)}" if steps else "no checkpoint yet, they start over"
    detail = " ".join(str(error).split())[:200]
    return (f"{gone} (of {count}) died or lost its connection (a collective failed in process {me}: {detail}); "
            f"process {me} stops too. Restart all {count} processes: {resume}.")


def run() -> None:
    app.run(main, flags_parser=cli.absl_flags_parser("workdir", __doc__))


if __name__ == "__main__":
    run()
