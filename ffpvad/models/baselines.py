"""Trivial predictors that every results table needs beside the learned ones.

``copylast``: predict frame t as a copy of frame t-1.  Its PSNR measures how much a frame differs from the one
before it, so its AUC is what "anomalies move differently" buys without learning anything.
"""
from __future__ import annotations

import torch
from torch import nn

from ffpvad.config import Config
from ffpvad.models.registry import register_generator


class CopyLastFrame(nn.Module):
    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return frames[:, -3:]


@register_generator("copylast")
def build_copylast(cfg: Config) -> nn.Module:
    return CopyLastFrame()
