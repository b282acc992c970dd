"""The inference context: a generator set up to predict on this machine, and the one prediction step.

Training has its ``TrainingContext`` (ffpvad/methods/base.py); everything that predicts frames without training
(eval.py, the validation of training, detect.py, the streaming API of ffpvad/detection/predictor.py, the causal
calibration and, through detect.py, the web page) holds an :class:`Inference` instead of threading
``(generator, cfg, device, amp_dtype, channels_last)`` through its signatures.  It is made in one place
(:meth:`Inference.set_up`: the device, the threads, the measured precision, layout and batch of
ffpvad/training/autotune.py, the networks moved and in eval mode), and :meth:`Inference.predict` is the one
prediction step: the method's input split, the layout, autocast, the method's ``predict``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from ffpvad.checkpoint import load_networks, read_for_scoring, resolve_checkpoint
from ffpvad.config import Config
from ffpvad.errors import UserError
from ffpvad.methods import Method, detectable_models, method_for
from ffpvad.runtime import autocast, configure_threads, eval_batch_size, resolve_device
from ffpvad.training.autotune import inference_settings

Compute = tuple[Optional[torch.dtype], bool]  # (autocast dtype or None for fp32, channels_last)
PLAIN: Compute = (None, False)  # fp32, NCHW: what int8 kernels run under (they pick their own layout)


@dataclass
class Inference:
    """A generator (and, for methods that score with it, the discriminator) on a device, with its precision and
    layout; ``cfg`` is the checkpoint's config with this run's settings, its evaluation batch decided."""
    generator: nn.Module
    cfg: Config
    device: torch.device
    amp_dtype: Optional[torch.dtype] = None
    channels_last: bool = False
    discriminator: Optional[nn.Module] = None
    checkpoint: Optional[Path] = None  # the file it came from, where it came from one

    @classmethod
    def set_up(cls, cfg: Config, generator: nn.Module, discriminator: Optional[nn.Module] = None,
               checkpoint: Optional[Path] = None, compute: Optional[Compute] = None) -> "Inference":
        """The networks on ``cfg.device`` in eval mode, the threads set, and the precision, layout and batch of
        --amp, --channels_last and --eval_batch_size (measured where ``auto``), or ``compute`` where it is given."""
        device = resolve_device(cfg.device)
        configure_threads(cfg, device)
        if compute is None:
            cfg, amp_dtype, nhwc = inference_settings(cfg, device, method_for(cfg), generator)
        else:
            amp_dtype, nhwc = compute
        layout = torch.channels_last if nhwc else torch.contiguous_format
        generator = generator.to(device, memory_format=layout).eval()
        if discriminator is not None:
            discriminator = discriminator.to(device, memory_format=layout).eval()
        return cls(generator, cfg, device, amp_dtype, nhwc, discriminator, checkpoint)

    @classmethod
    def for_stream(cls, checkpoint: str, weights_dir: str = "weights", overrides: Optional[dict] = None,
                   img_size: int = 0) -> "Inference":
        """A checkpoint's generator set up to score a stream frame by frame (:func:`load_for_stream`)."""
        cfg, generator, path = load_for_stream(checkpoint, weights_dir, overrides, img_size)
        return cls.set_up(cfg, generator, checkpoint=path)

    @property
    def method(self) -> Method:
        return method_for(self.cfg)

    @property
    def batch_size(self) -> int:
        return eval_batch_size(self.cfg, self.device)

    @property
    def precision(self) -> str:
        """The autocast dtype by name: what a calibration records it was measured with."""
        return str(self.amp_dtype).replace("torch.", "") if self.amp_dtype else "fp32"

    def predict(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """(prediction in float32, target, the method's terms) for clips ``x`` in the model range, (N, T, 3, H, W):
        the method's input split, the layout, autocast and the method's ``predict``.  Call it in inference mode."""
        inputs, target = self.method.split(x)
        if self.channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        with autocast(self.device, self.amp_dtype):
            prediction, terms = self.method.predict(self.generator, inputs)
        return prediction.float(), target, terms

    def frame_errors(self, prediction: torch.Tensor, target: torch.Tensor,
                     terms: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The method's per-frame errors beyond PSNR (Skip-GANomaly's latent error, MAMA's hinges) of one batch,
        under the same layout and autocast as the prediction."""
        if self.channels_last:
            prediction = prediction.contiguous(memory_format=torch.channels_last)
            target = target.contiguous(memory_format=torch.channels_last)
        with autocast(self.device, self.amp_dtype):
            return self.method.frame_errors(prediction, target, terms, self.discriminator)


def load_for_stream(checkpoint: str, weights_dir: str = "weights", overrides: Optional[dict] = None,
                    img_size: int = 0) -> tuple[Config, nn.Module, Path]:
    """(config, generator on the CPU in eval mode, checkpoint path) of a checkpoint that can score a stream frame by
    frame (detect.py, the streaming API): its method scores by PSNR, and the generator runs on the frames a stream
    feeds it.  ``overrides``: run-time settings (device, amp, channels_last, num_threads, data_root, cache_dir,
    eval_batch_size, score) that replace the checkpoint's."""
    path = Path(resolve_checkpoint(checkpoint, weights_dir))
    state, stored = read_for_scoring(path)
    cfg = stored.replace(**(overrides or {}))
    if img_size and img_size != cfg.img_size:
        raise UserError(f"--img_size={img_size} but {path} was trained on {cfg.img_size}x{cfg.img_size} "
                        f"frames: detect.py resizes every frame to the checkpoint's size, drop --img_size")
    method = method_for(cfg)
    if not method.scores_by_psnr:
        raise UserError(f"{path} is a --model={cfg.model} checkpoint, {method.description}: detect.py runs "
                        f"frame-prediction models scored by PSNR ({', '.join(detectable_models())}); score "
                        f"its test frames with eval.py")
    generator, _ = load_networks(path, state, cfg)
    check_frame_shape(generator.eval(), cfg, path)
    return cfg, generator, path


def check_frame_shape(generator: nn.Module, cfg: Config, path: Path) -> None:
    """The generator turns cfg.n_inputs frames of cfg.img_size into one RGB frame of that size (on the CPU, before
    any device set-up): a file whose weights fit another size is named here, not at the first frame."""
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
