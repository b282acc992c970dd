"""Where in a frame the anomaly is: per-pixel prediction-error maps and the UCSD pixel-level criterion.

**Anomaly map.**  The per-pixel squared prediction error on [0, 1] images, averaged over the colour channels (so
its mean over the frame is the MSE whose PSNR is the frame's score), smoothed with a Gaussian of ``sigma`` pixels
at the model's resolution.  Raw errors are speckled (edges of a slightly mis-placed pedestrian, JPEG noise); the
smoothing turns them into blobs the size of objects.  The map is absolute (no per-video normalisation), so one
threshold means the same thing in every video and a live camera can use it.

**UCSD pixel-level criterion** (Mahadevan et al., CVPR 2010; Li et al., TPAMI 2014): at a threshold t on the map,
an anomalous frame (its mask has an anomalous pixel) is *detected* when the pixels with map >= t cover at least
40% of its truly anomalous pixels; a normal frame is a *false positive* when any of its pixels has map >= t.
TPR = detected / anomalous frames, FPR = false positives / normal frames; sweeping t traces the curve, whose
area is the pixel-level AUC, and EER is where FPR = 1 - TPR.

**Each frame reduces to one number, so the curve is an ordinary ROC (exact and memory-bounded).**  Let the map
values on a frame's n truly anomalous pixels, sorted in decreasing order, be v_1 >= ... >= v_n and k = ceil(0.4 n).
At least 40% of them (k pixels) are >= t exactly when t <= v_k, so the frame is detected at every threshold up to
v_k and at none above.  A normal frame is a false positive exactly when t <= max(map).  So with one value per frame
(v_k for anomalous frames, max(map) for normal ones), TPR(t) and FPR(t) are the fractions of anomalous and normal
frames whose value is >= t: the ROC of these values against the frame labels.  ``sklearn.metrics.roc_curve``
sweeps every distinct value (tied values form one point), so its trapezoid AUC is the AUC of the swept curve,
without keeping a single map.

**Resolution.**  The map is computed at the model's resolution and resized (bilinear) to the mask's resolution, the
source frame's; the ground truth is never resampled, so a small object's mask keeps its exact pixels (nearest-
neighbour downsampling of a mask loses thin objects and changes the 40% fractions).  Bilinear upsampling never
exceeds the largest value of the map, so a normal frame's value is the same at either resolution.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Optional, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ffpvad.errors import UserError
from ffpvad.data.frames import numbered_files
from ffpvad.data.labels import (MASK_EXTENSIONS, PIXEL_MASKS, load_pixel_masks, read_npy_masks, read_ucsd_gt_mask_folder,
                    ucsd_gt_folders)
from ffpvad.evaluation.metrics import equal_error_rate, error_map

DEFAULT_SIGMA = 2.0  # Gaussian smoothing of the error map, in pixels of the model's resolution
COVERAGE = 0.4  # the UCSD rule: a frame is detected when >= 40% of its truly anomalous pixels are flagged


# --- anomaly maps ---------------------------------------------------------------------------------------------

def _gaussian_kernel(sigma: float) -> torch.Tensor:
    radius = max(1, int(math.ceil(3.0 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum()


def smooth_maps(maps: torch.Tensor, sigma: float = DEFAULT_SIGMA) -> torch.Tensor:
    """Separable Gaussian blur of (B, H, W) maps (reflected borders); sigma <= 0 returns them unchanged."""
    if sigma <= 0:
        return maps
    kernel = _gaussian_kernel(sigma).to(maps.device)
    radius = len(kernel) // 2
    x = maps.float().unsqueeze(1)
    mode = "reflect" if min(x.shape[-2:]) > radius else "replicate"
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode=mode), kernel.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode=mode), kernel.view(1, 1, -1, 1))
    return x.squeeze(1)


def anomaly_maps(prediction: torch.Tensor, target: torch.Tensor, sigma: float = DEFAULT_SIGMA) -> torch.Tensor:
    """The smoothed per-pixel error: (B, H, W), larger = more anomalous."""
    return smooth_maps(error_map(prediction, target), sigma)


# --- the UCSD pixel-level criterion ---------------------------------------------------------------------------

def _k_of(n: int, coverage: float) -> int:
    """ceil(coverage * n) without floating-point surprises (0.14 * 100 = 14.000000000000002 in floats)."""
    fraction = Fraction(coverage).limit_denominator(10_000)
    return max(1, -(-fraction.numerator * n // fraction.denominator))


def frame_value(anomaly_map: np.ndarray, mask: np.ndarray, coverage: float = COVERAGE) -> tuple[int, float]:
    """(label, value) of one frame under the pixel-level criterion (see the module docstring).

    ``anomaly_map`` (h, w) at any resolution is resized to the mask's (H, W) first.  Anomalous frame (any mask pixel
    set): value = the largest threshold at which >= ``coverage`` of its anomalous pixels are flagged, i.e. the
    k-th largest map value on them, k = ceil(coverage * n).  Normal frame: value = the map's maximum (the largest
    threshold at which it is a false positive).
    """
    mask = np.asarray(mask) > 0
    values = np.asarray(anomaly_map, dtype=np.float32)
    if values.shape != mask.shape:
        values = cv2.resize(values, (mask.shape[1], mask.shape[0]), interpolation=cv2.INTER_LINEAR)
    true_values = values[mask]
    n = true_values.size
    if n == 0:
        return 0, float(values.max())
    k = _k_of(n, coverage)
    return 1, float(np.partition(true_values, n - k)[n - k])


@dataclass(frozen=True)
class PixelMetrics:
    auc: float
    eer: float
    n_frames: int
    n_anomalous: int
    coverage: float
    sigma: float

    def as_dict(self) -> dict:
        return {"pixel_auc": self.auc, "pixel_eer": self.eer, "pixel_n_frames": self.n_frames,
                "pixel_n_anomalous": self.n_anomalous, "pixel_coverage": self.coverage, "pixel_sigma": self.sigma}


def pixel_curve(values: Sequence[float], labels: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(FPR, TPR, thresholds) of the pixel-level criterion from the per-frame values of :func:`frame_value`."""
    from sklearn.metrics import roc_curve  # deferred: scikit-learn loads in about a second

    return roc_curve(np.asarray(labels), np.asarray(values))


def pixel_metrics(values: Sequence[float], labels: Sequence[int], coverage: float = COVERAGE,
                  sigma: float = DEFAULT_SIGMA) -> PixelMetrics:
    """Pixel-level AUC (trapezoid over the swept curve) and EER from the per-frame values."""
    from sklearn.metrics import roc_auc_score  # deferred: scikit-learn loads in about a second

    y, v = np.asarray(labels, dtype=np.int64), np.asarray(values, dtype=np.float64)
    single_class = len(y) == 0 or y.min() == y.max()
    auc = float("nan") if single_class else float(roc_auc_score(y, v))
    eer = float("nan") if single_class else equal_error_rate(v, y)
    return PixelMetrics(auc, eer, int(len(y)), int(y.sum()), coverage, sigma)


class PixelAccumulator:
    """Collects one value per predicted frame while a test set is evaluated; holds no maps.

    ``masks_of(video_index)`` returns that video's (T, H, W) masks (a memory map is fine); only the current
    video's masks are kept.  ``add`` has the signature of the batch hook of :func:`evaluation.predict_psnr`.
    """

    def __init__(self, masks_of, sigma: float = DEFAULT_SIGMA, coverage: float = COVERAGE):
        self.masks_of, self.sigma, self.coverage = masks_of, sigma, coverage
        self.values: list[float] = []
        self.labels: list[int] = []
        self._video: Optional[int] = None
        self._masks: Optional[np.ndarray] = None

    def add(self, video: int, targets: np.ndarray, prediction: torch.Tensor, target: torch.Tensor) -> None:
        if video != self._video:
            self._video, self._masks = video, self.masks_of(video)
        maps = anomaly_maps(prediction, target, self.sigma).cpu().numpy()
        for t, amap in zip(targets, maps):
            label, value = frame_value(amap, self._masks[int(t)], self.coverage)
            self.labels.append(label)
            self.values.append(value)

    def result(self) -> PixelMetrics:
        return pixel_metrics(self.values, self.labels, self.coverage, self.sigma)


# --- where the pixel masks come from --------------------------------------------------------------------------

def pixel_mask_source(data_root: str, dataset: str, names: Sequence[str], counts: Sequence[int],
                      given: str = ""):
    """(masks_of, description) for the test videos ``names``, or (None, why not) when there are no masks.

    ``given`` (eval.py ``--pixel_masks``): a folder of ``<video>.npy`` (T, H, W) masks, or the official UCSD
    ``Test`` folder holding ``Test0NN_gt`` mask folders (matched to the test videos in name order).  Empty: the
    prepared layout ``<data_root>/<dataset>/testing/pixel_masks/`` when it exists (``tools/prepare_data.py``).
    Names and frame counts are checked before any prediction; masks are read one video at a time.
    """
    def check_count(where, got: int, k: int) -> None:
        if got != counts[k]:
            raise UserError(f"pixel masks {where} have {got} frames but test video {names[k]} has {counts[k]}")

    if not given:
        folder = Path(data_root) / dataset / "testing" / PIXEL_MASKS
        if not folder.is_dir():
            return None, f"no masks (none at {folder}; pass --pixel_masks=<folder>)"
        load_pixel_masks(Path(data_root), dataset, names, counts)  # checks every file now; memory maps: cheap
        return (lambda k: load_pixel_masks(Path(data_root), dataset, [names[k]], [counts[k]])[0]), str(folder)

    path = Path(given)
    if not path.is_dir():
        raise UserError(f"--pixel_masks={given} is not a folder: expected <video>.npy masks or the UCSD Test folder "
                        f"with Test0NN_gt mask folders")
    gt_folders = ucsd_gt_folders(path)
    if gt_folders:
        if len(gt_folders) != len(names):
            raise UserError(f"{path} has {len(gt_folders)} Test0NN_gt mask folders but there are {len(names)} test "
                            f"videos: pass the masks of this dataset")
        for k, folder in enumerate(gt_folders):
            check_count(folder, len(numbered_files(folder, MASK_EXTENSIONS)), k)
        return (lambda k: read_ucsd_gt_mask_folder(gt_folders[k])), f"{path} (official UCSD Test0NN_gt)"
    files = [path / f"{name}.npy" for name in names]
    missing = [f.name for f in files if not f.exists()]
    if missing:
        raise UserError(f"{path} has no Test0NN_gt folders and lacks {', '.join(missing[:3])}"
                        f"{', ...' if len(missing) > 3 else ''}: expected one <video>.npy mask per test video")
    fix = "replace it with the video's masks saved by numpy.save as a (frames, height, width) 0/1 array"
    for k in range(len(names)):
        check_count(files[k], read_npy_masks(files[k], fix).shape[0], k)
    return (lambda k: read_npy_masks(files[k], fix)), str(path)
