"""Frozen optical-flow estimators for the FFP flow loss, registered by name.

``--flownet=flownet2sd`` (FFP's network; weights file needed), ``spynet`` (converted from the authors' .t7 files),
``lucaskanade`` (weight-free), ``none`` (no flow loss), or ``auto``: the first of flownet2sd, spynet whose weights
are present, else no flow loss, said loudly and recorded in the run's config.  (The fallback is ``none`` rather than
``lucaskanade`` because that is what the Ped2 comparison in docs/flow.md measured: at the same CPU budget the
weight-free estimator lowered the AUC, while no flow loss matched SPyNet's best.)

One interface for every estimator: ``flow(frames)`` with frames (B, 3, 2, H, W) RGB in [-1, 1] (frame 0 -> frame 1
on dim 2) returns (B, 2, H, W) flow in pixels of the input, x then y.  Estimators are frozen (eval mode, no
parameter gradients) but differentiable with respect to their input, so the flow loss reaches the generator.
A network is never used with random weights: a missing weights file is a UserError that says where to get it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ffpvad.config import Config
from ffpvad.errors import UserError
from ffpvad.registry import Registry

Builder = Callable[[Config], Optional[nn.Module]]
FLOWNETS: Registry[Builder] = Registry("--flownet")


def register_flownet(name: str) -> Callable[[Builder], Builder]:
    return FLOWNETS.register(name)


@register_flownet("none")
def _no_flow(cfg: Config) -> None:
    return None


def resize_flow(flow: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of a (B, 2, h, w) pixel flow to ``size``, its x and y values rescaled to the new pixels."""
    h, w = size
    scale = torch.tensor([w / flow.shape[-1], h / flow.shape[-2]], device=flow.device, dtype=flow.dtype)
    return F.interpolate(flow, size=(h, w), mode="bilinear", align_corners=False) * scale.view(1, 2, 1, 1)


def freeze(module: nn.Module) -> nn.Module:
    module.eval()
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    module.train = lambda mode=True: module  # type: ignore[method-assign]  # stays in eval mode for good
    return module


def store_weights_in(module: nn.Module, dtype: Optional[torch.dtype]) -> nn.Module:
    """Keep a frozen estimator's parameters in the autocast dtype (buffers stay as they are).

    Under autocast every convolution casts its weight to the autocast dtype on each call, and the flow loss's
    backward keeps those casts alive, so storing them already cast gives the same numbers with half the weight
    memory and no copies: FlowNet2-SD's 45 M parameters are 173 MiB in fp32.  Only for estimators that are always
    called under autocast (the training step); buffers (SPyNet's normalisation) keep full precision.
    """
    if dtype is not None:
        for parameter in module.parameters():
            parameter.data = parameter.data.to(dtype)
    return module


# The files each weighted estimator looks for in --weights_dir (first found wins).
WEIGHT_FILES = {
    "flownet2sd": ["FlowNet2-SD.pth", "FlowNet2-SD_checkpoint.pth.tar"],
    "spynet": ["spynet_sintel-final.pth"],
}
AUTO_ORDER = ("flownet2sd", "spynet")
FALLBACK = "none"


def resolve_flownet_name(cfg: Config, fallback: str = FALLBACK, purpose: str = "the flow loss") -> str:
    """The estimator ``auto`` stands for on this machine (other names are returned as they are): the first of
    AUTO_ORDER whose weights are present, else ``fallback`` (F2LM, whose motion input needs some flow, falls back to
    the weight-free lucaskanade)."""
    if cfg.flownet != "auto":
        return cfg.flownet
    if cfg.flownet_weights:
        raise UserError("--flownet=auto with --flownet_weights: name the network the file belongs to "
                        "(--flownet=flownet2sd or --flownet=spynet)")
    for name in AUTO_ORDER:
        if any((Path(cfg.weights_dir) / f).is_file() for f in WEIGHT_FILES[name]):
            print(f"flow: --flownet=auto uses {name} for {purpose} (weights found in {cfg.weights_dir}/)")
            return name
    if fallback == "none":
        print(f"NOTE: --flownet=auto found no FlowNet2-SD or SPyNet weights in {cfg.weights_dir}/: training WITHOUT "
              f"the flow loss (the weight-free --flownet=lucaskanade exists but scored lower on Ped2; see "
              f"docs/flow.md 'Getting the weights' for how to get and convert SPyNet)")
    else:
        print(f"NOTE: --flownet=auto found no FlowNet2-SD or SPyNet weights in {cfg.weights_dir}/: {purpose} uses the "
              f"weight-free --flownet={fallback} (see docs/flow.md 'Getting the weights' for how to get and convert "
              f"SPyNet)")
    return fallback


def find_weights(cfg: Config, name: str, label: str, how_to_get: str) -> Path:
    candidates = WEIGHT_FILES[name]
    paths = [Path(cfg.flownet_weights)] if cfg.flownet_weights else [Path(cfg.weights_dir) / c for c in candidates]
    for path in paths:
        if path.is_file():
            return path
    looked = ", ".join(str(p) for p in paths)
    raise UserError(f"{label} weights not found (looked for {looked}): {how_to_get}; "
                    f"or train without the flow loss with --flownet=none")


def build_flownet(cfg: Config) -> Optional[nn.Module]:
    """The frozen estimator named by ``cfg.flownet`` (resolve ``auto`` first with :func:`resolve_flownet_name`)."""
    if cfg.flownet not in FLOWNETS:
        valid = ", ".join(sorted(FLOWNETS) + ["auto"])
        raise UserError(f"unknown --flownet '{cfg.flownet}': valid names are {valid}")
    network = FLOWNETS.get(cfg.flownet)(cfg)
    return None if network is None else freeze(network)

