"""Scene-mismatch guard: does this video look like what the checkpoint was trained on?

A frame-prediction model only knows the scene it was trained on.  Pointed at another camera it predicts every frame
badly, the heatmap paints the whole picture and the decision means nothing, yet nothing fails.  ``detect.py`` (and
the web page) therefore compare the video with the checkpoint's own references and warn, with what to do, when:

1. **the video is predicted far worse than normal frames were**: its median PSNR is more than
   :data:`PSNR_DROP_DB` below the reference, the median PSNR of the checkpoint's calibration (normal frames) or,
   without one, its best held-out normal PSNR from training.  6 dB is four times the mean squared error; an
   anomaly moves a Ped2 video's median by far less (most of its frames are normal, and the mean PSNR gap between
   normal and anomalous Ped2 frames is about 2 dB, docs/speed.md), while a new scene costs 10-20 dB (issue #22:
   36 dB on Ped2 against 18 dB on a street);
2. **colour footage meets a model trained on grey frames** (UCSD Ped1/Ped2): a frame is colour when its mean
   per-pixel channel spread (max - min of B, G, R) exceeds :data:`COLOUR_SPREAD` levels of 255 (grey video,
   JPEG chroma noise included, stays below 3; ordinary colour footage is above 10);
3. **the per-video min-max score stretches noise** (``--norm=video``): the video's PSNR range (max - min) is below
   :data:`MIN_RANGE_DB`.  The min-max score maps any range onto 0..1, so a normal video whose PSNR wiggles by
   0.5-1 dB still gets frames scored 1 and flagged (issue #22 measured 16% of a normal street flagged that way).

These are warnings, not errors: the run completes and its outputs are written; ``summary.json`` lists them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import cv2
import numpy as np

from ffpvad.data.dataset import frames_dir

from ffpvad.data.video_io import frame_files, read_image

PSNR_DROP_DB = 6.0
COLOUR_SPREAD = 6.0
MIN_RANGE_DB = 1.5
GREY_DATASETS = ("ped1", "ped2")  # the benchmarks recorded in grey (docs/data.md)
ADAPT = ("train on this camera's normal footage: tools/prepare_data.py custom, train.py --dataset=custom, then "
         "detect.py --calibrate=<normal video> (or the web page's Adapt tab)")


def colour_spread(frame_bgr: np.ndarray) -> float:
    """Mean over pixels of max(B, G, R) - min(B, G, R), on a 64x64 copy: about 0 for grey, 10+ for colour."""
    if frame_bgr.ndim == 2 or frame_bgr.shape[2] == 1:  # a grey image read as such
        return 0.0
    small = cv2.resize(frame_bgr, (64, 64), interpolation=cv2.INTER_AREA).astype(np.int16)
    return float((small.max(axis=2) - small.min(axis=2)).mean())


def trained_on_grey(cfg) -> Optional[bool]:
    """Whether the checkpoint's training frames were grey: read from up to 4 training videos when they are on this
    machine, else known from the dataset's name (Ped1, Ped2); None when it cannot be told."""
    root = Path(frames_dir(cfg, "training"))
    if root.is_dir():
        spreads = []
        for video in sorted(p for p in root.iterdir() if p.is_dir())[:4]:
            files = frame_files(video)
            if files:
                spreads.append(colour_spread(read_image(files[len(files) // 2])))
        if spreads:
            return max(spreads) <= COLOUR_SPREAD
    if cfg.dataset in GREY_DATASETS:
        return True
    return None


def mismatch_warnings(psnrs: Sequence[float], video_spread: float, reference_psnr: Optional[tuple[float, str]],
                      grey_model: Optional[bool], norm: str) -> list[str]:
    """The warnings of the module docstring for one video: its PSNRs, its largest sampled colour spread, the
    reference (median PSNR, where it comes from) and whether the model saw only grey frames."""
    psnrs = np.asarray(psnrs, dtype=np.float64)
    out = []
    if len(psnrs) and reference_psnr is not None:
        median, (ref, source) = float(np.median(psnrs)), reference_psnr
        if median < ref - PSNR_DROP_DB:
            out.append(f"this video is predicted far worse than the checkpoint's normal frames (median PSNR "
                       f"{median:.1f} dB against {ref:.1f} dB, {source}): it is probably another scene, and every "
                       f"frame looks anomalous to this model; {ADAPT}")
    if grey_model and video_spread > COLOUR_SPREAD:
        out.append(f"colour video (mean channel spread {video_spread:.0f} of 255) but the checkpoint was trained on "
                   f"grey frames: the colours alone make frames look anomalous; {ADAPT}")
    if norm == "video" and len(psnrs) > 1 and float(psnrs.max() - psnrs.min()) < MIN_RANGE_DB:
        out.append(f"the PSNR of this video spans only {float(psnrs.max() - psnrs.min()):.2f} dB (< {MIN_RANGE_DB:g}):"
                   f" the per-video min-max score stretches that to 0..1, so its flags may be noise; use "
                   f"--norm=causal with a calibration (detect.py --calibrate=<normal video of this camera>)")
    return out
