"""The weight anchor of Eq. 11 against hand-computed numpy values."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mavilt_jax.losses import make_anchor, weight_anchor_loss

V0, V, D = 3, 5, 2  # pretrained rows, rows after extension, model dim


def _tree(seed: int) -> dict:
    r = np.random.default_rng(seed)
    return {
        "embed": {"embedding": r.normal(size=(V, D)).astype(np.float32)},
        "lm_head": {"kernel": r.normal(size=(D, V)).astype(np.float32)},
        "layers_0": {"mlp": {"kernel": r.normal(size=(D, 4)).astype(np.float32)}},
        "final_norm": {"scale": r.normal(size=(D,)).astype(np.float32)},
    }


def _numpy_loss(params: dict, pretrained: dict) -> float:
    """Slow reference: the four squared distances written out by hand."""
    total = 0.0
    total += np.sum((params["embed"]["embedding"][:V0] - pretrained["embed"]["embedding"][:V0]) ** 2)
    total += np.sum((params["lm_head"]["kernel"][:, :V0] - pretrained["lm_head"]["kernel"][:, :V0]) ** 2)
    total += np.sum((params["layers_0"]["mlp"]["kernel"] - pretrained["layers_0"]["mlp"]["kernel"]) ** 2)
    total += np.sum((params["final_norm"]["scale"] - pretrained["final_norm"]["scale"]) ** 2)
    return float(total)


def test_anchor_keeps_only_pretrained_rows_in_bf16():
    anchor = make_anchor(_tree(0), V0)
    assert anchor["embed"]["embedding"].shape == (V0, D)
    assert anchor["lm_head"]["kernel"].shape == (D, V0)
    assert anchor["layers_0"]["mlp"]["kernel"].shape == (D, 4)
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(anchor))
    np.testing.assert_array_equal(
        np.asarray(anchor["embed"]["embedding"], np.float32),
        np.asarray(jnp.asarray(_tree(0)["embed"]["embedding"][:V0], jnp.bfloat16), np.float32),
    )


def test_loss_equals_hand_computed_value():
    pretrained, params = _tree(0), _tree(1)
    # float32 anchor: exact comparison with the numpy sum.
    got = weight_anchor_loss(params, make_anchor(pretrained, V0, dtype=jnp.float32))
    np.testing.assert_allclose(float(got), _numpy_loss(params, pretrained), rtol=1e-6)
    # bf16 anchor: numpy with the same rounding of the anchor.
    rounded = jax.tree.map(lambda x: np.asarray(jnp.asarray(x, jnp.bfloat16), np.float32), pretrained)
    got = weight_anchor_loss(params, make_anchor(pretrained, V0))
    np.testing.assert_allclose(float(got), _numpy_loss(params, rounded), rtol=1e-6)
    # The new rows are not part of it: changing them changes nothing.
    moved = jax.tree.map(np.copy, params)
    moved["embed"]["embedding"][V0:] += 100.0
    moved["lm_head"]["kernel"][:, V0:] -= 100.0
    np.testing.assert_allclose(float(weight_anchor_loss(moved, make_anchor(pretrained, V0))), float(got), rtol=1e-6)


def test_loss_is_zero_at_the_anchor():
    pretrained = _tree(0)
    params = jax.tree.map(np.copy, pretrained)
    params["embed"]["embedding"][V0:] = 7.0  # new rows are free
    assert float(weight_anchor_loss(params, make_anchor(pretrained, V0, dtype=jnp.float32))) == 0.0
    in_bf16 = jax.tree.map(lambda x: jnp.asarray(x, jnp.bfloat16).astype(jnp.float32), params)
    assert float(weight_anchor_loss(in_bf16, make_anchor(pretrained, V0))) == 0.0


def test_gradient_is_twice_the_distance_and_zero_on_new_rows():
    pretrained, params = _tree(0), _tree(1)
    anchor = make_anchor(pretrained, V0, dtype=jnp.float32)
    grads = jax.grad(weight_anchor_loss)(params, anchor)
    emb = np.asarray(grads["embed"]["embedding"])
    np.testing.assert_allclose(emb[:V0], 2 * (params["embed"]["embedding"][:V0] - pretrained["embed"]["embedding"][:V0]), rtol=1e-6)
    np.testing.assert_array_equal(emb[V0:], 0.0)
    head = np.asarray(grads["lm_head"]["kernel"])
    np.testing.assert_allclose(head[:, :V0], 2 * (params["lm_head"]["kernel"][:, :V0] - pretrained["lm_head"]["kernel"][:, :V0]), rtol=1e-6)
    np.testing.assert_array_equal(head[:, V0:], 0.0)
    np.testing.assert_allclose(
        np.asarray(grads["final_norm"]["scale"]), 2 * (params["final_norm"]["scale"] - pretrained["final_norm"]["scale"]), rtol=1e-6
    )


@pytest.mark.parametrize("wrap", [True, False])
def test_jit_and_params_collection(wrap):
    pretrained, params = _tree(0), _tree(1)
    if wrap:  # a flax variables dict
        pretrained, params = {"params": pretrained}, {"params": params}
    anchor = jax.jit(make_anchor, static_argnums=(1, 2))(pretrained, V0, jnp.float32)
    got = jax.jit(weight_anchor_loss)(params, anchor)
    unwrap = (lambda t: t["params"]) if wrap else (lambda t: t)
    np.testing.assert_allclose(float(got), _numpy_loss(unwrap(params), unwrap(pretrained)), rtol=1e-6)
