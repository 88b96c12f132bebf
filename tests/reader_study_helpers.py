"""Prediction files, scripted readers and an HTTP client for the reader-study tests (and the demo
in the closing note): a "main job" file in the records format (reports and images of synthetic
phantom studies) and a constant-report baseline."""

from __future__ import annotations

import contextlib
import http.cookiejar
import pathlib
import threading
import urllib.error
import urllib.parse
import urllib.request

import numpy as np
from PIL import Image

from mavilt_jax.data import labels as L
from mavilt_jax.data import phantoms
from mavilt_jax.evaluation import records as records_lib

MAIN = "mainjob_sys_q7"        # distinctive, so that a leak is a plain substring
BASELINE = "constbase_sys_k4"
MAIN_FILE = "preds_mainjob_file_x9.jsonl"
BASELINE_FILE = "preds_constbase_file_z3.jsonl"
CONSTANT_REPORT = "No acute cardiopulmonary process. The lungs are clear."


def first_pathology(labels) -> str:
    """Independent of the code under test: the first positive label other than the two non-findings."""
    for name, v in zip(L.OBSERVATIONS, labels):
        if name not in ("No Finding", "Support Devices") and int(v) == 1:
            return name
    return "No Finding"


def write_predictions(folder: pathlib.Path, n: int = 24, resolution: int = 64,
                      seed: int = 7) -> tuple[pathlib.Path, pathlib.Path, dict]:
    """(main-job file, baseline file, study id -> labels). The main job's report is the study's own
    report for two thirds of the studies and another study's otherwise; its image is the real one
    blurred with noise. Images are written as a model would (different sizes for real and generated)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "images").mkdir(exist_ok=True)
    studies = [phantoms.generate_study(seed, i, resolution) for i in range(n)]
    main, base, labels = [], [], {}
    rng = np.random.default_rng(seed)
    for i, s in enumerate(studies):
        sid = s["study_id"]
        reference = f"FINDINGS: {s['findings']}\nIMPRESSION: {s['impression']}"
        other = studies[(i + 1) % n] if i % 3 == 2 else s
        labels[sid] = [int(v) for v in s["labels"]]
        real = f"images/{sid}_real.png"
        gen = f"images/{sid}_generated.png"
        Image.fromarray(s["image"]).save(folder / real)
        noisy = np.clip(s["image"].astype(np.float64) + rng.normal(0, 12, s["image"].shape), 0, 255).astype(np.uint8)
        Image.fromarray(noisy).resize((resolution // 2, resolution // 2)).save(folder / gen)
        main.append({"task": "report_generation", "study_id": sid, "reference": reference,
                     "generation": f"FINDINGS: {other['findings']}\nIMPRESSION: {other['impression']}",
                     "reference_labels": labels[sid]})
        main.append({"task": "report_to_image", "study_id": sid, "report": reference, "real_image": real,
                     "generated_image": gen, "requested_labels": labels[sid]})
        base.append({"task": "report_generation", "study_id": sid, "reference": reference,
                     "generation": CONSTANT_REPORT, "reference_labels": labels[sid]})
    records_lib.write_records(folder / MAIN_FILE, main)
    records_lib.write_records(folder / BASELINE_FILE, base)
    return folder / MAIN_FILE, folder / BASELINE_FILE, labels


def scripted_score(case: dict, reader: int, labels: dict, duplicate: bool = False) -> int:
    """A scripted reader's rating of an unblinded case (the test knows the key): the main job's
    report 4 when it is the study's own, 2 otherwise; the constant report 3 on normal studies and
    1 otherwise; images 4; plus a reader-specific +-1 on some cases (and on some second looks)."""
    if case["kind"] == "image":
        base = 4
    elif case["system"] == MAIN:
        base = 2 if int(case["study_id"].split("-")[1]) % 3 == 2 else 4  # see write_predictions
    else:
        base = 3 if first_pathology(labels[case["study_id"]]) == "No Finding" else 1
    h = sum(map(ord, case["study_id"] + case["system"] + case["kind"])) + 7 * reader + (3 if duplicate else 0)
    return int(np.clip(base + (h % 5 == 0) - (h % 7 == 0), 1, 5))


class Client:
    """One browser: a cookie jar, following redirects; every response body and header is kept."""

    def __init__(self, base_url: str):
        self.base = base_url.rstrip("/")
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))
        self.seen: list[str] = []

    def request(self, path: str, form: dict | None = None) -> tuple[int, str, bytes]:
        data = urllib.parse.urlencode(form).encode() if form is not None else None
        try:
            resp = self.opener.open(self.base + path, data=data, timeout=30)
        except urllib.error.HTTPError as e:
            resp = e
        body = resp.read()
        self.seen.append(str(resp.headers) + body.decode("utf-8", "replace"))
        return resp.status, resp.url, body

    def start(self, name: str, code: str = "") -> tuple[int, str, bytes]:
        return self.request("/start", {"name": name, "code": code})

    def rate(self, case_id: str, score: int, comment: str = "") -> tuple[int, str, bytes]:
        return self.request("/rate", {"case_id": case_id, "score": str(score), "comment": comment})


@contextlib.contextmanager
def serving(study_dir: pathlib.Path):
    """The study's server on a free port in a thread; yields its base URL."""
    from mavilt_jax.reader_study import server

    httpd = server.make_server(study_dir, port=0)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
