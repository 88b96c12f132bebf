"""phi: label rule, masked BCE, AUROC, features/embedding, a short training run that learns."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import cxr_encoder as cxr_encoder_config
from mavilt_jax.data import labels
from mavilt_jax.models import cxr_encoder
from mavilt_jax.stages import cxr_encoder as stage_lib

# Conv nets compile slowly on 2 cores; these tests check values, not XLA optimisations.
pytestmark = pytest.mark.usefixtures("compile_fast")


def test_label_rule():
    states = np.array([labels.POSITIVE, labels.NEGATIVE, labels.UNCERTAIN, labels.ABSENT], np.int8)
    targets, mask = stage_lib.targets_and_mask(states)
    np.testing.assert_array_equal(targets, [1, 0, 0, 0])
    np.testing.assert_array_equal(mask, [1, 1, 0, 1])  # uncertain ignored, absent = negative
    _, mask = stage_lib.targets_and_mask(states, absent_as_negative=False)
    np.testing.assert_array_equal(mask, [1, 1, 0, 0])


def test_masked_bce_hand_computed():
    logits = jnp.array([[2.0, -1.0, 5.0]])
    targets = jnp.array([[1.0, 0.0, 1.0]])
    mask = jnp.array([[1.0, 1.0, 0.0]])
    expected = (np.log1p(np.exp(-2.0)) + np.log1p(np.exp(-1.0))) / 2  # -log s(2), -log(1 - s(-1))
    np.testing.assert_allclose(stage_lib.masked_bce(logits, targets, mask), expected, rtol=1e-6)


def test_auroc_matches_pairwise_count():
    rng = np.random.default_rng(0)
    scores = np.round(rng.normal(size=60), 1)  # rounding makes ties
    targets = rng.random(60) < 0.4
    pos, neg = scores[targets], scores[~targets]
    pairwise = np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg])
    np.testing.assert_allclose(stage_lib.auroc(scores, targets), pairwise, rtol=1e-12)
    assert np.isnan(stage_lib.auroc(scores, np.zeros(60, bool)))


@pytest.mark.parametrize("arch", ["resnet", "plain"])
def test_features_and_embedding(arch):
    model = cxr_encoder.CxrEncoder(cxr_encoder.CxrEncoderConfig(arch=arch, widths=(4, 8), norm_groups=2))
    x = jax.random.uniform(jax.random.key(0), (2, 16, 16, 1), minval=-1, maxval=1)

    @jax.jit
    def run(x):
        variables = model.init(jax.random.key(1), x)
        return (variables, model.apply(variables, x), model.apply(variables, x, method=model.features),
                model.apply(variables, x, method=model.embed))

    variables, logits, feats, emb = run(x)
    assert [f.shape for f in feats] == [(2, 8, 8, 4), (2, 4, 4, 8)]
    np.testing.assert_allclose(emb, np.mean(feats[-1], axis=(1, 2)), rtol=1e-5)
    head = variables["params"]["head"]
    np.testing.assert_allclose(logits, emb @ head["kernel"] + head["bias"], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="arch"):
        cxr_encoder.CxrEncoderConfig(arch="vit")


def _square_studies(n: int, rng: np.random.Generator) -> list[dict]:
    """Finding i (of the first four) is present iff a bright square sits in quadrant i."""
    out = []
    for _ in range(n):
        image = np.full((16, 16, 1), 40, np.uint8)
        states = np.full(labels.NUM_OBSERVATIONS, labels.ABSENT, np.int8)
        for q in range(4):
            present = rng.random() < 0.5
            states[q] = labels.POSITIVE if present else labels.NEGATIVE
            if present:
                r, c = 8 * (q // 2), 8 * (q % 2)
                image[r + 2 : r + 6, c + 2 : c + 6] = 220
        out.append({"image": image, "labels": states})
    return out


def test_short_training_learns_findings():
    config = cxr_encoder_config.get_config("runlocal")
    config.model.update(image_size=16, widths=(8, 8), norm_groups=4)
    config.augment_shift = 0
    config.optimizer.warmup_steps = 0
    config.optimizer.learning_rate = 1e-2
    config.total_steps = 60
    stage = stage_lib.CxrEncoderStage(config)
    rng = np.random.default_rng(0)
    train = [stage.preprocess(s, rng) for s in _square_studies(32, rng)]
    batch = {k: np.stack([t[k] for t in train]) for k in train[0]}
    state = stage.init_state(jax.random.key(0))
    step = jax.jit(stage.train_step)
    for i in range(60):
        state, m = step(state, batch, jax.random.key(i))
        if i == 0:
            first = float(m["loss"])
    assert float(m["loss"]) < 0.5 * first
    held_out = _square_studies(32, np.random.default_rng(1))
    images = np.stack([stage.eval_preprocess(s)["image"] for s in held_out])
    scores = np.asarray(stage._predict(state.params, images))
    result = stage_lib.per_finding_auroc(scores, np.stack([s["labels"] for s in held_out]))
    assert set(result) == set(labels.OBSERVATIONS[:4])  # absent-only findings have one class: skipped
    assert min(result.values()) > 0.9, result
