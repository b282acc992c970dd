"""STemGAN generator: a two-stream residual autoencoder with temporal shift and channel attention.

What the papers state (Singh et al., "STemGAN: spatio-temporal generative adversarial network for video anomaly
detection", Applied Intelligence 53, 2023; arXiv 2311.14095): the generator is an autoencoder predicting the
future frame; its encoder has two streams, a spatial/appearance stream and a temporal/motion stream whose residual
blocks use the temporal shift module (TSM, Lin et al., ICCV 2019: 1/8 of the channels shifted one step forward in
time and 1/8 one step backward, zero at the ends, inside the residual branch); its decoder stacks deconvolutions
with channel attention at several stages; training uses a patch discriminator with adversarial, intensity and
gradient losses; knowledge is transferred between datasets.

What we chose (the papers leave it open; no code was released):
- Appearance stream: the most recent input frame through four stages (widths b, 2b, 4b, 8b; stride-2 3x3
  convolution between stages, one residual block per stage).  Why: appearance is best seen in the latest frame,
  and its stage outputs feed the decoder's skips, keeping detail as the FFP U-Net does.
- Motion stream: every input frame through a shared per-frame encoder of half the width (b/2 .. 4b), each stage a
  residual block with TSM in its branch, so channels exchange information across neighbouring frames; its
  bottleneck is averaged over time.  Why half width: it runs once per input frame (4x the appearance cost).
- Fusion at the bottleneck: concatenation, then a 1x1 convolution back to 8b.
- Decoder: three [2x2 stride-2 transposed convolution, concatenation with the appearance skip, 3x3 convolution,
  BatchNorm, ReLU, squeeze-and-excitation channel attention (timm's SEModule, reduction 1/8)], then a 3x3
  convolution and tanh.
- ``--base_channels`` is b (64 at full size).
"""
from __future__ import annotations

import torch
from einops import rearrange, reduce
from torch import nn

from ffpvad.config import Config
from ffpvad.models.registry import register_generator


def temporal_shift(x: torch.Tensor, n_frames: int, fold_div: int = 8) -> torch.Tensor:
    """TSM on (B*T, C, H, W): channels [0, C/8) take frame t-1's values, [C/8, 2C/8) frame t+1's, zero at the ends.

    (mmaction2's TemporalShift does the same with the two directions on the other channel groups.)
    """
    x = rearrange(x, "(b t) c h w -> b t c h w", t=n_frames)
    fold = x.shape[2] // fold_div
    out = torch.zeros_like(x)
    out[:, 1:, :fold] = x[:, :-1, :fold]  # forward in time: frame t sees frame t-1
    out[:, :-1, fold:2 * fold] = x[:, 1:, fold:2 * fold]  # backward in time: frame t sees frame t+1
    out[:, :, 2 * fold:] = x[:, :, 2 * fold:]
    return rearrange(out, "b t c h w -> (b t) c h w")


def conv_bn_relu(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


class ResidualBlock(nn.Module):
    """x + branch(x), the branch being two 3x3 conv-BN layers; with ``n_frames`` set, TSM opens the branch."""

    def __init__(self, channels: int, n_frames: int = 0):
        super().__init__()
        self.n_frames = n_frames
        self.branch = nn.Sequential(conv_bn_relu(channels, channels),
                                    nn.Conv2d(channels, channels, 3, 1, 1, bias=False), nn.BatchNorm2d(channels))
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch_input = temporal_shift(x, self.n_frames) if self.n_frames else x
        return self.act(x + self.branch(branch_input))


class Encoder(nn.Module):
    """Four stages; stage k has width widths[k] and resolution H / 2^k.  Returns every stage's output."""

    def __init__(self, in_channels: int, widths: list[int], n_frames: int = 0):
        super().__init__()
        self.stages = nn.ModuleList()
        previous = in_channels
        for k, width in enumerate(widths):
            self.stages.append(nn.Sequential(conv_bn_relu(previous, width, stride=1 if k == 0 else 2),
                                             ResidualBlock(width, n_frames)))
            previous = width

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


class AttentionUp(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, out_channels, 2, stride=2)
        self.fuse = conv_bn_relu(2 * out_channels, out_channels)
        from timm.layers import SEModule  # imported here: timm pulls in torchvision (+170 MB RSS) for FFP runs too

        self.attention = SEModule(out_channels, rd_ratio=1 / 8)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.attention(self.fuse(torch.cat([skip, self.up(x)], dim=1)))


class STemGANGenerator(nn.Module):
    def __init__(self, n_frames: int = 4, base: int = 64):
        super().__init__()
        self.n_frames = n_frames
        widths = [base, 2 * base, 4 * base, 8 * base]
        self.appearance = Encoder(3, widths)
        self.motion = Encoder(3, [max(8, w // 2) for w in widths], n_frames=n_frames)
        self.fuse = nn.Sequential(nn.Conv2d(widths[3] + max(8, widths[3] // 2), widths[3], 1, bias=False),
                                  nn.BatchNorm2d(widths[3]), nn.ReLU(inplace=True))
        self.decoder = nn.ModuleList(AttentionUp(widths[k + 1], widths[k]) for k in reversed(range(3)))
        self.out = nn.Conv2d(widths[0], 3, 3, padding=1)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, 3 * T, H, W) in [-1, 1] -> (B, 3, H, W) in [-1, 1]."""
        clip = rearrange(frames, "b (t c) h w -> b t c h w", t=self.n_frames)
        skips = self.appearance(clip[:, -1])
        motion = self.motion(rearrange(clip, "b t c h w -> (b t) c h w"))[-1]
        motion = reduce(motion, "(b t) c h w -> b c h w", "mean", t=self.n_frames)
        x = self.fuse(torch.cat([skips[-1], motion], dim=1))
        for up, skip in zip(self.decoder, reversed(skips[:-1])):
            x = up(x, skip)
        return torch.tanh(self.out(x))


@register_generator("stemgan")
def build_stemgan(cfg: Config) -> nn.Module:
    return STemGANGenerator(n_frames=cfg.n_inputs, base=cfg.base_channels)
