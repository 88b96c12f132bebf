"""Each Table IV ablation differs from the main job's pipeline by exactly its switch."""

from __future__ import annotations

import pytest

from benchmarks import ablations
from configs import demo


@pytest.mark.parametrize("name", ablations.ABLATIONS)
def test_ablation_switch_reaches_the_config(name):
    c = ablations.ablation_config(name, "/base")
    p = c.pipeline
    assert c.order[-1] == "evaluation" and p.evaluation.judge == "/base/judge"
    stage2 = p.stage2
    if name == "no_clinical_loss":
        for step in ("vqgan", "vqgan_decoder"):
            assert p[step].loss.lambda_grad == 0.0 and p[step].loss.lambda_feat == 0.0, step
        assert p.vqgan_decoder.init_from == "{workdir}/vqgan"
        tok = "{workdir}/vqgan_decoder"
        assert stage2.tokenizer_checkpoint == tok and p.stage1.tokenizer_checkpoint == tok
    else:
        assert "vqgan" not in p and stage2.tokenizer_checkpoint == "/base/vqgan_decoder"
    if name == "no_recon":
        assert p.stage1.loss.lambda_recon == 0.0 and stage2.loss.lambda_recon == 0.0
    elif name == "no_anchor":
        assert p.stage1.loss.lambda_reg == 0.0 and stage2.loss.lambda_reg == 0.0
    else:
        assert stage2.loss.lambda_recon > 0 and stage2.loss.lambda_reg > 0
    assert stage2.sequence.fixed_instructions == (name == "fixed_instructions")
    if name == "no_stage1":
        assert "stage1" not in p and stage2.init_from == "" and stage2.text_checkpoint == "/base/text_pretrain"
    elif name == "fixed_instructions":
        assert stage2.init_from == "/base/stage1"
    else:
        assert stage2.init_from == "{workdir}/stage1" and p.stage1.text_checkpoint == "/base/text_pretrain"

    # Every arm reads the full method's training studies and validates as it does.
    full = demo.config().pipeline
    for step in ("stage1", "stage2"):
        if step in p:
            assert p[step].data.to_dict() == full[step].data.to_dict(), step
            assert p[step].eval_max_batches == full[step].eval_max_batches == 16, step

    # The smoke variant (what CI runs) compiles as the main job's smoke does; the real one optimises.
    smoke = ablations.ablation_config(name, "/base", smoke=True).pipeline
    for step in c.order:
        assert p[step].disable_most_optimizations is False
        assert smoke[step].disable_most_optimizations is True, step
        assert step == "evaluation" or smoke[step].checkpoint.async_save is False


def test_unknown_ablation_and_missing_base_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        ablations.main(["--base", str(tmp_path), "--out", str(tmp_path / "o"), "--only", "no_such"])
    assert e.value.code == 2 and "no_such" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        ablations.main(["--base", str(tmp_path), "--out", str(tmp_path / "o")])
    assert e.value.code == 2 and "results.json" in capsys.readouterr().err
