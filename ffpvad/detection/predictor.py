"""A streaming predictor: load a checkpoint, feed frames, get each frame's PSNR, anomaly map and prediction.

The small Python API behind ``detect.py`` (and anything else that scores live footage, a web page included)::

    from ffpvad.detection.predictor import StreamPredictor
    predictor = StreamPredictor.from_checkpoint("g_best_auc_ped2", weights_dir="weights")
    for p in predictor.run(frames_bgr):          # any iterable of BGR uint8 frames (OpenCV's order)
        print(p.index, p.psnr)                   # None while warming up (the first clip_len-1 frames)

Each frame is predicted from the clip_len-1 frames before it, ``batch_size`` targets per forward pass, with the
method's own input split (``ffpvad/methods/``).  A target's clip holds only frames before it, and the frames of a batch
do not interact (BatchNorm in eval mode), so a frame's PSNR never depends on a later frame: the stream is causal.
Methods whose score is more than PSNR (Skip-GANomaly's latent error, MAMA's terms) are scored with eval.py.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Optional

import cv2
import numpy as np
import torch

from ffpvad.data.dataset import to_model_range
from ffpvad.evaluation.localization import DEFAULT_SIGMA, anomaly_maps
from ffpvad.evaluation.scores import frame_score
from ffpvad.inference import Inference


@dataclass
class Prediction:
    index: int
    frame: np.ndarray  # the source frame, BGR uint8
    psnr: Optional[float] = None  # None while warming up (fewer than clip_len-1 frames before it)
    predicted: Optional[np.ndarray] = None  # RGB uint8 (S, S, 3)
    amap: Optional[np.ndarray] = None  # anomaly map (S, S) float32


def to_model_frame(frame_bgr: np.ndarray, size: int) -> np.ndarray:
    """The same preprocessing as the frame cache of training (dataset.decode_frame): linear resize, RGB."""
    if frame_bgr.shape[:2] != (size, size):
        frame_bgr = cv2.resize(frame_bgr, (size, size), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(frame_bgr[:, :, ::-1])


class StreamPredictor:
    """Predicts each frame of a stream from the clip_len-1 frames before it (module docstring)."""

    def __init__(self, ctx: Inference, sigma: float = DEFAULT_SIGMA, maps: bool = True):
        self.ctx, self.cfg, self.sigma, self.maps = ctx, ctx.cfg, sigma, maps
        self.score = frame_score(ctx.cfg.score)
        self.batch_size = ctx.batch_size

    @property
    def checkpoint(self) -> Optional[Path]:
        return self.ctx.checkpoint

    @classmethod
    def from_checkpoint(cls, checkpoint: str, weights_dir: str = "weights", device: str = "auto",
                        amp: str = "auto", channels_last: str = "auto", num_threads: int = 0, batch_size: int = 0,
                        sigma: float = DEFAULT_SIGMA, maps: bool = True) -> "StreamPredictor":
        """A predictor on this machine's device for a checkpoint (a name in ``weights_dir`` or a path)."""
        overrides = dict(device=device, amp=amp, channels_last=channels_last, num_threads=num_threads,
                         eval_batch_size=batch_size)
        return cls(Inference.for_stream(checkpoint, weights_dir, overrides), sigma, maps)

    def run(self, frames: Iterable[np.ndarray]) -> Iterator[Prediction]:
        n_inputs = self.cfg.n_inputs
        history: deque = deque(maxlen=n_inputs)
        pending: list = []
        for index, frame in enumerate(frames):
            small = to_model_frame(frame, self.cfg.img_size)
            if len(history) < n_inputs:
                yield Prediction(index, frame)
            else:
                pending.append((index, frame, np.stack([*history, small])))
                if len(pending) == self.batch_size:
                    yield from self._flush(pending)
                    pending = []
            history.append(small)
        if pending:
            yield from self._flush(pending)

    @torch.inference_mode()
    def _flush(self, pending: list) -> list[Prediction]:
        x = to_model_range(torch.from_numpy(np.stack([clip for _, _, clip in pending])).to(self.ctx.device))
        prediction, target, _ = self.ctx.predict(x)
        values = self.score(prediction, target, x[:, -2]).cpu().numpy()  # PSNR, or --score's dB value
        if not self.maps:
            return [Prediction(i, f, float(v)) for (i, f, _), v in zip(pending, values)]
        maps = anomaly_maps(prediction, target, self.sigma).cpu().numpy()
        images = ((prediction + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).movedim(1, -1).cpu().numpy()
        return [Prediction(i, f, float(v), im, m) for (i, f, _), v, im, m in zip(pending, values, images, maps)]
