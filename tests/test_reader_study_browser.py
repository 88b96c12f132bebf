"""The reader-study page in a real headless browser (Debian's chromium driven by playwright, helpers
in tests/browser.py): start, rate a case by clicking, stop, continue; the rating is in the database,
the image loads, no request names a system. READER_STUDY_SCREENSHOT=path.png keeps a screenshot."""

from __future__ import annotations

import os

import pytest

pytest.importorskip("krippendorff", reason="the reader extra (pip install -e .[reader]) provides krippendorff")
import reader_study_helpers as H  # noqa: E402
from browser import launch_chromium  # noqa: E402

from mavilt_jax.reader_study import store, study  # noqa: E402


@pytest.fixture(scope="module")
def browser():
    with launch_chromium() as b:
        yield b


def test_rating_page_in_a_browser(browser, tmp_path):
    main, base, _ = H.write_predictions(tmp_path / "preds", n=6, resolution=128)
    study_dir = tmp_path / "S"
    key = study.create_study([main, base], study_dir, names=[H.MAIN, H.BASELINE], n_studies=3, duplicates=1, seed=0)
    requests = []
    with H.serving(study_dir) as url:
        page = browser.new_page(viewport={"width": 1200, "height": 800})
        page.on("request", lambda r: requests.append(r.url))
        page.goto(url + "/")
        page.fill("#name", "Browser Reader")
        page.click("#start")
        page.wait_for_selector("#rating")
        assert page.evaluate("document.querySelector('#image').naturalWidth") == 512
        case_id = page.input_value("input[name=case_id]")
        assert page.inner_text("#progress") == f"Browser Reader: case 1 of {len(key['cases'])}; 0 rated."
        screenshot = os.environ.get("READER_STUDY_SCREENSHOT")
        if screenshot:
            page.fill("#comment", "Calls the study normal; misses the left basal nodule.")
            page.check("#score2")
            page.screenshot(path=screenshot, full_page=True)
        page.check("#score4")
        page.fill("#comment", "clicked in a browser")
        page.click("#save")
        page.wait_for_selector("text=case 2 of")
        assert "1 rated" in page.inner_text("#progress")
        page.click("#stop")
        assert page.inner_text("h1") == "Your ratings are saved"
        page.goto(url + "/")  # continues where the reader stopped, at the first unrated case
        assert "case 2 of" in page.inner_text("#progress")
        html = page.content()
    assert [(r["reader"], r["case_id"], r["score"], r["comment"]) for r in store.read_ratings(study_dir)] == \
        [("Browser Reader", case_id, 4, "clicked in a browser")]
    for text in requests + [html]:
        for secret in (H.MAIN, H.BASELINE, H.MAIN_FILE, H.BASELINE_FILE, "syn0007"):
            assert secret not in text
