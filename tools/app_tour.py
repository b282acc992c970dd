"""The web app end to end in headless Chromium: the time from upload to a playable marked video, and screenshots.

    python tools/app_tour.py --weights_dir=weights --checkpoint=g_best_auc_toy.pth \\
        --video=data/toy/testing/frames/01 --video=../shared/data/ped2/testing/frames/01 --shots=docs/img

Starts app.py on a free port (its own state and results folders under --work), opens the page, and for each
--video (a video file, or a folder of frames, first written to an mp4 at 25 frames/s outside the timing) uploads it,
runs Detect with the default rule and waits until the marked video can play: that span, upload included, is
printed.  With --shots it saves a screenshot of the Detect, Adapt and Results pages (the first video's result).
Needs Chromium (apt-get install chromium).
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import cv2


from ffpvad.errors import UserError, run_cli
from ffpvad.data.video_io import frame_files, read_image
from ffpvad.webapp.browser import browser_page, detect_in_page, find_chromium, running_app


def as_video(source: Path, folder: Path) -> Path:
    if source.is_file():
        return source
    files = frame_files(source)
    first = read_image(files[0])
    target = folder / f"{source.parent.parent.parent.name}_{source.name}.mp4"
    writer = cv2.VideoWriter(str(target), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, first.shape[1::-1])
    for f in files:
        image = read_image(f)
        writer.write(image if image.ndim == 3 else cv2.cvtColor(image, cv2.COLOR_GRAY2BGR))
    writer.release()
    return target


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights_dir", required=True)
    p.add_argument("--checkpoint", required=True, help="its path inside --weights_dir")
    p.add_argument("--video", action="append", required=True, help="a video file or a folder of frames")
    p.add_argument("--shots", default="", help="save app_detect.png, app_adapt.png, app_results.png here")
    p.add_argument("--work", default="", help="the app's state and results (default: a temporary folder)")
    args = p.parse_args()
    chromium = find_chromium()
    if chromium is None:
        raise UserError("no Chromium: apt-get install chromium")
    work = Path(args.work or tempfile.mkdtemp(prefix="app_tour_"))
    work.mkdir(parents=True, exist_ok=True)
    videos = [as_video(Path(v), work) for v in args.video]
    flags = [f"--weights_dir={Path(args.weights_dir).resolve()}", f"--results_dir={work / 'results'}",
             f"--state_dir={work / 'state'}", f"--media={work}"]
    with running_app(work, flags) as url, browser_page(url, chromium, 1280, 900) as page:
        for k, video in enumerate(videos):
            seconds = detect_in_page(page, args.checkpoint, video)
            run = page.eval_on_selector("#downloads a", "a => decodeURIComponent(a.pathname.split('/')[2])")
            summary = json.loads((work / "results" / run / "summary.json").read_text())
            print(f"{video.name}: {summary['frames']} frames, upload to playable marked video {seconds:.1f} s "
                  f"(detect.py itself {summary['seconds']} s, {summary['frames_per_second']} frames/s)", flush=True)
            if k == 0 and args.shots:
                shots = Path(args.shots)
                shots.mkdir(parents=True, exist_ok=True)
                page.eval_on_selector("#player", "v => { v.muted = true; v.currentTime = v.duration * 0.55; "
                                                 "return v.play(); }")
                page.wait_for_timeout(800)
                page.eval_on_selector("#player", "v => v.pause()")
                page.wait_for_timeout(300)
                page.screenshot(path=str(shots / "app_detect.png"), full_page=True)
                page.click("nav .tab[data-tab='adapt']")
                page.screenshot(path=str(shots / "app_adapt.png"))
                page.click("nav .tab[data-tab='results']")
                page.wait_for_selector("#results tbody tr")
                page.locator("#results tbody tr").first.click()
                page.wait_for_selector("#left-view img")
                page.wait_for_timeout(500)
                page.screenshot(path=str(shots / "app_results.png"))
                page.click("nav .tab[data-tab='detect']")
    if args.shots:  # small PNGs for the docs: 960 px wide, PNG's strongest compression
        for name in ("app_detect.png", "app_adapt.png", "app_results.png"):
            path = Path(args.shots) / name
            image = cv2.imread(str(path))
            scale = 960 / image.shape[1]
            cv2.imwrite(str(path), cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA),
                        [cv2.IMWRITE_PNG_COMPRESSION, 9])
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    run_cli(main)
