"""A user's own footage: one ``--src`` folder of videos OpenCV reads (or folders of frames).

What is read::

    <src>/{training,train}/     normal videos (files, or folders of images in natural name order)
    <src>/{testing,test}/       the videos to score
    <src>/labels.csv            optional anomalous intervals (labels.txt too; see labels.read_interval_file)

Video names are the file (or folder) names without extension.  ``--labels`` replaces ``labels.csv``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ffpvad.errors import UserError
from ffpvad.data.frames import is_visible, natural_key
from ffpvad.data.labels import read_label_file
from ffpvad.data.preparation.pipeline import (NOT_VIDEOS, PLANNERS, LabelSource, Options, Plan, check_unique, frames_job,
                                  image_files, video_job)


@PLANNERS.register("custom", user_labels=True)
def plan_custom(dataset: str, roots: Sequence[Path], opts: Options) -> Plan:
    """A user's own footage: ``training``/``train`` and ``testing``/``test`` folders of videos (or frame folders)."""
    plan = Plan(dataset)
    if len(roots) != 1 or not roots[0].is_dir():
        raise UserError("custom needs one --src folder holding training/ (normal videos) and testing/ (videos to "
                        "score), see docs/data.md 'Custom footage'")
    root = roots[0]
    found = False
    for split, names in (("training", ("training", "train")), ("testing", ("testing", "test"))):
        folder = next((root / n for n in names if (root / n).is_dir()), None)
        if folder is None:
            continue
        found = True
        for entry in sorted((p for p in folder.iterdir() if is_visible(p)), key=natural_key):
            if entry.is_dir():
                plan.videos.append(frames_job(split, entry.name, entry, image_files(entry)))
            elif entry.suffix.lower() not in NOT_VIDEOS:
                plan.videos.append(video_job(split, entry.stem, entry))
    if not found:
        raise UserError(f"{root} has neither training/ nor testing/: put normal videos in {root / 'training'} and "
                        f"the videos to score in {root / 'testing'}")
    if not plan.videos:  # else the run would "succeed" with an empty dataset that train.py then cannot find
        raise UserError(f"{root} has no videos in its training/ or testing/ folder: put the video files (or folders of "
                        f"frames) there, see docs/data.md 'Custom footage'")
    check_unique(plan.videos)
    plan.test_counts = {j.name: j.expected or j.header for j in plan.videos if j.split == "testing"}
    label_file = opts.labels or next((root / n for n in ("labels.csv", "labels.txt") if (root / n).is_file()), None)
    if label_file is not None:
        plan.label_sources.append(LabelSource(label_file.name, lambda names, counts: dict(
            zip(names, read_label_file(label_file, names, counts)))))
    elif plan.test_counts:
        plan.notes.append(f"no labels.csv in {root}: frames are prepared but eval.py needs labels "
                          f"(docs/data.md 'Custom footage')")
    return plan
