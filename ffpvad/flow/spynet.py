"""SPyNet (Ranjan & Black, "Optical Flow Estimation using a Spatial Pyramid Network", CVPR 2017).

Paper and the authors' Torch7 code (conventions in docs/flow.md 'SPyNet weight format and conventions'): a pyramid of
small networks, one
per level, coarse to fine.  Each level's basic module is five 7x7 convolutions, 8 -> 32 -> 64 -> 32 -> 16 -> 2
channels with ReLU between; its input is [frame 1, frame 2 warped by the upsampled coarser flow, that flow] and it
predicts a residual added to the flow.  Inputs are RGB in 0..1 normalised with ImageNet mean/std; the pyramid is
2x2 average pooling; the coarser flow is upsampled bilinearly (align_corners=True) and doubled; warping samples
frame 2 at p + flow(p) with border clamping.  The number of levels follows the larger image side (<=32: 1, <=64: 2,
<=128: 3, <=256: 4, <=512: 5, else 6), and level k uses the weights of file modelLk.

Ours: frames whose sides are not multiples of 32 are resized up to the next multiple and the flow is rescaled
back.  Weights come from the authors' .t7 files through ``tools/convert_spynet.py`` (never shipped here).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ffpvad.config import Config
from ffpvad.errors import UserError
from ffpvad.flow.core import find_weights, register_flownet, resize_flow

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
VARIANTS = {"sintel-final": "F", "sintel-clean": "C", "kitti-final": "K", "chairs-final": "3", "chairs-clean": "4"}
DEFAULT_VARIANT = "sintel-final"
HOW_TO_GET = ("download the modelL1..L6 .t7 files of a variant from the ffpvad/models/ folder of anuragranj/spynet "
              "(research use only) and convert them with: python tools/convert_spynet.py <folder> "
              "(writes weights/spynet_sintel-final.pth)")


def basic_module() -> nn.Sequential:
    widths = (8, 32, 64, 32, 16, 2)
    layers: list[nn.Module] = []
    for i in range(5):
        layers.append(nn.Conv2d(widths[i], widths[i + 1], 7, padding=3))
        if i < 4:
            layers.append(nn.ReLU(inplace=False))
    return nn.Sequential(*layers)


def levels_for(size: int) -> int:
    for levels, limit in enumerate((32, 64, 128, 256, 512, 1472), start=1):
        if size <= limit:
            return levels
    raise ValueError(f"SPyNet handles sides up to 1472 pixels, got {size}")


def backward_warp(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Sample ``image`` at p + flow(p), clamped to the border (bilinear, align_corners=True)."""
    b, _, h, w = image.shape
    ys, xs = torch.meshgrid(torch.arange(h, device=image.device, dtype=flow.dtype),
                            torch.arange(w, device=image.device, dtype=flow.dtype), indexing="ij")
    gx = 2.0 * (xs + flow[:, 0]) / max(w - 1, 1) - 1.0
    gy = 2.0 * (ys + flow[:, 1]) / max(h - 1, 1) - 1.0
    grid = torch.stack([gx, gy], dim=-1)
    return F.grid_sample(image, grid.to(image.dtype), mode="bilinear", padding_mode="border", align_corners=True)


class SpyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.basic = nn.ModuleList(basic_module() for _ in range(6))
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1), persistent=False)

    def forward_raw(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        """Normalised RGB frames (B, 3, H, W), sides multiples of 32 -> flow (B, 2, H, W) in pixels."""
        n_levels = levels_for(max(first.shape[-2:]))
        pyramid = [(first, second)]
        for _ in range(n_levels - 1):
            pyramid.insert(0, (F.avg_pool2d(pyramid[0][0], 2), F.avg_pool2d(pyramid[0][1], 2)))
        f1, f2 = pyramid[0]
        flow = self.basic[0](torch.cat([f1, f2, f1.new_zeros(f1.shape[0], 2, *f1.shape[-2:])], 1))
        for level in range(1, n_levels):
            f1, f2 = pyramid[level]
            upsampled = F.interpolate(flow, size=f1.shape[-2:], mode="bilinear", align_corners=True) * 2.0
            flow = self.basic[level](torch.cat([f1, backward_warp(f2, upsampled), upsampled], 1)) + upsampled
        return flow

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, 3, 2, H, W) RGB in [-1, 1] -> (B, 2, H, W) flow frame 0 -> frame 1, in pixels."""
        h, w = frames.shape[-2:]
        x = ((frames + 1.0) / 2.0 - self.mean.unsqueeze(2)) / self.std.unsqueeze(2)
        first, second = x[:, :, 0], x[:, :, 1]
        H, W = -(-h // 32) * 32, -(-w // 32) * 32
        if (H, W) == (h, w):
            return self.forward_raw(first, second)
        first = F.interpolate(first, size=(H, W), mode="bilinear", align_corners=False)
        second = F.interpolate(second, size=(H, W), mode="bilinear", align_corners=False)
        return resize_flow(self.forward_raw(first, second), (h, w))


def load_spynet(path: Path) -> SpyNet:
    network = SpyNet()
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        network.load_state_dict(payload["state_dict"] if "state_dict" in payload else payload)
    except Exception as exc:  # unreadable file or wrong keys/shapes
        raise UserError(f"{path} is not a converted SPyNet state dict ({type(exc).__name__}): {HOW_TO_GET}") \
            from None
    return network


@register_flownet("spynet")
def build_spynet(cfg: Config) -> nn.Module:
    return load_spynet(find_weights(cfg, "spynet", "SPyNet", HOW_TO_GET))
