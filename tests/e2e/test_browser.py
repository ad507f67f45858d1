"""End to end: the page started with ``streamlit run`` on 127.0.0.1, driven in headless Chromium.

Chromium is Debian's ``chromium`` package (``.ci/run`` installs it); Playwright drives that
binary and never downloads a browser. The page searches conftest's ``search_home`` index
with the tiny random models, so results are real but their order means nothing.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pandas as pd
import pytest

from resources.config import Settings

CHROMIUM = Path("/usr/bin/chromium")
REPO = Path(__file__).resolve().parents[2]
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

pytestmark = [
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium (.ci/run installs it)"
    )
]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


#: Only a guard against a hung test: the wait below is for the server to answer, not a bound on its start.
GIVE_UP_S = 600


@pytest.fixture
def page_url(search_home: Path, tiny_models, tmp_path: Path):
    """The page served by a real ``streamlit run`` on a free port, stopped after the test."""
    port = _free_port()
    env = dict(
        os.environ,
        IMAGE_SEARCH_HOME=str(search_home),
        IMAGE_SEARCH_IMAGE_MODEL=str(tiny_models[0]),
        IMAGE_SEARCH_TEXT_MODEL=str(tiny_models[1]),
    )
    log = open(tmp_path / "streamlit.log", "wb")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamlit",
            "run",
            "search_app/app.py",
            "--server.address",
            "127.0.0.1",
            "--server.port",
            str(port),
            "--server.headless",
            "true",
        ],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        # Waits for the server to answer, failing at once if it exits; the guard only stops a hung test.
        deadline = time.monotonic() + GIVE_UP_S
        while True:
            assert server.poll() is None, (tmp_path / "streamlit.log").read_text()
            try:
                if httpx.get(f"{url}/_stcore/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"streamlit did not answer its health check in {GIVE_UP_S} s"
            time.sleep(0.2)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=20)
        log.close()


@contextmanager
def _browser_page():
    """A page of Debian's Chromium, sized for the results grid, with one generous wait for every step."""
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.set_default_timeout(60_000)
            expect.set_options(timeout=60_000)
            yield page
        finally:
            browser.close()


def _wait_until_idle(page) -> None:
    """Wait for the page's script run to finish, so a click lands on the widgets it rendered.

    Streamlit replaces the results while a run is in flight; a click on a button of the
    previous render is lost.
    """
    page.locator('[data-testid="stApp"][data-test-script-state="notRunning"]').wait_for()


def test_search_upload_and_more_like_this_in_a_real_browser(
    page_url: str, search_home: Path, sample_release: Path, tmp_path: Path
):
    from playwright.sync_api import expect

    photo_id = pd.read_parquet(Settings(home=search_home).catalog_path)["photo_id"].iloc[5]
    with _browser_page() as page:
        page.goto(f"{page_url}/?k=8")
        like = page.get_by_role("button", name="More like this", exact=True)

        _wait_until_idle(page)
        page.get_by_label("Search in any language").fill("红色的圆")
        page.get_by_role("button", name="Search", exact=True).click()
        expect(page.get_by_text("8 results for “红色的圆” (vector)")).to_be_visible()
        expect(like).to_have_count(8)
        assert "q=%E7%BA%A2" in page.url and "k=8" in page.url
        expect(page.get_by_text("cosine").first).to_be_visible()
        expect(page.get_by_role("link", name="Photo").first).to_be_visible()

        _wait_until_idle(page)
        page.locator("input[type=file]").set_input_files(str(sample_release / "images" / f"{photo_id}.jpg"))
        expect(page.get_by_text("8 results for your photo")).to_be_visible()
        expect(page.get_by_text("Your photo", exact=True)).to_be_visible()
        assert "q=" not in page.url

        _wait_until_idle(page)
        like.first.click()
        expect(page.get_by_text("The photo you started from")).to_be_visible()
        heading = page.get_by_text("8 results for photo")
        expect(heading).to_be_visible()
        expect(like).to_have_count(8)
        assert "like=" in page.url
        shared = page.url
        page.wait_for_load_state("networkidle")
        # Streamlit scrolls inside its own container, so a tall viewport is what shows every result.
        page.set_viewport_size({"width": 1400, "height": 2200})
        page.screenshot(path=str(tmp_path / "more-like-this.png"), full_page=True)

        # The address alone reproduces the search in a fresh tab.
        other = page.context.browser.new_page(viewport={"width": 1400, "height": 1100})
        other.goto(shared)
        expect(other.get_by_text("The photo you started from")).to_be_visible()
        expect(other.get_by_role("button", name="More like this", exact=True)).to_have_count(8)
    assert (tmp_path / "more-like-this.png").stat().st_size > 10_000


def test_more_like_this_and_words_without_words_in_a_real_browser(page_url: str, search_home: Path):
    from playwright.sync_api import expect

    photo_id = pd.read_parquet(Settings(home=search_home).catalog_path)["photo_id"].iloc[9]
    with _browser_page() as page:
        page.goto(f"{page_url}/?k=6&like={photo_id}")
        expect(page.get_by_text(f"6 results for photo {photo_id}", exact=True)).to_be_visible()

        _wait_until_idle(page)
        page.get_by_role("textbox", name="More like this, and…").fill("at night")
        page.get_by_role("textbox", name="More like this, and…").press("Enter")
        expect(page.get_by_text(f"6 results for photo {photo_id} and “at night”", exact=True)).to_be_visible()

        _wait_until_idle(page)
        page.get_by_role("textbox", name="Without").fill("人群")
        page.get_by_role("textbox", name="Without").press("Enter")
        expect(
            page.get_by_text(f"6 results for photo {photo_id} and “at night” without “人群”", exact=True)
        ).to_be_visible()
        expect(page.get_by_role("button", name="More like this", exact=True)).to_have_count(6)
        assert "also=at+night" in page.url and "without=%E4%BA%BA" in page.url

        # The steered search is in the address: a fresh tab runs it again.
        other = page.context.browser.new_page(viewport={"width": 1400, "height": 1100})
        other.goto(page.url)
        expect(
            other.get_by_text(f"6 results for photo {photo_id} and “at night” without “人群”", exact=True)
        ).to_be_visible()
        expect(other.get_by_role("textbox", name="More like this, and…")).to_have_value("at night")
