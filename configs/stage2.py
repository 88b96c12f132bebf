"""Stage 2, instruction tuning with task-adaptive templates (Eq. 8-10), from stage 1.

  python -m mavilt_jax.main --config=configs/stage2.py:runlocal,stage1=/tmp/mavilt/stage1,tokenizer=/tmp/mavilt/tokenizer --workdir=/tmp/mavilt/stage2

Same variants as stage 1 plus ``stage1=DIR`` (the stage-1 workdir, ``init_from``). The loss
weights must equal stage 1's where they decide what ``frozen`` holds (lambda_reg > 0: the
anchor; lambda_feat > 0: phi), since the frozen arrays are taken from stage 1 as they are.
"""

from __future__ import annotations

import ml_collections

from configs import common
from configs import stage1


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = common.parse_arg(arg, runlocal=False, model="cpu", stage1="", tokenizer="", phi="", recon=-1.0,
                           reg=-1.0, steps=0, res=0)
    variant = ",".join(f"{k}={v}" for k, v in arg.items() if k not in ("stage1", "runlocal") and v not in ("", 0, -1.0))
    config = stage1.get_config(("runlocal," if arg.runlocal else "") + variant)
    config.stage = "stage2"
    config.init_from = arg.stage1
    config.model.pretrained = ""
    config.optimizer.learning_rate = config.optimizer.learning_rate / 3
    config.total_steps = config.total_steps // 2 if not arg.steps else arg.steps
    return config
