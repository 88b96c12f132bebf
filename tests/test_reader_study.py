"""Reader study (Table V): blinding, stratification, the ratings store under a killed server and
concurrent readers, the statistics against hand-computed values, the report."""

from __future__ import annotations

import collections
import itertools
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest

pytest.importorskip("krippendorff", reason="the reader extra (pip install -e .[reader]) provides krippendorff")

import reader_study_helpers as H  # noqa: E402  (tests/ is on sys.path under pytest)

from mavilt_jax.reader_study import __main__ as cli  # noqa: E402
from mavilt_jax.reader_study import stats, store, study  # noqa: E402

PROJECT_ROOT = pathlib.Path(__file__).resolve().parents[1]
SECRETS = (H.MAIN, H.BASELINE, H.MAIN_FILE, H.BASELINE_FILE, "mainjob", "constbase", "preds_", "syn0007")


@pytest.fixture(scope="session")
def predictions(tmp_path_factory):
    return H.write_predictions(tmp_path_factory.mktemp("preds"))


@pytest.fixture(scope="session")
def made_study(tmp_path_factory, predictions):
    main, base, _ = predictions
    out = tmp_path_factory.mktemp("study") / "S"
    key = study.create_study([main, base], out, names=[H.MAIN, H.BASELINE], n_studies=10, duplicates=4, seed=3,
                             image_size=96)
    return out, key


@pytest.fixture
def fresh_study(made_study, tmp_path):
    """A copy of the made study without key.json: the server must work without the key."""
    dst = tmp_path / "S"
    shutil.copytree(made_study[0], dst)
    (dst / "key.json").unlink()
    return dst


def test_stratified_sample_allocation_by_hand():
    strata = {f"a{i:02d}": "A" for i in range(90)} | {f"b{i}": "B" for i in range(9)} | {"c0": "C"}
    got = study.stratified_sample(strata, 10, np.random.default_rng(0))
    # Each stratum 1, then 7 in proportion to (89, 8, 0): floors (6, 0, 0), largest remainder
    # 0.577 (B) -> 7 A, 2 B, 1 C.
    assert collections.Counter(strata[k] for k in got) == {"A": 7, "B": 2, "C": 1}
    assert study.stratified_sample(strata, 10, np.random.default_rng(0)) == got
    assert study.stratified_sample(strata, 10, np.random.default_rng(1)) != got
    even = {f"x{i}": "X" for i in range(50)} | {f"y{i}": "Y" for i in range(30)} | {f"z{i}": "Z" for i in range(20)}
    assert collections.Counter(even[k] for k in study.stratified_sample(even, 10, np.random.default_rng(0))) == \
        {"X": 5, "Y": 3, "Z": 2}


def test_create_blinds_and_stratifies(made_study, predictions):
    out, key = made_study
    _, _, labels = predictions
    blinded = (out / "study.json").read_text()
    for secret in SECRETS:
        assert secret not in blinded
    cases = json.loads(blinded)["cases"]
    assert len(cases) == len(key["cases"]) == 10 * 2 + 10 + 4  # report: 2 systems, image: 1, duplicates
    assert all(re.fullmatch(r"c[0-9a-f]{10}", c["case_id"]) for c in cases)
    sizes = {c["case_id"]: study.Image.open(out / c["image"]).size for c in cases}
    assert set(sizes.values()) == {(96, 96)}  # real 64 px and generated 32 px alike
    originals = {c: k for c, k in key["cases"].items() if k["duplicate_of"] is None}
    for kind, systems in (("report", {H.MAIN, H.BASELINE}), ("image", {H.MAIN})):
        per_study = collections.defaultdict(set)
        for k in originals.values():
            if k["kind"] == kind:
                per_study[k["study_id"]].add(k["system"])
        assert len(per_study) == 10 and all(s == systems for s in per_study.values())
        # Strata recomputed from the labels the test wrote: proportional (largest remainder).
        eligible = collections.Counter(H.first_pathology(v) for v in labels.values())
        sampled = collections.Counter(H.first_pathology(labels[s]) for s in per_study)
        assert {s: c["eligible"] for s, c in key["strata"][kind].items()} == dict(eligible)
        assert {s: c["sampled"] for s, c in key["strata"][kind].items() if c["sampled"]} == dict(sampled)
        assert all(sampled[s] >= 1 for s in eligible)  # 10 studies cover every stratum here
    dups = {c: k for c, k in key["cases"].items() if k["duplicate_of"]}
    by_id = {c["case_id"]: c for c in cases}
    assert len(dups) == 4 and all(by_id[c]["text"] == by_id[k["duplicate_of"]]["text"] for c, k in dups.items())


def test_server_never_names_a_system(fresh_study):
    with H.serving(fresh_study) as url:
        orders = []
        for name in ("Reader One", "Reader Two"):
            client = H.Client(url)
            status, _, body = client.request("/")
            assert status == 200 and b"name=name" in body
            status, where, body = client.start(name)
            assert status == 200 and "/case" in where
            order = []
            for n in range(1, 35):
                status, _, body = client.request(f"/case?n={n}")
                case_id = re.search(rb"name=case_id value=(c[0-9a-f]{10})", body).group(1).decode()
                order.append(case_id)
                assert client.request(f"/image/{case_id}.png")[0] == 200
                client.rate(case_id, 1 + n % 5, comment="ok")
            assert client.request("/case")[2].count(b"All 34 cases rated") == 1
            assert client.request("/stop")[0] == 200
            assert client.request("/key.json")[0] == 404 and client.request("/../key.json")[0] == 404
            for text in client.seen:
                for secret in SECRETS:
                    assert secret not in text, secret
            orders.append(order)
    assert sorted(orders[0]) == sorted(orders[1]) and len(set(orders[0])) == 34
    assert orders[0] != orders[1]  # each reader's own order


def test_one_reader_cannot_see_or_change_anothers(fresh_study):
    with H.serving(fresh_study) as url:
        a, b = H.Client(url), H.Client(url)
        a.start("Alice")
        case_id = re.search(rb"value=(c[0-9a-f]{10})", a.request("/case?n=1")[2]).group(1).decode()
        a.rate(case_id, 5, "alice-secret-note")
        b.start("Bob")
        n_b = next(n for n in range(1, 35) if f"value={case_id}".encode() in b.request(f"/case?n={n}")[2])
        assert b"alice-secret-note" not in b.request(f"/case?n={n_b}")[2]
        b.rate(case_id, 1, "bob")
        status, _, body = H.Client(url).start("Alice")  # Alice's name without her code
        assert status == 403 and b"resume code" in body
        assert all(b"alice-secret-note" not in t.encode() for t in b.seen)
    by_reader = {(r["reader"], r["case_id"]): (r["score"], r["comment"]) for r in store.read_ratings(fresh_study)}
    assert by_reader == {("Alice", case_id): (5, "alice-secret-note"), ("Bob", case_id): (1, "bob")}


def test_invalid_ratings_are_refused(fresh_study):
    with H.serving(fresh_study) as url:
        client = H.Client(url)
        assert client.rate("c0000000000", 3)[1].endswith("/")  # no reader yet: to the start page
        client.start("Erin")
        case_id = re.search(rb"value=(c[0-9a-f]{10})", client.request("/case")[2]).group(1).decode()
        assert [client.rate(case_id, s)[0] for s in (0, 6)] == [400, 400]
        assert client.rate("c0000000000", 3)[0] == 400
        assert client.start("   ")[0] == 400
    assert store.read_ratings(fresh_study) == []


def test_resume_code_continues_in_another_browser(fresh_study):
    with H.serving(fresh_study) as url:
        a = H.Client(url)
        a.start("Carol")
        a.rate(re.search(rb"value=(c[0-9a-f]{10})", a.request("/case")[2]).group(1).decode(), 3)
        code = re.search(rb"<code id=resume>([^<]+)</code>", a.request("/stop")[2]).group(1).decode()
        other = H.Client(url)
        status, _, body = other.start("Carol", code)
        assert status == 200 and b"1 rated" in body


def test_concurrent_readers(fresh_study):
    n_readers, case_ids = 6, [c["case_id"] for c in study.load_cases(fresh_study)["cases"]]
    barrier, errors = threading.Barrier(n_readers), []

    def read(i):
        try:
            client = H.Client(url)
            client.start(f"R{i}")
            barrier.wait()
            for j, c in enumerate(case_ids):
                assert client.rate(c, 1 + (i + j) % 5)[0] == 200
        except Exception as e:  # reported below
            errors.append(e)

    with H.serving(fresh_study) as url:
        threads = [threading.Thread(target=read, args=(i,)) for i in range(n_readers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors
    got = {(r["reader"], r["case_id"]): r["score"] for r in store.read_ratings(fresh_study)}
    assert got == {(f"R{i}", c): 1 + (i + j) % 5 for i in range(n_readers) for j, c in enumerate(case_ids)}


def _serve_subprocess(study_dir):
    proc = subprocess.Popen([sys.executable, "-m", "mavilt_jax.reader_study", "serve", str(study_dir), "--port", "0"],
                            stdout=subprocess.PIPE, text=True, cwd=PROJECT_ROOT, start_new_session=True,
                            env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)})
    line = proc.stdout.readline()
    match = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
    if not match:
        proc.kill()
        pytest.fail(f"server did not start: {line!r}")
    return proc, f"http://127.0.0.1:{match.group(1)}"


def test_ratings_survive_a_killed_server(fresh_study):
    proc, url = _serve_subprocess(fresh_study)
    try:
        client = H.Client(url)
        client.start("Dana")
        rated = {}
        for n in (1, 2, 3):
            case_id = re.search(rb"value=(c[0-9a-f]{10})", client.request(f"/case?n={n}")[2]).group(1).decode()
            client.rate(case_id, n + 1, f"note {n}")
            rated[case_id] = n + 1
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # no shutdown, no cleanup
        proc.wait()
    proc, url2 = _serve_subprocess(fresh_study)
    try:
        client.base = url2  # same browser (cookie), restarted server
        _, _, body = client.request("/case?n=2")
        assert b"3 rated" in body and b"value=3 id=score3 required checked" in body and b"note 2" in body
    finally:
        os.kill(proc.pid, signal.SIGTERM)  # stops as Ctrl-C does
        assert proc.wait(timeout=120) == 0
    assert {r["case_id"]: r["score"] for r in store.read_ratings(fresh_study)} == rated


def _slow_alpha_ordinal(data: np.ndarray) -> float:
    """Krippendorff (2011), "Computing Krippendorff's alpha-reliability", section C, written out:
    coincidences o_ck from pairable units, ordinal delta^2_ck = (sum_{g=c..k} n_g - (n_c + n_k)/2)^2,
    alpha = 1 - (n - 1) sum o_ck delta_ck / sum n_c n_k delta_ck."""
    values = [1, 2, 3, 4, 5]
    o = np.zeros((5, 5))
    for u in range(data.shape[1]):
        col = [int(v) for v in data[:, u] if v == v]
        m = len(col)
        if m < 2:
            continue
        for i in range(m):
            for j in range(m):
                if i != j:
                    o[values.index(col[i]), values.index(col[j])] += 1.0 / (m - 1)
    n_c = o.sum(axis=1)
    n = n_c.sum()
    delta = np.zeros((5, 5))
    for c in range(5):
        for k in range(5):
            lo, hi = min(c, k), max(c, k)
            delta[c, k] = (n_c[lo:hi + 1].sum() - (n_c[c] + n_c[k]) / 2) ** 2
    return 1.0 - (n - 1) * (o * delta).sum() / (np.outer(n_c, n_c) * delta).sum()


def test_alpha_ordinal_by_hand_and_against_the_formula():
    # Two readers, four cases: (1,1) (2,2) (3,3) (3,4). n = (2, 2, 3, 1), D_o = 2 * delta_34 / 8 with
    # delta_34 = ((3 + 1) / 2)^2 = 4; sum_ck n_c n_k delta_ck = 624 (see the docstring's formula), so
    # alpha = 1 - 7 * 8 / 624 = 71 / 78.
    assert stats.alpha_ordinal(np.array([[1, 2, 3, 3], [1, 2, 3, 4]], float)) == pytest.approx(71 / 78)
    assert _slow_alpha_ordinal(np.array([[1, 2, 3, 3], [1, 2, 3, 4]], float)) == pytest.approx(71 / 78)
    rng = np.random.default_rng(0)
    for _ in range(5):
        data = rng.integers(1, 6, size=(4, 12)).astype(float)
        data[rng.random(data.shape) < 0.3] = np.nan
        assert stats.alpha_ordinal(data) == pytest.approx(_slow_alpha_ordinal(data))
    assert np.isnan(stats.alpha_ordinal(np.array([[3, 3], [3, 3]], float)))  # no variation: undefined


def test_bootstrap_means_and_paired_comparison_by_hand():
    a = np.array([4.0, 3.5, 5.0, 2.0, 3.0])
    b = np.array([3.0, 4.0, 3.0, 0.5, 3.0])  # differences 1, -0.5, 2, 1.5, 0
    means = stats.system_means({"A": a, "B": b}, resamples=200, seed=5)
    idx = np.random.default_rng(5).integers(0, 5, size=(200, 5))
    for name, x in (("A", a), ("B", b)):
        assert means[name]["value"] == pytest.approx(x.mean())
        lo, hi = np.percentile(x[idx].mean(axis=1), [2.5, 97.5])
        assert (means[name]["ci_low"], means[name]["ci_high"]) == pytest.approx((lo, hi))
    cmp = stats.paired_comparison(a, b, resamples=200, seed=5)
    d = a - b
    assert cmp["difference"]["value"] == pytest.approx(0.8)
    lo, hi = np.percentile(d[idx].mean(axis=1), [2.5, 97.5])
    assert (cmp["difference"]["ci_low"], cmp["difference"]["ci_high"]) == pytest.approx((lo, hi))
    # Zero dropped; ranks of |1, -0.5, 2, 1.5| are 2, 1, 4, 3: W- = 1; exact two-sided p =
    # 2 * P(W <= 1) = 2 * 2 / 2^4 = 0.25.
    assert cmp["wilcoxon"]["statistic"] == 1.0 and cmp["wilcoxon"]["p_value"] == pytest.approx(0.25)


def test_intra_reader_by_hand():
    got = stats.intra_reader(np.array([3, 4, 2, 1.0]), np.array([3, 5, 2, 2.0]), resamples=50, seed=0)
    assert got["pairs"] == 4 and got["exact_agreement"]["value"] == 0.5 and got["mean_abs_difference"]["value"] == 0.5
    assert got["alpha"]["value"] == pytest.approx(_slow_alpha_ordinal(np.array([[3, 4, 2, 1], [3, 5, 2, 2.0]])))


def test_scripted_readers_table_v(made_study, predictions, tmp_path):
    src, key = made_study
    study_dir = tmp_path / "S"
    shutil.copytree(src, study_dir)
    labels = predictions[2]
    with H.serving(study_dir) as url:
        for reader in range(3):
            client = H.Client(url)
            client.start(f"Scripted reader {reader + 1}")
            for n in range(1, 35):
                case_id = re.search(rb"value=(c[0-9a-f]{10})", client.request(f"/case?n={n}")[2]).group(1).decode()
                case = key["cases"][case_id]
                client.rate(case_id, H.scripted_score(case, reader, labels, duplicate=bool(case["duplicate_of"])))
    assert cli.main(["report", str(study_dir), "--resamples", "200"]) == 0
    results = json.loads((study_dir / "report" / "results.json").read_text())["reader_study"]
    card = (study_dir / "report" / "report_card.md").read_text()
    assert "## Table V: reader study (3 readers, 102 ratings of 34 cases)" in card and H.MAIN in card
    # Means recomputed here from the database and the key: over readers per case, then over studies.
    ratings = store.read_ratings(study_dir)
    for kind, system in (("report", H.MAIN), ("report", H.BASELINE), ("image", H.MAIN)):
        per_case = collections.defaultdict(list)
        for r in ratings:
            k = key["cases"][r["case_id"]]
            if k["kind"] == kind and k["system"] == system and k["duplicate_of"] is None:
                per_case[k["study_id"]].append(r["score"])
        expected = np.mean([np.mean(v) for v in per_case.values()])
        assert results["scales"][kind]["means"][system]["value"] == pytest.approx(expected)
    report = results["scales"]["report"]
    assert report["means"][H.MAIN]["value"] > report["means"][H.BASELINE]["value"]
    assert report["paired"][0]["a"] == H.MAIN and report["paired"][0]["studies"] == 10
    originals = sorted(c for c, k in key["cases"].items() if k["kind"] == "report" and not k["duplicate_of"])
    reliability = np.array([[next((r["score"] for r in ratings if r["reader"] == name and r["case_id"] == c), np.nan)
                             for c in originals] for name in sorted({r["reader"] for r in ratings})], float)
    assert report["inter_reader"]["alpha"]["value"] == pytest.approx(_slow_alpha_ordinal(reliability))
    pairs = sum(results["scales"][k]["intra_reader"]["pairs"] for k in ("report", "image"))
    assert pairs == 3 * 4  # every reader rated every duplicate and its original


def test_cli_user_errors(tmp_path, capsys, predictions):
    assert cli.main(["create", "--predictions", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "S")]) == 2
    assert cli.main(["serve", str(tmp_path / "nothing")]) == 2
    assert cli.main(["create", "--predictions", str(predictions[0]), str(predictions[1]), "--names", "x", "x",
                     "--out", str(tmp_path / "S")]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 3 and all(e.startswith("error: ") for e in errors)
    assert "not found" in errors[0] and "no study" in errors[1] and "must differ" in errors[2]


def test_order_of_cases_in_study_file_is_not_by_system(made_study):
    out, key = made_study
    systems = [key["cases"][c["case_id"]]["system"] for c in study.load_cases(out)["cases"]]
    runs = [len(list(g)) for _, g in itertools.groupby(systems)]
    assert max(runs) < 10  # 20 main-job cases and 10 baseline cases interleaved, not in blocks


def test_strata_from_the_labeler_when_records_carry_no_labels(tmp_path, predictions):
    pytest.importorskip("negspacy", reason="the eval extra (spaCy, negspacy) labels unlabelled reports")
    main, _, labels = predictions
    bare = tmp_path / "bare.jsonl"
    records = [json.loads(line) for line in main.read_text().splitlines()]
    for r in records:
        r.pop("reference_labels", None), r.pop("requested_labels", None)
        for field in ("real_image", "generated_image"):
            if field in r:
                r[field] = str(main.parent / r[field])
    bare.write_text("".join(json.dumps(r) + "\n" for r in records))
    key = study.create_study([bare], tmp_path / "S", n_studies=5, kinds=("report",), image_size=32)
    # The synthetic reports state every label plainly, so the labeler's strata are the true ones.
    expected = collections.Counter(H.first_pathology(v) for v in labels.values())
    assert {s: c["eligible"] for s, c in key["strata"]["report"].items()} == dict(expected)
