"""A weight-free, differentiable flow estimator: coarse-to-fine Lucas-Kanade with warping, written in torch.

Method (Lucas & Kanade, IJCAI 1981; the pyramidal, iterative form of Bouguet's 2000 report): under brightness
constancy I2(p + u) = I1(p), the residual flow d at a pixel solves the 2x2 least-squares system
[Sxx Sxy; Sxy Syy] d = -[Sxt; Syt], whose sums are Gaussian-weighted over a window around the pixel; a Gaussian
pyramid handles displacements larger than the window, and each level refines the upsampled coarser flow after
warping frame 2 by it.

Ours: grey images in [0, 1] (the mean of RGB); spatial gradients by central differences of the mean of frame 1 and
warped frame 2; a Tikhonov term ``eps`` on the diagonal, so flat regions get no flow instead of noise; every
update clamped to +-``max_step`` pixels; levels by 2x2 average pooling down to a coarsest side of at least 16.
Every operation is differentiable, so the FFP flow loss reaches the generator through it; nothing is learned and
nothing is downloaded.  It is frozen in the sense that it has no parameters.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ffpvad.config import Config
from ffpvad.flow.core import register_flownet, resize_flow
from ffpvad.flow.spynet import backward_warp


def gaussian_kernel(sigma: float) -> torch.Tensor:
    radius = max(1, math.ceil(2.5 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-x**2 / (2 * sigma**2))
    return kernel / kernel.sum()


class PyramidLucasKanade(nn.Module):
    def __init__(self, sigma: float = 2.0, iterations: int = 3, eps: float = 1e-4, max_step: float = 2.0,
                 min_side: int = 16):
        super().__init__()
        self.iterations, self.eps, self.max_step, self.min_side = iterations, eps, max_step, min_side
        self.register_buffer("kernel", gaussian_kernel(sigma), persistent=False)

    def _window_sum(self, x: torch.Tensor) -> torch.Tensor:
        k = self.kernel.to(x.dtype)
        c, r = x.shape[1], (len(k) - 1) // 2
        x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
        return F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)

    @staticmethod
    def _gradients(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        padded = F.pad(image, (1, 1, 1, 1), mode="replicate")
        gx = (padded[..., 1:-1, 2:] - padded[..., 1:-1, :-2]) / 2.0
        gy = (padded[..., 2:, 1:-1] - padded[..., :-2, 1:-1]) / 2.0
        return gx, gy

    def _refine(self, first: torch.Tensor, second: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
        for _ in range(self.iterations):
            warped = backward_warp(second, flow)
            gx, gy = self._gradients((first + warped) / 2.0)
            gt = warped - first
            sums = self._window_sum(torch.cat([gx * gx, gx * gy, gy * gy, gx * gt, gy * gt], dim=1))
            sxx, sxy, syy, sxt, syt = sums.unbind(dim=1)
            sxx, syy = sxx + self.eps, syy + self.eps
            det = sxx * syy - sxy * sxy
            du = -(syy * sxt - sxy * syt) / det
            dv = -(sxx * syt - sxy * sxt) / det
            flow = flow + torch.stack([du, dv], dim=1).clamp(-self.max_step, self.max_step)
        return flow

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, 3, 2, H, W) RGB in [-1, 1] -> (B, 2, H, W) flow frame 0 -> frame 1, in pixels."""
        with torch.autocast(frames.device.type, enabled=False):  # the 2x2 solves need fp32, not bf16/fp16
            return self._estimate((frames.float().mean(dim=1) + 1.0) / 2.0)

    def _estimate(self, grey: torch.Tensor) -> torch.Tensor:
        pyramid = [(grey[:, 0:1], grey[:, 1:2])]
        while min(pyramid[0][0].shape[-2:]) // 2 >= self.min_side:
            pyramid.insert(0, (F.avg_pool2d(pyramid[0][0], 2), F.avg_pool2d(pyramid[0][1], 2)))
        first, second = pyramid[0]
        flow = first.new_zeros(first.shape[0], 2, *first.shape[-2:])
        for level, (first, second) in enumerate(pyramid):
            if level:
                flow = resize_flow(flow, first.shape[-2:])
            flow = self._refine(first, second, flow)
        return flow


@register_flownet("lucaskanade")
def build_lucaskanade(cfg: Config) -> nn.Module:
    return PyramidLucasKanade()
