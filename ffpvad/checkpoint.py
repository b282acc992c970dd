"""Checkpoints: one dict per file, written atomically, recognised by a kind tag and a format version; and the one
loader of their weights into networks (resume, --pretrained, eval.py, detect.py, the predictor).

Contents (training): step, generator, discriminator, both optimizers and schedulers, the resolved config, best
AUC, RNG states of python/numpy/torch, the sampler position, library versions.  Evaluation needs only
``generator`` and ``config`` (and ``discriminator`` for a method that scores with it).

Validated on load (:func:`load_checkpoint`), so every reader (train --resume/--pretrained, eval.py, detect.py, the
page's list and upload) refuses a damaged file in the same one line, before any work: the structure (a dict with
the kind tag, an integer format version), the type of every metadata field and of every config setting (checked
like a --config file), and weights that are all finite (a run that diverged outside this trainer).

Writing: torch's zip writer reports a failed write of the Python file it is given (a full disk) as a RuntimeError
about ``inline_container``; :func:`save_checkpoint` keeps the OSError that caused it, so the caller sees the full
disk (``ioutil.WriteFailed``), not torch's words.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, BinaryIO, Mapping, Optional

import torch
from torch import nn

from ffpvad.errors import UserError
from ffpvad.config import Config, config_from_dict
from ffpvad.ioutil import atomic_path
from ffpvad.training.selection import RULES
from ffpvad.models import DISCRIMINATORS, GENERATORS, build_discriminator, build_generator

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


# Metadata fields and their types where present (older checkpoints lack some); floats may be -inf (no best yet).
_INT_FIELDS = ("step", *(rule.step_key for rule in RULES))
_FLOAT_FIELDS = tuple(rule.value_key for rule in RULES)
_DICT_FIELDS = ("config", "generator", "discriminator", "generator_raw", "ema", "opt_g", "opt_d", "sched_g",
                "sched_d", "scaler_g", "scaler_d", "rng", "sampler", "distributed")
# The networks' weights, which must be finite: every reader of the checkpoint uses them.
WEIGHT_FIELDS = ("generator", "discriminator", "generator_raw", "ema")


class _WriteRecorder:
    """A binary file that remembers the OSError of a failed write, which torch's zip writer replaces by its own
    RuntimeError."""

    def __init__(self, handle: BinaryIO):
        self.handle, self.error = handle, None

    def write(self, data: bytes) -> int:
        try:
            return self.handle.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.handle.flush()


def save_checkpoint(path: Path | str, payload: dict[str, Any]) -> None:
    """Write ``payload`` atomically under ``path``; a failed write is the OSError behind it (ioutil.WriteFailed
    for a full disk, a read-only folder, a refused permission), never torch's RuntimeError."""
    payload = {"kind": KIND, "format_version": FORMAT_VERSION, **payload}
    with atomic_path(path, suffix=".pth", what="checkpoint") as tmp:
        with open(tmp, "wb") as handle:
            recorder = _WriteRecorder(handle)
            try:
                torch.save(payload, recorder)
            except RuntimeError:
                if recorder.error is not None:
                    raise recorder.error from None
                raise


def load_checkpoint(path: Path | str) -> dict[str, Any]:
    """The checkpoint at ``path``, validated (see the module's docstring); anything wrong is one UserError line."""
    path = Path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        raise UserError(f"cannot read checkpoint {path} ({type(exc).__name__}): the file is corrupt or not a "
                        f"torch checkpoint; use another checkpoint or train again") from None
    if not isinstance(payload, dict) or payload.get("kind") != KIND:
        raise UserError(f"{path} is not a checkpoint of this project (no '{KIND}' tag): pass one written by "
                        f"train.py")
    version = payload.get("format_version", 0)
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise UserError(f"{path} is damaged: its format_version is {version!r}, not a whole number; use another "
                        f"checkpoint or train again")
    if version > FORMAT_VERSION:
        raise UserError(f"{path} has checkpoint format {version}, newer than this code ({FORMAT_VERSION}): update "
                        f"the project")
    problem = metadata_problem(payload) or weights_problem(payload)
    if problem:
        raise UserError(f"{path} is damaged: {problem}; use another checkpoint or train again")
    return payload


def metadata_problem(payload: Mapping[str, Any]) -> str:
    """What is wrong with the checkpoint's metadata and config, in words, or '' (types only: values of the config
    are checked against its settings by config.config_from_dict)."""
    for key in _INT_FIELDS:
        value = payload.get(key, 0)
        if not isinstance(value, int) or isinstance(value, bool):
            return f"its {key} is {value!r}, not a whole number"
    for key in _FLOAT_FIELDS:
        value = payload.get(key, 0.0)
        if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool)
                                  or math.isnan(value)):
            return f"its {key} is {value!r}, not a number"
    for key in _DICT_FIELDS:
        if key in payload and not isinstance(payload[key], Mapping):
            return f"its {key} is a {type(payload[key]).__name__}, not a dictionary"
    if "config" in payload:
        try:
            cfg = config_from_dict(payload["config"], where="its config")
        except UserError as exc:
            return str(exc)
        for registry, name in ((GENERATORS, cfg.model), (DISCRIMINATORS, cfg.discriminator)):
            if name not in registry:  # a checkpoint of another version, or edited: say so, not "unknown --model"
                return (f"its config names {registry.kind}={name}, which this code does not have (it has "
                        f"{', '.join(registry.names())})")
    return ""


def weights_problem(payload: Mapping[str, Any]) -> str:
    """'N <part> weights are not finite (first: name)' for the first network whose weights are NaN or infinite,
    or a weight that is no tensor; '' when all are finite tensors."""
    for part in WEIGHT_FIELDS:
        weights = payload.get(part)
        if not isinstance(weights, Mapping):
            continue
        bad = []
        for name, value in weights.items():
            if not isinstance(value, torch.Tensor):
                return f"its {part} weight {name} is a {type(value).__name__}, not a tensor"
            if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                bad.append(str(name))
        if bad:
            return (f"{len(bad)} {part} weights are not finite (first: {bad[0]}): the run diverged before it was "
                    f"saved")
    return ""


def weights_mismatch(network: nn.Module, weights: Mapping[str, Any]) -> list[str]:
    """The layers of ``network`` that ``weights`` (a state dict) does not fit, each as 'name (ours) vs (theirs)':
    missing, of another shape, or present in ``weights`` only.  Empty when they load."""
    own = network.state_dict()
    rows = [f"{k} {tuple(own[k].shape)} vs {tuple(weights[k].shape) if k in weights else 'missing'}"
            for k in own if k not in weights or tuple(weights[k].shape) != tuple(own[k].shape)]
    rows += [f"{k} unexpected {tuple(weights[k].shape)}" for k in weights if k not in own]
    return rows


def load_weights(network: nn.Module, weights: Any, what: str, source: str, hint: str) -> None:
    """Load a state dict into ``network``; a mismatch is one UserError line: how many layers, the first three with
    their shapes, and ``hint`` (what to do), never the hundreds of key names torch would print."""
    if not isinstance(weights, Mapping):
        raise UserError(f"{source} holds no {what} weights: pass a checkpoint written by train.py")
    rows = weights_mismatch(network, weights)
    if rows:
        more = f", and {len(rows) - 3} more" if len(rows) > 3 else ""
        raise UserError(f"{source}: {len(rows)} {what} layers do not match this configuration "
                        f"({'; '.join(rows[:3])}{more}): {hint}")
    try:
        network.load_state_dict(weights)
    except RuntimeError as exc:  # same names and shapes, yet refused (e.g. a dtype torch cannot copy)
        raise UserError(f"{source}: the {what} weights do not load ({str(exc).splitlines()[0][:200]}): "
                        f"{hint}") from None


def architecture_conflicts(stored: Config, given: Config, explicit: set[str], fields: tuple[str, ...]) -> list[str]:
    """'--flag=value (checkpoint: value)' for each of ``fields`` given explicitly with a value the checkpoint's
    config contradicts (``auto`` contradicts nothing: the checkpoint records what its auto resolved to)."""
    return [f"--{k}={getattr(given, k)} (checkpoint: {getattr(stored, k)})" for k in fields
            if k in explicit and getattr(given, k) not in (getattr(stored, k), "auto")]


def _input_channel_note(generator: nn.Module, weights: Any, cfg: Config) -> str:
    """What to say when the checkpoint's first convolution reads another number of input channels than the
    config's clip gives (a checkpoint whose recorded clip_len is not the one it was trained with)."""
    if not isinstance(weights, Mapping):
        return ""
    n_channels = 3 * cfg.n_inputs
    for key, own in generator.state_dict().items():
        theirs = weights.get(key)
        if (theirs is not None and own.dim() == 4 and theirs.dim() == 4 and own.shape[1] == n_channels
                and theirs.shape[1] != n_channels):
            return (f"it takes {theirs.shape[1]} input channels, but its config ({cfg.n_inputs} RGB frames) gives "
                    f"{n_channels}: a checkpoint of another channel count")
    return ""


def read_for_scoring(path: Path | str) -> tuple[dict[str, Any], Config]:
    """(the checkpoint, its config) of a checkpoint that can be scored: one with a generator and a config."""
    state = load_checkpoint(path)
    if "generator" not in state or "config" not in state:
        raise UserError(f"{path} has no generator or config: pass a checkpoint written by train.py")
    return state, config_from_dict(state["config"], where=f"{path}: its config")


def load_networks(path: Path | str, state: dict[str, Any], cfg: Config,
                  with_discriminator: bool = False) -> tuple[nn.Module, Optional[nn.Module]]:
    """(generator, discriminator or None) built from ``cfg`` and loaded with the weights of ``state`` (the
    checkpoint read from ``path`` by :func:`read_for_scoring`), each mismatch summarised in one line."""
    generator = build_generator(cfg)
    load_weights(generator, state["generator"], "generator", str(path),
                 _input_channel_note(generator, state["generator"], cfg)
                 or f"it is not a --model={cfg.model} of width {cfg.base_channels} on {cfg.clip_len}-frame clips")
    discriminator = None
    if with_discriminator:
        discriminator = build_discriminator(cfg)
        load_weights(discriminator, state.get("discriminator"), "discriminator", str(path),
                     f"--model={cfg.model} scores with its --discriminator={cfg.discriminator}, which the checkpoint "
                     f"does not hold")
    return generator, discriminator
