"""Missing stage inputs are named, one line each, with the command that makes them (no training:
fake workdirs hold only what the checks read, config.json and a checkpoint step folder)."""

from __future__ import annotations

import json

import ml_collections
import pytest

from mavilt_jax import prerequisites
from mavilt_jax.prerequisites import MissingPrerequisite


def _workdir(path, stage: str, checkpoint: bool = True):
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"stage": stage}))
    if checkpoint:
        (path / "checkpoints" / "3").mkdir(parents=True)
    return str(path)


def _stage_config(stage: str, **fields) -> ml_collections.ConfigDict:
    base = dict(stage=stage, tokenizer_checkpoint="", text_checkpoint="", phi_checkpoint="", init_from="",
                model=dict(pretrained=""), loss=dict(lambda_feat=0.0, lambda_recon=0.1))
    base.update(fields)
    return ml_collections.ConfigDict(base)


def _message(config, workdir, **kw) -> str:
    with pytest.raises(MissingPrerequisite) as info:
        prerequisites.check(config, str(workdir), **kw)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_stage1_without_a_vqgan_names_the_vqgan_command(tmp_path):
    message = _message(_stage_config("stage1"), tmp_path / "s1", runlocal=True)
    assert message.startswith("stage1: needs a trained VQ-GAN (tokenizer=DIR, none given)")
    vqgan_file = prerequisites._config_file("vqgan")
    assert message.endswith(f"make it with: python -m mavilt_jax.main --config={vqgan_file}:runlocal,"
                            "phi=/tmp/mavilt/cxr_encoder --workdir=/tmp/mavilt/" + vqgan_file[8:-3])


def test_stage1_inputs_of_the_wrong_kind(tmp_path):
    text = _workdir(tmp_path / "text_pretrain", "text_pretrain")
    vq = _workdir(tmp_path / "vq", "tokenizer")
    # A text-pretraining workdir given as the VQ-GAN.
    message = _message(_stage_config("stage1", tokenizer_checkpoint=text), tmp_path / "s1", runlocal=True)
    assert f"tokenizer={text} is a text_pretrain workdir, not a trained VQ-GAN" in message
    # The VQ-GAN is fine, the text-pretraining folder does not exist: its command, into that folder.
    missing = str(tmp_path / "nowhere" / "text_pretrain")
    message = _message(_stage_config("stage1", tokenizer_checkpoint=vq, text_checkpoint=missing), tmp_path / "s1",
                       runlocal=True)
    assert message == (f"stage1: text={missing}: no such directory (a text-pretraining workdir); make it with: "
                       f"python -m mavilt_jax.main --config=configs/text_pretrain.py:runlocal --workdir={missing}")
    # Neither text=DIR nor a pretrained LLM at CPU size.
    message = _message(_stage_config("stage1", tokenizer_checkpoint=vq), tmp_path / "s1", runlocal=True)
    assert "needs a text-pretrained LLM (text=DIR) or a pretrained one" in message
    assert message.endswith("--config=configs/text_pretrain.py:runlocal --workdir=/tmp/mavilt/text_pretrain")
    # All there: no error.
    prerequisites.check(_stage_config("stage1", tokenizer_checkpoint=vq, text_checkpoint=text), str(tmp_path / "s1"))


def test_a_run_without_a_checkpoint_and_a_workdir_of_another_stage(tmp_path):
    vq = _workdir(tmp_path / "vq", "vqgan")
    stage1 = _workdir(tmp_path / "stage1", "stage1", checkpoint=False)
    message = _message(_stage_config("stage2", tokenizer_checkpoint=vq, init_from=stage1), tmp_path / "s2",
                       runlocal=True)
    assert message.startswith(f"stage2: stage1={stage1} holds no checkpoint yet (a stage-1 workdir); finish it with: "
                              "python -m mavilt_jax.main --config=configs/stage1.py:runlocal,"
                              f"text={tmp_path}/text_pretrain,")
    # stage 2 pointed at the stage-1 workdir as its own --workdir would resume the wrong checkpoint.
    message = _message(_stage_config("stage2", tokenizer_checkpoint=vq, init_from=stage1), stage1)
    assert message.startswith(f"stage2: --workdir={stage1} holds a stage1 run; give stage2 a workdir of its own: "
                              f"python -m mavilt_jax.main --config=configs/stage2.py:stage1={tmp_path}/stage1,")


def test_pretrained_directory_without_weights(tmp_path):
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    message = _message(_stage_config("text_pretrain", model=dict(pretrained=str(folder))), tmp_path / "t")
    assert message == (f"text_pretrain: model.pretrained={folder} has no *.safetensors weights; make it with: "
                       f"huggingface-cli download HuggingFaceTB/SmolLM2-135M --local-dir {folder}")
    (folder / "model.safetensors").write_bytes(b"")
    prerequisites.check(_stage_config("text_pretrain", model=dict(pretrained=str(folder))), str(tmp_path / "t"))


def test_pipeline_steps_may_use_the_folders_of_earlier_steps(tmp_path):
    pipeline = ml_collections.ConfigDict(dict(stage="pipeline", order=("vq", "s1"), pipeline=dict(
        vq=dict(stage="tokenizer", phi=dict(checkpoint=""), loss=dict(lambda_feat=0.0)),
        s1=_stage_config("stage1", tokenizer_checkpoint="{workdir}/vq", text_checkpoint="{workdir}/text").to_dict())))
    message = _message(pipeline, tmp_path)
    assert message.startswith(f"stage1: text={tmp_path}/text: no such directory")  # vq is made by the step before
