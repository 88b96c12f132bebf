"""The grain input pipeline: determinism, process sharding, resumable iterator state, eval cover."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from mavilt_jax.data import pipeline


def _source(n: int) -> list[dict[str, np.ndarray]]:
    return [{"index": np.int64(i), "pixels": np.full((2, 2), i, np.uint8)} for i in range(n)]


def _preprocess(example, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        "index": np.asarray(example["index"], np.int64),
        "pixels": example["pixels"].astype(np.float32) + 0.5,
        "noise": np.asarray(rng.random(), np.float32),
    }


def _eval_preprocess(example) -> dict[str, np.ndarray]:
    return {"index": np.asarray(example["index"], np.int64), "pixels": example["pixels"].astype(np.float32)}


def _take(ds, k: int) -> list[dict[str, np.ndarray]]:
    return list(itertools.islice(iter(ds), k))


def _train(n=24, **kw):
    args = dict(batch_size=4, seed=7, shard_index=0, shard_count=1)
    args.update(kw)
    return pipeline.make_train_dataset(_source(n), _preprocess, **args)


def _assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])


def test_batches_are_numpy_and_preprocessed():
    batch = _take(_train(), 1)[0]
    assert set(batch) == {"index", "pixels", "noise"}
    assert batch["pixels"].shape == (4, 2, 2) and batch["pixels"].dtype == np.float32
    # The preprocess ran on the example the index names: pixels == index + 0.5.
    np.testing.assert_array_equal(batch["pixels"][:, 0, 0], batch["index"] + 0.5)


def test_same_seed_same_batches_other_seed_other_order():
    a, b = _take(_train(seed=3), 12), _take(_train(seed=3), 12)
    _assert_batches_equal(a, b)
    c = _take(_train(seed=4), 12)
    assert not all(np.array_equal(x["index"], y["index"]) for x, y in zip(a, c))
    assert not all(np.array_equal(x["noise"], y["noise"]) for x, y in zip(a, c))


def test_each_epoch_is_a_permutation_and_reshuffled_with_new_augmentation():
    n, batch = 24, 4
    batches = _take(_train(n=n, batch_size=batch), 2 * n // batch)  # two epochs
    order = np.concatenate([b["index"] for b in batches])
    noise = np.concatenate([b["noise"] for b in batches])
    first, second = order[:n], order[n:]
    assert sorted(first) == list(range(n)) and sorted(second) == list(range(n))
    assert not np.array_equal(first, second)
    assert not np.array_equal(first, np.arange(n))
    # The same example gets a different random draw in the second epoch.
    noise_of = lambda part, nz: dict(zip(part.tolist(), nz.tolist()))
    e1, e2 = noise_of(first, noise[:n]), noise_of(second, noise[n:])
    assert all(e1[i] != e2[i] for i in range(n))


def test_no_shuffle_keeps_source_order():
    batches = _take(_train(n=8, shuffle=False, num_epochs=1), 10)
    np.testing.assert_array_equal(np.concatenate([b["index"] for b in batches]), np.arange(8))


@pytest.mark.parametrize("n, shard_count", [(24, 3), (26, 4)])
def test_process_shards_are_disjoint_equal_and_cover(n, shard_count):
    shards = []
    for shard_index in range(shard_count):
        ds = _train(n=n, batch_size=2, shard_index=shard_index, shard_count=shard_count, num_epochs=1)
        shards.append(np.concatenate([b["index"] for b in ds]).tolist())
    per_shard = n // shard_count
    assert all(len(s) == per_shard for s in shards)
    union = set().union(*map(set, shards))
    assert sum(map(len, shards)) == len(union)  # disjoint
    assert len(union) == per_shard * shard_count and n - len(union) < shard_count
    assert union == set(range(per_shard * shard_count))


def test_finite_epochs_and_remainder():
    kept = list(_train(n=10, batch_size=4, num_epochs=1))
    assert [len(b["index"]) for b in kept] == [4, 4]
    padded = list(_train(n=10, batch_size=4, num_epochs=1, drop_remainder=False))
    assert [len(b["index"]) for b in padded] == [4, 4, 2]
    assert sorted(np.concatenate([b["index"] for b in padded]).tolist()) == list(range(10))


def test_iterator_state_restores_the_same_next_batches():
    ds = _train(n=20, batch_size=3, shard_index=1, shard_count=2)
    it = iter(ds)
    for _ in range(5):  # crosses an epoch boundary of the 10-example shard
        next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(6)]
    fresh = iter(_train(n=20, batch_size=3, shard_index=1, shard_count=2))
    fresh.set_state(state)
    _assert_batches_equal([next(fresh) for _ in range(6)], expected)


def test_worker_processes_give_the_same_stream_and_resume():
    # One worker process sees the whole stream, so it must match the in-process pipeline.
    inproc = _take(_train(n=12), 5)
    it = iter(_train(n=12, worker_count=1))
    try:
        got = [next(it) for _ in range(2)]
        state = it.get_state()
        got += [next(it) for _ in range(3)]
    finally:
        it.close()
    _assert_batches_equal(got, inproc)
    resumed = iter(_train(n=12, worker_count=1))
    try:
        resumed.set_state(state)
        _assert_batches_equal([next(resumed) for _ in range(3)], inproc[2:])
    finally:
        resumed.close()


@pytest.mark.parametrize("n, batch_size, shard_count", [(10, 4, 1), (10, 3, 3), (9, 2, 2), (2, 2, 3)])
def test_eval_batches_cover_every_example_once(n, batch_size, shard_count):
    seen = []
    num_batches = set()
    for shard_index in range(shard_count):
        batches = list(
            pipeline.make_eval_batches(
                _source(n), _eval_preprocess, batch_size=batch_size, shard_index=shard_index, shard_count=shard_count
            )
        )
        num_batches.add(len(batches))
        for b in batches:
            assert b["valid"].dtype == bool and b["valid"].shape == (batch_size,)
            assert b["index"].shape == (batch_size,)
            # Valid slots come first; padded slots hold real examples of the right shape.
            assert not np.any(np.diff(b["valid"].astype(int)) > 0)
            seen.extend(b["index"][b["valid"]].tolist())
            np.testing.assert_array_equal(b["pixels"][:, 0, 0], b["index"])
    assert len(num_batches) == 1  # every process runs the same number of eval steps
    per_process = -(-n // shard_count)  # ceil(n / shard_count)
    assert num_batches.pop() == -(-per_process // batch_size)
    assert sorted(seen) == list(range(n))


def test_eval_accepts_train_style_preprocess_deterministically():
    a = list(pipeline.make_eval_batches(_source(5), _preprocess, batch_size=2))
    b = list(pipeline.make_eval_batches(_source(5), _preprocess, batch_size=2))
    _assert_batches_equal(a, b)
    noise = np.concatenate([x["noise"] for x in a])
    # A fixed-seed generator per example: every example gets the same first draw.
    np.testing.assert_allclose(noise, np.random.default_rng(0).random())


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="shard_index"):
        _train(shard_index=2, shard_count=2)
    with pytest.raises(ValueError, match="batch_size"):
        _train(batch_size=0)
    with pytest.raises(ValueError, match="cannot be split"):
        _train(n=2, shard_count=3)
