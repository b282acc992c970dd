"""The operator's page in a real browser: headless Chromium (Debian's package, installed by .ci/run) driven by
Playwright.  Detect: choose the toy checkpoint, upload a short toy video, run, and see the marked video decode and
play, one timeline point per predicted frame, and an event click seek the video.  Adapt: train on toy footage from
the toy checkpoint, see the job finish and its checkpoint appear in the Detect list.

Skips, saying why, only when no Chromium can be found (.ci/run installs it with apt-get).  With
FFP_SCREENSHOTS=<folder> it also saves a screenshot of each page (docs/app.md's pictures come from that).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

from conftest import ROOT
from ffpvad.webapp.browser import browser_page, detect_in_page, find_chromium, running_app

CHROMIUM = find_chromium()
SHOTS = os.environ.get("FFP_SCREENSHOTS", "")


def write_video(path: Path, frames_dir: Path, first: int, count: int, fps: float = 25.0) -> Path:
    files = sorted(frames_dir.iterdir())[first:first + count]
    image = cv2.imread(str(files[0]))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, image.shape[1::-1])
    for f in files:
        writer.write(cv2.imread(str(f)))
    writer.release()
    return path


@pytest.fixture(scope="module")
def served(toy_root, tmp_path_factory):
    if CHROMIUM is None:
        pytest.skip("no Chromium on this machine (apt-get install chromium; .ci/run does it): the page was not "
                    "tested in a browser")
    pytest.importorskip("playwright", reason="playwright is in requirements.txt")
    home = tmp_path_factory.mktemp("app")
    weights = home / "weights"
    # the toy checkpoint: 30 steps of train.py on the toy set at 32 px (the page only needs a real checkpoint)
    subprocess.run([sys.executable, str(ROOT / "train.py"), "--dataset=toy", f"--data_root={toy_root}",
                    f"--weights_dir={weights}", f"--cache_dir={home / 'cache'}", "--img_size=32",
                    "--base_channels=8", "--iters=30", "--val_interval=0", "--save_interval=0", "--log_interval=0",
                    "--tensorboard=false", "--device=cpu"], check=True, capture_output=True, cwd=home)
    media = home / "media"
    media.mkdir()
    train_frames = toy_root / "toy" / "training" / "frames"
    for k, video in enumerate(sorted(train_frames.iterdir())[:2]):  # normal footage for Adapt
        write_video(media / f"normal_{k + 1}.mp4", video, 0, 40)
    clip = write_video(home / "toy_clip.mp4", sorted((toy_root / "toy" / "testing" / "frames").iterdir())[0], 0, 60)
    flags = [f"--weights_dir={weights}", f"--results_dir={home / 'results'}", f"--state_dir={home / 'state'}",
             f"--media={media}"]
    with running_app(home, flags) as url, browser_page(url, CHROMIUM) as page:
        yield {"page": page, "url": url, "clip": clip, "home": home}


def shot(page, name: str) -> None:
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SHOTS) / f"app_{name}.png"))


def test_detect_plays_the_marked_video_with_its_timeline_and_events(served):
    page = served["page"]
    options = page.eval_on_selector("#checkpoint", "s => [...s.options].map(o => o.value)")
    assert "latest_toy.pth" in options
    detect_in_page(page, "latest_toy.pth", served["clip"], timeout_ms=180_000)  # until the video has frames
    assert page.is_hidden("#detect-error")
    run = page.eval_on_selector("#downloads a", "a => decodeURIComponent(a.pathname.split('/')[2])")
    summary = json.loads((served["home"] / "results" / run / "summary.json").read_text())
    assert summary["predicted_frames"] == 60 - 4
    assert page.eval_on_selector("#score-line", "l => l.points.numberOfItems") == summary["predicted_frames"]
    width = page.eval_on_selector("#player", "v => v.videoWidth")
    assert width > 0
    page.eval_on_selector("#player", "v => { v.muted = true; return v.play(); }")
    page.wait_for_function("document.getElementById('player').currentTime > 0.3", timeout=20_000)  # it advances
    page.eval_on_selector("#player", "v => v.pause()")
    events = json.loads((served["home"] / "results" / run / "events.json").read_text())["events"]
    assert events and page.locator("#events tbody tr").count() == len(events)
    last = events[-1]
    page.locator("#events tbody tr").nth(len(events) - 1).click()
    page.wait_for_function(f"Math.abs(document.getElementById('player').currentTime - {last['start_s']}) < 0.05")
    box = page.locator("#timeline").bounding_box()  # a click on the timeline seeks to the frame under it
    page.mouse.click(box["x"] + 2, box["y"] + box["height"] / 2)
    page.wait_for_function("document.getElementById('player').currentTime < 0.25")
    names = page.eval_on_selector_all("#downloads a", "links => links.map(a => a.textContent)")
    assert {"annotated.mp4", "scores.csv", "events.json"} <= set(names)
    shot(page, "detect")


def test_adapt_trains_on_the_cameras_footage_and_the_checkpoint_appears(served):
    page = served["page"]
    page.click("nav .tab[data-tab='adapt']")
    page.fill("#adapt-name", "cam1")
    values = page.eval_on_selector("#footage", "s => [...s.options].map(o => o.value)")
    normal = [v for v in values if "normal_" in v]
    assert len(normal) == 2
    page.select_option("#footage", normal)
    page.select_option("#base", "latest_toy.pth")
    page.fill("#iters", "8")
    page.click("#adapt-run")
    page.wait_for_selector("#adapt-done:not(.hidden)", timeout=300_000)
    assert page.is_hidden("#adapt-error"), page.text_content("#adapt-error")
    assert "adapted/cam1/latest_custom.pth" in page.text_content("#adapt-done")
    options = page.eval_on_selector("#checkpoint", "s => [...s.options].map(o => o.value)")
    assert "adapted/cam1/latest_custom.pth" in options
    calibration = served["home"] / "weights" / "adapted" / "cam1" / "latest_custom.calibration.json"
    assert json.loads(calibration.read_text())["n_frames"] == 40 - 4  # the held-out second video
    shot(page, "adapt")
    page.click("nav .tab[data-tab='jobs']")
    page.wait_for_selector("#jobs tbody tr")
    assert "done" in page.locator("#jobs tbody tr").first.text_content()
    page.click("nav .tab[data-tab='results']")
    page.wait_for_selector("#results tbody tr")
    page.locator("#results tbody tr").first.click()  # the calibration run of the adapted checkpoint
    page.wait_for_selector("#left-view table")
    page.wait_for_selector("#left-view .curve[data-curve='psnr']")  # the adapt job's training curves
    shot(page, "results")
