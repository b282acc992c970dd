"""The FFP discriminator: a PatchGAN-style "pixel discriminator" scoring overlapping patches real or fake.

Paper (Liu et al., CVPR 2018, Sec. 3.4): a patch discriminator trained with the least-squares GAN objective.
Published network (the authors' and the PyTorch port's code): 4x4 convolutions with 128, 256, 512 filters at stride
2, then 512 at stride 1, LeakyReLU(0.2), no normalisation, a 1-channel patch map, sigmoid output.
Our choice: the widths are 2, 4, 8, 8 times ``--base_channels`` (= the published 128..512 at 64).
"""
from __future__ import annotations

import torch
from torch import nn

from ffpvad.config import Config
from ffpvad.models.registry import register_discriminator


class PixelDiscriminator(nn.Module):
    def __init__(self, in_channels: int = 3, widths: tuple[int, ...] = (128, 256, 512, 512)):
        super().__init__()
        layers: list[nn.Module] = []
        previous = in_channels
        for i, width in enumerate(widths):
            stride = 1 if i == len(widths) - 1 else 2
            layers += [nn.Conv2d(previous, width, 4, stride=stride, padding=2), nn.LeakyReLU(0.2, inplace=True)]
            previous = width
        layers.append(nn.Conv2d(previous, 1, 4, stride=1, padding=2))
        self.net = nn.Sequential(*layers)

    def forward(self, frame: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(frame))


@register_discriminator("pixel")
def build_pixel(cfg: Config) -> nn.Module:
    b = cfg.base_channels
    return PixelDiscriminator(3, (2 * b, 4 * b, 8 * b, 8 * b))
