"""``python -m mavilt_jax.reader_study create|serve|report`` (see the package docstring)."""

from __future__ import annotations

import argparse
import signal
import sqlite3
import sys

from mavilt_jax import cli


def _parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(prog="python -m mavilt_jax.reader_study",
                                description="A blinded reader study of generated reports and images (Table V).")
    sub = parser.add_subparsers(dest="command", required=True)
    create = sub.add_parser("create", help="sample blinded cases from prediction files into a study folder")
    create.add_argument("--predictions", nargs="+", required=True, help="prediction JSONL files, one per system")
    create.add_argument("--out", required=True, help="the study folder to write (must not hold a study)")
    create.add_argument("--names", nargs="+", help="system names, one per file (default: the file names)")
    create.add_argument("--studies", type=int, default=30, help="studies sampled per case kind")
    create.add_argument("--duplicates", type=int, default=0, help="cases shown twice (intra-reader consistency)")
    create.add_argument("--kinds", nargs="+", default=["report", "image"], help="case kinds: report, image")
    create.add_argument("--seed", type=int, default=0, help="seed of the case sampling and order")
    create.add_argument("--image_size", type=int, default=512, help="images are scaled to this longer side")
    serve = sub.add_parser("serve", help="serve the rating page")
    serve.add_argument("study", help="the study folder")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000, help="0: any free port")
    report = sub.add_parser("report", help="unblind and write Table V")
    report.add_argument("study", help="the study folder")
    report.add_argument("--out", help="output folder (default: STUDY/report)")
    report.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples")
    report.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    return parser


def _stop(signum, frame) -> None:
    raise KeyboardInterrupt  # SIGTERM stops the server as Ctrl-C does (every rating is already committed)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "create":
            from mavilt_jax.reader_study import study

            key = study.create_study(args.predictions, args.out, args.names, args.studies, args.duplicates,
                                     args.seed, tuple(args.kinds), args.image_size)
            dup = sum(c["duplicate_of"] is not None for c in key["cases"].values())
            print(f"{len(key['cases'])} cases ({dup} duplicates) of {len(key['systems'])} systems -> {args.out}")
        elif args.command == "serve":
            from mavilt_jax.reader_study import server

            httpd = server.make_server(args.study, args.host, args.port)
            host, port = httpd.server_address[:2]
            print(f"Serving the reader study on http://{host}:{port}/ (Ctrl-C to stop)", flush=True)
            signal.signal(signal.SIGTERM, _stop)
            try:
                httpd.serve_forever()
            except KeyboardInterrupt:
                pass
            finally:
                httpd.server_close()
        else:
            from mavilt_jax.reader_study import report

            print(report.write_report(args.study, args.out, args.resamples, args.seed))
    except (FileNotFoundError, ValueError, OSError, sqlite3.Error) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
