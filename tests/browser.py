"""Shared helpers for tests that drive a real headless browser (Debian's chromium via playwright).

No browser is ever downloaded (offline CI): playwright launches the system chromium by its path.
`.ci/run` installs both (apt: chromium; pip: playwright). Elsewhere the tests skip with a reason
that names the missing package.

    from browser import launch_chromium  # tests/ is on sys.path under pytest (rootdir conftest)
    with launch_chromium() as browser:
        page = browser.new_page()
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator

import pytest

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def chromium_path() -> str:
    """The chromium executable on PATH, or skip the test naming the Debian package."""
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no chromium executable on PATH (Debian package: apt-get install chromium)")


@contextlib.contextmanager
def launch_chromium() -> Iterator[object]:
    """A headless playwright Browser over the system chromium; skips without playwright or chromium."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (pip install playwright) is not installed")
    executable = chromium_path()
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, headless=True, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()
