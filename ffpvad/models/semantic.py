"""Frozen semantic segmentation for MAMA's F2LM label stream, registered by name (``--semantic=deeplabv3``).

Authors' code (docs/methods.md 'MAMA: authors' code'): torchvision's DeepLabv3-ResNet101 (the COCO-trained weights
with the 21
Pascal VOC classes), its ``out`` logits at the frame's size, one 21-channel map per input frame.
Fixed, not copied: the authors feed it raw [-1, 1] BGR frames; here it gets what it was trained on, RGB in [0, 1]
normalised with the ImageNet mean and standard deviation.

A network is never used with random weights.  The weights are looked for where torchvision keeps them
(``torch.hub.get_dir()/checkpoints``: a user online gets them the usual torchvision way, once); when they are missing,
``--semantic=deeplabv3`` stops with one line saying how to get them, and ``--semantic=auto`` (the default) trains
without the label stream, says so, and records ``none`` in the run's config.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

from ffpvad.config import Config
from ffpvad.errors import UserError
from ffpvad.flow.core import freeze
from ffpvad.registry import Registry

N_CLASSES = 21  # Pascal VOC classes of the COCO_WITH_VOC_LABELS weights
Builder = Callable[[Config], Optional[nn.Module]]
SEMANTICS: Registry[Builder] = Registry("--semantic")


def register_semantic(name: str) -> Callable[[Builder], Builder]:
    return SEMANTICS.register(name)


def deeplab_weights_path() -> Path:
    """Where torchvision caches DeepLabv3-ResNet101's COCO/VOC weights on this machine."""
    from torchvision.models.segmentation import DeepLabV3_ResNet101_Weights  # deferred: torchvision is heavy

    url = DeepLabV3_ResNet101_Weights.COCO_WITH_VOC_LABELS_V1.url
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


class DeepLabLogits(nn.Module):
    """(B, 3, H, W) RGB in [-1, 1] -> (B, 21, H, W) class logits of DeepLabv3-ResNet101."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = ((frames + 1) / 2 - self.mean) / self.std
        return self.network(x)["out"]


@register_semantic("none")
def _no_semantic(cfg: Config) -> None:
    return None


@register_semantic("deeplabv3")
def build_deeplabv3(cfg: Config) -> nn.Module:
    from torchvision.models.segmentation import deeplabv3_resnet101  # deferred: torchvision is heavy

    path = deeplab_weights_path()
    if not path.is_file():
        raise UserError(f"DeepLabv3-ResNet101 weights not found ({path}): fetch them once online with python -c "
                        f"\"import torchvision; torchvision.models.segmentation.deeplabv3_resnet101(weights='DEFAULT')\""
                        f", or train without the label stream with --semantic=none")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated or foreign files raise several types
        raise UserError(f"cannot read DeepLabv3 weights {path} ({type(exc).__name__}): delete the file and fetch it "
                        f"again, or use --semantic=none") from None
    network = deeplabv3_resnet101(weights=None, weights_backbone=None, num_classes=N_CLASSES, aux_loss=True)
    try:
        network.load_state_dict(state)
    except RuntimeError as exc:
        raise UserError(f"{path} does not match DeepLabv3-ResNet101 ({str(exc).splitlines()[0]}): delete it and "
                        f"fetch it again, or use --semantic=none") from None
    network.aux_classifier = None  # only 'out' is used
    return DeepLabLogits(network)


def resolve_semantic_name(cfg: Config) -> str:
    """The network ``--semantic=auto`` stands for on this machine (other names are returned as they are)."""
    if cfg.semantic != "auto":
        return cfg.semantic
    if deeplab_weights_path().is_file():
        print(f"semantic: --semantic=auto uses deeplabv3 (weights found at {deeplab_weights_path()})")
        return "deeplabv3"
    print(f"NOTE: --semantic=auto found no DeepLabv3-ResNet101 weights ({deeplab_weights_path()}): F2LM trains WITHOUT "
          f"its label stream (fetch the weights as torchvision does to use it)")
    return "none"


def build_semantic(cfg: Config) -> Optional[nn.Module]:
    """The frozen segmentation network named by ``cfg.semantic`` (resolve ``auto`` first)."""
    if cfg.semantic not in SEMANTICS:
        raise UserError(f"unknown --semantic '{cfg.semantic}': valid names are {', '.join(sorted(SEMANTICS))}, auto")
    network = SEMANTICS.get(cfg.semantic)(cfg)
    return None if network is None else freeze(network)
