"""Configs: variant strings and Python calls reach the config field by field, unknown keys raise."""

from __future__ import annotations

import pytest

from configs import common, cxr_encoder, demo, stage1, stage2, text_pretrain, tokenizer, vqgan
from mavilt_jax import testing


def test_zero_variant_values_reach_stage2():
    c = stage2.get_config("recon=0,reg=0")
    assert (c.loss.lambda_recon, c.loss.lambda_reg) == (0.0, 0.0)
    c = stage2.get_config("runlocal,recon=0.5,reg=0,steps=0,res=128")
    assert (c.loss.lambda_recon, c.loss.lambda_reg, c.total_steps, c.data.builder_config) == (0.5, 0.0, 0, "r128")
    # Left out: stage 1's defaults, stage 2's own step count (half of stage 1's).
    c = stage2.get_config("runlocal")
    assert (c.loss.lambda_recon, c.loss.lambda_reg, c.total_steps) == (0.1, 1e-4, 100)
    assert stage2.config(reg=0.0).loss.lambda_reg == 0.0


@pytest.mark.parametrize("module", [cxr_encoder, vqgan, text_pretrain, stage1, stage2, demo])
def test_unknown_variants_raise_with_the_known_ones(module):
    with pytest.raises(ValueError, match=r"unknown config variant 'modle'; known: \[.*'steps'"):
        module.get_config("modle=7b")
    with pytest.raises(ValueError, match="unknown config variant 'no_such'"):
        module.get_config("no_such")


def test_variant_values_are_typed():
    with pytest.raises(ValueError, match="needs a value"):
        stage1.get_config("model")
    with pytest.raises(ValueError, match="expected int"):
        stage1.get_config("steps=many")
    with pytest.raises(ValueError, match="expected true or false"):
        vqgan.get_config("clinical=maybe")
    assert vqgan.get_config("clinical=False,phi=/p").loss.lambda_grad == 0.0


def test_python_overrides_set_fields_and_reject_unknown_ones():
    c = stage1.config(runlocal=True, total_steps=5, **{"optimizer.learning_rate": 1e-4, "loss.lambda_reg": 0.0})
    assert (c.total_steps, c.optimizer.learning_rate, c.loss.lambda_reg) == (5, 1e-4, 0.0)
    with pytest.raises(KeyError, match=r"'optimizer.lr'.*known in optimizer: \[.*'learning_rate'"):
        stage1.config(**{"optimizer.lr": 1e-4})
    with pytest.raises(KeyError, match="'modle'"):
        stage1.config(modle="7b")


def test_vqgan_runlocal_keeps_the_vqgan_optimizer():
    for c in (vqgan.get_config("runlocal"), demo.get_config("steps=2").pipeline.vqgan):
        o = c.optimizer
        assert (o.b1, o.b2, o.weight_decay, o.grad_clip_norm, o.learning_rate) == (0.5, 0.9, 0.0, 0.0, 1e-3)


def test_demo_variants():
    c = demo.get_config("steps=3,model=tiny")
    assert {c.pipeline[s].total_steps for s in c.order if "total_steps" in c.pipeline[s]} == {3}
    assert c.pipeline.stage2.model.hidden_size == common.LLM_SIZES["tiny"]["hidden_size"]
    c = demo.get_config("model=cpu")
    assert c.pipeline.stage2.model.hidden_size == common.LLM_SIZES["cpu"]["hidden_size"]
    assert c.pipeline.stage2.init_from == "{workdir}/stage1"
    # Stages 1-2 of the main job read the 20,000-study build, the rest (and every smoke run) r64's.
    for variant, large in (("model=cpu", True), ("steps=3,model=tiny", True), ("smoke", False)):
        p = demo.get_config(variant).pipeline
        names = {s: p[s].data.builder_config for s in ("cxr_encoder", "judge", "vqgan", "stage1", "stage2")}
        assert names == dict(cxr_encoder="r64", judge="r64", vqgan="r64", stage1="r64_large" if large else "r64",
                             stage2="r64_large" if large else "r64"), variant


def test_one_tiny_size():
    model = common.llm_config("tiny")
    llm = testing.tiny_llm_config()
    for field, value in common.LLM_SIZES["tiny"].items():
        assert getattr(llm, field) == value == model[field], field


def test_tokenizer_config_is_a_deprecated_alias_of_vqgan():
    with pytest.warns(DeprecationWarning, match="configs/vqgan.py"):
        old = tokenizer.get_config("runlocal,phi=/p")
    assert old.to_dict() == vqgan.get_config("runlocal,phi=/p").to_dict() and old.stage == "vqgan"
