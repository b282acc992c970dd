"""Frozen optical-flow networks for the FFP flow loss, registered by name (``--flownet=flownet2sd|none``).

One interface for every estimator: ``flow(frames)`` with frames (B, 3, 2, H, W) RGB in [-1, 1] (frame 0 -> frame 1
on dim 2) returns (B, 2, H, W) flow in pixels of the input, x then y.  Estimators are frozen (eval mode, no
parameter gradients) but differentiable with respect to their input, so the flow loss reaches the generator.
A network is never used with random weights: a missing weights file is a UserError that says where to get it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from torch import nn

from config import Config
from errors import UserError

Builder = Callable[[Config], Optional[nn.Module]]
FLOWNETS: dict[str, Builder] = {}


def register_flownet(name: str) -> Callable[[Builder], Builder]:
    def decorate(builder: Builder) -> Builder:
        FLOWNETS[name] = builder
        return builder
    return decorate


@register_flownet("none")
def _no_flow(cfg: Config) -> None:
    return None


def freeze(module: nn.Module) -> nn.Module:
    module.eval()
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    module.train = lambda mode=True: module  # type: ignore[method-assign]  # stays in eval mode for good
    return module


def find_weights(cfg: Config, candidates: list[str], name: str, how_to_get: str) -> Path:
    paths = [Path(cfg.flownet_weights)] if cfg.flownet_weights else [Path(cfg.weights_dir) / c for c in candidates]
    for path in paths:
        if path.is_file():
            return path
    looked = ", ".join(str(p) for p in paths)
    raise UserError(f"{name} weights not found (looked for {looked}): {how_to_get}; "
                    f"or train without the flow loss with --flownet=none")


def build_flownet(cfg: Config) -> Optional[nn.Module]:
    if cfg.flownet not in FLOWNETS:
        raise UserError(f"unknown --flownet '{cfg.flownet}': valid names are {', '.join(sorted(FLOWNETS))}")
    network = FLOWNETS[cfg.flownet](cfg)
    return None if network is None else freeze(network)


from flownet import flownet2sd  # noqa: E402,F401  (registration side effects)
