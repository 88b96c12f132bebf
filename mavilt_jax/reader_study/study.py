"""The study folder: a blinded sample of cases from several systems' prediction files.

A *case* is what a reader rates on one scale:
  report  the study's radiograph and one system's generated report -> report quality
          (clinical accuracy and coherence), 1-5;
  image   the study's reference report and one system's generated image -> image quality
          (realism and agreement with the report), 1-5.
Every sampled study gives one case per system that has predictions for it, so systems are compared
on the same studies (paired). Optional duplicates repeat some cases under new ids to measure
intra-reader consistency.

Written to the study folder:
  study.json   the blinded cases (opaque random ids, text, image file); the only file the server
               reads besides images/ and the ratings database;
  images/      one PNG per case id, re-encoded as 8-bit grayscale without metadata and scaled to
               one size, so that neither file names, formats nor sizes tell systems apart;
  key.json     what unblinds: each case's system, study and stratum, the duplicates' originals,
               the prediction files, the strata. Only ``report`` reads it.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image

from mavilt_jax.data import labels as L
from mavilt_jax.evaluation import records as records_lib

KINDS: tuple[str, ...] = ("report", "image")
SCALES: dict[str, dict[str, str]] = {
    "report": {"name": "Report quality",
               "question": "Rate the report for this radiograph: clinical accuracy and coherence."},
    "image": {"name": "Image quality",
              "question": "Rate the radiograph: realism and agreement with the report."},
}
ANCHORS: dict[int, str] = {1: "poor", 2: "", 3: "", 4: "", 5: "excellent"}  # the paper names the ends only
NO_FINDING = "No Finding"
# Not findings: a study is stratified by its first positive pathology in CheXpert's order.
_NOT_STRATA = ("No Finding", "Support Devices")


def stratum(label_vector: Sequence[int] | None) -> str:
    """The study's stratum: its first positive pathology (CheXpert order), else "No Finding"."""
    if label_vector is None:
        return "unlabelled"
    for name, value in zip(L.OBSERVATIONS, label_vector):
        if name not in _NOT_STRATA and int(value) == L.POSITIVE:
            return name
    return NO_FINDING


def stratified_sample(strata: Mapping[str, str], n: int, rng: np.random.Generator) -> list[str]:
    """``n`` keys of ``strata`` (key -> stratum) drawn without replacement, allocated to strata in
    proportion to their sizes (largest remainder), every stratum at least one when ``n`` allows."""
    groups: dict[str, list[str]] = {}
    for key in sorted(strata):
        groups.setdefault(strata[key], []).append(key)
    names = sorted(groups)
    sizes = np.array([len(groups[s]) for s in names])
    total = int(sizes.sum())
    if n >= total:
        return sorted(strata)
    alloc = np.minimum(sizes, 1) if n >= len(names) else np.zeros_like(sizes)
    rest = n - int(alloc.sum())
    quota = rest * (sizes - alloc) / max(int((sizes - alloc).sum()), 1)
    alloc = alloc + np.floor(quota).astype(int)
    # Largest remainders first; ties broken at random so no stratum is favoured by its name.
    for i in np.lexsort((rng.random(len(names)), -(quota - np.floor(quota)))):
        if alloc.sum() >= n:
            break
        if alloc[i] < sizes[i]:
            alloc[i] += 1
    chosen: list[str] = []
    for name, k in zip(names, alloc):
        chosen += [groups[name][j] for j in sorted(rng.choice(len(groups[name]), size=int(k), replace=False))]
    return sorted(chosen)


def _resolve(path: str, base: pathlib.Path) -> pathlib.Path:
    p = pathlib.Path(path)
    return p if p.is_absolute() else base / p


def _write_image(src: pathlib.Path, dst: pathlib.Path, size: int) -> None:
    try:
        with Image.open(src) as im:
            image = im.convert("L")
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read image {src}: {e}") from None
    scale = size / max(image.size)
    image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.BICUBIC)
    image.save(dst, format="PNG")


def _study_labels(record_sets: Sequence[records_lib.RecordSet]) -> tuple[dict, dict, dict]:
    """(study -> reference text, study -> radiograph path, study -> label vector or None) over all files."""
    reference, radiograph, labels = {}, {}, {}
    for rs in record_sets:
        for r in rs.by_task["report_generation"]:
            sid = str(r["study_id"])
            reference.setdefault(sid, r["reference"])
            if r.get("image"):
                radiograph.setdefault(sid, _resolve(r["image"], rs.base_dir))
            if r.get("reference_labels") is not None:
                labels.setdefault(sid, list(r["reference_labels"]))
        for r in rs.by_task["report_to_image"]:
            sid = str(r["study_id"])
            if r.get("report"):
                reference.setdefault(sid, r["report"])
            if r.get("real_image"):
                radiograph.setdefault(sid, _resolve(r["real_image"], rs.base_dir))
            if r.get("requested_labels") is not None:
                labels.setdefault(sid, list(r["requested_labels"]))
    unlabelled = sorted(s for s in reference if s not in labels)
    if unlabelled:
        from mavilt_jax.evaluation import labeler  # spaCy: only when records carry no labels

        for sid, vec in zip(unlabelled, labeler.label_reports([reference[s] for s in unlabelled])):
            labels[sid] = vec.tolist()
    return reference, radiograph, labels


def create_study(predictions: Sequence[str | pathlib.Path], out: str | pathlib.Path,
                 names: Sequence[str] | None = None, n_studies: int = 30, duplicates: int = 0,
                 seed: int = 0, kinds: Sequence[str] = KINDS, image_size: int = 512) -> dict:
    """Writes a study to ``out`` (see the module docstring); returns the key."""
    out = pathlib.Path(out)
    if names is None:
        names = [pathlib.Path(p).stem for p in predictions]
    if len(names) != len(predictions):
        raise ValueError(f"{len(names)} names for {len(predictions)} prediction files")
    if len(set(names)) != len(names):
        raise ValueError(f"system names must differ: {', '.join(names)} (name them with --names)")
    if unknown := set(kinds) - set(KINDS):
        raise ValueError(f"unknown case kinds {sorted(unknown)} (expected {', '.join(KINDS)})")
    if n_studies < 1 or duplicates < 0 or image_size < 8:
        raise ValueError("need --studies >= 1, --duplicates >= 0, --image_size >= 8")
    if (out / "study.json").exists():
        raise ValueError(f"{out} already holds a study")
    record_sets = [records_lib.read_records(p) for p in predictions]
    reference, radiograph, labels = _study_labels(record_sets)
    rng = np.random.default_rng(seed)

    plan = []  # (kind, system index, study id, stratum, text, image source)
    strata_key: dict[str, dict] = {}
    for kind in kinds:
        task = "report_generation" if kind == "report" else "report_to_image"
        by_system = {i: {str(r["study_id"]): r for r in rs.by_task[task]} for i, rs in enumerate(record_sets)}
        by_system = {i: recs for i, recs in by_system.items() if recs}
        if not by_system:
            continue
        eligible = set.intersection(*(set(recs) for recs in by_system.values()))
        eligible = {s for s in eligible if (s in radiograph if kind == "report" else s in reference)}
        if not eligible:
            raise ValueError(f"no study has {kind} cases from every system"
                             + (" and a radiograph (real_image or image field)" if kind == "report" else ""))
        strata = {s: stratum(labels.get(s)) for s in eligible}
        sample = stratified_sample(strata, n_studies, rng)
        counts: dict[str, dict[str, int]] = {}
        for s in eligible:
            counts.setdefault(strata[s], {"eligible": 0, "sampled": 0})["eligible"] += 1
        for s in sample:
            counts[strata[s]]["sampled"] += 1
        strata_key[kind] = dict(sorted(counts.items()))
        for sid in sample:
            for i, recs in sorted(by_system.items()):
                r = recs[sid]
                if kind == "report":
                    plan.append((kind, i, sid, strata[sid], r["generation"], radiograph[sid]))
                else:
                    plan.append((kind, i, sid, strata[sid], reference[sid],
                                 _resolve(r["generated_image"], record_sets[i].base_dir)))
    if not plan:
        raise ValueError("the prediction files hold no report_generation or report_to_image records")

    ids: list[str] = []
    while len(ids) < len(plan) + min(duplicates, len(plan)):
        new_id = "c" + rng.bytes(5).hex()
        if new_id not in ids:
            ids.append(new_id)
    out.mkdir(parents=True, exist_ok=True)
    (out / "images").mkdir(exist_ok=True)
    cases, key_cases = [], {}
    for case_id, (kind, i, sid, st, text, image) in zip(ids, plan):
        _write_image(image, out / "images" / f"{case_id}.png", image_size)
        cases.append({"case_id": case_id, "kind": kind, "text": text, "image": f"images/{case_id}.png"})
        key_cases[case_id] = {"system": names[i], "study_id": sid, "kind": kind, "stratum": st, "duplicate_of": None}
    originals = list(cases)
    for case_id, j in zip(ids[len(plan):], rng.choice(len(originals), size=len(ids) - len(plan), replace=False)):
        src = originals[int(j)]
        _write_image(out / src["image"], out / "images" / f"{case_id}.png", image_size)
        cases.append({**src, "case_id": case_id, "image": f"images/{case_id}.png"})
        key_cases[case_id] = {**key_cases[src["case_id"]], "duplicate_of": src["case_id"]}
    cases.sort(key=lambda c: c["case_id"])  # random ids: file order says nothing of the system
    study = {"version": 1, "seed": seed, "scales": {k: SCALES[k] for k in kinds}, "anchors": ANCHORS, "cases": cases}
    key = {"systems": {n: str(pathlib.Path(p).resolve()) for n, p in zip(names, predictions)},
           "strata": strata_key, "cases": dict(sorted(key_cases.items())),
           "skipped_records": {n: len(rs.skipped) for n, rs in zip(names, record_sets)}}
    (out / "study.json").write_text(json.dumps(study, indent=1, ensure_ascii=False))
    (out / "key.json").write_text(json.dumps(key, indent=1, ensure_ascii=False))
    return key


def load_cases(study_dir: str | pathlib.Path) -> dict:
    """The blinded study (study.json); raises FileNotFoundError when the folder holds none."""
    path = pathlib.Path(study_dir) / "study.json"
    if not path.is_file():
        raise FileNotFoundError(f"no study at {study_dir} (study.json missing; run create first)")
    return json.loads(path.read_text())


def load_key(study_dir: str | pathlib.Path) -> dict:
    path = pathlib.Path(study_dir) / "key.json"
    if not path.is_file():
        raise FileNotFoundError(f"the study's key is missing: {path}")
    return json.loads(path.read_text())
