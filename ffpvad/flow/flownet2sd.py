"""FlowNet2-SD (Ilg et al., CVPR 2017), the flow network of the FFP flow loss, loading the file users have.

Checkpoint: ``FlowNet2-SD_checkpoint.pth.tar`` from NVIDIA's flownet2-pytorch (the FFP ports rename it
``FlowNet2-SD.pth``), a ``torch.save`` dict whose ``state_dict`` holds 60 tensors; the key names, shapes, input
convention and output scale below follow docs/flow.md 'FlowNet2-SD checkpoint format':
- input (B, 3, 2, H, W) RGB in 0..255; each sample's per-channel mean over both frames is subtracted, then / 255;
- six stride-2 stages, so H and W must be multiples of 64 (we resize to the next multiple and rescale the flow);
- output in eval mode: the 1/4-resolution flow x 20, upsampled x4 bilinearly = pixels at the input resolution.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ffpvad.config import Config
from ffpvad.errors import UserError
from ffpvad.flow.core import find_weights, register_flownet, resize_flow

DIV_FLOW = 20.0
HOW_TO_GET = ("download FlowNet2-SD_checkpoint.pth.tar (linked from the README of NVIDIA/flownet2-pytorch), "
              "put it in weights/ or pass --flownet_weights=PATH")


def _conv(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=True), nn.LeakyReLU(0.1, True))


def _deconv(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.ConvTranspose2d(in_channels, out_channels, 4, 2, 1, bias=True), nn.LeakyReLU(0.1, True))


def _inter_conv(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, 1, 1, bias=True))


def _predict_flow(in_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, 2, 3, 1, 1, bias=True)


def _upsample_flow() -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(2, 2, 4, 2, 1, bias=True)


class FlowNet2SD(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv0 = _conv(6, 64)
        self.conv1, self.conv1_1 = _conv(64, 64, 2), _conv(64, 128)
        self.conv2, self.conv2_1 = _conv(128, 128, 2), _conv(128, 128)
        self.conv3, self.conv3_1 = _conv(128, 256, 2), _conv(256, 256)
        self.conv4, self.conv4_1 = _conv(256, 512, 2), _conv(512, 512)
        self.conv5, self.conv5_1 = _conv(512, 512, 2), _conv(512, 512)
        self.conv6, self.conv6_1 = _conv(512, 1024, 2), _conv(1024, 1024)
        self.deconv5, self.deconv4 = _deconv(1024, 512), _deconv(1026, 256)
        self.deconv3, self.deconv2 = _deconv(770, 128), _deconv(386, 64)
        self.inter_conv5, self.inter_conv4 = _inter_conv(1026, 512), _inter_conv(770, 256)
        self.inter_conv3, self.inter_conv2 = _inter_conv(386, 128), _inter_conv(194, 64)
        self.predict_flow6, self.predict_flow5 = _predict_flow(1024), _predict_flow(512)
        self.predict_flow4, self.predict_flow3, self.predict_flow2 = \
            _predict_flow(256), _predict_flow(128), _predict_flow(64)
        self.upsampled_flow6_to_5, self.upsampled_flow5_to_4 = _upsample_flow(), _upsample_flow()
        self.upsampled_flow4_to_3, self.upsampled_flow3_to_2 = _upsample_flow(), _upsample_flow()

    def forward_raw(self, pair_255: torch.Tensor) -> torch.Tensor:
        """(B, 3, 2, H, W) RGB 0..255, H and W multiples of 64 -> (B, 2, H, W) flow in pixels."""
        mean = pair_255.flatten(2).mean(dim=2)[:, :, None, None, None]
        x = (pair_255 - mean) / 255.0
        x = torch.cat([x[:, :, 0], x[:, :, 1]], dim=1)
        c2 = self.conv2_1(self.conv2(self.conv1_1(self.conv1(self.conv0(x)))))
        c3 = self.conv3_1(self.conv3(c2))
        c4 = self.conv4_1(self.conv4(c3))
        c5 = self.conv5_1(self.conv5(c4))
        c6 = self.conv6_1(self.conv6(c5))
        flow = self.predict_flow6(c6)
        concat = torch.cat([c5, self.deconv5(c6), self.upsampled_flow6_to_5(flow)], 1)
        stages = [(self.inter_conv5, self.predict_flow5, self.upsampled_flow5_to_4, self.deconv4, c4),
                  (self.inter_conv4, self.predict_flow4, self.upsampled_flow4_to_3, self.deconv3, c3),
                  (self.inter_conv3, self.predict_flow3, self.upsampled_flow3_to_2, self.deconv2, c2)]
        for inter_conv, predict, upsample, deconv, skip in stages:
            flow = predict(inter_conv(concat))
            concat = torch.cat([skip, deconv(concat), upsample(flow)], 1)
        flow2 = self.predict_flow2(self.inter_conv2(concat))
        return F.interpolate(flow2 * DIV_FLOW, scale_factor=4, mode="bilinear", align_corners=False)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, 3, 2, H, W) RGB in [-1, 1] -> (B, 2, H, W) flow in pixels of the input size."""
        b, c, t, h, w = frames.shape
        pair = (frames + 1.0) * 127.5
        H, W = -(-h // 64) * 64, -(-w // 64) * 64
        if (H, W) == (h, w):
            return self.forward_raw(pair)
        resized = F.interpolate(pair.reshape(b, c * t, h, w), size=(H, W), mode="bilinear", align_corners=False)
        return resize_flow(self.forward_raw(resized.reshape(b, c, t, H, W)), (h, w))


def load_flownet2sd_state(path) -> dict:
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a corrupt or foreign file
        raise UserError(f"cannot read FlowNet2-SD weights {path} ({type(exc).__name__}): {HOW_TO_GET}") from None
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        raise UserError(f"{path} is not a FlowNet2-SD checkpoint (no state_dict): {HOW_TO_GET}")
    return {k.removeprefix("module."): v for k, v in state.items()}


@register_flownet("flownet2sd")
def build_flownet2sd(cfg: Config) -> nn.Module:
    path = find_weights(cfg, "flownet2sd", "FlowNet2-SD", HOW_TO_GET)
    network = FlowNet2SD()
    state = load_flownet2sd_state(path)
    expected = network.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise UserError(f"{path} does not match FlowNet2-SD (missing {len(missing)} keys, e.g. "
                        f"{(missing or ['-'])[0]}; unexpected {len(unexpected)}, e.g. {(unexpected or ['-'])[0]})")
    try:
        network.load_state_dict(state)
    except RuntimeError as exc:
        raise UserError(f"{path} has tensors of the wrong shape for FlowNet2-SD: {str(exc).splitlines()[-1]}") \
            from None
    return network
