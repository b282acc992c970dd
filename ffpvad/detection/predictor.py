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
from torch import nn

from ffpvad.training.autotune import inference_settings
from ffpvad.checkpoint import load_networks, read_for_scoring, resolve_checkpoint
from ffpvad.config import Config
from ffpvad.data.dataset import to_model_range
from ffpvad.errors import UserError
from ffpvad.evaluation.localization import DEFAULT_SIGMA, anomaly_maps
from ffpvad.methods import detectable_models, method_for
from ffpvad.runtime import autocast, configure_threads, eval_batch_size, resolve_device
from ffpvad.evaluation.scores import frame_score


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


def load_generator(checkpoint: str, weights_dir: str = "weights", overrides: Optional[dict] = None,
                   img_size: int = 0) -> tuple[Config, nn.Module, Path]:
    """(config, generator in eval mode, checkpoint path) with the generator checked to run on the frames a stream
    feeds it.  ``overrides``: run-time settings (device, amp, channels_last, num_threads, data_root, cache_dir,
    eval_batch_size) that replace the checkpoint's."""
    path = resolve_checkpoint(checkpoint, weights_dir)
    state, stored = read_for_scoring(path)
    cfg = stored.replace(**(overrides or {}))
    if img_size and img_size != cfg.img_size:
        raise UserError(f"--img_size={img_size} but {path} was trained on {cfg.img_size}x{cfg.img_size} "
                        f"frames: detect.py resizes every frame to the checkpoint's size, drop --img_size")
    method = method_for(cfg)
    if not method.scores_by_psnr:
        raise UserError(f"{path} is a --model={cfg.model} checkpoint, {method.description}: detect.py runs "
                        f"frame-prediction models scored by PSNR ({', '.join(detectable_models())}); score its test "
                        f"frames with eval.py")
    generator, _ = load_networks(path, state, cfg)
    generator.eval()
    n_channels = 3 * cfg.n_inputs
    try:
        with torch.inference_mode():
            out = generator(torch.zeros(1, n_channels, cfg.img_size, cfg.img_size))
    except RuntimeError as exc:
        raise UserError(f"{path}: the generator does not run on {cfg.img_size}x{cfg.img_size} frames with "
                        f"{n_channels} channels ({str(exc).splitlines()[0]})") from None
    if tuple(out.shape) != (1, 3, cfg.img_size, cfg.img_size):
        raise UserError(f"{path}: the generator turns {cfg.img_size}x{cfg.img_size} frames into {tuple(out.shape)}, "
                        f"not one {cfg.img_size}x{cfg.img_size} RGB frame: a checkpoint of another size")
    return cfg, generator, Path(path)


class StreamPredictor:
    """Predicts each frame of a stream from the clip_len-1 frames before it (module docstring)."""

    def __init__(self, generator: nn.Module, cfg: Config, device: torch.device, amp_dtype: Optional[torch.dtype],
                 channels_last: bool, sigma: float = DEFAULT_SIGMA, maps: bool = True):
        self.generator, self.cfg, self.device = generator, cfg, device
        self.amp_dtype, self.channels_last, self.sigma, self.maps = amp_dtype, channels_last, sigma, maps
        self.method = method_for(cfg)
        self.score = frame_score(cfg.score)
        self.batch_size = eval_batch_size(cfg, device)

    @classmethod
    def from_checkpoint(cls, checkpoint: str, weights_dir: str = "weights", device: str = "auto",
                        amp: str = "auto", channels_last: str = "auto", num_threads: int = 0, batch_size: int = 0,
                        sigma: float = DEFAULT_SIGMA, maps: bool = True) -> "StreamPredictor":
        """A predictor on this machine's device for a checkpoint (a name in ``weights_dir`` or a path)."""
        overrides = dict(device=device, amp=amp, channels_last=channels_last, num_threads=num_threads,
                         eval_batch_size=batch_size)
        cfg, generator, path = load_generator(checkpoint, weights_dir, overrides)
        dev = resolve_device(cfg.device)
        configure_threads(cfg, dev)
        cfg, amp_dtype, nhwc = inference_settings(cfg, dev, method_for(cfg), generator)
        generator = generator.to(dev, memory_format=torch.channels_last if nhwc else torch.contiguous_format)
        predictor = cls(generator, cfg, dev, amp_dtype, nhwc, sigma, maps)
        predictor.checkpoint = path
        return predictor

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
        x = to_model_range(torch.from_numpy(np.stack([clip for _, _, clip in pending])).to(self.device))
        inputs, target = self.method.split(x)
        if self.channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        with autocast(self.device, self.amp_dtype):
            prediction, _ = self.method.predict(self.generator, inputs)
        prediction = prediction.float()
        values = self.score(prediction, target, x[:, -2]).cpu().numpy()  # PSNR, or --score's dB value
        if not self.maps:
            return [Prediction(i, f, float(v)) for (i, f, _), v in zip(pending, values)]
        maps = anomaly_maps(prediction, target, self.sigma).cpu().numpy()
        images = ((prediction + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).movedim(1, -1).cpu().numpy()
        return [Prediction(i, f, float(v), im, m) for (i, f, _), v, im, m in zip(pending, values, images, maps)]
