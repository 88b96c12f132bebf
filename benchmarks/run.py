"""One command for the project's speed: a table on stdout, the same figures as JSON.

  python -m benchmarks.run --out results.json [--only limits,train,stage1,decode,vqgan,pretokenize]
      [--repeats 3] [--decode_variants f32,bf16,int8] [--quick]

Sections (each figure: median of ``--repeats`` timed calls after an untimed warm-up call; no
compilation inside a timed region, counted and shown as ``compiles in timed regions``):
  limits      best f32 / bf16 matmul FLOP/s through XLA, streaming read bandwidth (benchmarks/limits.py)
  train       LLM train step, ours vs transformers LlamaForCausalLM + torch AdamW, demo and d512 sizes
              (benchmarks/train.py): tokens/s, achieved FLOP/s, fraction of the f32 matmul peak, ours/theirs
  stage1      the demo stage-1 step with lambda_recon 0 and 0.1: the cost of L_recon, with the codes and
              targets precomputed (as the loop feeds them) and encoded in the step (benchmarks/images.py)
  decode      SmolLM2-135M decoding, ours vs transformers `generate` (benchmarks/decode.py): reports at
              batch 1 and 16 (fraction of the weight-read bound at batch 1), report -> image with and
              without guidance; ``--decode_variants`` precisions at batch 1 (on a CPU the other
              workloads run the first one only: XLA:CPU converts bf16/int8 weights to f32 to multiply)
  vqgan       VQ-GAN encode / decode images/s at 128 and 256 px
  pretokenize pre-tokenization images/s (the pretokenized builder's batch encoder)
On a GPU the same sections run there, and train rows add MFU against the chip's nominal peak.
Ratios measured in the same run are the figures to compare across machines and loads.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

from mavilt_jax import cli

SECTIONS = ("limits", "train", "stage1", "decode", "vqgan", "pretokenize")
DECODE_VARIANTS = ("f32", "bf16", "int8")
# Nominal dense bf16 peaks (FLOP/s) of accelerators, for MFU; CPUs use the measured matmul peak.
NOMINAL_PEAK = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "TPU v5 lite": 197e12, "TPU v4": 275e12}


def _fmt_extra(extra: dict) -> str:
    parts = []
    for k, v in extra.items():
        if k in ("flops_per_step", "weights", "s_per_call", "ms_per_batch"):
            continue
        if isinstance(v, float):
            pct = k.startswith("of_") or k.endswith("_cost") or k == "MFU"
            parts.append(f"{k} {100 * v:.1f}%" if pct else f"{k} {v:.3g}")
        else:
            parts.append(f"{k} {v}")
    return ", ".join(parts)


def _args(argv: list[str] | None) -> argparse.Namespace:
    parser = cli.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=None, help="write the figures here as JSON")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per figure (median)")
    parser.add_argument("--decode_variants", default="f32,bf16,int8", help=f"ours: subset of {','.join(DECODE_VARIANTS)}")
    parser.add_argument("--quick", action="store_true", help="train: demo size only; decode: batch 1, no images")
    args = parser.parse_args(argv)
    args.only = [s for s in args.only.split(",") if s]
    args.decode_variants = [s for s in args.decode_variants.split(",") if s]
    if "limits" not in args.only and {"train", "decode"} & set(args.only):
        args.only.insert(0, "limits")  # their ratios to the machine's limits
    bad = [s for s in args.only if s not in SECTIONS] + [v for v in args.decode_variants if v not in DECODE_VARIANTS]
    if bad or args.repeats < 1:
        print(f"error: unknown section/variant {bad} (sections: {','.join(SECTIONS)}; variants: "
              f"{','.join(DECODE_VARIANTS)}) or --repeats < 1", file=sys.stderr)
        sys.exit(2)
    return args


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    import jax

    from benchmarks import common
    from mavilt_jax import allocator

    counter = common.counter()
    device = jax.devices()[0]
    kind = getattr(device, "device_kind", device.platform)
    meta = {"device": f"{device.platform} {kind} x{jax.device_count()}", "cpus": os.cpu_count(),
            "load_average_at_start": os.getloadavg(), "jax": jax.__version__, "python": platform.python_version(),
            "repeats": args.repeats, "sections": args.only, "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "malloc": allocator.in_use()}
    print(f"device {meta['device']}, {meta['cpus']} CPUs, load average {meta['load_average_at_start']}, "
          f"allocator {meta['malloc']}", flush=True)
    limits: dict[str, float] = {}
    rows = []
    seconds = {}
    for section in args.only:
        start = time.perf_counter()
        before = counter.timed
        if section == "limits":
            from benchmarks import limits as limits_lib

            new, limits = limits_lib.run(args.repeats)
        elif section == "train":
            from benchmarks import train

            new = train.run(limits, args.repeats, sizes=("demo",) if args.quick else ("demo", "d512"))
            nominal = next((v for k, v in NOMINAL_PEAK.items() if k in kind), None)
            if device.platform != "cpu" and nominal:
                for row in new:
                    row.extra["MFU"] = row.extra["GFLOP/s"] * 1e9 / nominal
        elif section == "stage1":
            from benchmarks import images

            new = images.stage1_rows(args.repeats)
        elif section == "decode":
            from benchmarks import decode

            # XLA:CPU's dots convert bf16 / int8 weights to f32 before multiplying, so those variants
            # decode slower than f32 there: on a CPU they run the batch-1 report only (the figure
            # that shows it), the other workloads the first variant; on an accelerator, all of them.
            variants = tuple(args.decode_variants)
            new = decode.run(limits, args.repeats, batches=(1,) if args.quick else (1, 16), variants=variants,
                             images=not args.quick, other_variants=variants[:1] if device.platform == "cpu" else variants)
        elif section == "vqgan":
            from benchmarks import images

            new = images.vqgan_rows(args.repeats)
        else:
            from benchmarks import images

            new = images.pretokenize_rows(args.repeats)
        for row in new:  # sections may yield their rows one at a time: each is printed when measured
            row.extra["compiles_in_timed"] = counter.timed - before
            print(f"{row.section:8s} {row.case:62s} {row.value:10.4g} {row.unit:8s} {_fmt_extra(row.extra)}", flush=True)
            rows.append(row)
        seconds[section] = time.perf_counter() - start
    meta["load_average_at_end"] = os.getloadavg()
    print(f"compilations: {counter.total} in all, {counter.timed} in timed regions; seconds per section: "
          + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()) + f"; load average {meta['load_average_at_end']}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"meta": meta, "limits": limits, "section_seconds": seconds,
                       "compilations": {"total": counter.total, "in_timed_regions": counter.timed},
                       "rows": [r.as_dict() for r in rows]}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
