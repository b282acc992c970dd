"""MAMA's F2LM generator and its Destroyer (Hong, Ahn, Jo, Park, "Making Anomalies More Anomalous", IEEE Access
12:36712-36726, 2024).  Facts from the authors' code are in docs/methods.md 'MAMA: authors' code'; what follows
restates them.

F2LM (``--model=f2lm``, stage 1): three encoders of the same shape (double_conv to 64, then max-pool + double_conv to
128, 256, 512 at 1/8 of the frame size) read the 4 input frames (12 channels), the 3 flows between them (6 channels)
and the 4 frames' semantic logits (84 channels).  At the bottleneck two double_convs (512 -> 512) transform the
frame feature x4 into a motion-like and a label-like feature; [x4, frame->motion, frame->label] (1536 channels) go
through a double_conv to 512 and a squeeze-excitation layer (reduction 8), then a decoder of three [2x2 transposed
convolution, concatenate the frame encoder's skip, double_conv] blocks, a 3x3 convolution and tanh.  Skips come only
from the frame encoder; the motion and label features never reach the decoder: they are the triplet losses'
positives (ffpvad/losses/mama.py).  G's convolutions and linear layers start from a truncated normal (std 0.02).

Destroyer (``--stage=destroyer``, stage 2): a plain U-Net (3 -> 3, the same blocks, tanh) trained against the frozen
generator to paint badly predicted patches black (ffpvad/losses/mama.py); :class:`MAMA` holds both for checkpoints and
evaluation.

Ours: ``--base_channels`` scales every width (64 = the authors'); a missing input stream (``--flownet=none`` or
``--semantic=none``) removes its encoder, its transform and its triplet, and the fusion takes what is left.  Flows come
from the flow registry (ffpvad/flow/) in pixels divided by 20 (FlowNet's native unit; the first convolution has no bias
and is followed by BatchNorm, so the scale does not matter); semantic logits from ffpvad/models/semantic.py.  The frozen
input networks live in :class:`AuxiliaryInputs`, outside the state dict: checkpoints hold F2LM's own weights, and a
copy of the generator (the EMA) shares them.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ffpvad.config import Config
from ffpvad.flow import build_flownet, resolve_flownet_name
from ffpvad.models.registry import register_generator
from ffpvad.models.semantic import build_semantic, resolve_semantic_name
from ffpvad.losses.mama import triplet_per_frame
from ffpvad.models.ffp import UNetGenerator, UpStage, double_conv

FLOW_UNIT = 20.0  # pixels per FlowNet output unit


class AuxiliaryInputs:
    """The frozen networks that make F2LM's motion and semantic inputs from its input frames.

    Not a module: their weights are not F2LM's (no state dict, no optimizer, no EMA); a deep copy returns the same
    object, so the EMA copy of the generator does not duplicate them.
    """

    def __init__(self, flow: Optional[nn.Module], semantic: Optional[nn.Module], n_inputs: int):
        self.flow, self.semantic, self.n_inputs = flow, semantic, n_inputs

    def __deepcopy__(self, memo) -> "AuxiliaryInputs":
        return self

    @staticmethod
    def _on(network: nn.Module, device: torch.device) -> nn.Module:
        tensor = next(iter(list(network.parameters()) + list(network.buffers())), None)
        if tensor is not None and tensor.device != device:
            network.to(device)
        return network

    def frames(self, stacked: torch.Tensor) -> torch.Tensor:
        """(B, 3n, H, W) -> (B, n, 3, H, W)."""
        b, _, h, w = stacked.shape
        return stacked.reshape(b, self.n_inputs, 3, h, w)

    @torch.no_grad()
    def flows(self, pairs_first: torch.Tensor, pairs_second: torch.Tensor) -> torch.Tensor:
        """Flow first -> second of (N, 3, H, W) frame pairs, (N, 2, H, W) in FlowNet units."""
        network = self._on(self.flow, pairs_first.device)
        return network(torch.stack([pairs_first, pairs_second], dim=2)).float() / FLOW_UNIT

    @torch.no_grad()
    def logits(self, frames: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, 21, H, W) semantic logits."""
        network = self._on(self.semantic, frames.device)
        return network(frames).float()

    def motion(self, stacked: torch.Tensor) -> torch.Tensor:
        """(B, 3n, H, W) -> the flows between consecutive input frames, (B, 2(n-1), H, W)."""
        x = self.frames(stacked)
        b, n = x.shape[:2]
        flow = self.flows(x[:, :-1].flatten(0, 1), x[:, 1:].flatten(0, 1))
        return flow.reshape(b, (n - 1) * 2, *flow.shape[-2:])

    def labels(self, stacked: torch.Tensor) -> torch.Tensor:
        """(B, 3n, H, W) -> every input frame's logits, (B, 21n, H, W)."""
        x = self.frames(stacked)
        b = x.shape[0]
        logits = self.logits(x.flatten(0, 1))
        return logits.reshape(b, -1, *logits.shape[-2:])


class Encoder(nn.Module):
    """double_conv to w, then three [max-pool, double_conv] to 2w, 4w, 8w; returns every stage's output."""

    def __init__(self, in_channels: int, base: int):
        super().__init__()
        widths = [base, 2 * base, 4 * base, 8 * base]
        self.inc = double_conv(in_channels, widths[0])
        self.downs = nn.ModuleList(nn.Sequential(nn.MaxPool2d(2), double_conv(widths[i], widths[i + 1]))
                                   for i in range(3))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = [self.inc(x)]
        for down in self.downs:
            features.append(down(features[-1]))
        return features


class SqueezeExcitation(nn.Module):
    def __init__(self, channels: int, reduction: int = 8):
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(channels, channels // reduction), nn.ReLU(inplace=True),
                                nn.Linear(channels // reduction, channels), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.fc(x.mean(dim=(2, 3)))[:, :, None, None]


def truncated_normal_init(module: nn.Module) -> None:
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def unit(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, dim=1)


class F2LM(nn.Module):
    """(B, 3n, H, W) frames (+ flows, semantic logits) -> the next frame (B, 3, H, W) in [-1, 1].

    Without ``motion`` / ``semantic`` the attached :class:`AuxiliaryInputs` computes them (evaluation); training
    passes cached ones.  ``with_features=True`` also returns the five unit-norm bottleneck features
    (x4, y4, frame->motion, z4, frame->label; the absent streams' are None).  In eval mode every call keeps each
    frame's triplet hinges in ``last_terms`` for the score.
    """

    # Parameters that only the triplet losses train (they never reach the output frame).
    feature_only_prefixes = ("motion_encoder.", "label_encoder.")

    def __init__(self, n_inputs: int = 4, base: int = 64, motion: bool = True, semantic: bool = True,
                 n_classes: int = 21, margin: float = 0.2, aux: Optional[AuxiliaryInputs] = None):
        super().__init__()
        deep = 8 * base
        self.margin = margin
        self.frame_encoder = Encoder(3 * n_inputs, base)
        self.motion_encoder = Encoder(2 * (n_inputs - 1), base) if motion else None
        self.label_encoder = Encoder(n_classes * n_inputs, base) if semantic else None
        self.to_motion = double_conv(deep, deep) if motion else None
        self.to_label = double_conv(deep, deep) if semantic else None
        self.fuse = double_conv(deep * (1 + motion + semantic), deep)
        self.se = SqueezeExcitation(deep, 8)
        self.ups = nn.ModuleList(UpStage(w * 2, w) for w in (4 * base, 2 * base, base))
        self.out = nn.Conv2d(base, 3, 3, padding=1)
        self.aux = aux
        self.last_terms: dict[str, torch.Tensor] = {}
        self.apply(truncated_normal_init)

    def _inputs(self, frames, motion, semantic):
        if self.motion_encoder is not None and motion is None:
            motion = self._aux().motion(frames)
        if self.label_encoder is not None and semantic is None:
            semantic = self._aux().labels(frames)
        return motion, semantic

    def _aux(self) -> AuxiliaryInputs:
        if self.aux is None:
            raise ValueError("F2LM needs its flows / semantic maps: pass them or attach AuxiliaryInputs")
        return self.aux

    def forward(self, frames: torch.Tensor, motion: Optional[torch.Tensor] = None,
                semantic: Optional[torch.Tensor] = None, with_features: bool = False):
        motion, semantic = self._inputs(frames, motion, semantic)
        x1, x2, x3, x4 = self.frame_encoder(frames)
        fused = [x4]
        y4 = f2m = z4 = f2l = None
        if self.motion_encoder is not None:
            y4, f2m = self.motion_encoder(motion.to(frames.dtype))[-1], self.to_motion(x4)
            fused.append(f2m)
        if self.label_encoder is not None:
            z4, f2l = self.label_encoder(semantic.to(frames.dtype))[-1], self.to_label(x4)
            fused.append(f2l)
        x = self.se(self.fuse(torch.cat(fused, dim=1)))
        for up, skip in zip(self.ups, (x3, x2, x1)):
            x = up(x, skip)
        frame = torch.tanh(self.out(x))
        features = {"x4": unit(x4), "y4": None if y4 is None else unit(y4), "f2m": None if f2m is None else unit(f2m),
                    "z4": None if z4 is None else unit(z4), "f2l": None if f2l is None else unit(f2l)}
        if not self.training:
            self.last_terms = self.triplet_terms(features)
        return (frame, features) if with_features else frame

    def predict_with_terms(self, frames: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(the predicted frame, each frame's triplet hinges): what the score needs from one call."""
        frame, features = self(frames, with_features=True)
        return frame, self.triplet_terms(features)

    def triplet_terms(self, features: dict[str, Optional[torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Each frame's motion and label triplet hinges (the score's terms), for the streams present."""
        terms = {}
        x4 = features["x4"].float()
        if features["f2m"] is not None:
            terms["motion_triplet"] = triplet_per_frame(features["f2m"].float(), features["y4"].float(), x4,
                                                        self.margin)
        if features["f2l"] is not None:
            terms["label_triplet"] = triplet_per_frame(features["f2l"].float(), features["z4"].float(), x4,
                                                       self.margin)
        return terms


def freeze_generator(generator: F2LM) -> F2LM:
    for parameter in generator.parameters():
        parameter.requires_grad_(False)
    return generator.eval()


class MAMA(nn.Module):
    """Stage 2: the frozen F2LM generator and the Destroyer.  Called like a generator, it predicts the frame with
    F2LM and keeps the Destroyer's output of that prediction for the score (``last_terms['restored']``);
    ``destroy=`` runs the Destroyer alone on a given (corrupted) prediction, which the training step does."""

    def __init__(self, generator: F2LM, destroyer: nn.Module):
        super().__init__()
        self.generator = freeze_generator(generator)
        self.destroyer = destroyer
        self.last_terms: dict[str, torch.Tensor] = {}

    def train(self, mode: bool = True) -> "MAMA":
        super().train(mode)
        self.generator.eval()  # frozen: BatchNorm keeps its stage-1 statistics
        return self

    def forward(self, frames: Optional[torch.Tensor] = None, destroy: Optional[torch.Tensor] = None):
        if destroy is not None:
            return self.destroyer(destroy)
        prediction = self.generator(frames)
        self.last_terms = {**self.generator.last_terms, "restored": self.destroyer(prediction)}
        return prediction

    def predict_with_terms(self, frames: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(F2LM's prediction, its triplet hinges and the Destroyer's output of it as ``restored``)."""
        prediction, terms = self.generator.predict_with_terms(frames)
        return prediction, {**terms, "restored": self.destroyer(prediction)}


def build_auxiliary(cfg: Config) -> AuxiliaryInputs:
    return AuxiliaryInputs(build_flownet(cfg), build_semantic(cfg), cfg.n_inputs)


def resolve_inputs(cfg: Config) -> Config:
    """``auto`` flow and semantic settings resolved to what this machine has (the weight-free Lucas-Kanade
    estimator when neither FlowNet2-SD nor SPyNet weights are present)."""
    return cfg.replace(flownet=resolve_flownet_name(cfg, fallback="lucaskanade", purpose="F2LM's motion input"),
                       semantic=resolve_semantic_name(cfg))


@register_generator("f2lm", method="f2lm")
def build_f2lm(cfg: Config) -> nn.Module:
    if "auto" in (cfg.flownet, cfg.semantic):
        cfg = resolve_inputs(cfg)
    generator = F2LM(cfg.n_inputs, cfg.base_channels, motion=cfg.flownet != "none", semantic=cfg.semantic != "none",
                     margin=cfg.triplet_margin, aux=build_auxiliary(cfg))
    if cfg.stage == "destroyer":
        return MAMA(generator, UNetGenerator(3, 3, cfg.base_channels))
    return generator
