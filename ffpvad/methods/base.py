"""The method contract: what a method supplies, and the training context it works through.

The training loop (ffpvad/training/engine.py), checkpoints, resume, logging, evaluation (ffpvad/evaluation/evaluate.py) and detection (ffpvad/detection/predictor.py)
are shared and never name a method; a method is one file in this package plus one ``@METHODS.register`` line, and
supplies the rest (docs/extending.md walks through a new one):

- its **settings** (:attr:`Method.settings`, :meth:`Method.derived_settings`): the config values it needs on top of
  the dataset preset (precedence: field default < dataset preset < method settings < recipe < flags);
- :meth:`Method.check` / :meth:`Method.resolve`: refuse configs it cannot train; resolve its ``auto`` inputs;
- :meth:`Method.split`: the generator's input and target from a clip (B, clip_len, 3, H, W) in [-1, 1];
- :meth:`Method.train_step`: one update on a batch through a :class:`TrainingContext`, returning its losses
  (:attr:`Method.loss_names`) and the batch's prediction and target;
- :meth:`Method.predict`: the generator's output for scoring *and* the extra per-frame terms the call produced
  (MAMA's triplet hinges), returned, not stashed;
- :meth:`Method.frame_errors` and :meth:`Method.anomaly_values`: the per-frame errors beyond PSNR its score needs,
  and the per-frame anomaly value (higher = more anomalous) before normalisation;
- what it trains and keeps: :attr:`Method.trains_discriminator`, :attr:`Method.scores_with_discriminator`,
  :attr:`Method.uses_flow_loss`, :attr:`Method.checkpoint_names`, :attr:`Method.stages`.

A generator declares the method it serves when it registers (``models.register_generator(name, method=...)``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Optional

import numpy as np
import torch
from torch import nn

from ffpvad.training import distributed
from ffpvad.config import Config
from ffpvad.data.dataset import to_model_range
from ffpvad.data.pseudo import SKIP
from ffpvad.errors import UserError
from ffpvad.models import GENERATORS, is_trainable
from ffpvad.registry import Registry
from ffpvad.runtime import autocast

METHODS: Registry["Method"] = Registry("method")


@dataclass
class TrainingContext:
    """What a method's training step may use: the networks, their optimizers, the device settings and a few shared
    services.  Everything here is public and stable; the trainer's own state is not reachable from a method.

    ``generator`` / ``discriminator`` are the plain modules; :meth:`run_generator` / :meth:`run_discriminator` call
    them through DistributedDataParallel under torchrun (the calls whose gradients are averaged over processes).
    """

    cfg: Config
    device: torch.device
    amp_dtype: Optional[torch.dtype]
    channels_last: bool
    generator: nn.Module
    discriminator: nn.Module
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    scaler_g: Any
    scaler_d: Any
    flownet: Optional[nn.Module]
    train_clips: Any  # dataset.TrainClips: clip index -> (video, first frame), the training videos' frame counts
    rank: int
    run_generator: Callable[..., Any]
    run_discriminator: Callable[..., Any]
    cache: dict[str, Any] = field(default_factory=dict)  # what a method computes once per training frame

    def ground_truth_flow(self, clip_ids, last: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The frozen flow network's flow of each clip's (last input, target) pair, computed once per clip and kept
        (float16, on the CPU) in ``cache["ground_truth_flow"]``: the flow of a training clip never changes."""
        kept = self.cache.setdefault("ground_truth_flow", {})
        missing = [i for i, c in enumerate(clip_ids) if int(c) not in kept]
        if missing:
            with torch.no_grad(), self.autocast():
                flow = self.flownet(torch.stack([last[missing], target[missing]], dim=2)).float()
            for i, f in zip(missing, flow):
                kept[int(clip_ids[i])] = f.to("cpu", torch.float16)
        return torch.stack([kept[int(c)].float() for c in clip_ids]).to(self.device)

    def pseudo_clips(self, clip_ids) -> Optional[torch.Tensor]:
        """--pseudo_anomaly=skip: the stride-SKIP clips of the first half of this rank's clips (at least one), in
        the model's range on the device; None when the option is off (ffpvad/data/pseudo.py)."""
        if not self.cfg.pseudo_anomaly:
            return None
        ids = clip_ids[:max(1, len(clip_ids) // 2)]
        clips = self.train_clips.strided_batch(ids, SKIP)
        return to_model_range(clips.to(self.device, non_blocking=True))

    def autocast(self):
        """The run's autocast (bf16/fp16 or off) on its device."""
        return autocast(self.device, self.amp_dtype)

    def layout(self, *tensors: Optional[torch.Tensor]) -> list[Optional[torch.Tensor]]:
        """The tensors in the networks' memory format (NHWC with channels_last); None passes through."""
        if not self.channels_last:
            return list(tensors)
        return [None if t is None else t.contiguous(memory_format=torch.channels_last) for t in tensors]

    def step_generator(self, loss: torch.Tensor) -> None:
        optimizer_step(loss, self.opt_g, self.scaler_g)

    def step_discriminator(self, loss: torch.Tensor) -> None:
        optimizer_step(loss, self.opt_d, self.scaler_d)

    @staticmethod
    def mean_over_processes(value: torch.Tensor) -> float:
        """The mean of a scalar over every torchrun process (the value itself in a plain run): for decisions that
        every process must take alike."""
        return float(distributed.all_reduce_mean(value.detach().float().reshape(1))[0])

    def reinitialise_discriminator(self, init: Callable[[nn.Module], None]) -> None:
        """Re-draw D's weights with ``init`` (applied to every submodule), the same on every process."""
        self.discriminator.apply(init)
        distributed.broadcast_module(self.discriminator)  # DDP syncs gradients, not re-drawn weights


def optimizer_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler) -> None:
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()


class frozen_discriminator:
    """``with frozen_discriminator(D):`` D's parameters take no gradient (the G step backpropagates through D
    without touching D's gradients), restored afterwards whatever happens."""

    def __init__(self, discriminator: nn.Module):
        self.discriminator = discriminator

    def __enter__(self) -> nn.Module:
        self.discriminator.requires_grad_(False)
        return self.discriminator

    def __exit__(self, *exc: Any) -> None:
        self.discriminator.requires_grad_(True)


class Method:
    """The base of every method: defaults for the optional parts of the contract (module docstring)."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""  # what kind of method, for messages ("a reconstruction method")
    settings: ClassVar[dict[str, Any]] = {}
    loss_names: ClassVar[tuple[str, ...]] = ()
    shown_losses: ClassVar[tuple[str, ...]] = ("g_total", "d_loss")  # on the progress bar
    trains_discriminator: ClassVar[bool] = True
    scores_with_discriminator: ClassVar[bool] = False
    uses_flow_loss: ClassVar[bool] = False
    trains_with_pseudo_anomalies: ClassVar[bool] = False  # its train_step uses ctx.pseudo_clips (--pseudo_anomaly)
    scores_by_psnr: ClassVar[bool] = False  # the score is -PSNR alone (FFP's protocol applies bit for bit)
    checkpoint_names: ClassVar[dict[str, str]] = {}  # checkpoint kind -> file stem, where it is not the kind
    stages: ClassVar[dict[str, str]] = {}  # --stage value -> the method that trains it (MAMA: destroyer)

    def derived_settings(self, cfg: Config) -> dict[str, Any]:
        """Settings that follow other settings of the resolved dataset preset (MAMA: weight decay = lr_g)."""
        return {}

    def check(self, cfg: Config) -> None:
        """Raise a UserError for a config this method cannot train or score."""

    def resolve(self, cfg: Config) -> Config:
        """The config with this method's ``auto`` inputs resolved to what this machine has (recorded in the run)."""
        return cfg

    def selection_note(self, cfg: Config) -> Optional[str]:
        """A note printed at the start of training about how checkpoints are selected for this method, or None."""
        return None

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def train_step(self, ctx: TrainingContext, clip_ids, x: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def predict(self, generator: nn.Module, inputs: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(the generator's output for ``inputs``, the per-frame terms of that call that the score needs)."""
        return generator(inputs), {}

    def frame_errors(self, prediction: torch.Tensor, target: torch.Tensor, terms: dict[str, torch.Tensor],
                     discriminator: Optional[nn.Module]) -> dict[str, torch.Tensor]:
        """Per-frame errors beyond PSNR that :meth:`anomaly_values` needs ({} = the score is PSNR alone)."""
        return {}

    @property
    def needs_frame_errors(self) -> bool:
        return type(self).frame_errors is not Method.frame_errors

    def anomaly_values(self, psnr: list[np.ndarray], extras: dict[str, list[np.ndarray]],
                       cfg: Config) -> list[np.ndarray]:
        """The anomaly value of every scored frame, one array per video (higher = more anomalous)."""
        return [-np.asarray(p, dtype=np.float64) for p in psnr]

    def pretrained_part(self, generator: nn.Module, source: dict[str, Any], name: str) -> nn.Module:
        """The part of ``generator`` that ``--pretrained=name`` (a checkpoint of config ``source``) initialises."""
        return generator

    def start_config(self, cfg: Config, explicit: set[str], source: Callable[[], Config]) -> Config:
        """A later stage's config (``--stage``), from the config of the checkpoint it starts from (``source()``
        reads the ``--pretrained`` checkpoint's): by default the config as given."""
        return cfg

    def resume_note(self, cfg: Config, explicit: set[str]) -> Optional[str]:
        """A note printed when ``--resume`` continues a run of this method, or None."""
        return None

    def checkpoint_stem(self, kind: str) -> str:
        return self.checkpoint_names.get(kind, kind)


def first_stage(name: str) -> tuple[str, str]:
    """(method, stage) that trains the method ``name``: itself at the generator stage, or the method whose
    ``stages`` lead to it (MAMA's destroyer: f2lm at --stage=destroyer)."""
    for base, method in METHODS.items():
        for stage, target in method.stages.items():
            if target == name:
                return base, stage
    return name, "generator"


def trainable_generator(method: str, cfg: Config) -> str:
    """The first registered generator with weights (baselines have none) that serves ``method``, built at ``cfg``'s
    size to find out."""
    for model in GENERATORS:
        if GENERATORS.info(model)["method"] == method and is_trainable(GENERATORS.get(model)(cfg.replace(model=model))):
            return model
    raise UserError(f"no trainable generator serves method {method}")


def method_of_model(model: str) -> "Method":
    """The method a generator name serves (an unknown name is one line listing the valid ones)."""
    return METHODS.get(GENERATORS.info(model)["method"])


def detectable_models() -> list[str]:
    """The generators whose checkpoints detect.py and the web page stream with: those of a method scored by PSNR
    alone (the frame-prediction method), read from the registries."""
    return [model for model in GENERATORS if method_of_model(model).scores_by_psnr]


def method_of(cfg: Config) -> "Method":
    """The method that trains ``cfg.model`` at ``cfg.stage`` (not yet checked against the config)."""
    method = method_of_model(cfg.model)
    if cfg.stage == "generator":
        return method
    if cfg.stage not in method.stages:
        raise UserError(f"--stage={cfg.stage} is not a stage of --model={cfg.model} (it has "
                        f"{', '.join(['generator', *method.stages])})")
    return METHODS.get(method.stages[cfg.stage])


def method_for(cfg: Config) -> "Method":
    """The method of ``cfg.model`` (and ``cfg.stage``), after checking that the config suits it."""
    method = method_of(cfg)
    if cfg.pseudo_anomaly and not method.trains_with_pseudo_anomalies:
        raise UserError(f"--pseudo_anomaly={cfg.pseudo_anomaly} is built for the frame-prediction method; "
                        f"--model={cfg.model} ({method.name}) does not train with it: leave --pseudo_anomaly empty")
    method.check(cfg)
    return method


def model_settings(model: str) -> tuple[dict[str, Any], Callable[[Config], dict[str, Any]]]:
    """(settings, derived settings) of the method a generator serves, for config.resolve; an unknown name gives
    none here and is reported when the generator is built."""
    if model not in GENERATORS:
        return {}, lambda cfg: {}
    method = method_of_model(model)
    return dict(method.settings), method.derived_settings
