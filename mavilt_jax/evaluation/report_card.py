"""A Markdown report card laid out like the paper's Tables I-III and V, every figure with its CI."""

from __future__ import annotations

from collections.abc import Mapping

from mavilt_jax.evaluation import nlg


def _cell(est: Mapping | None, digits: int = 3) -> str:
    if not est or est.get("value") is None:
        return "–"
    v, lo, hi = est["value"], est["ci_low"], est["ci_high"]
    if v != v:  # NaN: undefined on this sample
        return "n/a"
    return f"{v:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _table_i(res: Mapping, method: str) -> list[str]:
    nlg_m, ce = res["nlg"], res["clinical_efficacy"]
    out = [f"## Table I: report generation ({res['n_studies']} studies)", ""]
    out += _table(["Method", *nlg.NLG_METRICS, "CE P", "CE R", "CE F1"],
                  [[method, *[_cell(nlg_m.get(m)) for m in nlg.NLG_METRICS],
                    *[_cell(ce.get(f"{k}_micro")) for k in ("precision", "recall", "f1")]]])
    out += ["", "Clinical efficacy in detail (micro / macro; all 14 observations and the CheXpert top 5):", ""]
    rows = []
    for scope, prefix in (("14 observations", ""), ("top 5", "top5/")):
        for avg in ("micro", "macro"):
            rows.append([scope, avg, *[_cell(ce.get(f"{prefix}{k}_{avg}")) for k in ("precision", "recall", "f1")]])
    out += _table(["Observations", "Average", "Precision", "Recall", "F1"], rows)
    per_obs = [[k.split("/", 1)[1], _cell(v)] for k, v in ce.items() if k.startswith("f1/")]
    out += ["", "Per-observation F1:", ""] + _table(["Observation", "F1"], per_obs)
    return out


def _table_ii(res: Mapping, method: str) -> list[str]:
    out = [f"## Table II: report -> image ({res['n_studies']} studies)", ""]
    header, row = ["Method"], [method]
    for name, fd in res["fid"].items():
        header.append(f"FD ({name})")
        row.append(fd["skipped"] if "skipped" in fd else
                   f"{_cell(fd, 2)} (n = {fd['n_real']} real / {fd['n_generated']} generated)")
    cond = res.get("conditional")
    header += ["Cond. AUROC (macro)", "Cond. accuracy (macro)"]
    row += [_cell(cond["metrics"].get("auroc_macro")), _cell(cond["metrics"].get("accuracy_macro"))] if cond else ["–", "–"]
    out += _table(header, [row])
    if cond:
        rows = []
        for key, est in cond["metrics"].items():
            if key.startswith("auroc/"):
                name = key.split("/", 1)[1]
                rows.append([name, _cell(est), _cell(cond["metrics"].get(f"accuracy/{name}")),
                             str(cond["counts"].get(f"n/{name}", "")), str(cond["counts"].get(f"n_requested/{name}", ""))])
        out += ["", "Conditional correctness per finding:", ""]
        out += _table(["Finding", "AUROC", "Accuracy", "Studies", "Requested"], rows)
    if res.get("skipped_images"):
        out += ["", f"{len(res['skipped_images'])} studies skipped for unreadable images."]
    if res.get("grid"):
        out += ["", f"![real (top) vs generated (bottom) for the same reports]({res['grid']})"]
    return out


def _table_iii(res: Mapping, method: str) -> list[str]:
    m, counts = res["metrics"], res["counts"]
    out = [f"## Table III: VQA ({counts['questions']} questions, {res['n_studies']} studies)", ""]
    out += _table(["Method", "Accuracy", "Closed accuracy", "Open accuracy", "AUROC (yes/no)"],
                  [[method, _cell(m.get("accuracy")), _cell(m.get("accuracy/answer_type/closed")),
                    _cell(m.get("accuracy/answer_type/open")), _cell(m.get("auroc_yes_no"))]])
    rows = [[k.split("/")[-1], _cell(v), str(counts.get(f"question_type/{k.split('/')[-1]}", ""))]
            for k, v in m.items() if k.startswith("accuracy/question_type/")]
    if rows:
        out += ["", "Accuracy per question type:", ""] + _table(["Question type", "Accuracy", "Questions"], rows)
    return out


def _table_v(res: Mapping) -> list[str]:
    """Table V: readers' mean ratings per system, agreement, consistency, paired comparisons."""
    scales = res["scales"]
    out = [f"## Table V: reader study ({len(res['readers'])} readers, {res['n_ratings']} ratings of "
           f"{res['n_cases']} cases)", ""]
    rows = [[name, *[(f"{_cell(scales[k]['means'][name], 2)} (n = {scales[k]['means'][name]['studies_rated']})"
                      if name in scales[k]["means"] else "–") for k in scales]] for name in res["systems"]]
    out += _table(["Method", *[f"{s['name']} (1-5)" for s in scales.values()]], rows)
    out += ["", "Agreement (Krippendorff's alpha, ordinal) and intra-reader consistency on duplicate cases:", ""]
    rows = []
    for s in scales.values():
        inter, intra = s["inter_reader"], s["intra_reader"]
        rows.append([s["name"], _cell(inter["alpha"]), str(inter["pairable_cases"]), _cell(intra.get("alpha")),
                     _cell(intra.get("exact_agreement")), _cell(intra.get("mean_abs_difference"), 2),
                     str(intra["pairs"])])
    out += _table(["Scale", "Inter-reader alpha", "Cases (>= 2 readers)", "Intra-reader alpha", "Exact agreement",
                   "Mean abs. difference", "Duplicate pairs"], rows)
    rows = [[s["name"], f"{p['a']} - {p['b']}", _cell(p.get("difference"), 2),
             "–" if not p.get("wilcoxon") or p["wilcoxon"]["statistic"] is None else f"{p['wilcoxon']['statistic']:.1f}",
             "–" if not p.get("wilcoxon") else f"{p['wilcoxon']['p_value']:.3g}", str(p["studies"])]
            for s in scales.values() for p in s["paired"]]
    if rows:
        out += ["", "Paired comparison on the same studies (per-study mean ratings):", ""]
        out += _table(["Scale", "Systems (A - B)", "Mean difference", "Wilcoxon W", "p (two-sided)", "Studies"], rows)
    out += ["", "Readers (ratings): " + (", ".join(f"{r['name']} ({r['ratings']})" for r in res["readers"]) or "none yet")]
    return out


def render(results: Mapping, method: str = "MAViLT (this run)") -> str:
    """Markdown text of the report card."""
    lines = ["# Evaluation report card", "",
             "Each figure: value [95 % CI lower, upper] (bootstrap over studies: percentile; basic for FD, which resampling inflates).", ""]
    if "report_generation" in results:
        lines += _table_i(results["report_generation"], method) + [""]
    if "report_to_image" in results:
        lines += _table_ii(results["report_to_image"], method) + [""]
    if "vqa" in results:
        lines += _table_iii(results["vqa"], method) + [""]
    if "reader_study" in results:
        lines += _table_v(results["reader_study"]) + [""]
    lines += ["## Conventions", ""] + [f"- **{k}**: {v}" for k, v in results.get("conventions", {}).items()]
    skipped = results.get("skipped_records") or []
    if skipped:
        lines += ["", f"## Skipped input lines ({len(skipped)})", ""]
        lines += [f"- line {s['line']}: {s['reason']}" for s in skipped[:50]]
    return "\n".join(lines) + "\n"
