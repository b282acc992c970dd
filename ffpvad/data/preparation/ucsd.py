"""UCSD Ped1 and Ped2: the official ``UCSD_Anomaly_Dataset.v1p2`` folder or archive (one download holds both).

What is read::

    UCSDpedN/Train/Train0NN/NNN.tif, Test/Test0NN/NNN.tif    frames, 1-based
    UCSDpedN/Test/UCSDpedN.m                                  frame intervals (the frame labels)
    UCSDpedN/Test/Test0NN_gt/NNN.bmp or frameNNN.bmp          pixel masks: all 12 Ped2 videos, 10 of Ped1's 36

Videos ``Train001``/``Test001`` become ``01``.  When both the ``.m`` file and the masks exist, the frame labels of
the ``.m`` file are written and compared with the masks' (a frame is anomalous when any mask pixel is set).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

from ffpvad.errors import UserError
from ffpvad.data.frames import is_visible, numbered_files
from ffpvad.data.labels import MASK_EXTENSIONS, labels_from_ucsd_m, read_ucsd_gt_mask_folder
from ffpvad.data.preparation.pipeline import (PLANNERS, LabelSource, MaskJob, Options, Plan, find_dir, frames_job, image_size,
                                  prepared_mask_labels, subdirs)


def _other_subset_skipped(dataset: str) -> Callable[[str], bool]:
    """Archive members to extract: the UCSD archive holds both subsets, only the requested one is extracted."""
    other = "ucsdped1" if dataset == "ped2" else "ucsdped2"
    return lambda name: other not in name.lower().replace("\\", "/").split("/")


# Published sizes (DATASETS.md section 2): (videos, frames) per split and anomalous test frames per label source.
@PLANNERS.register("ped1", archive_members=_other_subset_skipped("ped1"),
                   published={"training": (34, 6800), "testing": (36, 7200), "anomalous": {"": 4045}})
@PLANNERS.register("ped2", archive_members=_other_subset_skipped("ped2"),
                   published={"training": (16, 2550), "testing": (12, 2010), "anomalous": {"": 1648}})
def plan_ucsd(dataset: str, roots: Sequence[Path], opts: Options) -> Plan:
    """UCSD Ped1/Ped2: tif frame folders, the ``.m`` interval file and the ``Test0NN_gt`` masks."""
    folder_name = f"ucsd{dataset}"
    base = find_dir(roots, lambda d: d.name.lower() == folder_name and ((d / "Train").is_dir() or
                                                                         (d / "Test").is_dir()),
                    f"UCSD{dataset} folder with Train/ and Test/ (UCSD_Anomaly_Dataset.v1p2/UCSD{dataset})")
    plan = Plan(dataset)
    test_dir = base / "Test"
    for split, sub, prefix in (("training", "Train", "Train"), ("testing", "Test", "Test")):
        folders = subdirs(base / sub, rf"{prefix}\d+")
        if not folders and not opts.labels_only:
            raise UserError(f"{base / sub} has no {prefix}0NN frame folders: expected the official "
                            f"UCSD{dataset}/{sub}/{prefix}001/001.tif ...")
        for folder in folders:
            name = f"{int(folder.name[len(prefix):]):02d}"
            frames = numbered_files(folder, (".tif", ".tiff"))
            plan.videos.append(frames_job(split, name, folder, frames))
            if split == "testing":
                plan.test_counts[name] = len(frames)
    sizes = {j.name: j.frame_size for j in plan.videos if j.split == "testing"}
    have_frames = bool(plan.test_counts)
    for folder in subdirs(test_dir, r"Test\d+_gt"):
        name = f"{int(folder.name[4:-3]):02d}"
        files = numbered_files(folder, MASK_EXTENSIONS)
        if have_frames and name not in plan.test_counts:
            raise UserError(f"{folder} has no test video beside it: expected {test_dir / folder.name[:-3]}")
        if name in plan.test_counts and plan.test_counts[name] != len(files):
            raise UserError(f"{folder} has {len(files)} masks but {folder.name[:-3]} has {plan.test_counts[name]} "
                            f"frames: one of the two folders is incomplete")
        plan.test_counts.setdefault(name, len(files))
        plan.masks.append(MaskJob(name, folder, len(files), lambda f=folder: read_ucsd_gt_mask_folder(f),
                                  sizes.get(name), image_size(files[0])))
    m_files = [test_dir / f"UCSD{dataset}.m"] + sorted(test_dir.glob("*.m")) if test_dir.is_dir() else []
    m_file = next((p for p in m_files if p.is_file() and is_visible(p)), None)
    if m_file is not None:
        plan.label_sources.append(LabelSource(m_file.name, lambda names, counts, p=m_file: dict(
            zip(names, labels_from_ucsd_m(p, counts)))))
    if plan.masks:
        plan.label_sources.append(prepared_mask_labels(opts, dataset, "the Test0NN_gt pixel masks",
                                                       [m.name for m in plan.masks]))
    if not plan.label_sources and opts.labels is None:
        raise UserError(f"no labels in {test_dir}: expected UCSD{dataset}.m or the Test0NN_gt mask folders (both "
                        f"are in the official UCSD_Anomaly_Dataset.v1p2), or give a label file with --labels")
    return plan
