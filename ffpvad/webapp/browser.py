"""Driving the page from a script: start app.py on a free port, open it in headless Chromium (Playwright).

Used by the browser tests (tests/test_browser.py) and by tools/app_tour.py (screenshots and the measured time from
upload to marked video).  Chromium is the distribution's (``apt-get install chromium``): Playwright's own browser
download is not used, so nothing is fetched at run time.
"""
from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

REPO = Path(__file__).resolve().parents[2]
# Headless, and none of Chromium's own network traffic (on a closed network it retries and stalls).
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run", "--disable-quic"]


def find_chromium() -> Optional[str]:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_app(home: Path, flags: list[str], timeout_s: float = 60) -> Iterator[str]:
    """app.py with ``flags`` on a free port, its output in ``home/app.log``; yields its URL, stops it after."""
    port = free_port()
    with open(home / "app.log", "w") as log:
        server = subprocess.Popen([sys.executable, str(REPO / "app.py"), f"--port={port}", *flags], cwd=home,
                                  stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                try:
                    urllib.request.urlopen(url + "/api/jobs", timeout=2)
                    break
                except OSError:
                    if server.poll() is not None:
                        raise RuntimeError(f"app.py ended: {(home / 'app.log').read_text()[-2000:]}") from None
                    if time.monotonic() > deadline:
                        raise RuntimeError("app.py did not answer in time") from None
                    time.sleep(0.2)
            yield url
        finally:
            server.terminate()
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()


@contextmanager
def browser_page(url: str, chromium: str, width: int = 1280, height: int = 900):
    """A Playwright page on ``url``, once the page says it is ready (its lists loaded)."""
    from playwright.sync_api import sync_playwright  # the browser driver: only where a browser is driven
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.goto(url)
            page.wait_for_selector("body[data-ready='1']")
            yield page
        finally:
            browser.close()


def detect_in_page(page, checkpoint: str, video: Path, timeout_ms: int = 600_000) -> float:
    """Choose ``checkpoint``, upload ``video``, run, wait until the marked video can play; seconds it took."""
    start = time.perf_counter()
    page.select_option("#checkpoint", checkpoint)
    page.set_input_files("#video-file", str(video))
    page.wait_for_function(f"document.getElementById('video').value.includes({video.name!r})", timeout=timeout_ms)
    page.click("#run")
    page.wait_for_selector("#detect-result:not(.hidden)", timeout=timeout_ms)
    page.wait_for_function("document.getElementById('player').readyState >= 2", timeout=60_000)
    return time.perf_counter() - start
