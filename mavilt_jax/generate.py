"""Reports, images and answers from a trained model on your own files.

  python -m mavilt_jax.generate report --checkpoint=DIR_OR_BUNDLE cxr.png [more.dcm folder/ ...] [--out=reports.jsonl]
  python -m mavilt_jax.generate image  --checkpoint=DIR_OR_BUNDLE --report="No acute findings." --out_dir=images/
  python -m mavilt_jax.generate vqa    --checkpoint=DIR_OR_BUNDLE cxr.dcm --question="Is there an effusion?" [--question=...]

Images: PNG, JPEG or DICOM files, or folders of them (read by `mavilt_jax.image_io`). ``report``
prints the report of one image, or one JSON line per image ({"image", "report"}) for several, to
``--out`` or stdout; decoding ``--decoding=greedy|beam|sample`` with ``--beams``, ``--temperature``,
``--top_k``, ``--top_p``, ``--seed``. ``image`` writes ``--num_samples`` PNGs of a report given as
``--report`` or ``--report_file``, guided with ``--guidance_scale``. ``vqa`` prints each answer, and
P(yes) for yes/no questions. A user error (missing or unreadable file, a file that is not a
radiograph, an empty report, a checkpoint of the wrong stage or an unfinished workdir) exits with
status 2 and one line.
"""

from __future__ import annotations

import argparse
import json
import logging
import pathlib
import sys
from typing import Any

from mavilt_jax import cli, image_io

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg") + image_io.DICOM_SUFFIXES


class UsageError(Exception):
    """A bad argument; reported as one line, without a traceback."""


def image_paths(items: list[str]) -> list[pathlib.Path]:
    """Files as given, folders expanded to their image files (sorted, not recursive)."""
    paths: list[pathlib.Path] = []
    for item in items:
        path = pathlib.Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise UsageError(f"folder {item!r} holds no PNG, JPEG or DICOM file")
            paths += found
        elif path.is_file():
            paths.append(path)
        else:
            raise UsageError(f"{item!r} does not exist")
    if not paths:
        raise UsageError("no image given")
    return paths


def read_all(paths: list[pathlib.Path]) -> list[Any]:
    """Every image read and checked before the model loads, so a bad file fails fast."""
    return [image_io.read_pixels(p) for p in paths]


def _write_lines(rows: list[dict], out: str | None) -> None:
    text = "".join(json.dumps(row) + "\n" for row in rows)
    if out:
        pathlib.Path(out).write_text(text)
        print(f"wrote {len(rows)} lines to {out}")
    else:
        sys.stdout.write(text)


def _check_out(path: str | None, folder: bool = False) -> None:
    if path is None:
        return
    parent = pathlib.Path(path) if folder else pathlib.Path(path).absolute().parent
    if folder and parent.exists() and not parent.is_dir():
        raise UsageError(f"--out_dir {path!r} is a file")
    if not folder and not parent.is_dir():
        raise UsageError(f"--out: folder {str(parent)!r} does not exist")


def run_report(args: argparse.Namespace) -> None:
    from mavilt_jax import inference

    _check_out(args.out)
    paths = image_paths(args.images)
    pixels = read_all(paths)
    decoding = inference.Decoding(method=args.decoding, temperature=args.temperature, top_k=args.top_k,
                                  top_p=args.top_p, beams=args.beams, max_new_tokens=args.max_new_tokens)
    model = inference.load(args.checkpoint, allow_unfinished=args.allow_unfinished)
    reports: list[str] = []
    for start in range(0, len(pixels), args.batch_size):
        reports += model.reports(pixels[start:start + args.batch_size], seed=args.seed, **vars(decoding))
    if len(paths) == 1 and not args.out:
        print(reports[0])
    else:
        _write_lines([{"image": str(p), "report": r} for p, r in zip(paths, reports)], args.out)


def run_image(args: argparse.Namespace) -> None:
    from PIL import Image

    from mavilt_jax import inference

    if (args.report is None) == (args.report_file is None):
        raise UsageError("give the report as --report=TEXT or --report_file=FILE (one of them)")
    if args.report_file is not None:
        try:
            report = pathlib.Path(args.report_file).read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise UsageError(f"cannot read --report_file {args.report_file!r}: {getattr(e, 'strerror', None) or e}") from e
    else:
        report = args.report
    report = inference.check_text(report, "report")
    _check_out(args.out_dir, folder=True)
    model = inference.load(args.checkpoint, allow_unfinished=args.allow_unfinished)
    images = model.image(report, guidance_scale=args.guidance_scale, num_samples=args.num_samples, seed=args.seed,
                         temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    out = pathlib.Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for i, pixels in enumerate(images):
        name = out / f"{args.prefix}{i}.png"
        Image.fromarray(pixels).save(name)
        print(name)


def run_vqa(args: argparse.Namespace) -> None:
    from mavilt_jax import inference

    _check_out(args.out)
    if not args.question:
        raise UsageError("give at least one --question")
    questions = [inference.check_text(q, "question") for q in args.question]
    paths = image_paths(args.images)
    pixels = read_all(paths)
    model = inference.load(args.checkpoint, allow_unfinished=args.allow_unfinished)
    rows = []
    for path, image in zip(paths, pixels):
        for a in model.answers(image, questions):
            rows.append({"image": str(path), "question": a.question, "answer": a.text, "p_yes": a.p_yes})
    if len(paths) == 1 and not args.out:
        for row in rows:
            p = "" if row["p_yes"] is None else f"  (P(yes) = {row['p_yes']:.3f})"
            print(f"Q: {row['question']}\nA: {row['answer']}{p}")
    else:
        _write_lines(rows, args.out)


def build_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(prog="python -m mavilt_jax.generate", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="task", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--checkpoint", required=True, help="a finished stage-2 workdir or an export bundle")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--allow_unfinished", action="store_true", help="use the last checkpoint of an unfinished run")

    report = sub.add_parser("report", help="radiographs -> reports")
    common(report)
    report.add_argument("images", nargs="+", help="image files (PNG, JPEG, DICOM) or folders of them")
    report.add_argument("--out", help="JSONL file (default: stdout)")
    report.add_argument("--decoding", choices=("greedy", "beam", "sample"), default="greedy")
    report.add_argument("--beams", type=int, default=4)
    report.add_argument("--temperature", type=float, default=1.0)
    report.add_argument("--top_k", type=int, default=0)
    report.add_argument("--top_p", type=float, default=1.0)
    report.add_argument("--max_new_tokens", type=int, default=128)
    report.add_argument("--batch_size", type=int, default=8)

    image = sub.add_parser("image", help="a report -> radiographs (PNG)")
    common(image)
    image.add_argument("--report", help="the report text")
    image.add_argument("--report_file", help="a text file holding the report")
    image.add_argument("--out_dir", required=True)
    image.add_argument("--prefix", default="generated_", help="file names: PREFIX0.png, PREFIX1.png, ...")
    image.add_argument("--num_samples", type=int, default=1)
    image.add_argument("--guidance_scale", type=float, default=3.0)
    image.add_argument("--temperature", type=float, default=1.0)
    image.add_argument("--top_k", type=int, default=0)
    image.add_argument("--top_p", type=float, default=1.0)

    vqa = sub.add_parser("vqa", help="questions about radiographs")
    common(vqa)
    vqa.add_argument("images", nargs="+", help="image files or folders")
    vqa.add_argument("--question", action="append", help="a question (repeat for several)")
    vqa.add_argument("--out", help="JSONL file (default: text on stdout for one image, JSONL for several)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.getLogger("absl").setLevel(logging.ERROR)  # orbax's read-only restore notes are not for the user
    from mavilt_jax import inference

    try:
        {"report": run_report, "image": run_image, "vqa": run_vqa}[args.task](args)
    except (UsageError, image_io.ImageError, inference.InferenceError) as e:
        parser.exit(2, f"{parser.prog} {args.task}: error: {e}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
