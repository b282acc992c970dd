"""Pseudo-anomalies for label-free checkpoint selection (``--val_pseudo=skip``).

**Why.**  The held-out-PSNR rule (``--val_holdout``, ``g_best_val``) picks the checkpoint that predicts *normal*
frames best; it keeps rising while the test AUC falls after the learning-rate drop (docs/results.md R12), because
it never sees what it should separate.  A pseudo-anomaly is an abnormal version of a held-out *normal* clip, made
without labels: the AUC of the normal clips against their pseudo-anomalous versions measures separation, and the
checkpoint with the best one is kept as ``g_best_pseudo_<dataset>.pth``.

**skip** (the one built): the clip of every ``SKIP``-th frame of a held-out video, so that everything moves
``SKIP`` times faster than normal, as Ped2's cyclists and carts move faster than its walkers.  ``SKIP = 3`` was
fixed before looking at any test AUC: walking speed on Ped2 is 1-2 px per frame at 256 px and a cyclist's 3-6, so
a third of the frames gives cyclist-like speeds.  Each held-out video is read ``SKIP`` times with offsets 0..SKIP-1,
so the pseudo-anomalous clips cover every frame once, as the normal clips do.  The values compared are the run's
frame score (``--score``, PSNR by default): pseudo-anomalous = positive.  Only held-out training videos are used:
never a test frame, never a label.

Not built (issue #23): pasted or flow-opposed patches, and pseudo-anomalies as a training signal.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from dataset import VideoSet
from metrics import micro_auc

SKIP = 3
KINDS = ("skip",)


def skipped(videos: VideoSet, skip: int = SKIP) -> VideoSet:
    """Every ``skip``-th frame of each video, once per offset: clips of motion ``skip`` times too fast."""
    names, frames = [], []
    for name, video in zip(videos.names, videos.frames):
        for offset in range(skip):
            names.append(f"{name}@skip{skip}+{offset}")
            frames.append(video[offset::skip])
    return VideoSet(names, frames)


def pseudo_auc(normal_values: list[np.ndarray], predict: Callable[[VideoSet], list[np.ndarray]],
               holdout: VideoSet, kind: str = "skip") -> float:
    """AUC of the held-out normal frames (their ``normal_values``, score in dB: higher = more normal) against
    their pseudo-anomalous versions, predicted with ``predict`` (a VideoSet -> values per video)."""
    if kind not in KINDS:
        raise ValueError(kind)
    pseudo = predict(skipped(holdout))
    normal, abnormal = np.concatenate(normal_values), np.concatenate(pseudo)
    labels = np.concatenate([np.zeros(len(normal)), np.ones(len(abnormal))])
    return micro_auc([-np.concatenate([normal, abnormal])], [labels])
