"""Per-study evaluation records, stored as JSONL so that others can re-score them.

One JSON object per line, with a ``task`` field and the fields of that task:

  report_generation  study_id, reference, generation, optional image (the input radiograph,
                     PNG path; the reader study shows it)
                     (added on scoring: reference_labels, generated_labels, int [14])
  report_to_image    study_id, generated_image (PNG path), optional real_image (PNG path),
                     report (the conditioning text) and/or requested_labels [14],
                     optional classifier_probs [14] (an independent classifier's probabilities)
  vqa                study_id, question, answer, prediction, optional p_yes, question_type,
                     answer_type

Image paths are relative to the JSONL file's folder unless absolute. Lines that are not JSON
objects, name an unknown task or miss a required field are skipped and counted (with their line
numbers), never silently dropped.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Iterable, Mapping

import numpy as np

TASKS: tuple[str, ...] = ("report_generation", "report_to_image", "vqa")
REQUIRED: dict[str, tuple[str, ...]] = {
    "report_generation": ("study_id", "reference", "generation"),
    "report_to_image": ("study_id", "generated_image"),
    "vqa": ("study_id", "question", "answer", "prediction"),
}


@dataclasses.dataclass
class RecordSet:
    """Records grouped by task, with the lines that could not be used."""

    by_task: dict[str, list[dict]]
    skipped: list[dict]
    base_dir: pathlib.Path

    @property
    def total(self) -> int:
        return sum(len(v) for v in self.by_task.values())


def _problem(record: object) -> str | None:
    if not isinstance(record, dict):
        return "not a JSON object"
    task = record.get("task")
    if task not in TASKS:
        return f"unknown task {task!r} (expected one of {', '.join(TASKS)})"
    missing = [k for k in REQUIRED[task] if record.get(k) is None]
    return f"{task} record misses {', '.join(missing)}" if missing else None


def group_records(records: Iterable[Mapping], base_dir: str | pathlib.Path = ".") -> RecordSet:
    """Validates in-memory records; same rules as :func:`read_records`."""
    by_task: dict[str, list[dict]] = {t: [] for t in TASKS}
    skipped = []
    for i, record in enumerate(records):
        problem = _problem(record)
        if problem:
            skipped.append({"line": i + 1, "reason": problem})
        else:
            by_task[record["task"]].append(dict(record))
    return RecordSet(by_task, skipped, pathlib.Path(base_dir))


def read_records(path: str | pathlib.Path) -> RecordSet:
    """Reads a predictions JSONL file; raises FileNotFoundError / ValueError (no usable line)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"predictions file not found: {path}")
    parsed, bad = [], []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                parsed.append((lineno, json.loads(line)))
            except json.JSONDecodeError as e:
                bad.append({"line": lineno, "reason": f"invalid JSON ({e.msg})"})
    grouped = group_records([r for _, r in parsed], path.parent)
    # group_records numbers records from 1; map back to file lines.
    for entry in grouped.skipped:
        entry["line"] = parsed[entry["line"] - 1][0]
    grouped.skipped = sorted(bad + grouped.skipped, key=lambda e: e["line"])
    if grouped.total == 0:
        raise ValueError(f"{path}: no usable records ({len(grouped.skipped)} lines skipped"
                         + (f"; first: line {grouped.skipped[0]['line']}: {grouped.skipped[0]['reason']}" if grouped.skipped else "") + ")")
    return grouped


def _jsonable(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, pathlib.Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def write_records(path: str | pathlib.Path, records: Iterable[Mapping]) -> int:
    """Writes records as JSONL (numpy arrays as lists); returns the number of lines."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, default=_jsonable, ensure_ascii=False) + "\n")
            n += 1
    return n
