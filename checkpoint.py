"""Checkpoints: one dict per file, written atomically, recognised by a kind tag and a format version.

Contents (training): step, generator, discriminator, both optimizers and schedulers, the resolved config, best
AUC, RNG states of python/numpy/torch, the sampler position, library versions.  Evaluation needs only
``generator`` and ``config``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from errors import UserError
from ioutil import atomic_path

KIND = "vad-gan-checkpoint"
FORMAT_VERSION = 1


def resolve_checkpoint(name: str, weights_dir: str | Path) -> Path:
    """A path as given, else ``<weights_dir>/<name>`` with or without ``.pth``."""
    weights_dir = Path(weights_dir)
    for path in (Path(name), weights_dir / name, weights_dir / f"{name}.pth"):
        if path.is_file():
            return path
    available = sorted(p.stem for p in weights_dir.glob("*.pth")) if weights_dir.is_dir() else []
    hint = f"available in {weights_dir}: {', '.join(available)}" if available else f"{weights_dir} has no checkpoints"
    raise UserError(f"checkpoint '{name}' not found ({hint}); train first or pass a path")


def save_checkpoint(path: Path | str, payload: dict[str, Any]) -> None:
    payload = {"kind": KIND, "format_version": FORMAT_VERSION, **payload}
    with atomic_path(path, suffix=".pth") as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: Path | str) -> dict[str, Any]:
    path = Path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        raise UserError(f"cannot read checkpoint {path} ({type(exc).__name__}): the file is corrupt or not a "
                        f"torch checkpoint; use another checkpoint or train again") from None
    if not isinstance(payload, dict) or payload.get("kind") != KIND:
        raise UserError(f"{path} is not a checkpoint of this project (no '{KIND}' tag): pass one written by "
                        f"train.py")
    if payload.get("format_version", 0) > FORMAT_VERSION:
        raise UserError(f"{path} has checkpoint format {payload['format_version']}, newer than this code "
                        f"({FORMAT_VERSION}): update the project")
    return payload
