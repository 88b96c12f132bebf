"""Where the reading of a radiograph is lost, per observation: what the codes carry, what the
LLM's state holds, what the model answers and what its reports say.

  python -m benchmarks.reading --workdir=/tmp/mavilt/stage2 --out=/tmp/mavilt_reading.json

``--workdir`` is a finished stage-2 (or stage-1) workdir; its data source gives the studies
(``TFDS_DATA_DIR``, as for training). For every observation with both classes among the test
studies, four columns, each a step further along the path from the pixels to the words:

  codes   test AUROC of a logistic regression on the one-hot VQ-GAN codes (`probe.code_probe`),
          fitted on the first ``--train_studies`` training studies: what the tokenizer passes on;
  state   the same regression on the LLM's last hidden state (after the final norm: the vector
          the LM head reads) at the last position of the report prompt, fitted on the same
          studies: what the LLM holds, linearly, where it starts to write;
  asked   (stage 2) AUROC of the model's own P(yes) to the observation's presence questions
          (`data.vqa.PRESENCE_QUESTIONS`, every wording asked of every test study, the
          evaluation's instruction wording): what the model answers;
  said    recall and precision of the observation in the model's greedy reports (the
          evaluation's prompt; the labeler on report and reference): what the model writes.

A gap between ``codes`` and ``state`` is lost on the way into the LLM; between ``state`` and
``asked``/``said`` it is held but not used. Prints the table and writes it as JSON (``--out``).
"""

from __future__ import annotations

import json
import pathlib
import sys
from collections.abc import Mapping, Sequence

import numpy as np

from mavilt_jax import cli

COLUMNS = ("codes", "state", "asked", "said_recall", "said_precision")


def last_prompt_states(generator, prompts: Sequence[Sequence[int]], batch_size: int = 64) -> np.ndarray:
    """The LLM's final-norm output (what the LM head reads) at the last position of each prompt, float32 [N, D].

    Prompts of one length run together without padding (the report prompts of one wording all
    have the same length), so no mask or position offset enters."""
    import jax
    import jax.numpy as jnp

    model = generator.stage.model

    @jax.jit
    def states(params, tokens):
        positions = jnp.broadcast_to(jnp.arange(tokens.shape[1])[None], tokens.shape)
        _, captured = model.apply({"params": params}, tokens, positions, last_logits_only=True,
                                  capture_intermediates=lambda mdl, _: mdl.name == "final_norm",
                                  mutable=["intermediates"])
        return captured["intermediates"]["final_norm"]["__call__"][0][:, -1]

    out: list[np.ndarray | None] = [None] * len(prompts)
    by_length: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        by_length.setdefault(len(p), []).append(i)
    for rows in by_length.values():
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            tokens = np.asarray([prompts[i] for i in chunk], np.int32)
            for i, s in zip(chunk, np.asarray(states(generator.params, tokens), np.float32), strict=True):
                out[i] = s
    return np.stack(out)


def state_probe(train_states: np.ndarray, train_labels: np.ndarray, test_states: np.ndarray,
                test_labels: np.ndarray, observations: Sequence[str], n_jobs: int = 1) -> dict[str, float]:
    """Test AUROC per observation of `probe.linear_probe` (the code probe's regression) on
    standardised states."""
    from sklearn.preprocessing import StandardScaler

    from mavilt_jax.evaluation import probe

    scaler = StandardScaler().fit(train_states)
    out = probe.linear_probe(scaler.transform(train_states), train_labels, scaler.transform(test_states), test_labels,
                             observations=observations, n_jobs=n_jobs)
    return {name: out[f"auroc/{name}"] for name in observations if f"auroc/{name}" in out}


def asked_auroc(generator, codes: np.ndarray, labels: np.ndarray, observations: Sequence[str],
                batch_size: int = 64) -> dict[str, float]:
    """AUROC per observation of the model's P(yes) to its presence questions (all wordings, every study)."""
    from mavilt_jax.data import labels as L
    from mavilt_jax.data import vqa
    from mavilt_jax.evaluation.vqa_metrics import auroc

    out = {}
    for name in observations:
        i = L.INDEX[name]
        keep = labels[:, i] != L.UNCERTAIN
        y = labels[keep, i] == L.POSITIVE
        if len(set(y.tolist())) < 2 or name not in vqa.PRESENCE_QUESTIONS:
            continue
        rows = np.nonzero(keep)[0]
        scores, truth = [], []
        for question in vqa.PRESENCE_QUESTIONS[name]:
            for start in range(0, len(rows), batch_size):
                chunk = rows[start:start + batch_size]
                scores += generator.p_yes(codes[chunk], [{"question": question, "question_type": "presence"}] * len(chunk))
            truth += y.tolist()
        out[name] = auroc(np.asarray(scores), np.asarray(truth))
    return out


def said_rates(generated: np.ndarray, reference: np.ndarray, observations: Sequence[str]) -> dict[str, dict[str, float]]:
    """Recall and precision per observation of labeler states (`clinical.ce_counts`, uncertain
    counted as positive as the evaluation's CE does by default); NaN where undefined."""
    from mavilt_jax.evaluation import clinical

    counts = clinical.ce_counts(reference, generated, "positive", observations)
    tp, fp, fn = counts.tp.sum(0), counts.fp.sum(0), counts.fn.sum(0)
    ratio = lambda num, den: float(num / den) if den else float("nan")  # noqa: E731
    return {name: {"said_recall": ratio(tp[k], tp[k] + fn[k]), "said_precision": ratio(tp[k], tp[k] + fp[k])}
            for k, name in enumerate(observations)}


def diagnose(workdir: str, train_studies: int = 4000, test_studies: int = 0, batch_size: int = 64) -> dict:
    """The table's figures for a stage-1/2 workdir: ``{"rows": {observation: {column: value}}, ...}``."""
    from mavilt_jax import inference
    from mavilt_jax.data import labels as L
    from mavilt_jax.evaluation import generate, labeler, probe

    config, step = inference.workdir_info(pathlib.Path(workdir))
    generator = generate.load_generator(config, workdir, generate.GenerationConfig(batch_size=batch_size))
    train = generate.split_examples(generator, config, "train", train_studies)
    test = generate.split_examples(generator, config, "test", test_studies)
    encode = lambda examples: np.concatenate([  # noqa: E731
        generator.encode(np.stack([np.asarray(e["image"]) for e in examples[i:i + 256]]))
        for i in range(0, len(examples), 256)])
    train_codes, test_codes = encode(train), encode(test)
    train_labels = np.stack([np.asarray(e["labels"]) for e in train])
    test_labels = np.stack([np.asarray(e["labels"]) for e in test])
    observations = L.OBSERVATIONS[1:]

    codes = probe.code_probe(train_codes, train_labels, test_codes, test_labels, generator.layout.codebook_size,
                             observations=observations, n_jobs=2)
    state = state_probe(last_prompt_states(generator, generator.report_prompts(train_codes), batch_size), train_labels,
                        last_prompt_states(generator, generator.report_prompts(test_codes), batch_size), test_labels,
                        observations, n_jobs=2)
    asked = asked_auroc(generator, test_codes, test_labels, observations, batch_size) if generator.instruction else {}
    reports = [r for start in range(0, len(test_codes), batch_size)
               for r in generator.reports(test_codes[start:start + batch_size])]
    references = [generator.builder.report_text(e) for e in test]
    said = said_rates(labeler.label_reports(reports), labeler.label_reports(references), observations)

    rows = {}
    for name in observations:
        if f"auroc/{name}" not in codes:
            continue
        rows[name] = {"codes": codes[f"auroc/{name}"], "state": state.get(name, float("nan")),
                      "asked": asked.get(name, float("nan")), **said[name],
                      "test_positives": int((test_labels[:, L.INDEX[name]] == L.POSITIVE).sum())}
    finite = {c: [r[c] for r in rows.values() if r[c] == r[c]] for c in COLUMNS}
    macro = {c: float(np.mean(v)) if v else float("nan") for c, v in finite.items()}
    return {"workdir": str(workdir), "step": int(step), "stage": config.stage, "train_studies": len(train),
            "test_studies": len(test), "rows": rows, "macro": macro,
            "report_words": float(np.mean([len(r.split()) for r in reports])),
            "reference_words": float(np.mean([len(r.split()) for r in references]))}


def render(result: Mapping) -> str:
    head = ["observation", *COLUMNS, "test positives"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    cell = lambda v: "–" if v != v else f"{v:.3f}"  # noqa: E731
    for name, row in [*result["rows"].items(), ("macro", {**result["macro"], "test_positives": ""})]:
        lines.append(f"| {name} | " + " | ".join(cell(row[c]) for c in COLUMNS) + f" | {row['test_positives']} |")
    return "\n".join(lines) + (f"\n\n{result['stage']} step {result['step']}; {result['train_studies']} training, "
                               f"{result['test_studies']} test studies; words per report: model "
                               f"{result['report_words']:.1f}, reference {result['reference_words']:.1f}\n")


def main(argv: list[str] | None = None) -> int:
    parser = cli.ArgumentParser(prog="python -m benchmarks.reading", description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True, help="a finished stage-2 (or stage-1) workdir")
    parser.add_argument("--out", default="", help="JSON file for the figures")
    parser.add_argument("--train_studies", type=int, default=4000, help="training studies the probes are fitted on")
    parser.add_argument("--test_studies", type=int, default=0, help="test studies scored (0: all)")
    parser.add_argument("--batch_size", type=int, default=64, help="studies per LLM call")
    args = parser.parse_args(argv)
    if args.train_studies < 2 or args.test_studies < 0 or args.batch_size < 1:
        parser.error("--train_studies must be >= 2, --test_studies >= 0 and --batch_size >= 1")
    from mavilt_jax import inference

    try:
        result = diagnose(args.workdir, args.train_studies, args.test_studies, args.batch_size)
    except (inference.InferenceError, FileNotFoundError, ValueError) as e:
        cli.usage_exit(str(e))
    if args.out:
        pathlib.Path(args.out).write_text(json.dumps(result, indent=2))
    print(render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
