"""Sharding on 8 CPU devices (a subprocess with --xla_force_host_platform_device_count=8).

The text-pretraining stage with a tiny LLM runs on a (data, fsdp, tensor) = (1, 2, 4) mesh: its
parameters are really split (fsdp over the model dim, tensor over heads / MLP), and its losses
equal the one-device run of this process. The checkpoint is then resumed on an (8, 1, 1) mesh
and continues with the one-device losses too (restore onto another mesh shape).
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np

from mavilt_jax import sharding, train

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Sharded matmuls sum in another order than one device: float32 round-off, a few ulps per step.
RTOL = 2e-4

CONFIG_CODE = textwrap.dedent("""
    from configs import text_pretrain

    def cfg(shape, steps):
        c = text_pretrain.get_config("runlocal,model=tiny")
        c.text.num_synthetic, c.text.bpe_vocab_size = 200, 300
        c.sequence.max_len, c.batch_size, c.total_steps = 64, 8, steps
        c.optimizer.decay_steps = 6
        c.eval_every_steps, c.checkpoint.every_steps, c.log_every_steps = 0, 2, 1
        c.mesh.shape = shape
        c.num_samples = 0
        c.disable_most_optimizations = True
        return c
""")
exec(CONFIG_CODE)  # defines cfg() here too, so both sides run the same configuration

SCRIPT = CONFIG_CODE + textwrap.dedent("""
    import json, sys
    import jax
    from mavilt_jax import train
    assert jax.device_count() == 8
    workdir = sys.argv[1]
    out = {}
    # Records the activation constraints the model's nn.with_logical_constraint hands to jax (a
    # no-op without a mesh in context, so an empty record means the step ran without the mesh).
    constraints = []
    wsc = jax.lax.with_sharding_constraint
    def recording_wsc(x, shardings):
        constraints.append([list(x.shape), [str(a) for a in getattr(shardings, "spec", shardings)],
                            dict(getattr(shardings, "mesh", jax.sharding.get_abstract_mesh()).shape)])
        return wsc(x, shardings)
    jax.lax.with_sharding_constraint = recording_wsc
    r = train.train_and_evaluate(cfg((1, 2, 4), 4), workdir)
    q = r["state"].params["layers_0"]["attn"]["q_proj"]["kernel"]
    up = r["state"].params["layers_0"]["mlp"]["up_proj"]["kernel"]
    out["q_spec"] = [str(a) for a in q.sharding.spec]
    out["q_shape"], out["q_shard"] = list(q.shape), list(q.addressable_shards[0].data.shape)
    out["up_shard"] = list(up.addressable_shards[0].data.shape)
    mu_q = [x for p, x in jax.tree_util.tree_leaves_with_path(r["state"].opt_state)
            if "mu" in jax.tree_util.keystr(p) and "layers_0']['attn']['q_proj" in jax.tree_util.keystr(p)]
    out["mu_shard"] = list(mu_q[0].addressable_shards[0].data.shape)
    out["losses_a"] = [h["loss"] for h in r["history"]]
    out["constraints"] = constraints
    r = train.train_and_evaluate(cfg((8, 1, 1), 6), workdir)
    out["losses_c"] = [h["loss"] for h in r["history"]]
    out["q_shard_c"] = list(r["state"].params["layers_0"]["attn"]["q_proj"]["kernel"].addressable_shards[0].data.shape)
    print("RESULT " + json.dumps(out))
""")


def test_sharded_run_matches_one_device_and_resumes_on_another_mesh(tmp_path):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu",
               PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "sharded")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])

    # q_proj [D=32, N=4, H=8]: D over fsdp (2), heads over tensor (4).
    assert out["q_spec"] == ["fsdp", "tensor", "None"]
    assert out["q_shard"] == [16, 1, 8]
    assert out["up_shard"] == [16, 12]  # up_proj [D=32, F=48]: (fsdp, tensor)
    assert out["q_shard_c"] == [32, 4, 8]  # (8, 1, 1): pure data parallel, parameters whole on each device
    assert out["mu_shard"] == [16, 1, 8]  # Adam's first moment of q_proj is sharded like q_proj
    # The train step traces under the (1, 2, 4) mesh: q [B=8, T, N=4, H=8] is pinned to
    # (batch over data+fsdp, heads over tensor), the MLP hidden [B, T, F=48] to tensor.
    mesh_124 = {"data": 1, "fsdp": 2, "tensor": 4}
    specs = {(tuple(spec), len(shape)) for shape, spec, mesh in out["constraints"] if mesh == mesh_124}
    assert (("('data', 'fsdp')", "None", "tensor", "None"), 4) in specs, out["constraints"][:8]
    assert (("('data', 'fsdp')", "None", "tensor"), 3) in specs, out["constraints"][:8]
    # 2 kv heads do not divide the tensor axis of 4: that dimension stays replicated, not forced.
    kv = [spec for shape, spec, mesh in out["constraints"] if mesh == mesh_124 and len(shape) == 4 and shape[2] == 2]
    assert kv and all(spec[2] == "None" and spec[0] == "('data', 'fsdp')" for spec in kv), kv

    reference = train.train_and_evaluate(cfg((1, 1, 1), 6), str(tmp_path / "one"))  # noqa: F821 (exec above)
    ref_losses = [h["loss"] for h in reference["history"]]
    np.testing.assert_allclose(out["losses_a"], ref_losses[:4], rtol=RTOL)
    np.testing.assert_allclose(out["losses_c"], ref_losses[4:], rtol=RTOL)


def test_mesh_fill_and_fit():
    import jax

    mesh = sharding.make_mesh((-1, 1, 1), ("data", "fsdp", "tensor"))
    assert dict(mesh.shape) == {"data": jax.device_count(), "fsdp": 1, "tensor": 1}
    try:
        sharding.make_mesh((-1, -1, 1), ("data", "fsdp", "tensor"))
    except ValueError as e:
        assert "at most one" in str(e)
    else:
        raise AssertionError("two -1 entries must be rejected")
