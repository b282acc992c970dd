"""MAMA's losses and score (Hong, Ahn, Jo, Park, "Making Anomalies More Anomalous", IEEE Access 12, 2024).

Facts from the authors' code (docs/methods.md 'MAMA: authors' code'), restated:

- F2LM generator objective: 1 * intensity (MSE) + 1 * FFP gradient loss + 0.05 * least-squares adversarial
  + 1 * (triplet_motion + triplet_label); no flow loss.
- Triplet: anchor = a transformed bottleneck feature (frame -> motion, frame -> label), positive = the matching
  encoder's feature, negative = the frame encoder's feature, margin 0.2, with ``nn.PairwiseDistance(2)``; on 4-D
  (B, C, H, W) tensors that distance is taken over the **last (width) axis**, so the hinge is over (B, C, H) distances
  and the loss is their mean.  Kept as the authors have it (the triplet values are part of the score).
- Destroyer target: the detached prediction A is cut into an 8 x 8 grid of patches; a rate r ~ U(0.05, 0.5) picks
  each patch with probability r (the same patches for the whole batch), and the picked ones go through
  ``Dropout2d(p)``, p ~ U(0.05, 0.5) (whole colour channels of a patch zeroed, the rest scaled by 1 / (1 - p)).  For
  each patch, s = SSIM(noisy patch, real patch) (11 x 11 Gaussian window, sigma 1.5, no padding), w = min(4 (1 - s), 1),
  and its loss is w * MSE(out, black) + (1 - w) * MSE(out, A), summed over batch and patches: patches with s <= 0.75
  are painted black, good ones restored to A.
- Score: per frame, generator error MSE(G, target) and Destroyer error MSE(Destroyer(G), target) on [0, 1], and the
  two triplet hinges; each z-scored within its video, summed with weights a, b, c, d, then min-max per video.

SSIM follows the authors' function: on the [-1, 1] values, constants (0.01 L)^2 and (0.03 L)^2 with the range L = 2
when the noisy patch goes below -0.5 and 1 otherwise (so bright patches get constants 4x smaller than a fixed range
of 2 would give, and a stricter target).

Ours, where the code leaves a choice: black is -1 in the model's [-1, 1] range (pure black; black.jpg's exact values
are not known); the SSIM window shrinks to the patch side when patches are smaller than 11 px (at 256 px they are
32 px, as the authors'); the score's weights are fixed
(``--score_weights``, 1,1,1,1 by default) because the authors pick theirs on the test labels; that search is
``tools/mama_weights.py``, labelled as test-set tuning.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ffpvad.losses.skipganomaly import per_sample_mse

GRID = 8  # patches per side of the Destroyer's corruption grid (64 patches, 32 px at 256 px)
BLACK = -1.0


# --- triplets ---------------------------------------------------------------------------------------------------

def width_distance(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``nn.PairwiseDistance(2)`` on (B, C, H, W): ||a - b + eps|| over the last (width) axis -> (B, C, H)."""
    return (a - b + eps).norm(dim=-1)


def triplet_hinge(anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor,
                  margin: float = 0.2) -> torch.Tensor:
    """max(d(anchor, positive) - d(anchor, negative) + margin, 0) per (B, C, H) element."""
    return F.relu(width_distance(anchor, positive) - width_distance(anchor, negative) + margin)


def triplet_loss(anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor,
                 margin: float = 0.2) -> torch.Tensor:
    """The training loss: the mean hinge (``nn.TripletMarginWithDistanceLoss`` with PairwiseDistance)."""
    return triplet_hinge(anchor, positive, negative, margin).mean()


def triplet_per_frame(anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor,
                      margin: float = 0.2) -> torch.Tensor:
    """The score term: the mean hinge of each frame, (B,)."""
    return triplet_hinge(anchor, positive, negative, margin).flatten(1).mean(1)


# --- the Destroyer's input and target -----------------------------------------------------------------------------

def to_patches(image: torch.Tensor, grid: int = GRID) -> torch.Tensor:
    """(B, C, H, W) -> (B, grid * grid, C, H / grid, W / grid), row by row."""
    b, c, h, w = image.shape
    ph, pw = h // grid, w // grid
    return image.reshape(b, c, grid, ph, grid, pw).permute(0, 2, 4, 1, 3, 5).reshape(b, grid * grid, c, ph, pw)


def from_patches(patches: torch.Tensor, grid: int = GRID) -> torch.Tensor:
    b, _, c, ph, pw = patches.shape
    return patches.reshape(b, grid, grid, c, ph, pw).permute(0, 3, 1, 4, 2, 5).reshape(b, c, grid * ph, grid * pw)


def corrupt_patches(image: torch.Tensor, grid: int = GRID) -> torch.Tensor:
    """The authors' patch dropout: each patch picked with probability r ~ U(0.05, 0.5) (the same for the whole
    batch), picked patches through Dropout2d(p), p ~ U(0.05, 0.5).  Draws from torch's global RNG (checkpointed)."""
    rate = 0.05 + 0.45 * float(torch.rand(()))
    p = 0.05 + 0.45 * float(torch.rand(()))
    picked = torch.rand(grid * grid) < rate
    patches = to_patches(image, grid)
    if picked.any():
        chosen = patches[:, picked]
        b, k = chosen.shape[:2]
        dropped = F.dropout2d(chosen.reshape(b * k, *chosen.shape[2:]), p=p, training=True)
        patches = patches.clone()
        patches[:, picked] = dropped.reshape(chosen.shape)
    return from_patches(patches, grid)


def _gaussian_window(size: int, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-x ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def dynamic_range(x: torch.Tensor) -> torch.Tensor:
    """The SSIM range L of each patch (N, C, h, w) of [-1, 1] values, by the authors' rule (the common pytorch-ssim
    one): 2 when the patch (the first, noisy image) goes below -0.5, else 1."""
    return torch.where(x.flatten(1).amin(1) < -0.5, 2.0, 1.0).to(x.dtype)


def patch_ssim(x: torch.Tensor, y: torch.Tensor, window: int = 11) -> torch.Tensor:
    """SSIM of patch pairs (N, C, h, w) of [-1, 1] values, Gaussian window (sigma 1.5) without padding, constants
    (0.01 L)^2 and (0.03 L)^2 with L from :func:`dynamic_range` of ``x``, mean over positions and channels -> (N,)."""
    size = min(window, x.shape[-1], x.shape[-2])
    c = x.shape[1]
    kernel = _gaussian_window(size).to(x.device, x.dtype).expand(c, 1, size, size)
    mu_x, mu_y = F.conv2d(x, kernel, groups=c), F.conv2d(y, kernel, groups=c)
    xx = F.conv2d(x * x, kernel, groups=c) - mu_x ** 2
    yy = F.conv2d(y * y, kernel, groups=c) - mu_y ** 2
    xy = F.conv2d(x * y, kernel, groups=c) - mu_x * mu_y
    L = dynamic_range(x).view(-1, 1, 1, 1)
    c1, c2 = (0.01 * L) ** 2, (0.03 * L) ** 2
    ssim = ((2 * mu_x * mu_y + c1) * (2 * xy + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (xx + yy + c2))
    return ssim.flatten(1).mean(1)


def black_weight(ssim: torch.Tensor) -> torch.Tensor:
    """w = min(4 (1 - s), 1): 1 (paint black) for s <= 0.75, 0 (restore) for s = 1."""
    return (4 * (1 - ssim)).clamp(max=1.0)


def destroyer_loss(output: torch.Tensor, clean: torch.Tensor, noisy: torch.Tensor, real: torch.Tensor,
                   grid: int = GRID) -> torch.Tensor:
    """Sum over batch and patches of w * MSE(out, black) + (1 - w) * MSE(out, clean), w from SSIM(noisy, real).
    Images in [-1, 1], (B, 3, H, W); ``clean`` is the generator's prediction A, ``real`` the true future frame."""
    out_p, clean_p = to_patches(output, grid), to_patches(clean, grid)
    b, k = out_p.shape[:2]
    with torch.no_grad():
        s = patch_ssim(to_patches(noisy, grid).flatten(0, 1).float(),
                       to_patches(real, grid).flatten(0, 1).float()).reshape(b, k)
        w = black_weight(s)
    to_black = (out_p - BLACK).pow(2).flatten(2).mean(2)
    to_clean = (out_p - clean_p).pow(2).flatten(2).mean(2)
    return (w * to_black + (1 - w) * to_clean).sum()


# --- the score ----------------------------------------------------------------------------------------------------

def per_frame_mse01(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """MSE on [0, 1] of each frame of two [-1, 1] batches, (B,): a quarter of the MSE on [-1, 1]."""
    return per_sample_mse(a, b) / 4


def zscore(values: np.ndarray) -> np.ndarray:
    """(x - mean) / std within one video; a constant term contributes zeros."""
    values = np.asarray(values, dtype=np.float64)
    sd = values.std()
    return (values - values.mean()) / sd if sd > 0 and math.isfinite(sd) else np.zeros_like(values)


SCORE_TERMS = ("motion_triplet", "label_triplet", "generator_mse", "destroyer_mse")


def combined_score(terms: dict[str, np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """sum_k weight_k * zscore(term_k) over the terms present (one video), in SCORE_TERMS order of ``weights``."""
    present = [(name, w) for name, w in zip(SCORE_TERMS, weights) if name in terms]
    if not present:
        raise ValueError("no score term present")
    return sum(w * zscore(terms[name]) for name, w in present)
