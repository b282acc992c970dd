"""Frame-level evaluation metrics of the FFP protocol, as pure functions (docs/evaluation.md 'Frame-level protocol').

PSNR per predicted frame (images in [0, 1]) -> per-video min-max normalisation to a regularity score s ->
anomaly score 1 - s -> micro AUROC over all frames (the published convention), macro AUROC (mean over videos) and
EER.  The min-max step uses the whole video, so these scores are the benchmark protocol, not a causal detector.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from sklearn.metrics import roc_auc_score, roc_curve

MAX_PSNR = 100.0  # a perfect prediction (MSE 0) would be +inf dB; capped so that every score stays finite


def squared_error(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) images in [-1, 1] -> their per-pixel, per-channel squared error on [0, 1], in float32: the one
    error of this project, behind PSNR, every --score (ffpvad/evaluation/scores.py) and the anomaly maps."""
    return ((prediction.float() - target.float()) / 2.0).pow(2)


def error_map(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(N, H, W) squared error on [0, 1], averaged over the channels; its mean over the pixels is the MSE of
    :func:`psnr`: PSNR = 10 log10(1 / mean(map))."""
    return squared_error(prediction, target).mean(dim=1)


def decibels(error: torch.Tensor) -> torch.Tensor:
    """10 log10(1 / e), capped: a perfect prediction is MAX_PSNR, not infinity."""
    return (10.0 * torch.log10(1.0 / error.clamp_min(10 ** (-MAX_PSNR / 10)))).clamp_max(MAX_PSNR)


def psnr(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample PSNR in dB of images given in [-1, 1], computed on [0, 1] over all pixels and channels."""
    return decibels(squared_error(prediction, target).flatten(1).mean(dim=1))


def anomaly_scores(psnr_values: np.ndarray) -> np.ndarray:
    """1 - min-max normalised PSNR of one video.

    A video whose PSNR is constant has no range to normalise by: every frame gets 0.5, the middle of the
    normalised scale, so such a video is neither the most normal nor the most anomalous in the micro AUC.
    """
    values = np.asarray(psnr_values, dtype=np.float64)
    low, high = values.min(), values.max()
    if high - low <= 0:
        return np.full_like(values, 0.5)
    return 1.0 - (values - low) / (high - low)


def minmax(values: np.ndarray) -> np.ndarray:
    """Min-max normalised to [0, 1]; constant values have no range and all become 0.5 (see anomaly_scores)."""
    values = np.asarray(values, dtype=np.float64)
    low, high = values.min(), values.max()
    if high - low <= 0:
        return np.full_like(values, 0.5)
    return (values - low) / (high - low)


def normalise_scores(anomaly_values: Sequence[np.ndarray], per: str = "video") -> list[np.ndarray]:
    """Anomaly values (higher = more anomalous) min-max normalised per video (the FFP protocol) or over the whole
    test set at once (``per="global"``, Skip-GANomaly's rule), returned per video."""
    if per == "video":
        return [minmax(v) for v in anomaly_values]
    if per != "global":
        raise ValueError(f"per must be 'video' or 'global', got {per!r}")
    lengths = np.cumsum([len(v) for v in anomaly_values])[:-1]
    return np.split(minmax(np.concatenate(anomaly_values)), lengths)


def micro_auc(scores: Sequence[np.ndarray], labels: Sequence[np.ndarray]) -> float:
    """One ROC over every frame of every video (anomalous = positive)."""
    y, s = np.concatenate(labels), np.concatenate(scores)
    if y.min() == y.max():
        return float("nan")
    return float(roc_auc_score(y, s))


@dataclass(frozen=True)
class MacroAUC:
    value: float
    videos_used: int
    single_class_videos: tuple[int, ...]  # indices of videos with one class only
    rule: str  # "exclude" or "pad"


def macro_auc(scores: Sequence[np.ndarray], labels: Sequence[np.ndarray], single_class: str = "exclude") -> MacroAUC:
    """Mean of per-video AUCs.

    A video with one class has no AUC.  ``exclude`` leaves it out (and the result says how many); ``pad`` appends
    one normal frame scored 0 and one anomalous frame scored 1 to every video, as some papers do, which inflates
    every video's AUC a little and gives single-class videos an AUC of 1.
    """
    if single_class not in ("exclude", "pad"):
        raise ValueError(f"single_class must be 'exclude' or 'pad', got {single_class!r}")
    aucs, single = [], []
    for k, (s, y) in enumerate(zip(scores, labels)):
        if y.min() == y.max():
            single.append(k)
        if single_class == "pad":
            s, y = np.concatenate([s, [0.0, 1.0]]), np.concatenate([y, [0, 1]])
        elif y.min() == y.max():
            continue
        aucs.append(roc_auc_score(y, s))
    value = float(np.mean(aucs)) if aucs else float("nan")
    return MacroAUC(value, len(aucs), tuple(single), single_class)


def equal_error_rate(scores: np.ndarray, labels: np.ndarray) -> float:
    """The rate where false-positive rate equals false-negative rate, linearly interpolated on the ROC."""
    y, s = np.asarray(labels), np.asarray(scores)
    if y.min() == y.max():
        return float("nan")
    fpr, tpr, _ = roc_curve(y, s)
    fnr = 1.0 - tpr
    gap = fnr - fpr  # decreasing from 1 at (fpr 0, tpr 0) to -1 at (fpr 1, tpr 1)
    k = int(np.argmax(gap <= 0))  # first ROC point at or past the crossing
    if gap[k] == 0 or k == 0:
        return float(fpr[k])
    t = gap[k - 1] / (gap[k - 1] - gap[k])
    return float(fpr[k - 1] + t * (fpr[k] - fpr[k - 1]))


@dataclass(frozen=True)
class FrameMetrics:
    micro_auc: float
    macro: MacroAUC
    eer: float
    n_frames: int
    n_anomalous: int


def metrics_of_scores(scores: Sequence[np.ndarray], labels_per_video: Sequence[np.ndarray],
                      single_class: str = "exclude") -> FrameMetrics:
    """All frame-level metrics of normalised anomaly scores and the labels of the same frames, per video."""
    y = np.concatenate(labels_per_video)
    return FrameMetrics(
        micro_auc=micro_auc(scores, labels_per_video),
        macro=macro_auc(scores, labels_per_video, single_class),
        eer=equal_error_rate(np.concatenate(scores), y),
        n_frames=int(len(y)),
        n_anomalous=int(y.sum()),
    )


def frame_metrics(psnr_per_video: Sequence[np.ndarray], labels_per_video: Sequence[np.ndarray],
                  single_class: str = "exclude") -> tuple[FrameMetrics, list[np.ndarray]]:
    """All frame-level metrics from per-video PSNR (the FFP protocol) and the labels of the same frames."""
    scores = [anomaly_scores(p) for p in psnr_per_video]
    return metrics_of_scores(scores, labels_per_video, single_class), scores
