"""The generator and discriminator registries (``--model=ffp``, ``--discriminator=pixel``).

A generator registers with the method it serves (``ffpvad/methods/``), which fixes its input and output.  A prediction
generator maps a clip's input frames stacked on channels, (B, 3 * (clip_len - 1), H, W) in [-1, 1], to the predicted
next frame (B, 3, H, W) in [-1, 1]; a reconstruction generator maps a frame (B, 3, H, W) to its reconstruction.  A
new generator is one module with ``@register_generator("name", method=...)`` on a ``build(cfg) -> nn.Module``
function, imported in ``ffpvad/models/__init__.py`` (docs/extending.md).
"""
from __future__ import annotations

from typing import Callable

from torch import nn

from ffpvad.config import Config
from ffpvad.registry import Registry

Builder = Callable[[Config], nn.Module]
GENERATORS: Registry[Builder] = Registry("--model")
DISCRIMINATORS: Registry[Builder] = Registry("--discriminator")


def register_generator(name: str, method: str = "prediction") -> Callable[[Builder], Builder]:
    """Register ``build(cfg) -> nn.Module`` as generator ``name``, trained and scored by method ``method``."""
    return GENERATORS.register(name, method=method)


def register_discriminator(name: str) -> Callable[[Builder], Builder]:
    return DISCRIMINATORS.register(name)


def build_generator(cfg: Config) -> nn.Module:
    return GENERATORS.get(cfg.model)(cfg)


def build_discriminator(cfg: Config) -> nn.Module:
    return DISCRIMINATORS.get(cfg.discriminator)(cfg)


def is_trainable(model: nn.Module) -> bool:
    return any(p.requires_grad for p in model.parameters())
