"""Frame scores of prediction methods (``--score=``): how a frame's prediction error becomes one number.

**What the paper states.**  FFP (Liu et al. 2018, Eq. 11-12) scores a frame by the PSNR of its prediction, the mean
squared error over every pixel, min-max normalised per video.  That is ``psnr``, the default, bit for bit
(``metrics.psnr``).

**What we add.**  An anomaly (a cyclist on Ped2) covers a few percent of the frame, and the whole-frame mean dilutes
its error with the well-predicted rest.  Each score here is a statistic ``e`` of the frame's squared-error map
(on [0, 1], averaged over the colour channels) written in decibels, ``10 log10(1 / e)``, like PSNR: higher = better
predicted.  Everything downstream is unchanged: per-video or global min-max (``--score_norm``), the causal
calibration (ffpvad/evaluation/calibration.py: a calibration knows its score), detect.py's threshold and events, the held-out
validation.  Each score is a function of the frame, its prediction and the frame before it only, so it never looks
at a later frame.

| name | e (of the squared-error map) |
|---|---|
| ``psnr`` | the mean over all pixels (the paper) |
| ``box16``, ``box32`` | the largest mean over any 16x16 (32x32) window, in model pixels |
| ``top5``, ``top1`` | the mean of the largest 5% (1%) of the pixel errors |
| ``moving`` | our design: the error weighted by how much each pixel changed from the previous frame,
  ``sum(err * w) / sum(w)`` with ``w = |frame - previous| + 1/255`` (mean over channels, 5x5 box-smoothed): the error
  where the scene moves, where Ped2's anomalies are, whatever their area; a static frame reduces to the mean |

Issue #23's outside probe (per-video min-max, micro AUC) measured box16/box32/top5/top1 within half a point of PSNR;
docs/results.md has this project's measurements of every score.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

from ffpvad.evaluation.metrics import decibels, error_map, psnr
from ffpvad.registry import Registry

# (prediction, target, previous frame), each (N, 3, H, W) in [-1, 1] -> (N,) scores in dB (higher = more normal)
FrameScore = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
SCORES: Registry[FrameScore] = Registry("--score")
NOISE_WEIGHT = 1.0 / 255  # the weight of a pixel that did not change (``moving``): one grey level


@SCORES.register("psnr", description="PSNR of the whole frame (FFP, the paper's score)")
def score_psnr(prediction: torch.Tensor, target: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
    return psnr(prediction, target)


def _box(size: int) -> FrameScore:
    def score(prediction: torch.Tensor, target: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
        err = error_map(prediction, target)
        k = min(size, err.shape[-2], err.shape[-1])
        return decibels(F.avg_pool2d(err[:, None], k, stride=1).flatten(1).amax(dim=1))
    return score


def _top(fraction: float) -> FrameScore:
    def score(prediction: torch.Tensor, target: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
        err = error_map(prediction, target).flatten(1)
        k = max(1, math.ceil(fraction * err.shape[1]))
        return decibels(err.topk(k, dim=1).values.mean(dim=1))
    return score


SCORES.register("box16", _box(16), description="largest 16x16-window mean of the error map")
SCORES.register("box32", _box(32), description="largest 32x32-window mean of the error map")
SCORES.register("top5", _top(0.05), description="mean of the largest 5% of pixel errors")
SCORES.register("top1", _top(0.01), description="mean of the largest 1% of pixel errors")


@SCORES.register("moving", description="error weighted by where the scene moved since the previous frame")
def score_moving(prediction: torch.Tensor, target: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
    err = error_map(prediction, target)
    change = ((target.float() - previous.float()) / 2.0).abs().mean(dim=1, keepdim=True)
    weight = F.avg_pool2d(change, 5, stride=1, padding=2, count_include_pad=False)[:, 0] + NOISE_WEIGHT
    return decibels((err * weight).flatten(1).sum(dim=1) / weight.flatten(1).sum(dim=1))


def frame_score(name: str) -> FrameScore:
    """The score registered under ``name``; an unknown name is one line listing the valid ones."""
    return SCORES.get(name)
