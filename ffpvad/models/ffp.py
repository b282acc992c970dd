"""The FFP generator: a U-Net predicting frame t from frames t-4..t-1.

Paper (Liu, Luo, Lian, Gao, "Future Frame Prediction for Anomaly Detection - A New Baseline", CVPR 2018, Sec. 3.1
and Fig. 2): a U-Net with skip connections between mirrored encoder and decoder stages, input the stacked previous
frames, output the next frame; 3x3 convolutions, max-pooling down and deconvolution up, resolution kept by padding.

Our choices, where the paper is silent: stage widths 64-128-256-512 with a BatchNorm after every convolution (as
the widely used PyTorch port does; the TF original has none), 2x2 stride-2 transposed convolutions for upsampling,
a final 3x3 convolution and tanh so the output lives in the [-1, 1] range of the inputs.  ``--base_channels``
scales every width (64 = the paper's network).
"""
from __future__ import annotations

import torch
from torch import nn

from ffpvad.config import Config
from ffpvad.models.registry import register_generator


def double_conv(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class UpStage(nn.Module):
    """Transposed convolution x2, concatenate the mirrored encoder feature, double convolution."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, out_channels, 2, stride=2)
        self.conv = double_conv(2 * out_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([skip, self.up(x)], dim=1))


class UNetGenerator(nn.Module):
    def __init__(self, in_channels: int = 12, out_channels: int = 3, base: int = 64):
        super().__init__()
        widths = [base, 2 * base, 4 * base, 8 * base]
        self.inc = double_conv(in_channels, widths[0])
        self.downs = nn.ModuleList(
            nn.Sequential(nn.MaxPool2d(2), double_conv(widths[i], widths[i + 1])) for i in range(3))
        self.ups = nn.ModuleList(UpStage(widths[i + 1], widths[i]) for i in reversed(range(3)))
        self.out = nn.Conv2d(widths[0], out_channels, 3, padding=1)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = self.inc(frames)
        skips = []
        for down in self.downs:
            skips.append(x)
            x = down(x)
        for up, skip in zip(self.ups, reversed(skips)):
            x = up(x, skip)
        return torch.tanh(self.out(x))


@register_generator("ffp")
def build_ffp(cfg: Config) -> nn.Module:
    return UNetGenerator(in_channels=3 * cfg.n_inputs, out_channels=3, base=cfg.base_channels)
