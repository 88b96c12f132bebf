"""Compile the real train steps and the sampler for a TPU slice on any host, and check they fit.

  python -m mavilt_jax.aot --config=configs/stage1.py:model=7b --topology=v5p-64
  python -m mavilt_jax.aot --config=configs/accelerators.py:name=7b   # topology from the config
  python -m mavilt_jax.aot --all --quick                              # every named configuration

Builds, from shapes only (``jax.eval_shape``: no parameter is ever materialised, no checkpoint or
tokenizer is read), what the training loop would run: the stage-1 and stage-2 update steps
(`train.make_update_step`, the same jitted function as the loop, with the loop's state and batch
shardings and its activation rules) and the guided image sampler of the periodic samples
(`sampling.generate`). Each is lowered and compiled by XLA for the TPU topology (``libtpu``
describes devices that are not attached), and the compiled program reports per-chip memory.

Printed per program: memory per chip (arguments, outputs, temporaries, code; donated state
counted once) against the chip's HBM, parameter / optimizer / frozen bytes per chip, the sharding
of the largest arrays, and the tokens/s/chip that XLA's cost analysis predicts (roofline: the
larger of FLOPs / peak FLOP/s and bytes / HBM bandwidth, so an upper bound; the scanned layers,
which the cost analysis counts once, are added for every trip). ``--quick`` compiles at XLA's
lowest run-time effort: several times faster, the same memory-fitting effort.

Exit status: 0 all programs fit; 1 one does not (the line says by how much); 2 a user error
(unknown slice, no libtpu, bad config), one line.

The pretrained LLM's and the VQ-GAN's checkpoints are not needed: the vocabulary is a stand-in
with the real LLM's text-vocabulary size (`TEXT_VOCAB_SIZES` or ``config.model.text_vocab_size``)
and the VQ-GAN takes the shape of ``config.vqgan``. L_feat (phi, a trained CXR encoder) is left
out of the compiled step (``lambda_feat`` 0): it needs that encoder's checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import re
import tempfile
from collections.abc import Iterator, Sequence
from typing import Any

import ml_collections
import numpy as np

# Pretrained LLMs' text vocabularies: SmolLM2 (49,152), Llama 3.2 1B (128,256), Llama 2 7B (32,000);
# "cpu" / "tiny": the BPE trained by text pretraining.
TEXT_VOCAB_SIZES = {"tiny": 300, "cpu": 2048, "smollm2": 49152, "1b": 128256, "7b": 32000}
PROGRAMS = ("stage1", "stage2", "sampler")
GIB = 1024**3


class UserError(ValueError):
    """A bad argument: the command prints one line and exits with status 2."""


def aot_config(config: ml_collections.ConfigDict, stage: str | None = None) -> ml_collections.ConfigDict:
    """A copy of ``config`` that reads no file: no checkpoints, no pretrained weights, no phi."""
    config = ml_collections.ConfigDict(config.to_dict())
    if stage:
        config.stage = stage
    for key in ("text_checkpoint", "tokenizer_checkpoint", "phi_checkpoint", "init_from"):
        if key in config:
            config[key] = ""
    if "model" in config and "pretrained" in config.model:
        config.model.pretrained = ""
    if "vqgan" in config:  # a random VQ-GAN of the configured shape stands in for the trained one
        config.vqgan.allow_random = True
    if "loss" in config and config.loss.get("lambda_feat"):
        config.loss.lambda_feat = 0.0
    return config


def text_vocab_size(config: ml_collections.ConfigDict) -> int:
    size = config.model.get("text_vocab_size") or TEXT_VOCAB_SIZES.get(config.model.get("size", ""))
    if not size:
        raise UserError(f"no text vocabulary size known for model {config.model.get('size')!r}; set model.text_vocab_size")
    return int(size)


def abstract_stage(config: ml_collections.ConfigDict):
    """The stage of ``config`` set up without files (stand-in vocabulary of the real size)."""
    from mavilt_jax.stages import get_stage_class

    config = aot_config(config)
    stage = get_stage_class(config.stage)(config)
    with tempfile.TemporaryDirectory() as workdir:
        if config.stage in ("stage1", "stage2"):
            _save_standin_vocab(config, os.path.join(workdir, "vocab"))
        stage.setup(workdir)
    return stage


def _save_standin_vocab(config: ml_collections.ConfigDict, path: str) -> None:
    from mavilt_jax.data.vocab import BPE_EOS, ExtendedVocab, train_bpe
    from mavilt_jax.models.vqgan import vqgan_config
    from mavilt_jax.stages.text_pretrain import synthetic_report_texts

    vq = vqgan_config(config.vqgan.model)
    tokenizer = train_bpe(synthetic_report_texts(100, 0), 300)
    ExtendedVocab(tokenizer, codebook_size=vq.codebook_size, codes_per_image=vq.codes_per_image, eos_token=BPE_EOS,
                  text_vocab_size=text_vocab_size(config)).save(path)


def abstract_batch(stage, batch_size: int, sharding=None) -> dict[str, Any]:
    """ShapeDtypeStructs of one global batch, from ``stage.preprocess`` of one synthetic study."""
    import jax

    from mavilt_jax.data import phantoms

    study = phantoms.generate_study(0, 0, resolution=64)
    study["image"] = study["image"][..., None]
    example = stage.preprocess(study, np.random.default_rng(0))
    return {k: jax.ShapeDtypeStruct((batch_size,) + np.shape(v), np.asarray(v).dtype, sharding=sharding)
            for k, v in example.items()}


def axis_rules(config: ml_collections.ConfigDict) -> tuple:
    return tuple((name, tuple(axes) if isinstance(axes, list) else axes) for name, axes in config.logical_axis_rules)


def abstract_mesh(shape: Sequence[int], axes: Sequence[str], num_devices: int):
    """A device-less mesh of ``shape`` (one -1 takes the devices that remain) for sharding specs."""
    import jax

    shape = list(shape)
    if -1 in shape:
        known = math.prod(s for s in shape if s != -1)
        if num_devices % known:
            raise UserError(f"{num_devices} devices do not divide into mesh {tuple(shape)}")
        shape[shape.index(-1)] = num_devices // known
    if math.prod(shape) != num_devices:
        raise UserError(f"mesh {tuple(shape)} needs {math.prod(shape)} devices, the slice has {num_devices}")
    return jax.sharding.AbstractMesh(tuple(shape), tuple(axes))


def device_mesh(config: ml_collections.ConfigDict, devices: Sequence, num_slices: int = 1):
    """The loop's mesh on TPU devices: ICI-aware device order; several slices split the data axis."""
    import jax
    from jax.experimental import mesh_utils

    shape = abstract_mesh(config.mesh.shape, config.mesh.axes, len(devices)).axis_sizes
    data = list(config.mesh.axes).index("data")
    if shape[data] % num_slices:
        raise UserError(f"the data axis ({shape[data]}) must divide by the {num_slices} slices")
    if num_slices > 1:
        ici = tuple(s // num_slices if i == data else s for i, s in enumerate(shape))
        dcn = tuple(num_slices if i == data else 1 for i in range(len(shape)))
        grid = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices, allow_split_physical_axes=True)
    else:
        grid = mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
    auto = (jax.sharding.AxisType.Auto,) * len(shape)
    return jax.sharding.Mesh(grid, tuple(config.mesh.axes), axis_types=auto)


@dataclasses.dataclass
class Report:
    """What one compiled program needs per chip, and what it is predicted to do."""

    program: str
    memory: dict[str, int]  # argument, output, alias, temp, code, used
    hbm_bytes: int
    state_bytes: dict[str, int] = dataclasses.field(default_factory=dict)  # params, opt_state, frozen per chip
    largest: list[str] = dataclasses.field(default_factory=list)
    flops: float = 0.0
    bytes_accessed: float = 0.0
    tokens_per_step: int = 0
    tokens_per_s_per_chip: float = 0.0
    error: str = ""  # the compiler's own out-of-memory message, when it refused

    @property
    def fits(self) -> bool:
        return not self.error and self.memory["used"] <= self.hbm_bytes


def _per_chip_bytes(tree) -> int:
    import jax

    return sum(math.prod(x.sharding.shard_shape(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def _largest(tree, n: int = 5) -> list[str]:
    import jax

    leaves = sorted(jax.tree_util.tree_leaves_with_path(tree), key=lambda kv: -math.prod(kv[1].shape) * kv[1].dtype.itemsize)
    out = []
    for path, x in leaves[:n]:
        shard = x.sharding.shard_shape(x.shape)
        mib = math.prod(shard) * np.dtype(x.dtype).itemsize / 2**20
        out.append(f"{jax.tree_util.keystr(path)} {tuple(x.shape)} {x.dtype} {x.sharding.spec} -> {shard} {mib:.1f} MiB/chip")
    return out


def _measure(program: str, lowered, chip, tokens_per_step: int) -> Report:
    """Compiles ``lowered``; memory from the compiled program, or the compiler's OOM message."""
    try:
        compiled = lowered.compile()
    except Exception as e:  # noqa: BLE001 - XLA reports "does not fit" as RESOURCE_EXHAUSTED
        if "RESOURCE_EXHAUSTED" not in str(e) and "memory" not in str(e).lower():
            raise
        first = next((line for line in str(e).splitlines() if line.strip()), str(e))
        return Report(program, dict(argument=0, output=0, alias=0, temp=0, code=0, used=0), chip.hbm_bytes,
                      error=first[:400], tokens_per_step=tokens_per_step)
    m = compiled.memory_analysis()
    memory = dict(argument=m.argument_size_in_bytes, output=m.output_size_in_bytes, alias=m.alias_size_in_bytes,
                  temp=m.temp_size_in_bytes, code=m.generated_code_size_in_bytes)
    memory["used"] = memory["argument"] + memory["output"] - memory["alias"] + memory["temp"] + memory["code"]
    cost = compiled.cost_analysis()
    cost = (cost[0] if isinstance(cost, (list, tuple)) else cost) or {}
    return Report(program, memory, chip.hbm_bytes, flops=float(cost.get("flops", 0.0)),
                  bytes_accessed=float(cost.get("bytes accessed", 0.0)), tokens_per_step=tokens_per_step)


def _predict(report: Report, chip, num_chips: int, loop_flops: float = 0.0, min_flops: float = 0.0,
             min_bytes: float = 0.0) -> None:
    """Roofline tokens/s/chip: the larger of FLOPs / peak and bytes / HBM bandwidth.

    XLA's cost analysis counts the body of a while loop once (checked: a 10-step scan of matmuls
    costs one matmul), so the scanned layer stack is in ``report.flops`` once: ``loop_flops`` adds
    the other trips (matmul FLOPs of the layers, 2 per parameter and token forward, 4 backward, 2
    more with full remat), ``min_flops`` / ``min_bytes`` are floors for the decoding loop."""
    if report.error:
        return
    report.flops = max(report.flops + loop_flops, min_flops)
    report.bytes_accessed = max(report.bytes_accessed, min_bytes)
    seconds = max(report.flops / chip.peak_flops, report.bytes_accessed / chip.hbm_bandwidth)
    if seconds > 0 and report.tokens_per_step:
        report.tokens_per_s_per_chip = report.tokens_per_step / num_chips / seconds


def compile_programs(config: ml_collections.ConfigDict, devices: Sequence, chip, num_slices: int = 1,
                     programs: Sequence[str] = PROGRAMS) -> list[Report]:
    """Lowers and compiles ``programs`` of ``config`` for ``devices``; one `Report` each."""
    import flax.linen as nn
    import jax
    from jax.sharding import NamedSharding, PartitionSpec

    from mavilt_jax import sampling, sharding, train

    mesh = device_mesh(config, devices, num_slices)
    rules = axis_rules(config)
    if config.batch_size % sharding.data_parallel_size(mesh):
        raise UserError(f"batch_size {config.batch_size} must divide by the data-parallel size "
                        f"{sharding.data_parallel_size(mesh)} of mesh {dict(mesh.shape)}")
    replicated = NamedSharding(mesh, PartitionSpec())
    rng = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=replicated)
    reports = []
    for program in programs:
        stage = abstract_stage(aot_config(config, stage=program if program != "sampler" else "stage1"))
        state_shardings, state = train.abstract_train_state(stage, mesh, rules, jax.random.key(0))
        if program == "sampler":
            n = stage.layout.codes_per_image
            rows = 2 * int(config.get("num_samples", 4) or 4)  # guided: conditional + unconditional rows
            prompt = jax.ShapeDtypeStruct((rows, config.sequence.max_len - n - 2), np.int32, sharding=replicated)
            lengths = jax.ShapeDtypeStruct((rows,), np.int32, sharding=replicated)
            sampler = sampling.Sampler(max_new_tokens=n + 2, mode="image", temperature=0.0,
                                       guidance_scale=float(config.get("guidance_scale", 3.0)))
            # As in the loop's periodic samples: sharded parameters, no activation rules.
            lowered = sampling._generate.lower(state.params, prompt, lengths, rng, config=stage.llm_config,
                                               sampler=sampler, layout=stage.layout, guided=True)
            tokens = rows // 2 * (n + 2)
        else:
            batch = abstract_batch(stage, config.batch_size, sharding.batch_sharding(mesh))
            with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
                lowered = train.make_update_step(stage, state_shardings, mesh).lower(state, batch, rng)
            tokens = math.prod(batch["tokens"].shape)
        report = _measure(program, lowered, chip, tokens)
        report.state_bytes = {k: _per_chip_bytes(getattr(state, k)) for k in ("params", "opt_state", "frozen")}
        llm, chips = stage.llm_config, len(devices)
        layer_params = sum(x.size for x in jax.tree.leaves(state.params["layers"])) if llm.scan_layers else 0
        if program == "sampler":  # every new token reads every parameter; 2 FLOPs per parameter and token
            every = sum(x.size for x in jax.tree.leaves(state.params))
            _predict(report, chip, chips, min_flops=2 * every * rows * config.sequence.max_len / chips,
                     min_bytes=(n + 2) * report.state_bytes["params"])
        else:
            per_token = 8 if llm.remat == "full" else 6
            _predict(report, chip, chips, loop_flops=per_token * layer_params * (llm.num_layers - 1) / llm.num_layers
                     * tokens / chips)
        report.largest = _largest({"params": state.params, "opt_state": state.opt_state, "frozen": state.frozen})
        reports.append(report)
    return reports


def format_report(r: Report) -> str:
    g = lambda b: f"{b / GIB:.2f} GiB"  # noqa: E731
    lines = [f"== {r.program}"]
    if r.error:
        lines.append(f"   compiler: {r.error}")
    else:
        m = r.memory
        lines.append(f"   memory/chip: {g(m['used'])} of {g(r.hbm_bytes)} HBM ({100 * m['used'] / r.hbm_bytes:.0f}%): "
                     f"arguments {g(m['argument'])}, outputs {g(m['output'])} (donated {g(m['alias'])}), "
                     f"temporaries {g(m['temp'])}, code {g(m['code'])}")
    s = r.state_bytes
    lines.append(f"   state/chip: params {g(s.get('params', 0))}, optimizer {g(s.get('opt_state', 0))}, "
                 f"frozen {g(s.get('frozen', 0))}")
    if r.tokens_per_s_per_chip:
        lines.append(f"   predicted: {r.tokens_per_s_per_chip:,.0f} tokens/s/chip ({r.tokens_per_step} tokens/step, "
                     f"{r.flops / 1e12:.1f} TFLOP and {r.bytes_accessed / GIB:.1f} GiB accessed per chip and step)")
    lines += [f"   largest: {line}" for line in r.largest[:3]]
    return "\n".join(lines)


def verdict(r: Report) -> str:
    if r.error:
        # XLA: "... required for HLO temporaries (124.59G) exceeds available HBM (95.74G)."
        sizes = re.search(r"\(([\d.]+)G\) exceeds available HBM \(([\d.]+)G\)", r.error)
        over = f", {float(sizes[1]) - float(sizes[2]):.2f} GiB over" if sizes else ""
        return f"{r.program}: DOES NOT FIT{over} (the compiler refused: {r.error})"
    m, hbm = r.memory["used"], r.hbm_bytes
    if m <= hbm:
        return f"{r.program}: fits, {m / GIB:.2f} of {hbm / GIB:.2f} GiB per chip ({(hbm - m) / GIB:.2f} GiB free)"
    return f"{r.program}: DOES NOT FIT, needs {m / GIB:.2f} GiB per chip, {(m - hbm) / GIB:.2f} GiB over the {hbm / GIB:.2f} GiB HBM"


def summary_table(rows: Sequence[tuple[str, str, Report]]) -> str:
    """One line per (configuration, slice, program): memory per chip against HBM, fits, tokens/s/chip."""
    lines = [f"{'config':<12} {'slice':<13} {'program':<8} {'memory/chip used of HBM':<28} {'fits':<5} tokens/s/chip"]
    for name, where, r in rows:
        if r.error:  # the compiler's own figures, when it refused
            sizes = re.search(r"\(([\d.]+)G\) exceeds available HBM \(([\d.]+)G\)", r.error)
            memory = f"{sizes[1]}G of {sizes[2]}G (refused)" if sizes else "(compiler refused)"
        else:
            memory = f"{r.memory['used'] / GIB:.2f} of {r.hbm_bytes / GIB:.2f} GiB ({100 * r.memory['used'] / r.hbm_bytes:.0f}%)"
        speed = f"{r.tokens_per_s_per_chip:,.0f}" if r.tokens_per_s_per_chip else "-"
        lines.append(f"{str(name):<12} {where:<13} {r.program:<8} {memory:<28} {'yes' if r.fits else 'NO':<5} {speed}")
    return "\n".join(lines)


@contextlib.contextmanager
def quick_compile() -> Iterator[None]:
    """XLA's lowest effort for run time (``O0``, effort -1) while inside: the TPU backend's code
    generation for the 256 px VQ-GAN convolutions takes most of a train step's compile at the
    default effort (smollm2 stage 1: 1.3 CPU-minutes instead of more than 6.7). The memory plan
    keeps the default memory-fitting effort (``jax_memory_fitting_level``)."""
    import jax

    names = {"jax_exec_time_optimization_effort": -1.0, "jax_optimization_level": "O0"}
    before = {name: getattr(jax.config, name) for name in names}
    for name, value in names.items():
        jax.config.update(name, value)
    try:
        yield
    finally:
        for name, value in before.items():
            jax.config.update(name, value)


def sharding_table(config: ml_collections.ConfigDict, num_devices: int) -> dict[str, Any]:
    """The partition spec of every parameter, optimizer-state and frozen leaf of ``config``'s train
    state on its mesh over ``num_devices`` (no device needed: an abstract mesh of that shape).

    Returns ``{"mesh": {axis: size}, "leaves": {"params['embed']['embedding']": "(V, D) float32 P(...)"}}``.
    """
    import jax

    from mavilt_jax import train

    mesh = abstract_mesh(config.mesh.shape, config.mesh.axes, num_devices)
    stage = abstract_stage(config)
    _, state = train.abstract_train_state(stage, mesh, axis_rules(config), jax.random.key(0))
    leaves = {}
    for field in ("params", "opt_state", "frozen"):
        for path, x in jax.tree_util.tree_leaves_with_path(getattr(state, field)):
            spec = ", ".join(repr(a) for a in x.sharding.spec)
            leaves[field + jax.tree_util.keystr(path)] = f"{tuple(x.shape)} {x.dtype} P({spec})"
    return {"mesh": dict(mesh.shape), "leaves": leaves}


def run(config: ml_collections.ConfigDict, topology: str, num_slices: int = 1,
        programs: Sequence[str] = PROGRAMS) -> list[Report]:
    """Compiles ``programs`` of ``config`` for ``num_slices`` slices ``topology``; prints and returns reports."""
    from mavilt_jax import tpu_topologies

    try:
        tpu = tpu_topologies.parse(topology)
    except ValueError as e:
        raise UserError(str(e)) from None
    if not tpu_topologies.have_libtpu():
        raise UserError("compiling for TPU needs the libtpu wheel: pip install -e '.[tpu]'")
    if unknown := set(programs) - set(PROGRAMS):
        raise UserError(f"unknown programs {sorted(unknown)}; known: {', '.join(PROGRAMS)}")
    devices = tpu_topologies.devices(tpu, num_slices)
    slices = f"{num_slices} x " if num_slices > 1 else ""
    print(f"{config.get('aot', {}).get('name', config.model.get('size'))}: {slices}{topology} ({len(devices)} chips "
          f"{devices[0].device_kind}, {tpu.chip.hbm_bytes / GIB:.0f} GiB HBM each), mesh {tuple(config.mesh.shape)}, "
          f"batch {config.batch_size}, sequence {config.sequence.max_len}, remat {config.model.remat}, "
          f"dtype {config.model.dtype}", flush=True)
    reports = []
    for program in programs:
        (report,) = compile_programs(config, devices, tpu.chip, num_slices, programs=(program,))
        print(format_report(report), flush=True)
        reports.append(report)
    return reports


def main(argv: Sequence[str] | None = None) -> int:
    import sys

    from mavilt_jax import cli

    parser = cli.ArgumentParser(prog="python -m mavilt_jax.aot", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="config file[:variants], e.g. configs/stage1.py:model=7b")
    parser.add_argument("--topology", help="TPU slice (v5e-8, v5p-64, ...); default: the config's aot.topology")
    parser.add_argument("--num_slices", type=int, default=0, help="slices (DCN data parallelism); default: config's or 1")
    parser.add_argument("--mesh", help="override the config's mesh shape, e.g. 1,-1,1 (data, fsdp, tensor)")
    parser.add_argument("--programs", default=",".join(PROGRAMS), help="comma-separated subset of " + ",".join(PROGRAMS))
    parser.add_argument("--all", action="store_true", help="every named configuration of configs/accelerators.py")
    parser.add_argument("--write_goldens", metavar="DIR", help="write the sharding goldens of the named configurations")
    parser.add_argument("--quick", action="store_true", help="XLA's lowest run-time optimisation effort: compiles "
                        "several times faster (memory is still planned at the default fitting effort)")
    args = parser.parse_args(argv)
    # Compile-only TPU devices; the host's own computations (shapes) run on the CPU.
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    if args.quick:
        quick_compile().__enter__()  # for the rest of this process
    if args.write_goldens:
        write_goldens(args.write_goldens)
        return 0
    try:
        if args.all:
            from configs import accelerators

            jobs = [(accelerators.config(name=name), None) for name in accelerators.NAMED]
        elif args.config:
            jobs = [(_load_config(args.config), args.topology)]
        else:
            raise UserError("give --config=FILE[:VARIANTS] or --all")
        verdicts, rows = [], []
        for config, topology in jobs:
            aot = config.get("aot") or {}
            topology = topology or aot.get("topology")
            if not topology:
                raise UserError("give --topology (the config names none in aot.topology)")
            slices = args.num_slices or aot.get("num_slices", 1)
            if args.mesh:
                try:
                    config.mesh.shape = tuple(int(x) for x in args.mesh.split(","))
                except ValueError:
                    raise UserError(f"--mesh={args.mesh!r}: expected integers like 1,-1,1") from None
            reports = run(config, topology, slices, [p for p in args.programs.split(",") if p])
            name = aot.get("name", args.config)
            verdicts += [f"{name} on {slices} x {topology}: {verdict(r)}" for r in reports]
            rows += [(name, f"{slices} x {topology}", r) for r in reports]
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("\n".join(["", "Summary:", summary_table(rows), ""] + verdicts))
    return 0 if all("DOES NOT FIT" not in v for v in verdicts) else 1


def write_goldens(directory: str) -> None:
    """``DIR/<name>.json``: `sharding_table` of every named configuration on its slice."""
    import json

    from configs import accelerators
    from mavilt_jax import tpu_topologies

    os.makedirs(directory, exist_ok=True)
    for name, spec in accelerators.NAMED.items():
        devices = tpu_topologies.parse(spec["topology"]).num_chips * spec["num_slices"]
        table = sharding_table(accelerators.config(name=name), devices)
        with open(os.path.join(directory, f"{name}.json"), "w") as f:
            json.dump(table, f, indent=1)
            f.write("\n")
        print(f"wrote {directory}/{name}.json ({len(table['leaves'])} leaves, mesh {table['mesh']})")


def _load_config(spec: str) -> ml_collections.ConfigDict:
    """``path.py[:variants]`` -> its ``get_config(variants)`` (as ``--config`` of the loop)."""
    import importlib.util

    path, _, variants = spec.partition(":")
    if not os.path.isfile(path):
        raise UserError(f"config file {path!r} not found")
    module_spec = importlib.util.spec_from_file_location("_aot_config", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
        return module.get_config(variants or None)
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise UserError(f"{spec}: {e}") from None


if __name__ == "__main__":
    raise SystemExit(main())
