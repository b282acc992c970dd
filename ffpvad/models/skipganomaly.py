"""Skip-GANomaly's networks (Akcay, Atapour-Abarghouei, Breckon, IJCNN 2019, Sec. III-A and Fig. 2).

Paper: the generator is an encoder-decoder with skip connections between every encoder stage and its mirrored
decoder stage, mapping an image to its reconstruction; the discriminator is DCGAN's, and its penultimate features
f(.) give the latent loss and the latent part of the anomaly score.

From the authors' code (docs/methods.md 'Skip-GANomaly'), followed here:
- Generator: pix2pix's U-Net at depth log2(image size) (7 at 128 px, 8 at 256 px), so the bottleneck is 1x1.
  Down: 4x4 stride-2 convolutions, widths ngf, 2 ngf, 4 ngf, then 8 ngf to the bottom; the outermost is a bare
  convolution, the middle ones LeakyReLU(0.2) + conv + BatchNorm, the innermost has no BatchNorm.  Up: ReLU, 4x4
  stride-2 transposed convolution, BatchNorm (tanh at the top).  Every block but the outermost returns its input
  concatenated with its output (the skip).  Convolutions before a BatchNorm have no bias.  No dropout.
- Discriminator: 4x4 stride-2 conv to ndf + LeakyReLU(0.2), then conv + BatchNorm + LeakyReLU doubling the width
  until 4x4, then a 4x4 valid conv to nz = 100 at 1x1: the features f(x).  The real/fake head is a 3x3 conv to one
  channel on f(x).
- Initialisation N(0, 0.02) for convolutions, BatchNorm weights N(1, 0.02), biases 0.

Ours: ``--base_channels`` is ngf and ndf (64 in the authors' code); the discriminator returns the head's logit, not
its sigmoid, and the losses use BCE-with-logits (the same function, safe under autocast).  The authors add
``self.noise`` (an unfilled ``torch.empty`` buffer) to G's input; we add nothing (docs/methods.md 'Skip-GANomaly':
"use zero noise").
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ffpvad.config import Config
from ffpvad.errors import UserError
from ffpvad.models.registry import register_discriminator, register_generator

LATENT_SIZE = 100  # nz of the authors' code


class SkipBlock(nn.Module):
    """One level of the U-Net: down, the inner levels, up; returns cat(skip, output) except at the outermost.

    The skip is the block's input after the down path's LeakyReLU: pix2pix applies that LeakyReLU in place, so the
    tensor it concatenates is the activated one.  We write that out instead of relying on in-place aliasing.
    """

    def __init__(self, outer: int, inner: int, submodule: nn.Module | None = None, in_channels: int | None = None,
                 outermost: bool = False, innermost: bool = False):
        super().__init__()
        in_channels = outer if in_channels is None else in_channels
        self.outermost = outermost
        self.activation = nn.Identity() if outermost else nn.LeakyReLU(0.2)
        down: list[nn.Module] = [nn.Conv2d(in_channels, inner, 4, stride=2, padding=1, bias=False)]
        if outermost:
            up = [nn.ReLU(True), nn.ConvTranspose2d(2 * inner, outer, 4, stride=2, padding=1), nn.Tanh()]
        elif innermost:
            up = [nn.ReLU(True), nn.ConvTranspose2d(inner, outer, 4, stride=2, padding=1, bias=False),
                  nn.BatchNorm2d(outer)]
        else:
            down.append(nn.BatchNorm2d(inner))
            up = [nn.ReLU(True), nn.ConvTranspose2d(2 * inner, outer, 4, stride=2, padding=1, bias=False),
                  nn.BatchNorm2d(outer)]
        inner_part = [] if submodule is None else [submodule]
        self.model = nn.Sequential(*down, *inner_part, *up)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.activation(x)
        out = self.model(x)
        return out if self.outermost else torch.cat([x, out], dim=1)


class SkipGANomalyGenerator(nn.Module):
    """(B, 3, S, S) -> (B, 3, S, S), S a power of two >= 32; the bottleneck is (B, 8 ngf, 1, 1)."""

    def __init__(self, image_size: int, channels: int = 3, ngf: int = 64):
        super().__init__()
        depth = int(round(math.log2(image_size)))
        if 2 ** depth != image_size or depth < 5:
            raise ValueError(f"Skip-GANomaly's U-Net needs a power-of-two image size >= 32, got {image_size}")
        self.depth = depth
        block = SkipBlock(8 * ngf, 8 * ngf, innermost=True)
        for _ in range(depth - 5):
            block = SkipBlock(8 * ngf, 8 * ngf, block)
        block = SkipBlock(4 * ngf, 8 * ngf, block)
        block = SkipBlock(2 * ngf, 4 * ngf, block)
        block = SkipBlock(ngf, 2 * ngf, block)
        self.net = SkipBlock(channels, ngf, block, in_channels=channels, outermost=True)
        self.apply(init_weights)

    def forward(self, frame: torch.Tensor) -> torch.Tensor:
        return self.net(frame)


class DCGANDiscriminator(nn.Module):
    """(B, 3, S, S) -> (real/fake logit (B,), features f (B, 100, 1, 1))."""

    def __init__(self, image_size: int, channels: int = 3, ndf: int = 64, latent: int = LATENT_SIZE):
        super().__init__()
        if image_size < 8 or image_size & (image_size - 1):
            raise ValueError(f"the DCGAN discriminator needs a power-of-two image size >= 8, got {image_size}")
        layers: list[nn.Module] = [nn.Conv2d(channels, ndf, 4, stride=2, padding=1, bias=False),
                                   nn.LeakyReLU(0.2, True)]
        size, width = image_size // 2, ndf
        while size > 4:
            layers += [nn.Conv2d(width, 2 * width, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(2 * width),
                       nn.LeakyReLU(0.2, True)]
            size, width = size // 2, 2 * width
        layers.append(nn.Conv2d(width, latent, 4, stride=1, padding=0, bias=False))
        self.features = nn.Sequential(*layers)
        self.head = nn.Conv2d(latent, 1, 3, stride=1, padding=1, bias=False)
        self.apply(init_weights)

    def forward(self, frame: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.features(frame)
        return self.head(features).flatten(), features


def init_weights(module: nn.Module) -> None:
    """The authors' ``weights_init``: N(0, 0.02) convolutions, N(1, 0.02) BatchNorm scales, zero biases."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.modules.batchnorm._BatchNorm):  # SyncBatchNorm under torchrun too
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def _check_size(cfg: Config) -> None:
    if cfg.img_size < 32 or cfg.img_size & (cfg.img_size - 1):
        raise UserError(f"--model=skipganomaly needs a power-of-two --img_size >= 32 (its U-Net goes down to 1x1), "
                        f"got {cfg.img_size}: use 64, 128 or 256")


@register_generator("skipganomaly", method="skipganomaly")
def build_generator(cfg: Config) -> nn.Module:
    _check_size(cfg)
    return SkipGANomalyGenerator(cfg.img_size, 3, cfg.base_channels)


@register_discriminator("dcgan")
def build_discriminator(cfg: Config) -> nn.Module:
    _check_size(cfg)
    return DCGANDiscriminator(cfg.img_size, 3, cfg.base_channels)
