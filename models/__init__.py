"""Generators and discriminators, registered by name (``--model=ffp``, ``--discriminator=pixel``).

A generator registers with the method it serves (methods.py), which fixes its input and output.  A prediction
generator maps a clip's input frames stacked on channels, (B, 3 * (clip_len - 1), H, W) in [-1, 1], to the predicted
next frame (B, 3, H, W) in [-1, 1]; a reconstruction generator maps a frame (B, 3, H, W) to its reconstruction.  A
new generator is one module with ``@register_generator("name", method=...)`` on a ``build(cfg) -> nn.Module``
function, imported below.
"""
from __future__ import annotations

from typing import Callable

from torch import nn

from config import Config
from errors import UserError

Builder = Callable[[Config], nn.Module]
GENERATORS: dict[str, Builder] = {}
GENERATOR_METHODS: dict[str, str] = {}  # generator name -> method name (methods.METHODS)
DISCRIMINATORS: dict[str, Builder] = {}


def _register(table: dict[str, Builder], name: str) -> Callable[[Builder], Builder]:
    def decorate(builder: Builder) -> Builder:
        if name in table:
            raise ValueError(f"{name!r} is registered twice")
        table[name] = builder
        return builder
    return decorate


def register_generator(name: str, method: str = "prediction") -> Callable[[Builder], Builder]:
    GENERATOR_METHODS[name] = method
    return _register(GENERATORS, name)


def method_name(model: str) -> str:
    """The method (methods.METHODS) of a generator name; unknown names are reported by build_generator."""
    return GENERATOR_METHODS.get(model, "prediction")


def register_discriminator(name: str) -> Callable[[Builder], Builder]:
    return _register(DISCRIMINATORS, name)


def _build(table: dict[str, Builder], kind: str, name: str, cfg: Config) -> nn.Module:
    if name not in table:
        raise UserError(f"unknown {kind} '{name}': valid names are {', '.join(sorted(table))}")
    return table[name](cfg)


def build_generator(cfg: Config) -> nn.Module:
    return _build(GENERATORS, "--model", cfg.model, cfg)


def build_discriminator(cfg: Config) -> nn.Module:
    return _build(DISCRIMINATORS, "--discriminator", cfg.discriminator, cfg)


def is_trainable(model: nn.Module) -> bool:
    return any(p.requires_grad for p in model.parameters())


from models import baselines, discriminator, f2lm, ffp, semantic, skipganomaly, stemgan  # noqa: E402,F401  (registration side effects)
