"""Pseudo-anomalies: abnormal versions of normal training clips, made without labels, to choose checkpoints
(``--val_pseudo``) and to train with (``--pseudo_anomaly``).

**Why.**  The held-out-PSNR rule (``--val_holdout``, ``g_best_val``) picks the checkpoint that predicts *normal*
frames best; it keeps rising while the test AUC falls after the learning-rate drop (docs/results.md R12), because
it never sees what it should separate.  A pseudo-anomaly is an abnormal version of a normal clip: how well the
scores separate held-out normal clips from their pseudo-anomalous versions measures separation without a label.
The idea of training with them is from Astrid et al., "Learning Not to Reconstruct Anomalies" (BMVC 2021): there an
autoencoder is taught to output *normal* frames when it is given skipped-frame or patched clips.

**skip** (the kind built): the clip of every ``SKIP``-th frame, so that everything moves ``SKIP`` times faster than
normal, as Ped2's cyclists and carts move faster than its walkers.  ``SKIP = 3`` was fixed before looking at any
test AUC: walking speed on Ped2 is 1-2 px per frame at 256 px and a cyclist's 3-6, so a third of the frames gives
cyclist-like speeds.

Selection (``--val_pseudo``, ours): each held-out video is read ``SKIP`` times with offsets 0..SKIP-1, so the
pseudo-anomalous clips cover every frame once, as the normal clips do.  The values compared are the run's frame
score (``--score``, PSNR by default).  Two statistics, both logged at every validation: ``skip`` keeps the best
AUC of normal against pseudo-anomalous frames (pseudo-anomalous = positive); ``skip_gap`` keeps the largest gap of
their mean scores in dB (normal minus pseudo-anomalous), which, unlike the AUC, does not saturate at 100% when the
pseudo-anomalies are easy (docs/results.md R13: skip-3 AUC 100% from step 500 on).  Only held-out training videos
are used: never a test frame, never a label.

Training (``--pseudo_anomaly=skip``, ours, after LNTRA's idea): each step, the first half of the batch's clips (at
least one) is also read with stride ``SKIP`` from the same training video (the window ending where the video
allows), and G is taught to predict that clip's *last input frame* -- "nothing here moves this fast" -- with the
same intensity and gradient losses as the normal target, weighted by ``--lam_pseudo``:

    L_G = L_G(normal clips) + lam_pseudo * (lam_int * L_int(G(P), p_last) + lam_grad * L_gd(G(P), p_last))

where P is the pseudo clip's input frames and p_last the last of them.  Bounded (a regression target, not an error
to maximise) and in the units of the normal loss, so ``lam_pseudo = 1`` was fixed in advance.  The normal and
pseudo clips go through G in one forward pass; D sees only normal clips.  The held-out videos are never in
training, so ``--val_pseudo`` still scores videos G has not seen (but with ``--pseudo_anomaly=skip`` it measures
what G was trained for: docs/results.md says so beside its figures).

Measured (docs/results.md R14/R15, Ped2, 3 seeds): training with them moves the test AUC by less than the seeds'
spread and costs 1.1 dB of held-out normal PSNR; the gap rises with the held-out PSNR, so ``skip_gap`` picks what
held-out PSNR picks.  Both options stay off by default.  Not built (issue #23): pasted or flow-opposed patches.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from ffpvad.data.dataset import VideoSet
from ffpvad.evaluation.metrics import micro_auc

SKIP = 3
STATISTICS = {"skip": "auc", "skip_gap": "gap_db"}  # --val_pseudo -> the figure that picks g_best_pseudo


def skipped(videos: VideoSet, skip: int = SKIP) -> VideoSet:
    """Every ``skip``-th frame of each video, once per offset: clips of motion ``skip`` times too fast."""
    names, frames = [], []
    for name, video in zip(videos.names, videos.frames):
        for offset in range(skip):
            names.append(f"{name}@skip{skip}+{offset}")
            frames.append(video[offset::skip])
    return VideoSet(names, frames)


def pseudo_figures(normal_values: list[np.ndarray], predict: Callable[[VideoSet], list[np.ndarray]],
                   holdout: VideoSet, skip: int = SKIP) -> dict[str, float]:
    """{"auc": AUC of the held-out normal frames against their pseudo-anomalous versions, "gap_db": mean normal
    minus mean pseudo-anomalous score}.  ``normal_values`` are the normal frames' scores in dB (higher = more
    normal); ``predict`` maps a VideoSet to such values per video."""
    normal = np.concatenate(normal_values)
    abnormal = np.concatenate(predict(skipped(holdout, skip)))
    labels = np.concatenate([np.zeros(len(normal)), np.ones(len(abnormal))])
    auc = micro_auc([-np.concatenate([normal, abnormal])], [labels])
    return {"auc": float(auc), "gap_db": float(normal.mean() - abnormal.mean())}

