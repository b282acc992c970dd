"""Causal anomaly scores: PSNR judged against the PSNR of normal frames, measured once, stored beside the checkpoint.

**Why not the benchmark's score live.**  The benchmark (metrics.anomaly_scores) min-max normalises a video's PSNR
with the minimum and maximum over the *whole* video: a frame's score depends on frames that have not happened yet,
and every video, even a perfectly normal one, gets a frame scored 1.  A camera has no "whole video".

**What we do instead.**  Once per checkpoint, predict normal frames and keep the distribution of their PSNR (the
calibration).  A frame's causal score is the empirical tail probability

    score(x) = fraction of calibration PSNRs strictly above x  = 1 - rank(x) / n,   rank(x) = #{c_i <= x},

so 0.99 means "worse predicted than 99% of normal frames".  It is a fixed, monotone map of the frame's own PSNR: it
never depends on later (or earlier) frames.  A frame is flagged when rank(x) < m = ceil(fpr * n), i.e. when its
PSNR is below the m-th smallest calibration PSNR: a new frame from the calibration distribution is flagged with
probability m / (n + 1), about ``fpr`` (the target false-alarm rate), and (m - 1) / n <= fpr of the calibration
frames themselves are (when no two are equal).

**Which normal frames.**  Held-out training videos when the checkpoint's config has ``val_holdout > 0`` (the
last ``val_holdout`` training videos in name order, which training never sees: engine.split_holdout); otherwise
the training split itself.  The network was fitted to those frames, so it predicts them better than unseen normal
frames: the PSNR threshold then sits too high and the real false-alarm rate exceeds ``fpr`` (docs/results.md 'Ped2:
pixel level (localisation) and the causal score' measures by how much).  A user's own normal footage
(``detect.py --calibrate=<video>``) avoids both the optimism and the change of scene.

The calibration is ``<checkpoint stem>.calibration.json`` beside the checkpoint (atomic write), tied to the
checkpoint by its SHA-256: a retrained checkpoint never uses a stale calibration.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ffpvad.data.dataset import VideoSet, frames_dir
from ffpvad.errors import UserError
from ffpvad.evaluation.evaluate import predict_psnr
from ffpvad.inference import Inference
from ffpvad.ioutil import atomic_write_text

KIND = "ffp-vad-calibration"
VERSION = 1
MAX_STORED = 20001  # above this many frames the file keeps evenly spaced quantiles instead of every PSNR
MAX_CALIBRATION_FRAMES = 20000  # predicting more normal frames than this adds nothing to a 1% quantile


def calibration_path(checkpoint: Path | str) -> Path:
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(f"{checkpoint.stem}.calibration.json")


def file_sha256(path: Path | str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


REDO = "make it again with detect.py --calibrate (it replaces the file)"


def _payload_problem(payload: dict, values) -> str:
    """What is wrong with a calibration file's fields, in words, or ''."""
    def is_number(v) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    if not isinstance(values, list) or not all(is_number(v) for v in values):
        return "its PSNR values are not a list of finite numbers"
    for key, kind in (("n_frames", int), ("img_size", int), ("source", str), ("checkpoint_sha256", str),
                      ("optimistic", bool)):
        value = payload.get(key)
        if not isinstance(value, kind) or (kind is int and (isinstance(value, bool) or value < 1)):
            return f"its {key} is {json.dumps(value)[:40]}"
    for key, kind in (("note", str), ("score", str)):
        if not isinstance(payload.get(key, ""), kind):
            return f"its {key} is {json.dumps(payload[key])[:40]}"
    if not isinstance(payload.get("videos", []), list):
        return "its videos are not a list"
    return ""


@dataclass
class Calibration:
    values: np.ndarray  # ascending PSNRs of normal frames (or evenly spaced quantiles of them)
    n_frames: int  # how many frames were predicted
    source: str
    optimistic: bool  # True when the frames were part of the training data
    checkpoint_sha256: str
    img_size: int
    videos: list[str] = field(default_factory=list)
    note: str = ""
    score: str = "psnr"  # the frame score (ffpvad/evaluation/scores.py) the values are in; files older than --score are PSNR

    def __post_init__(self) -> None:
        self.values = np.sort(np.asarray(self.values, dtype=np.float64))
        if self.values.size == 0:
            raise UserError(f"calibration from {self.source} has no predicted frame: it needs videos longer than "
                            f"the clip length")

    # --- scores -----------------------------------------------------------------------------------------------
    def ranks(self, psnr_values) -> np.ndarray:
        """How many calibration PSNRs are <= each value."""
        return np.searchsorted(self.values, np.asarray(psnr_values, dtype=np.float64), side="right")

    def scores(self, psnr_values) -> np.ndarray:
        """Empirical tail probability: the fraction of normal frames predicted better (higher PSNR)."""
        return 1.0 - self.ranks(psnr_values) / len(self.values)

    def _m(self, fpr: float) -> int:
        return max(1, math.ceil(fpr * len(self.values) - 1e-9))

    def flagged(self, psnr_values, fpr: float) -> np.ndarray:
        return self.ranks(psnr_values) < self._m(fpr)

    def psnr_threshold(self, fpr: float) -> float:
        """Frames with a PSNR strictly below this are flagged."""
        return float(self.values[self._m(fpr) - 1])

    def smallest_fpr(self) -> float:
        return 1.0 / len(self.values)

    # --- storage ----------------------------------------------------------------------------------------------
    def to_json(self, checkpoint: Path | str, extra: Optional[dict] = None) -> str:
        values = self.values
        stored = "psnr_sorted"
        if len(values) > MAX_STORED:
            values, stored = np.quantile(values, np.linspace(0, 1, MAX_STORED)), "psnr_quantiles"
        payload = {
            "kind": KIND, "version": VERSION, "checkpoint": str(checkpoint),
            "checkpoint_sha256": self.checkpoint_sha256, "img_size": self.img_size, "source": self.source,
            "videos": self.videos, "n_frames": self.n_frames, "optimistic": self.optimistic, "note": self.note,
            "score": self.score,
            "created": datetime.datetime.now().isoformat(timespec="seconds"), **(extra or {}),
            stored: [round(float(v), 4) for v in values],
        }
        return json.dumps(payload, indent=1) + "\n"

    def save(self, path: Path | str, checkpoint: Path | str, extra: Optional[dict] = None) -> None:
        atomic_write_text(path, self.to_json(checkpoint, extra), fix="pass --calibration=<writable path>",
                          what="calibration")

    @classmethod
    def load(cls, path: Path | str) -> "Calibration":
        """The calibration at ``path``, every field checked; anything wrong is one UserError line saying how to make
        it again (``--calibrate`` writes a new one over it)."""
        path = Path(path)
        if path.is_dir():
            raise UserError(f"calibration {path} is a folder: pass --calibration=<a calibration file> (detect.py "
                            f"writes one with --calibrate)")
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise UserError(f"cannot read calibration {path} ({exc.strerror or exc}): {REDO}") from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise UserError(f"cannot read calibration {path} (not JSON: {str(exc)[:80]}): {REDO}") from None
        if not isinstance(payload, dict) or payload.get("kind") != KIND:
            raise UserError(f"{path} is not a calibration file of this project: {REDO}")
        values = payload.get("psnr_sorted", payload.get("psnr_quantiles"))
        if not values:
            raise UserError(f"calibration {path} holds no PSNR values: {REDO}")
        problem = _payload_problem(payload, values)
        if problem:
            raise UserError(f"calibration {path} is damaged ({problem}): {REDO}")
        return cls(np.asarray(values, dtype=np.float64), payload["n_frames"], payload["source"],
                   payload["optimistic"], payload["checkpoint_sha256"], payload["img_size"],
                   list(payload.get("videos", [])), payload.get("note", ""), str(payload.get("score", "psnr")))


# --- computing a calibration ----------------------------------------------------------------------------------

def dataset_available(cfg) -> bool:
    return cfg.dataset == "toy" or frames_dir(cfg, "training").is_dir()


def normal_videos(names: Sequence[str], counts: Sequence[int], holdout: int, clip_len: int,
                  cap: int = MAX_CALIBRATION_FRAMES) -> tuple[list[int], bool]:
    """(video indices to predict, optimistic?): the held-out videos if any, else all; evenly thinned to ``cap``."""
    if holdout > 0:
        if holdout >= len(names):
            raise UserError(f"val_holdout={holdout} leaves no training video (there are {len(names)})")
        ids, optimistic = list(range(len(names) - holdout, len(names))), False
    else:
        ids, optimistic = list(range(len(names))), True
    total = sum(max(0, counts[i] - clip_len + 1) for i in ids)
    if total > cap:  # keep every k-th video: whole videos, spread over the set
        step = math.ceil(total / cap)
        ids = ids[::step]
    return ids, optimistic


def from_psnr(values: Sequence[float], source: str, checkpoint_sha256: str, img_size: int, optimistic: bool,
              videos: Sequence[str] = (), note: str = "", score: str = "psnr") -> Calibration:
    values = np.asarray(values, dtype=np.float64)
    return Calibration(values, int(values.size), source, optimistic, checkpoint_sha256, img_size, list(videos), note,
                       score)


def from_dataset(ctx: Inference, checkpoint_sha256: str, progress: bool = True) -> Calibration:
    """PSNR of the normal training frames of the checkpoint's dataset (held-out videos when val_holdout > 0), by
    the generator of ``ctx``."""
    cfg = ctx.cfg
    if not dataset_available(cfg):
        raise UserError(f"cannot calibrate: no training frames of {cfg.dataset} at {frames_dir(cfg, 'training')} "
                        f"(pass --data_root=<folder holding {cfg.dataset}/>, or --calibrate=<video of normal "
                        f"activity>)")
    training = VideoSet.load(cfg, "training")
    holdout = int(getattr(cfg, "val_holdout", 0) or 0)
    ids, optimistic = normal_videos(training.names, training.counts, holdout, cfg.clip_len)
    subset = VideoSet([training.names[i] for i in ids], [training.frames[i] for i in ids])
    values = predict_psnr(ctx, subset, progress)
    split = (f"the {holdout} held-out training videos" if not optimistic
             else "the training videos the network was trained on (optimistic: see ffpvad/evaluation/calibration.py)")
    return from_psnr(np.concatenate(values), f"{cfg.dataset} training split at {frames_dir(cfg, 'training')}",
                     checkpoint_sha256, cfg.img_size, optimistic, subset.names, note=split, score=cfg.score)


def benchmark_rates(calib: Calibration, psnr_values: np.ndarray, labels: np.ndarray, fpr: float) -> dict:
    """The causal detector on a labelled test set: its AUC, and at ``fpr`` the share of normal frames flagged (the
    real false-alarm rate, against the target) and of anomalous frames flagged (detection rate)."""
    from sklearn.metrics import roc_auc_score  # deferred: scikit-learn loads in about a second

    y = np.asarray(labels)
    flagged = calib.flagged(psnr_values, fpr)
    return {
        "causal_auc": float(roc_auc_score(y, calib.scores(psnr_values))) if 0 < y.sum() < len(y) else float("nan"),
        "causal_fpr_target": fpr, "causal_psnr_threshold": calib.psnr_threshold(fpr),
        "causal_normal_flagged": float(flagged[y == 0].mean()) if (y == 0).any() else float("nan"),
        "causal_anomalous_flagged": float(flagged[y == 1].mean()) if (y == 1).any() else float("nan"),
        "causal_calibration": calib.source, "causal_calibration_optimistic": calib.optimistic,
    }
