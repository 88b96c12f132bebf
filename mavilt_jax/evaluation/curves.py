"""Learning curves of the main job's LLM stages, read from their ``eval_history.jsonl``.

The training loop appends one line per evaluation (``{"step": ..., validation figures}``,
`mavilt_jax.train.EVAL_HISTORY`). For stages 1 and 2 the figures include ``image_gain``: the
validation text cross-entropy with another study's radiograph minus that with the study's own
(nats per scored text token; 0: the image is ignored), so the curve shows whether reading the
image is still improving when training stops, i.e. whether more steps would help.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Mapping, Sequence

COLUMNS: tuple[tuple[str, str], ...] = (
    ("text_ce", "text CE"), ("text_ce_other_image", "text CE, another study's image"),
    ("image_gain", "gain from the image"), ("image_ce", "image CE"))


def read_history(workdir: str | pathlib.Path) -> list[dict]:
    """The evaluations of a training workdir in step order (the last one of a step wins: a resumed
    run may have evaluated a step twice); [] when it has none."""
    path = pathlib.Path(workdir) / "eval_history.jsonl"
    if not path.is_file():
        return []
    by_step: dict[int, dict] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            by_step[int(row["step"])] = row
    return [by_step[s] for s in sorted(by_step)]


def thin(rows: Sequence[Mapping], count: int) -> list[Mapping]:
    """At most ``count`` rows, evenly spaced, always with the first and the last."""
    if len(rows) <= count:
        return list(rows)
    picks = sorted({round(i * (len(rows) - 1) / (count - 1)) for i in range(count)})
    return [rows[i] for i in picks]


def render(curves: Mapping[str, Sequence[Mapping]], rows: int = 10) -> str:
    """Markdown: one table per stage, step by step."""
    lines = []
    for name, history in curves.items():
        if not history:
            continue
        cols = [(k, label) for k, label in COLUMNS if any(k in h for h in history)]
        lines += ["", f"### {name}", "", "| step | " + " | ".join(label for _, label in cols) + " |",
                  "|---|" + "---|" * len(cols)]
        for h in thin(history, rows):
            cells = [f"{h[k]:.4f}" if k in h else "–" for k, _ in cols]
            lines.append(f"| {h['step']} | " + " | ".join(cells) + " |")
    if not lines:
        return ""
    return "\n".join(["", "## Learning curves (validation split, at each evaluation during training)", "",
                      "Gain from the image: text CE with another study's radiograph minus with the study's own, "
                      "nats per token (0: the image is ignored). Still rising at the last step: more steps would help."]
                     + lines) + "\n"
