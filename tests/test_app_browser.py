"""The web app (`python -m mavilt_jax.app`) in a real headless browser: Debian's chromium driven by
playwright (helpers in tests/browser.py). Load the page, upload a DICOM, wait for the report (it
must be the API's report), see the input and its VQ-GAN reconstruction, ask a question (the API's
answer and P(yes)), generate an image, and see a bad upload reported as a message in the page.

Skips without gradio (the ``app`` extra), playwright or chromium, naming what is missing.
Set APP_SCREENSHOT=path.png to keep a screenshot of the page after the report.
"""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
pytest.importorskip("gradio", reason="gradio is not installed (pip install -e .[app])")
from browser import launch_chromium  # noqa: E402

import mavilt_jax  # noqa: E402
from mavilt_jax import app  # noqa: E402

pytestmark = pytest.mark.tiny_main_job  # serves the tiny main job's model (unless MAVILT_TEST_WORKDIR is set)

TIMEOUT_MS = 600_000  # the first call compiles the sampler; the CI machine is small
UPLOAD_TRIES, UPLOAD_WAIT_MS = 4, 60_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(request, tmp_path_factory):
    given = os.environ.get("MAVILT_TEST_WORKDIR")
    workdir = given or request.getfixturevalue("tiny_main_job")["workdir"]
    model = mavilt_jax.load(workdir)
    page = app.build_app(model)
    port = _free_port()
    page.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield model, f"http://127.0.0.1:{port}/"
    finally:
        page.close()


def _open_and_upload(page, url: str, path, console: list[str]) -> None:
    """Load the app, choose `path` in the upload box and wait until the box shows its name.

    Under load (the full suite, two workers on two cores) the box has come up without its file
    <input> (set_input_files waited 10 min for it), or has lost a file set on it (CI waited 10 min
    for the name). A user would reload the page and choose the file again, so this does too, a
    bounded number of times, each try with a short wait; the last failure says what the box held.
    """
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    for attempt in range(UPLOAD_TRIES):
        try:
            page.goto(url)
            page.wait_for_selector("#report_button")
            box = page.wait_for_selector("#upload input[type=file]", state="attached", timeout=UPLOAD_WAIT_MS)
            box.set_input_files(str(path))
            page.wait_for_selector(f"#upload >> text={path.name}", timeout=UPLOAD_WAIT_MS)
            return
        except PlaywrightTimeout:
            if attempt == UPLOAD_TRIES - 1:
                held = page.inner_html("#upload")[:2000] if page.query_selector("#upload") else "(no #upload)"
                raise AssertionError(f"{path.name} never showed in the upload box after {UPLOAD_TRIES} tries; "
                                     f"the box holds {held!r}; browser console: {console[-20:]}") from None


def test_app_in_a_browser(served, tmp_path):
    from test_image_io import write_dicom

    model, url = served
    film = np.clip(np.add.outer(np.arange(80), np.arange(80)) * 1.6, 0, 255).astype(np.uint8)
    write_dicom(tmp_path / "film.dcm", 255 - film, photometric="MONOCHROME1")
    (tmp_path / "notes.png").write_text("not an image")
    question = "Is there a pleural effusion?"
    expected_report = model.report(tmp_path / "film.dcm")
    expected_answer = model.answer(tmp_path / "film.dcm", question)

    with launch_chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 1100})
        page.set_default_timeout(TIMEOUT_MS)
        console: list[str] = []  # the page's console messages, shown if an upload never arrives
        page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
        _open_and_upload(page, url, tmp_path / "film.dcm", console)
        page.click("#report_button")
        page.wait_for_function("document.querySelector('#report_out textarea').value.length > 0", timeout=TIMEOUT_MS)
        assert page.input_value("#report_out textarea") == expected_report
        page.wait_for_selector("#seen img")
        page.wait_for_selector("#recon img")
        if os.environ.get("APP_SCREENSHOT"):
            page.screenshot(path=os.environ["APP_SCREENSHOT"], full_page=True)

        page.fill("#question textarea", question)
        page.click("#ask_button")
        page.wait_for_function("document.querySelector('#p_yes_out textarea').value.length > 0", timeout=TIMEOUT_MS)
        assert page.input_value("#answer_out textarea") == expected_answer.text
        assert page.input_value("#p_yes_out textarea") == f"{expected_answer.p_yes:.3f}"

        page.click("#image_button")
        page.wait_for_selector("#gallery img", timeout=TIMEOUT_MS)

        # a file that is not an image (on a fresh page): the message shows in the page
        _open_and_upload(page, url, tmp_path / "notes.png", console)
        page.click("#report_button")
        page.wait_for_selector("text=not a readable PNG, JPEG or DICOM image", timeout=TIMEOUT_MS)
