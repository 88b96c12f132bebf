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

Image paths are relative to the JSONL file's folder unless absolute. Lines that are not UTF-8 JSON
objects, name an unknown task, miss a required field or hold a field of the wrong type (texts and
paths are strings, labels 14 states in {1, 0, -1, -2}, p_yes a probability) are skipped and
counted (with their line numbers), never silently dropped.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
from collections.abc import Iterable, Mapping

import numpy as np

from mavilt_jax.data import labels as labels_lib

_LABEL_STATES = frozenset({1, 0, -1, -2})

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


# Optional fields and what they must hold when present (None counts as absent).
_TEXT_FIELDS = ("reference", "generation", "question", "answer", "prediction", "question_type", "answer_type",
                "generated_image", "real_image", "report")
_LABEL_FIELDS = ("reference_labels", "generated_labels", "requested_labels")


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _field_problem(key: str, value: object) -> str | None:
    """Why ``value`` cannot be field ``key`` (None when it can)."""
    if key == "study_id":
        ok = isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))
        return None if ok else "study_id must be a string or an integer"
    if key in _TEXT_FIELDS:
        return None if isinstance(value, str) else f"{key} must be a string"
    if key == "p_yes":
        return None if _is_number(value) and 0.0 <= value <= 1.0 else "p_yes must be a probability in [0, 1]"
    if key in _LABEL_FIELDS:
        ok = (isinstance(value, list) and len(value) == labels_lib.NUM_OBSERVATIONS
              and all(isinstance(v, int) and not isinstance(v, bool) and v in _LABEL_STATES for v in value))
        return None if ok else f"{key} must be {labels_lib.NUM_OBSERVATIONS} label states (1, 0, -1, -2)"
    if key == "classifier_probs":
        ok = (isinstance(value, list) and len(value) == labels_lib.NUM_OBSERVATIONS
              and all(_is_number(v) for v in value))
        return None if ok else f"classifier_probs must be {labels_lib.NUM_OBSERVATIONS} numbers"
    return None


def _problem(record: object) -> str | None:
    if not isinstance(record, dict):
        return "not a JSON object"
    task = record.get("task")
    if task not in TASKS:
        return f"unknown task {task!r} (expected one of {', '.join(TASKS)})"
    missing = [k for k in REQUIRED[task] if record.get(k) is None]
    if missing:
        return f"{task} record misses {', '.join(missing)}"
    return next((p for k, v in record.items() if v is not None and (p := _field_problem(k, v))), None)


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
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                parsed.append((lineno, json.loads(raw.decode("utf-8"))))
            except UnicodeDecodeError:
                bad.append({"line": lineno, "reason": "not UTF-8 text"})
            except json.JSONDecodeError as e:
                bad.append({"line": lineno, "reason": f"invalid JSON ({e.msg})"})
            except RecursionError:
                bad.append({"line": lineno, "reason": "invalid JSON (nested too deeply)"})
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


def append_records(path: str | pathlib.Path, records: Iterable[Mapping]) -> int:
    """Appends records to a JSONL file in one write, flushed to disk, so that an interrupted
    generation keeps every finished batch (`resume_records` reads them back)."""
    text = "".join(json.dumps(r, default=_jsonable, ensure_ascii=False) + "\n" for r in records)
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    return text.count("\n")


def resume_records(path: str | pathlib.Path) -> list[dict]:
    """The records an interrupted run appended to ``path`` ([] when there is none). A last line
    cut off by the interruption (not valid JSON) is removed from the file."""
    path = pathlib.Path(path)
    if not path.is_file():
        return []
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    records, good = [], 0
    for line in lines:
        try:
            record = json.loads(line) if line.strip() else None
        except (ValueError, RecursionError):
            break
        if record is not None:
            if not isinstance(record, dict):
                break
            records.append(record)
        good += len(line) + 1
    if good < len(raw):
        with open(path, "r+b") as f:
            f.truncate(good)
    return records


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
