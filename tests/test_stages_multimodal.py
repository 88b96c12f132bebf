"""Stage 1 / stage 2 step pieces, with values: code slots, the masked cross-entropy, L_recon
(zero when the model is certain of the true codes, finite with gradients otherwise), and the
weight anchor (lambda_reg > 0 keeps the weights nearer the pretrained ones)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import stage1 as stage1_config
from configs import stage2 as stage2_config
from mavilt_jax import losses
from mavilt_jax.data import phantoms, templates
from mavilt_jax.data.vocab import BPE_EOS, ExtendedVocab, VocabLayout, train_bpe
from mavilt_jax.stages import lm, multimodal
from mavilt_jax.stages.text_pretrain import synthetic_report_texts


@pytest.fixture(scope="module", autouse=True)
def fast_compile():
    """Tiny models: compile time dominates; XLA's optimisations do not change these numerics."""
    previous = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", previous)


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory):
    """A "text-pretraining workdir" holding only the vocabulary (the LLM stays at its init)."""
    d = tmp_path_factory.mktemp("text")
    tok = train_bpe(synthetic_report_texts(200, 0), 300)
    ExtendedVocab(tok, codebook_size=0, codes_per_image=0, eos_token=BPE_EOS).save(d / lm.VOCAB_DIR)
    return d


def make_stage(text_dir, tmp_path, *, recon=0.0, reg=0.0, cls=multimodal.Stage1, res=32, normalization="tokens",
               vqa_turns=1, task_weights=None):
    config = stage1_config.get_config(f"runlocal,model=tiny,text={text_dir},recon={recon},reg={reg},res={res}")
    config.loss.task_normalization = normalization
    config.sequence.vqa_turns = vqa_turns
    if task_weights is not None:
        config.sequence.task_weights = task_weights
    config.vqgan.model.update(channel_multipliers=(1, 2, 2, 4), base_channels=8, embedding_dim=8, codebook_size=32,
                              norm_groups=4)  # 32 px / 8 -> 4 x 4 = 16 codes
    config.vqgan.allow_random = True  # no VQ-GAN training in these tests
    config.sequence.max_len = 160
    config.optimizer.learning_rate = 1e-2
    config.optimizer.warmup_steps = 0
    stage = cls(config)
    stage.setup(str(tmp_path))
    return stage


def init(stage):
    """The state as the loop makes it: logical-axis boxes removed."""
    return nn.unbox(jax.jit(stage.init_state)(jax.random.key(0)))


def batch_of(stage, n=2, seed=0):
    rng = np.random.default_rng(seed)
    examples = []
    for i in range(n):
        study = phantoms.generate_study(seed, i, resolution=32)
        study["image"] = study["image"][..., None]
        examples.append(stage.preprocess(study, rng))
    return {k: jnp.stack([e[k] for e in examples]) for k in examples[0]}


def test_zeros_like_init_gives_the_initialisers_tree_without_running_it():
    """The placeholders for frozen arrays that a checkpoint replaces: the tree, shapes and dtypes
    (and logical-axis boxes) of a Flax init, all zeros; the initialiser is traced, never run."""
    from mavilt_jax.stages.base import zeros_like_init

    module = nn.Sequential([nn.Dense(3, kernel_init=nn.with_logical_partitioning(nn.initializers.ones, ("a", "b"))),
                            nn.Dense(2, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)])
    init = lambda: module.init(jax.random.key(0), jnp.ones((1, 5)))["params"]  # noqa: E731
    expected = init()
    calls = []
    got = zeros_like_init(lambda: calls.append(1) or init())
    assert len(calls) == 1  # traced once by jax.eval_shape
    assert jax.tree.structure(got) == jax.tree.structure(expected)
    for g, e in zip(jax.tree.leaves(got), jax.tree.leaves(expected), strict=True):
        assert isinstance(g, jax.Array) and g.shape == e.shape and g.dtype == e.dtype and not np.any(np.asarray(g))
    assert nn.get_partition_spec(got)["layers_0"]["kernel"] == jax.sharding.PartitionSpec("a", "b")


def test_fill_code_slots_matches_a_loop():
    layout = VocabLayout(text_vocab_size=10, codebook_size=5, codes_per_image=3, eos_id=0)
    ids = np.array([[1, 10, 10, 2, 10, 3], [1, 2, 3, 4, 5, 6], [10, 4, 10, 10, 17, 18]], np.int32)
    codes = np.array([[4, 0, 2], [1, 1, 1], [3, 2, 1]], np.int32)
    got = np.asarray(multimodal.fill_code_slots(jnp.asarray(ids), jnp.asarray(codes), layout))
    want = ids.copy()
    for r in range(3):
        slots = [j for j in range(6) if 10 <= ids[r, j] < 15]
        if len(slots) == 3:
            want[r, slots] = codes[r] + 10
    np.testing.assert_array_equal(got, want)
    assert got[1].tolist() == ids[1].tolist()  # no image span: unchanged


def test_previous_valid_rows_skips_padding_like_a_loop():
    for valid in ([1, 1, 1, 0], [1, 0, 1, 1, 0, 1], [0, 1], [1], [1, 1, 0, 0, 0]):
        valid = np.array(valid, bool)
        rows = [i for i in range(len(valid)) if valid[i]]
        want = list(range(len(valid)))
        for j, i in enumerate(rows):
            want[i] = rows[j - 1]  # the previous valid row, cyclically
        assert np.asarray(multimodal.previous_valid_rows(jnp.asarray(valid))).tolist() == want, valid


def test_masked_cross_entropy_by_hand():
    logits = jnp.log(jnp.array([[[0.5, 0.25, 0.25], [0.1, 0.8, 0.1]]]))
    total, count = lm.masked_cross_entropy(logits, jnp.array([[0, 1]]), jnp.array([[1.0, 0.0]]))
    assert float(total) == pytest.approx(-np.log(0.5), rel=1e-6) and float(count) == 1.0


def test_sequence_mean_by_hand():
    # Row 0 scores one token (p = 0.5), row 1 three (p = 0.8, 0.25, 0.1), row 2 none: each scored
    # row weighs the same, whatever its length: (-log 0.5 + (-log 0.8 - log 0.25 - log 0.1) / 3) / 2.
    p = np.array([[[0.5, 0.25, 0.25]] * 3, [[0.1, 0.8, 0.1], [0.25, 0.5, 0.25], [0.1, 0.1, 0.8]],
                  [[1 / 3] * 3] * 3])
    targets = jnp.array([[0, 0, 0], [1, 0, 0], [0, 0, 0]])
    mask = jnp.array([[1.0, 0, 0], [1, 1, 1], [0, 0, 0]])
    ce = -np.log(np.take_along_axis(p, np.asarray(targets)[..., None], -1)[..., 0])
    got = lm.sequence_mean(jnp.asarray(ce), mask)
    want = (-np.log(0.5) + (-np.log(0.8) - np.log(0.25) - np.log(0.1)) / 3) / 2
    assert float(got) == pytest.approx(want, rel=1e-6)


def test_segment_mean_by_hand():
    # Row 0 scores two separate tokens (two answers), row 1 one run of two tokens, row 2 a run of
    # three at its end, row 3 nothing: each run weighs the same, whatever its row and length.
    ce = jnp.array([[1.0, 7.0, 2.0, 9.0], [3.0, 5.0, 9.0, 9.0], [9.0, 6.0, 6.0, 9.0], [9.0, 9.0, 9.0, 9.0]])
    mask = jnp.array([[1.0, 0, 1, 0], [1, 1, 0, 0], [0, 1, 1, 1], [0, 0, 0, 0]])
    want = (1.0 + 2.0 + (3.0 + 5.0) / 2 + (6.0 + 6.0 + 9.0) / 3) / 4
    assert float(lm.segment_mean(ce, mask)) == pytest.approx(want, rel=1e-6)
    assert float(jax.jit(lm.segment_mean)(ce, mask)) == pytest.approx(want, rel=1e-6)


@pytest.mark.parametrize("normalization", ["tokens", "sequences", "segments"])
def test_task_loss_normalization_matches_numpy(text_dir, tmp_path, normalization):
    """L_task from the model's own logits, recomputed with numpy's log-softmax: a mean over all
    scored tokens ("tokens"), over each row's tokens, then over rows ("sequences"), or over each
    run of consecutive scored tokens, then over runs ("segments")."""
    # VQA conversations of up to 4 answers, so that rows hold several runs.
    stage = make_stage(text_dir, tmp_path, cls=multimodal.Stage2, normalization=normalization, vqa_turns=4)
    state = init(stage)
    # Initial weights give every token a loss of about log V, which no averaging tells apart:
    # random weights of a larger scale make the per-token losses (and so the two means) differ.
    leaves, tree = jax.tree.flatten(state.params)
    keys = jax.random.split(jax.random.key(7), len(leaves))
    params = tree.unflatten([x + 0.5 * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)])
    batch = batch_of(stage, n=4, seed=3)
    seq = stage.prepare_batch(state.frozen, batch)
    _, m = stage.objective(params, state.frozen, seq)
    logits = np.asarray(stage.model.apply({"params": params}, seq["tokens"], seq["positions"])[0], np.float64)
    logp = logits - logits.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    ce = -np.take_along_axis(logp, np.asarray(seq["targets"])[..., None], -1)[..., 0]
    mask = np.asarray(seq["loss_mask"], np.float64)
    image = np.asarray(seq["is_image_target"], bool)
    token_mean = (ce * mask).sum() / mask.sum()
    rows = np.flatnonzero(mask.sum(-1) > 0)
    row_mean = np.mean([(ce[r] * mask[r]).sum() / mask[r].sum() for r in rows])
    runs = []  # (row, start, stop) of every run of scored tokens, found by a plain scan
    for r in range(mask.shape[0]):
        t = 0
        while t < mask.shape[1]:
            if mask[r, t] > 0:
                start = t
                while t < mask.shape[1] and mask[r, t] > 0:
                    t += 1
                runs.append((r, start, t))
            t += 1
    run_mean = np.mean([ce[r, a:b].mean() for r, a, b in runs])
    # 100x the tolerance below: the batch tells the three apart.
    assert abs(token_mean - row_mean) > 1e-3 * token_mean and abs(run_mean - row_mean) > 1e-3 * row_mean
    want = {"tokens": token_mean, "sequences": row_mean, "segments": run_mean}[normalization]
    assert float(m["task_loss"]) == pytest.approx(want, rel=1e-5)
    assert float(m["text_ce"]) == pytest.approx((ce * mask * ~image).sum() / (mask * ~image).sum(), rel=1e-5)


def test_studies_without_a_configured_task_are_skipped_in_training(text_dir, tmp_path):
    """A VQA-only stage 2 over studies of which some have no questions: those leave the training
    stream (the others all arrive), score nothing in evaluation, and a source with none usable
    stops the run before training."""
    from mavilt_jax.data import pipeline
    from mavilt_jax.stages.base import StageDataError

    stage = make_stage(text_dir, tmp_path, cls=multimodal.Stage2, task_weights={"vqa": 1.0})
    studies = []
    for i in range(6):
        study = phantoms.generate_study(5, i, resolution=32)
        study["image"] = study["image"][..., None]
        if i % 2:
            study["vqa"] = []
        studies.append(study)
    assert stage.preprocess(studies[1], np.random.default_rng(0)) is None
    ds = pipeline.make_train_dataset(studies, stage.preprocess, batch_size=1, seed=0, shard_index=0, shard_count=1,
                                     shuffle=False, num_epochs=1)
    arrived = [b for b in ds]
    assert len(arrived) == 3 and all(int(b["task_id"][0]) == templates.TASKS.index("vqa") for b in arrived)
    assert stage.eval_preprocess(studies[1])["loss_mask"].sum() == 0
    assert stage.eval_preprocess(studies[0])["loss_mask"].sum() > 0
    stage.check_train_source(studies)  # some usable: trains on those
    with pytest.raises(StageDataError, match="none of the first 3 training studies"):
        stage.check_train_source(studies[1::2])


def test_unknown_task_normalization_raises(text_dir, tmp_path):
    with pytest.raises(ValueError, match="task_normalization"):
        make_stage(text_dir, tmp_path, normalization="batch")


def test_stage1_batch_has_both_directions_and_real_codes(text_dir, tmp_path):
    stage = make_stage(text_dir, tmp_path)
    state = init(stage)
    batch = batch_of(stage)
    seq = jax.jit(stage.prepare_batch)(state.frozen, batch)
    codes = np.asarray(stage.vqgan.apply({"params": state.frozen["vqgan"]}, batch["image"], method="encode"))
    lay = stage.layout
    for r in range(4):  # rows: (i2r, r2i) per example; both carry the example's codes in order
        toks = np.asarray(seq["tokens"][r])
        got = toks[(toks >= lay.image_offset) & (toks < lay.special_offset)] - lay.image_offset
        np.testing.assert_array_equal(got, codes[r // 2])
    # Image targets are exactly the codes of the report -> image rows.
    assert np.asarray(seq["is_image_target"][0]).sum() == 0
    assert np.asarray(seq["is_image_target"][1]).sum() == lay.codes_per_image


def test_recon_zero_when_certain_and_has_gradients_otherwise(text_dir, tmp_path):
    stage = make_stage(text_dir, tmp_path, recon=1.0)
    state = init(stage)
    seq = jax.jit(stage.prepare_batch)(state.frozen, batch_of(stage))
    B, L = seq["tokens"].shape
    # Logits certain of every target: the expected codebook vectors are the true ones.
    certain = 60.0 * jax.nn.one_hot(seq["targets"], stage.layout.size)
    loss, terms = jax.jit(stage.recon_loss)(state.frozen, certain, seq)
    assert float(loss) == pytest.approx(0.0, abs=1e-5)
    # Random logits: finite, positive, and its gradient reaches the LLM parameters.
    def recon_of(params):
        logits, _ = stage.model.apply({"params": params}, seq["tokens"], seq["positions"])
        return stage.recon_loss(state.frozen, logits, seq)[0]

    value, grads = jax.jit(jax.value_and_grad(recon_of))(state.params)
    assert np.isfinite(float(value)) and float(value) > 0
    head = grads["lm_head"]["kernel"]
    off, K = stage.layout.image_offset, stage.layout.codebook_size
    assert float(jnp.abs(head[:, off:off + K]).max()) > 0  # image-code columns get gradient
    assert float(jnp.abs(head[:, :off]).max()) == 0  # text columns do not (softmax restricted to codes)


def _distance_after(stage, steps=4):
    state = init(stage)
    # The init is the "pretrained" model here: anchor = its pretrained rows.
    anchor = losses.make_anchor(state.params, stage.layout.text_vocab_size, dtype=jnp.float32)
    step = jax.jit(stage.train_step)
    for i in range(steps):
        state, m = step(state, batch_of(stage, seed=i), jax.random.key(i))
    return float(losses.weight_anchor_loss(state.params, anchor))


def test_weight_anchor_keeps_weights_nearer_pretrained(text_dir, tmp_path):
    free = _distance_after(make_stage(text_dir, tmp_path / "a", reg=0.0))
    anchored = _distance_after(make_stage(text_dir, tmp_path / "b", reg=1.0))
    assert 0 < anchored < 0.7 * free, (anchored, free)


def test_stage2_instruction_batch(text_dir, tmp_path):
    stage = make_stage(text_dir, tmp_path, cls=multimodal.Stage2)
    state = init(stage)
    batch = batch_of(stage, n=3)
    assert batch["tokens"].shape == (3, 160)
    _, m = jax.jit(stage.train_step)(state, batch, jax.random.key(0))
    assert np.isfinite(float(m["loss"])) and float(m["scored_tokens"]) > 0


def test_stage2_config_task_mix_reaches_the_builder(text_dir, tmp_path):
    """configs/stage2.py's task weights are what the stage samples with: over 1,200 studies that
    support every task, VQA is drawn 2 / (1 + 1 + 1 + 1 + 2) = 1/3 of the time (binomial sd 0.014)."""
    config = stage2_config.config(runlocal=True, model="tiny", res=32, text_checkpoint=str(text_dir))
    config.vqgan.model.update(channel_multipliers=(1, 2, 2, 4), base_channels=8, embedding_dim=8, codebook_size=32,
                              norm_groups=4)
    config.vqgan.allow_random = True
    stage = multimodal.Stage2(config)
    stage.setup(str(tmp_path))
    assert dict(stage.builder.config.task_weights) == {
        "report": 1.0, "findings": 1.0, "impression": 1.0, "report_to_image": 1.0, "vqa": 2.0}
    assert stage.task_normalization == "segments"
    study = phantoms.generate_study(0, 3, resolution=32)
    study["findings"], study["impression"] = "Heart size is normal.", "No acute process."
    assert study["vqa"]
    rng = np.random.default_rng(0)
    codes = np.zeros((stage.layout.codes_per_image,), np.int32)
    tasks = [int(stage.builder.stage2_example(study, codes, rng)["task_id"]) for _ in range(1200)]
    share = np.mean(np.asarray(tasks) == templates.TASKS.index("vqa"))
    assert abs(share - 1 / 3) < 0.05, share


def test_stage2_config_vqa_turns_reaches_the_builder(text_dir, tmp_path):
    """``sequence.vqa_turns`` of the stage-2 config is what the stage's VQA examples ask: over
    studies with 3+ questions, between 2 and vqa_turns answers each (2 always fit in 384 tokens);
    its findings examples go on with 1 to vqa_turns of the questions (``report_followups``)."""
    config = stage2_config.config(runlocal=True, model="tiny", res=32, text_checkpoint=str(text_dir),
                                  **{"sequence.vqa_turns": 3, "sequence.max_len": 384})
    config.vqgan.model.update(channel_multipliers=(1, 2, 2, 4), base_channels=8, embedding_dim=8, codebook_size=32,
                              norm_groups=4)
    config.vqgan.allow_random = True
    stage = multimodal.Stage2(config)
    stage.setup(str(tmp_path))
    assert stage.builder.config.vqa_turns == 3
    codes = np.zeros((stage.layout.codes_per_image,), np.int32)
    rng, counts, followups = np.random.default_rng(0), [], []
    for i in range(40):
        study = phantoms.generate_study(0, i, resolution=32)
        if len(study["vqa"]) < 3:
            continue
        out = stage.builder.stage2_example(study, codes, rng, task="vqa")
        counts.append(int(np.sum((out["targets"] == stage.layout.eos_id) & (out["loss_mask"] > 0))))
        # report_followups (on in the stage-2 config): the findings, then 1 to vqa_turns answers
        out = stage.builder.stage2_example(study, codes, rng, task="findings")
        followups.append(int(np.sum((out["targets"] == stage.layout.eos_id) & (out["loss_mask"] > 0))) - 1)
    assert counts and min(counts) >= 2 and max(counts) == 3, counts
    assert stage.builder.config.report_followups and min(followups) >= 1 and max(followups) <= 3, followups


def test_stage2_validation_spreads_the_tasks_over_studies_and_repeats_them(text_dir, tmp_path):
    """Validation draws each study's task from its own study id: over 120 studies every task
    appears, VQA about as often as in training (binomial sd <= 0.046), and a second pass gives the
    same sequences. (One generator seeded alike for every study gave all of them the same task.)"""
    stage = make_stage(text_dir, tmp_path, cls=multimodal.Stage2)
    studies = [phantoms.generate_study(1, i, resolution=32) for i in range(120)]
    for study in studies:
        study["image"] = study["image"][..., None]
        study["findings"], study["impression"] = "Heart size is normal.", "No acute process."
    first = [stage.eval_preprocess(study) for study in studies]
    tasks = np.asarray([int(e["task_id"]) for e in first])
    assert set(tasks.tolist()) == set(range(len(templates.TASKS))), np.bincount(tasks)
    weights = dict(stage.builder.config.task_weights)
    share = weights["vqa"] / sum(weights.values())  # the training share of VQA
    assert abs(np.mean(tasks == templates.TASKS.index("vqa")) - share) < 0.15, (share, np.bincount(tasks))
    again = [stage.eval_preprocess(study) for study in studies]
    assert all(np.array_equal(a["tokens"], b["tokens"]) for a, b in zip(first, again))


def test_stage1_recon_on_report_to_image_rows_equals_all_rows(text_dir, tmp_path):
    """Stage 1 decodes only the report -> image rows; the value and gradient equal the all-rows
    computation (rows without an image target contribute zero there)."""
    stage = make_stage(text_dir, tmp_path, recon=1.0)
    state = init(stage)
    seq = jax.jit(stage.prepare_batch)(state.frozen, batch_of(stage, n=3))

    def recon_of(params, rows):
        stage.recon_rows = rows
        logits, _ = stage.model.apply({"params": params}, seq["tokens"], seq["positions"])
        return stage.recon_loss(state.frozen, logits, seq)[0]

    # jitted (the rows are fixed at trace time): op by op, the decoder's gradient took ~100 s on CPU
    fast, fast_grads = jax.jit(jax.value_and_grad(lambda p: recon_of(p, slice(1, None, 2))))(state.params)
    slow, slow_grads = jax.jit(jax.value_and_grad(lambda p: recon_of(p, None)))(state.params)
    stage.recon_rows = multimodal.Stage1.recon_rows
    assert float(slow) > 0 and float(fast) == pytest.approx(float(slow), rel=1e-5)
    for a, b in zip(jax.tree.leaves(fast_grads), jax.tree.leaves(slow_grads)):
        # atol 1e-6: float32 sums over other row sets (one entry of 10,816 differed by 2e-7)
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("cls", [multimodal.Stage1, multimodal.Stage2])
def test_precomputed_codes_and_targets_give_the_in_step_loss_and_gradients(text_dir, tmp_path, cls):
    """The training split encoded once (`precompute_codes`: codes, and the decoding of the codes
    as L_recon's target) feeds the step the same L of Eq. 12 and the same gradients as the images
    encoded and decoded inside it; the last, short batch of the precomputation padded."""
    stage = make_stage(text_dir, tmp_path, recon=1.0, cls=cls)
    stage.precompute_batch = 2
    state = init(stage)
    studies = []
    for i in range(3):
        study = phantoms.generate_study(0, i, resolution=32)
        studies.append({**study, "image": study["image"][..., None]})
    source = stage.precompute_codes(studies, state.frozen["vqgan"])

    def batch(examples):
        out = [stage.preprocess(e, np.random.default_rng(i)) for i, e in enumerate(examples)]
        return {k: jnp.stack([e[k] for e in out]) for k in out[0]}

    in_step, precomputed = batch(studies), batch([source[i] for i in range(3)])
    assert "image" in in_step and "recon_target" in precomputed and "image" not in precomputed
    np.testing.assert_array_equal(precomputed["is_image_target"], in_step["is_image_target"])

    @jax.jit
    def loss_and_grads(b):
        return jax.value_and_grad(lambda p: stage.objective(p, state.frozen, stage.prepare_batch(state.frozen, b))[0])(
            state.params)

    (want, want_grads), (got, got_grads) = loss_and_grads(in_step), loss_and_grads(precomputed)
    assert float(got) == pytest.approx(float(want), rel=1e-6)
    for a, b in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
