"""Prepare the official benchmark downloads (and a user's own videos) into the prepared-frames layout, offline.

``tools/prepare_data.py`` is the command line; this package holds the reusable pieces::

    pipeline.py    the plan and its jobs, archives, writing frames and masks, the whole run (:func:`prepare`)
    ucsd.py        ped1, ped2: UCSD_Anomaly_Dataset.v1p2 (tif folders, UCSDpedN.m, Test0NN_gt masks)
    avenue.py      avenue: 'Avenue Dataset' videos and ground_truth_demo volLabel masks
    shanghai.py    shanghai (alias shanghaitech): training videos, test JPEG folders, frame and pixel masks
    custom.py      custom: a user's training/ and testing/ videos, optional labels.csv

Each dataset module registers its planner by name in :data:`pipeline.PLANNERS` (a new dataset is one new module
imported below); ``ffpvad/data/labels.py`` reads and writes every label and mask format.  docs/data.md 'Official downloads'
has the official layouts.
"""
from __future__ import annotations

from ffpvad.data.labels import (PIXEL_MASKS, frame_labels_from_masks, intervals_of, labels_from_intervals, load_pixel_masks,
                    read_interval_file, read_label_file, read_ucsd_gt_mask_folder, write_ano_pred_mat,
                    write_frame_mask_folder)
from ffpvad.data.preparation.pipeline import (PLANNERS, SPLITS, LabelSource, MaskJob, Options, Plan, Summary, VideoJob,
                                  VideoResult, check_space, dataset_name, estimate_bytes, find_dir, free_bytes,
                                  make_plan, open_video, prepare, prepare_mask, prepare_video, run_parallel,
                                  stage_sources, video_state, write_labels)
from ffpvad.data.preparation import avenue, custom, shanghai, ucsd  # noqa: F401  (each registers its planner)

__all__ = [
    # the preparation
    "PLANNERS", "SPLITS", "LabelSource", "MaskJob", "Options", "Plan", "Summary", "VideoJob", "VideoResult",
    "check_space", "dataset_name", "estimate_bytes", "find_dir", "free_bytes", "make_plan", "open_video", "prepare",
    "prepare_mask", "prepare_video", "run_parallel", "stage_sources", "video_state", "write_labels",
    # the label and mask readers and writers it uses, defined in ffpvad/data/labels.py (imported from here by older callers)
    "PIXEL_MASKS", "frame_labels_from_masks", "intervals_of", "labels_from_intervals", "load_pixel_masks",
    "read_interval_file", "read_label_file", "read_ucsd_gt_mask_folder", "write_ano_pred_mat",
    "write_frame_mask_folder",
]
