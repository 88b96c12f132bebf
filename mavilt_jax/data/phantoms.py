"""Synthetic chest radiographs with known findings: the project's default, fully offline data.

A study is drawn in three steps, each deterministic given its random stream:

  sample_findings(rng, prevalence) -> Findings      what is wrong (and what the report negates)
  render(findings, resolution, rng) -> uint8 [R, R] a frontal radiograph showing exactly that
  synthetic_reports.compose_report / vqa.vqa_from_findings   the text side

The record itself (`Findings` and its parts) lives in ``findings``; the renderer (anatomy,
findings drawn on it, acquisition and exposure) in ``phantom_render``; both are re-exported here.

Shape legend: R image side in pixels.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from mavilt_jax.data import labels as labels_lib
from mavilt_jax.data import synthetic_reports, vqa

# The findings record lives in `findings` (a leaf module); its names are re-exported here.
from mavilt_jax.data.findings import (  # noqa: F401
    DEVICES,
    Atelectasis,
    Cardiomegaly,
    Edema,
    Effusion,
    Findings,
    Fracture,
    Nodule,
    Opacity,
    Pneumothorax,
    WidenedMediastinum,
    finding_states,
    findings_from_json,
    findings_to_labels,
)

# Re-exported: callers render studies through this module.
from mavilt_jax.data.phantom_render import SIDES, THORAX_WIDTH, render, render_with_masks  # noqa: F401


@dataclasses.dataclass(frozen=True)
class Prevalence:
    """Probability of a normal study, and of each finding within an abnormal one."""

    normal: float = 0.4
    cardiomegaly: float = 0.3
    effusion: float = 0.3
    pneumothorax: float = 0.15
    opacity: float = 0.35
    nodule: float = 0.2
    edema: float = 0.15
    atelectasis: float = 0.2
    widened_mediastinum: float = 0.07
    fracture: float = 0.07
    devices: float = 0.25
    hedge: float = 0.15  # chance that a subtle finding is reported with uncertainty
    ap_view: float = 0.3


def as_prevalence(prevalence: Prevalence | Mapping[str, float] | None) -> Prevalence:
    """A Prevalence from overrides of its defaults; unknown names or non-probabilities raise."""
    if isinstance(prevalence, Prevalence):
        return prevalence
    overrides = dict(prevalence or {})
    known = {f.name for f in dataclasses.fields(Prevalence)}
    if unknown := sorted(set(overrides) - known):
        raise ValueError(f"unknown prevalence names {unknown}; known: {sorted(known)}")
    if bad := {k: v for k, v in overrides.items() if not 0.0 <= float(v) <= 1.0}:
        raise ValueError(f"prevalences must be probabilities in [0, 1], got {bad}")
    return Prevalence(**{k: float(v) for k, v in overrides.items()})


def _hedge(rng: np.random.Generator, p: Prevalence, subtle: bool) -> bool:
    return bool(subtle and rng.random() < p.hedge)


# Observations a report may state as absent, with the chance it does so when they are absent.
NEGATABLE: dict[str, float] = {
    "Pleural Effusion": 0.85,
    "Pneumothorax": 0.8,
    "Cardiomegaly": 0.75,
    "Enlarged Cardiomediastinum": 0.45,
    "Consolidation": 0.6,
    "Lung Opacity": 0.3,
    "Edema": 0.35,
    "Lung Lesion": 0.15,
    "Pneumonia": 0.15,
    "Fracture": 0.2,
}


def _sample_negated(rng: np.random.Generator, f: Findings) -> tuple[str, ...]:
    present = finding_states(f)
    parenchymal = f.opacity is not None or f.edema is not None
    blocked = set(present)
    if parenchymal:  # "no focal opacity" next to an opacity would contradict the image
        blocked |= {"Lung Opacity", "Consolidation", "Pneumonia"}
    if f.nodule is not None:
        blocked.add("Lung Opacity")
    draws = rng.random(len(NEGATABLE))
    return tuple(n for (n, p), u in zip(NEGATABLE.items(), draws) if n not in blocked and u < p)


def sample_findings(rng: np.random.Generator, prevalence: Prevalence | Mapping[str, float] | None = None) -> Findings:
    """Draws a findings record; about ``prevalence.normal`` of studies have no pathology."""
    p = as_prevalence(prevalence)
    view = "AP" if rng.random() < p.ap_view else "PA"
    kw: dict[str, Any] = {}
    if rng.random() >= p.normal:
        names = list(Findings.PATHOLOGIES)
        chosen = [n for n in names if rng.random() < getattr(p, n)]
        if not chosen:
            chosen = [names[rng.integers(len(names))]]
        for n in chosen:
            kw[n] = _SAMPLERS[n](rng, p)
        if rng.random() < p.devices:
            k = 1 + int(rng.random() < 0.35)
            kw["devices"] = tuple(sorted(rng.choice(DEVICES, size=k, replace=False).tolist(), key=DEVICES.index))
    if "cardiomegaly" in kw:
        lo, hi = {"mild": (0.53, 0.58), "moderate": (0.58, 0.63), "severe": (0.63, 0.68)}[kw["cardiomegaly"].severity]
        if kw["cardiomegaly"].hedged:
            lo, hi = 0.51, 0.54
        ctr = rng.uniform(lo, hi)
    else:
        ctr = rng.uniform(0.38, 0.48)
    f = Findings(view=view, ctr=round(float(ctr), 3), **kw)
    return dataclasses.replace(f, negated=_sample_negated(rng, f))


def _pick(rng: np.random.Generator, options, probs=None) -> str:
    return str(options[rng.choice(len(options), p=probs)])


_SAMPLERS = {
    "cardiomegaly": lambda r, p: Cardiomegaly(
        sev := _pick(r, ("mild", "moderate", "severe"), (0.5, 0.35, 0.15)), _hedge(r, p, sev == "mild")),
    "effusion": lambda r, p: Effusion(
        _pick(r, ("right", "left", "bilateral"), (0.4, 0.3, 0.3)),
        size := _pick(r, ("small", "moderate", "large"), (0.45, 0.35, 0.2)), _hedge(r, p, size == "small")),
    "pneumothorax": lambda r, p: Pneumothorax(
        _pick(r, SIDES), size := _pick(r, ("small", "moderate", "large"), (0.45, 0.35, 0.2)),
        _hedge(r, p, size == "small")),
    "opacity": lambda r, p: _sample_opacity(r, p),
    "nodule": lambda r, p: _sample_nodule(r, p),
    "edema": lambda r, p: Edema(sev := _pick(r, ("mild", "moderate"), (0.6, 0.4)), _hedge(r, p, sev == "mild")),
    "atelectasis": lambda r, p: Atelectasis(_pick(r, ("right", "left", "bilateral"), (0.35, 0.35, 0.3)), _hedge(r, p, True)),
    "widened_mediastinum": lambda r, p: WidenedMediastinum(w := round(float(r.uniform(0.15, 0.2)), 3), _hedge(r, p, w < 0.165)),
    "fracture": lambda r, p: Fracture(_pick(r, SIDES), int(r.integers(4, 10)), healed := bool(r.random() < 0.4), _hedge(r, p, not healed)),
}


def _sample_opacity(rng: np.random.Generator, p: Prevalence) -> Opacity:
    kind = _pick(rng, ("opacity", "consolidation"))
    side = _pick(rng, ("right", "left", "bilateral"), (0.45, 0.4, 0.15))
    zone = "lower" if side == "bilateral" else _pick(rng, ("upper", "middle", "lower"), (0.25, 0.3, 0.45))
    hedged = _hedge(rng, p, True)
    pneumonia = "none"
    if kind == "consolidation":
        pneumonia = _pick(rng, ("none", "uncertain", "positive"), (0.5, 0.3, 0.2))
        if hedged and pneumonia == "positive":
            pneumonia = "uncertain"
    return Opacity(kind, side, zone, hedged, pneumonia)


def _sample_nodule(rng: np.random.Generator, p: Prevalence) -> Nodule:
    kind = _pick(rng, ("nodule", "mass"), (0.65, 0.35))
    size = int(rng.integers(12, 29) if kind == "nodule" else rng.integers(32, 61))
    zone = _pick(rng, ("upper", "middle", "lower"), (0.4, 0.35, 0.25))
    return Nodule(kind, size, _pick(rng, SIDES), zone, _hedge(rng, p, kind == "nodule"))


# --------------------------------------------------------------------------------------------
# A whole study.
# --------------------------------------------------------------------------------------------
def study_id(seed: int, index: int) -> str:
    return f"syn{seed:04d}-{index:07d}"


def generate_study(seed: int, index: int, resolution: int = 128,
                   prevalence: Prevalence | Mapping[str, float] | None = None) -> dict[str, Any]:
    """The study ``index`` of the synthetic world ``seed``: image, report, labels and VQA.

    Findings, report and VQA depend on (seed, index) only, so the same study at two resolutions
    shows and says the same thing.
    """
    if resolution < 32:
        raise ValueError(f"resolution must be >= 32, got {resolution}")
    streams = np.random.SeedSequence([int(seed), int(index)]).spawn(4)
    findings_rng, render_rng, report_rng, vqa_rng = (np.random.default_rng(s) for s in streams)
    findings = sample_findings(findings_rng, prevalence)
    report = synthetic_reports.compose_report(findings, report_rng)
    return {
        "image": render(findings, resolution, render_rng),
        "findings": report.findings,
        "impression": report.impression,
        "labels": findings_to_labels(findings),
        "attributes": findings.to_json(),
        "view": findings.view,
        "vqa": vqa.vqa_from_findings(findings, vqa_rng),
        "study_id": study_id(seed, index),
    }


# --------------------------------------------------------------------------------------------
# CLI: a contact sheet of studies with their reports.
# --------------------------------------------------------------------------------------------
def write_contact_sheet(out_dir: str, n: int, resolution: int, seed: int) -> tuple[str, str]:
    """Writes ``grid.png`` (n radiographs) and ``reports.md`` (their text and labels)."""
    import pathlib

    from PIL import Image

    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    studies = [generate_study(seed, i, resolution) for i in range(n)]
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    grid = np.zeros((rows * resolution, cols * resolution), np.uint8)
    lines = [f"# Synthetic studies (seed {seed}, {resolution} px)\n",
             "Grid order: row by row, left to right.\n"]
    for i, st in enumerate(studies):
        r, c = divmod(i, cols)
        grid[r * resolution:(r + 1) * resolution, c * resolution:(c + 1) * resolution] = st["image"]
        states = [f"{name}={labels_lib.STATES[int(v)]}" for name, v in zip(labels_lib.OBSERVATIONS, st["labels"])
                  if v != labels_lib.ABSENT]
        lines += [f"## {i}: {st['study_id']} ({st['view']})\n", f"FINDINGS: {st['findings']}\n",
                  f"IMPRESSION: {st['impression']}\n", f"Labels: {', '.join(states)}\n",
                  "VQA: " + " | ".join(f"{q['question']} -> {q['answer']}" for q in st["vqa"]) + "\n"]
    grid_path, text_path = out / "grid.png", out / "reports.md"
    Image.fromarray(grid).save(grid_path)
    text_path.write_text("\n".join(lines))
    return str(grid_path), str(text_path)


def main(argv: list[str] | None = None) -> None:
    from mavilt_jax import cli

    parser = cli.ArgumentParser(prog="python -m mavilt_jax.data.phantoms",
                                description="Write a grid of synthetic chest radiographs and their reports.")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--n", type=int, default=16, help="number of studies (1..400)")
    parser.add_argument("--resolution", type=int, default=128, help="image side in pixels (32..1024)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic world (>= 0)")
    args = parser.parse_args(argv)
    if not 1 <= args.n <= 400:
        parser.error(f"--n must be in 1..400, got {args.n}")
    if not 32 <= args.resolution <= 1024:
        parser.error(f"--resolution must be in 32..1024, got {args.resolution}")
    if args.seed < 0:
        parser.error(f"--seed must be >= 0, got {args.seed}")
    grid, text = write_contact_sheet(args.out, args.n, args.resolution, args.seed)
    print(f"wrote {grid} and {text}")


if __name__ == "__main__":
    main()
