"""Natural-language-generation metrics for report generation (Table I), computed by pycocoevalcap.

Conventions (the COCO-caption ones that report-generation papers on IU X-ray and MIMIC-CXR use):
  * Text is tokenised once by pycocoevalcap's Stanford PTB tokenizer (lower-cased, punctuation in
    its PUNCTUATIONS list removed); every scorer sees the same tokens.
  * BLEU-1..4: ``Bleu(4)``, corpus-level (clipped n-gram counts summed over the corpus, brevity
    penalty with the *closest* reference length), as ``Bleu.compute_score`` does.
  * METEOR: METEOR 1.5 jar, ``-l en -norm``; corpus score from the jar's ``EVAL`` over the
    summed segment statistics (not the mean of segment scores).
  * ROUGE-L: LCS F-measure with beta = 1.2, the mean over studies.
  * CIDEr: pycocoevalcap's ``Cider`` is CIDEr-D (clipped tf-idf n-grams, n = 1..4, Gaussian
    length penalty sigma = 6, x10), with document frequencies from the evaluated references.
One reference per study (the radiologist's report), one generation per study.

Corpus-level metrics cannot be averaged over studies, so :class:`NLGScorer` keeps each study's
sufficient statistics (n-gram counts, METEOR alignment statistics, ROUGE-L scores) and rescores
any multiset of study indices cheaply, which is what the bootstrap needs.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence

import numpy as np
from absl import logging
from pycocoevalcap.bleu import bleu_scorer as bleu_lib
from pycocoevalcap.cider import cider_scorer as cider_lib
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

NLG_METRICS: tuple[str, ...] = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr")

CONVENTIONS = (
    "pycocoevalcap with PTB tokenisation; corpus-level BLEU-1..4 (closest reference length), "
    "METEOR 1.5 (-l en -norm, corpus EVAL), ROUGE-L (beta=1.2, mean over studies), "
    "CIDEr = pycocoevalcap's CIDEr-D (sigma=6, x10, idf from the evaluated references)"
)


class JavaNotFoundError(RuntimeError):
    """pycocoevalcap's PTB tokenizer and METEOR are Java programs."""


def require_java() -> str:
    """Returns the path of ``java`` or raises with an actionable message."""
    java = shutil.which("java")
    if java is None:
        raise JavaNotFoundError(
            "pycocoevalcap needs Java (>= 8; 17 tested) for the PTB tokenizer and METEOR, and "
            "`java` is not on PATH. Install a JRE (e.g. `apt-get install openjdk-17-jre-headless`)."
        )
    return java


@contextlib.contextmanager
def _jvm_stderr_to_log() -> Iterator[None]:
    """The JVM inherits the process's stderr and prints progress there ("PTBTokenizer tokenized N
    tokens ..."): send it to the log instead of the terminal (a warning if the call fails)."""
    sys.stderr.flush()
    saved = os.dup(2)
    failed = True
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
            failed = False
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            text = captured.read().decode("utf-8", "replace").strip()
            if text:
                (logging.warning if failed else logging.info)("java: %s", text)


def ptb_tokenize(texts: Sequence[str]) -> list[str]:
    """Tokenises with pycocoevalcap's PTB tokenizer, one output string per input text."""
    require_java()
    # Keys are string indices; the tokenizer writes one line per caption, so newlines inside a
    # report must go (it replaces them too, but be explicit about it).
    captions = {str(i): [{"caption": " ".join(t.split())}] for i, t in enumerate(texts)}
    with _jvm_stderr_to_log():
        tokenised = PTBTokenizer().tokenize(captions)
    return [tokenised[str(i)][0] for i in range(len(texts))]


class _MeteorStats:
    """Per-study METEOR statistics from the jar, and corpus METEOR for any multiset of them."""

    def __init__(self, references: Sequence[str], candidates: Sequence[str]):
        self._meteor = Meteor()
        self._lock = self._meteor.lock
        with self._lock:
            self.stats = [self._meteor._stat(c, [r]) for r, c in zip(references, candidates)]

    def corpus_score(self, idx: np.ndarray) -> float:
        line = "EVAL ||| " + " ||| ".join(self.stats[i] for i in idx)
        proc = self._meteor.meteor_p
        with self._lock:
            proc.stdin.write((line + "\n").encode())
            proc.stdin.flush()
            for _ in range(len(idx)):  # segment scores, not needed
                proc.stdout.readline()
            return float(proc.stdout.readline().strip())

    def close(self) -> None:
        proc = self._meteor.meteor_p
        with self._lock:
            proc.stdin.close()
            proc.kill()
            proc.wait()
        # Meteor.__del__ would try to close the pipe again.
        self._meteor.__class__ = type("_ClosedMeteor", (), {})


class NLGScorer:
    """Tokenises a corpus once; scores the whole corpus or any resample of its studies.

    Args:
      references: one reference report per study.
      candidates: one generated report per study.
      meteor: compute METEOR (a JVM subprocess; the slowest metric).
    """

    def __init__(self, references: Sequence[str], candidates: Sequence[str], meteor: bool = True):
        if len(references) != len(candidates):
            raise ValueError(f"{len(references)} references but {len(candidates)} candidates")
        if not references:
            raise ValueError("no studies to score")
        tokens = ptb_tokenize(list(references) + list(candidates))
        self.references = tokens[: len(references)]
        self.candidates = tokens[len(references) :]
        self.n = len(references)
        self._bleu_refs = [bleu_lib.cook_refs([r]) for r in self.references]
        self._bleu_tests = [bleu_lib.cook_test(c, cr) for c, cr in zip(self.candidates, self._bleu_refs)]
        self._cider_refs = [cider_lib.cook_refs([r]) for r in self.references]
        self._cider_tests = [cider_lib.cook_test(c) for c in self.candidates]
        rouge = Rouge()
        self.rouge_l = np.array([rouge.calc_score([c], [r]) for r, c in zip(self.references, self.candidates)])
        self._meteor = _MeteorStats(self.references, self.candidates) if meteor else None

    def score(self, idx: np.ndarray | None = None) -> dict[str, float]:
        """Corpus-level metrics over the studies ``idx`` (with repeats; default all)."""
        idx = np.arange(self.n) if idx is None else np.asarray(idx)
        bleu = bleu_lib.BleuScorer(n=4)
        bleu.crefs = [self._bleu_refs[i] for i in idx]
        bleu.ctest = [self._bleu_tests[i] for i in idx]
        bleu._score = None
        bleus, _ = bleu.compute_score(option="closest", verbose=0)
        cider = cider_lib.CiderScorer(n=4, sigma=6.0)
        cider.crefs = [self._cider_refs[i] for i in idx]
        cider.ctest = [self._cider_tests[i] for i in idx]
        cider_score, _ = cider.compute_score()
        out = {f"BLEU-{k + 1}": float(b) for k, b in enumerate(bleus)}
        if self._meteor is not None:
            out["METEOR"] = self._meteor.corpus_score(idx)
        out["ROUGE-L"] = float(self.rouge_l[idx].mean())
        out["CIDEr"] = float(cider_score)
        return out

    def close(self) -> None:
        if self._meteor is not None:
            self._meteor.close()
            self._meteor = None

    def __enter__(self) -> NLGScorer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def nlg_metrics(references: Sequence[str], candidates: Sequence[str], meteor: bool = True) -> dict[str, float]:
    """BLEU-1..4, METEOR, ROUGE-L and CIDEr(-D) of a corpus; conventions in the module docstring."""
    with NLGScorer(references, candidates, meteor=meteor) as scorer:
        return scorer.score()


def java_version() -> str:
    """The JVM's version line, for the report card's conventions."""
    out = subprocess.run([require_java(), "-version"], capture_output=True, text=True, check=False)
    return (out.stderr or out.stdout).splitlines()[0] if (out.stderr or out.stdout) else "unknown"
