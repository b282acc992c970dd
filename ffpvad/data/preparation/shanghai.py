"""ShanghaiTech Campus: the official ``shanghaitech`` folder or archive.

What is read::

    training/videos/NN_NNN.avi
    testing/frames/NN_NNNN/NNN.jpg          hard-linked (or copied) unchanged, not re-encoded
    testing/test_frame_mask/<video>.npy     frame labels, written back in the same format
    testing/test_pixel_mask/<video>.npy     pixel masks, linked as they are when already uint8 0/1

Video names are kept.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ffpvad.errors import UserError
from ffpvad.data.frames import natural_key, numbered_files
from ffpvad.data.labels import load_labels, read_npy_masks
from ffpvad.data.preparation.pipeline import (NOT_VIDEOS, PLANNERS, LabelSource, MaskJob, Options, Plan, find_dir, frames_job,
                                  subdirs, video_job, visible_files)

_REDOWNLOAD = "re-download ShanghaiTech's testing/test_pixel_mask, or remove the file"


@PLANNERS.register("shanghai", published={"training": (330, 274515), "testing": (107, 40791),
                                          "anomalous": {"": 17326}})
def plan_shanghai(dataset: str, roots: Sequence[Path], opts: Options) -> Plan:
    """ShanghaiTech Campus: training .avi videos, test JPEG folders, per-video frame and pixel masks."""
    plan = Plan(dataset, label_format="frame_mask")
    base = find_dir(roots, lambda d: (d / "training" / "videos").is_dir() or (d / "testing" / "frames").is_dir(),
                    "ShanghaiTech folder with training/videos/ and testing/frames/")
    videos = sorted((p for p in visible_files(base / "training" / "videos")
                     if p.suffix.lower() not in NOT_VIDEOS), key=natural_key)
    if not videos and not opts.labels_only:
        raise UserError(f"{base / 'training' / 'videos'} has no videos: expected the official "
                        f"training/videos/01_001.avi ...")
    plan.videos += [video_job("training", p.stem, p) for p in videos]
    folders = subdirs(base / "testing" / "frames", r".+")
    if not folders:
        raise UserError(f"{base / 'testing' / 'frames'} has no video folders: expected the official "
                        f"testing/frames/01_0014/000.jpg ...")
    link = opts.image_format == "jpg"
    for folder in folders:
        frames = numbered_files(folder, (".jpg", ".jpeg", ".png"))
        same_format = all(p.suffix.lower() in (".jpg", ".jpeg") for p in frames)
        plan.videos.append(frames_job("testing", folder.name, folder, frames, link=link and same_format))
        plan.test_counts[folder.name] = len(frames)
    tests = {j.name: j for j in plan.videos if j.split == "testing"}
    frame_masks = base / "testing" / "test_frame_mask"
    if frame_masks.is_dir():
        plan.label_sources.append(LabelSource("testing/test_frame_mask", lambda names, counts: dict(
            zip(names, load_labels(frame_masks, names, counts)))))
    elif opts.labels is None:
        raise UserError(f"no frame labels at {frame_masks}: expected the official testing/test_frame_mask/"
                        f"<video>.npy, or give a label file with --labels")
    for path in sorted(visible_files(base / "testing" / "test_pixel_mask"), key=natural_key):
        if path.suffix.lower() != ".npy":
            continue
        if path.stem not in tests:
            raise UserError(f"pixel mask {path} has no test video {path.stem} in {base / 'testing' / 'frames'}")
        masks = read_npy_masks(path, _REDOWNLOAD)
        plan.masks.append(MaskJob(path.stem, path, masks.shape[0], lambda p=path: read_npy_masks(p, _REDOWNLOAD),
                                  tests[path.stem].frame_size, masks.shape[1:], masks.dtype == np.uint8))
    return plan
