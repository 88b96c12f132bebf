"""Prints the report labeler's agreement with IU X-ray's MeSH annotations, per observation.

Usage: python benchmarks/eval_labeler_iu.py [path/to/indiana_reports.csv]
(default ../shared/data/iu_xray/indiana_reports.csv beside the project root).
The MeSH -> observation map is stated in mavilt_jax/data/mesh_terms.py (the IU X-ray builder's labels);
how it is scored, in mavilt_jax/evaluation/iu_mesh.py.
"""

from __future__ import annotations

import pathlib
import sys
import time

from mavilt_jax.evaluation import iu_mesh


def main(argv: list[str]) -> int:
    default = pathlib.Path(__file__).resolve().parents[1].parent / "shared/data/iu_xray/indiana_reports.csv"
    path = pathlib.Path(argv[1]) if len(argv) > 1 else default
    if not path.is_file():
        print(f"error: {path} not found (pass the path of indiana_reports.csv)", file=sys.stderr)
        return 2
    for uncertain_as_positive in (True, False):
        start = time.perf_counter()
        table = iu_mesh.compare_with_mesh(path, uncertain_as_positive=uncertain_as_positive)
        seconds = time.perf_counter() - start
        studies = next(iter(table.values()))["studies"]
        mapping = "positive or uncertain" if uncertain_as_positive else "positive only"
        print(f"\nLabeler vs MeSH on {studies} IU X-ray reports (prediction = {mapping}; "
              f"{seconds:.1f} s)")
        print(f"{'observation':<20} {'P':>6} {'R':>6} {'F1':>6} {'support':>8} {'TP':>5} {'FP':>5} {'FN':>5}")
        for name, row in table.items():
            print(f"{name:<20} {row['precision']:6.3f} {row['recall']:6.3f} {row['f1']:6.3f} "
                  f"{row['support']:8d} {row['tp']:5d} {row['fp']:5d} {row['fn']:5d}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
