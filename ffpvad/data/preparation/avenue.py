"""CUHK Avenue: the ``Avenue Dataset`` download (videos) and the separate ``ground_truth_demo`` (pixel masks).

What is read::

    Avenue Dataset/{training,testing}_videos/NN.avi
    ground_truth_demo/testing_label_mask/<n>_label.mat      ``volLabel``, a 1 x T cell of 360x640 masks

Videos ``01.avi`` become ``01``, frames ``0000.jpg`` (ano_pred's naming).  Frame labels come from the ``volLabel``
masks (3,712 anomalous frames) unless an ano_pred ``avenue.mat`` (3,867, the convention of published FFP/MNAD
numbers) is given with ``--labels``.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

from ffpvad.errors import UserError
from ffpvad.data.frames import natural_key
from ffpvad.data.labels import avenue_mask_length, read_avenue_label_mat
from ffpvad.data.preparation.pipeline import (PLANNERS, SPLITS, MaskJob, Options, Plan, find_dir, prepared_mask_labels,
                                  video_job, visible_files)


def _avenue_number(path: Path) -> int | None:
    match = re.fullmatch(r"(\d+)_label", path.stem)
    return int(match.group(1)) if match else None


@PLANNERS.register("avenue", frame_digits=4,
                   published={"training": (16, 15328), "testing": (21, 15324),
                              "anomalous": {"masks": 3712, "": 3867}})  # volLabel masks; ano_pred avenue.mat / MNAD
def plan_avenue(dataset: str, roots: Sequence[Path], opts: Options) -> Plan:
    """CUHK Avenue: .avi videos, ``volLabel`` masks (a separate download, ground_truth_demo)."""
    plan = Plan(dataset)
    base = find_dir(roots, lambda d: (d / "training_videos").is_dir() or (d / "testing_videos").is_dir(),
                    "'Avenue Dataset' folder with training_videos/ and testing_videos/",
                    required=not opts.labels_only)
    mask_dir = find_dir(roots, lambda d: d.name == "testing_label_mask",
                        "ground_truth_demo/testing_label_mask folder", required=False)
    masks: dict[str, Path] = {}
    for path in sorted(visible_files(mask_dir) if mask_dir else [], key=natural_key):
        number = _avenue_number(path)
        if path.suffix.lower() != ".mat" or number is None:
            continue
        masks[f"{number:02d}"] = path
    lengths = {name: avenue_mask_length(path) for name, path in masks.items()}
    for split in SPLITS if base is not None else ():
        folder = base / f"{split}_videos"
        videos = sorted((p for p in visible_files(folder) if p.suffix.lower() == ".avi"), key=natural_key)
        if not videos and not opts.labels_only:
            raise UserError(f"{folder} has no .avi videos: expected the official 'Avenue Dataset/{split}_videos/"
                            f"01.avi' ...")
        for path in videos:
            name = f"{int(path.stem):02d}" if path.stem.isdigit() else path.stem
            if split == "testing" and masks and name not in masks:
                raise UserError(f"no mask file {mask_dir / f'{int(name)}_label.mat'} for test video {path}: "
                                f"the testing_label_mask folder is incomplete")
            plan.videos.append(video_job(split, name, path, lengths.get(name) if split == "testing" else None))
    tests = {j.name: j for j in plan.videos if j.split == "testing"}
    if tests and set(masks) - set(tests):
        extra = sorted(set(masks) - set(tests))
        raise UserError(f"{masks[extra[0]]} has no test video {extra[0]}.avi in {base / 'testing_videos'}")
    plan.test_counts = {name: lengths.get(name, job.header) for name, job in tests.items()} or dict(lengths)
    for name, path in masks.items():
        size = tests[name].frame_size if name in tests else None
        plan.masks.append(MaskJob(name, path, lengths[name], lambda p=path: read_avenue_label_mat(p), size,
                                  (360, 640)))
    if masks:
        plan.label_sources.append(prepared_mask_labels(opts, dataset, "the volLabel pixel masks", list(masks),
                                                       convention="masks"))
    elif opts.labels is None:
        raise UserError("no Avenue labels: expected ground_truth_demo/testing_label_mask/<n>_label.mat (the separate "
                        "'ground_truth_demo' download; add it with a second --src), or an ano_pred avenue.mat "
                        "with --labels")
    if opts.labels is None and masks:
        plan.notes.append("Avenue frame labels come from the volLabel pixel masks (3,712 anomalous frames in the "
                          "full set); published FFP/MNAD numbers use the ano_pred avenue.mat (3,867): pass it with "
                          "--labels to use that convention")
    return plan
