"""The training loop: alternating GAN updates, validation, checkpoints, exact resume.

What one step does is the method's (ffpvad/methods/: FFP's prediction, Skip-GANomaly's reconstruction, MAMA); the loop,
optimizers, schedules, EMA, checkpoints, resume, validation and logging here are shared.  FFP's step (Liu et al.,
CVPR 2018, Sec. 3.4 and Algorithm 1): predict the next frame; update D on the real target and the *detached*
prediction; then update G with D frozen (D's parameters have requires_grad off during G's backward,
so G's step leaves D's gradients untouched) on lam_int*L_int + lam_grad*L_gd + lam_flow*L_op + lam_adv*L_adv.
Both learning rates drop by ``lr_decay_gamma`` at ``lr_decay_step`` (the authors' piecewise-constant schedule).

Ours: the flow of the ground-truth pair (last input frame -> target) is computed once per training clip and kept
(fp16, on the CPU): the flow network is frozen and the pair never changes.  Two options the paper does not have:
``--ema`` evaluates and saves an exponential moving average of G's weights (torch.optim.swa_utils; the raw weights
are kept for resuming), which damps the swings of GAN training between validations; ``--val_holdout=N`` keeps the
last N training videos out of training and selects ``g_best_val_<dataset>.pth`` by their mean PSNR, a rule that
never looks at test labels (``g_best_auc`` is the official FFP rule, which does).

Under torchrun (ffpvad/training/distributed.py, docs/distributed.md): G and D each run under DistributedDataParallel with
synchronised BatchNorm, ``--batch_size`` is per process and the global batch is world_size x batch_size: one slice
of the global shuffled order per rank, so N processes with batch b step exactly like one process with batch N*b
(up to float rounding).  Learning rates are used as given for the global batch (no scaling with the number of
processes).  Validation shards the videos over the ranks; only rank 0 writes checkpoints, tensorboard and the
console.  The sampler position is global, so a checkpoint resumes under any number of processes.
"""
from __future__ import annotations

import contextlib
import copy
import fcntl
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from ffpvad.training import distributed, selection
from ffpvad.training.autotune import compute_record, resolve_compute, resumed_compute, sample_inputs, training_step
from ffpvad.checkpoint import load_checkpoint, load_weights, resolve_checkpoint, save_checkpoint
from ffpvad.config import Config, config_from_dict, fields_of, write_config
from ffpvad.data.dataset import ClipSampler, TestSet, TrainClips, VideoSet, strided_window_start, to_model_range
from ffpvad.errors import STOP_SIGNALS, Interrupted, UserError
from ffpvad.evaluation.evaluate import evaluate, predict_psnr_sharded
from ffpvad.inference import Inference
from ffpvad.flow import build_flownet, store_weights_in
from ffpvad.ioutil import WriteFailed, ensure_writable_dir, write_fix, write_reason
from ffpvad.methods import TrainingContext, method_for, method_of
from ffpvad.models import build_discriminator, build_generator, is_trainable
from ffpvad.data.pseudo import SKIP, STATISTICS, pseudo_figures
from ffpvad.training.runlog import CURVES, CurveLog, run_dir
from ffpvad.training.tensorboard_log import TensorBoardLog
from ffpvad.runtime import (InterruptLatch, configure_threads, resolve_device, rng_state, seed_everything, set_rng_state,
                            signals_held, signals_ignored, versions)
from ffpvad.evaluation.metrics import psnr

# Fields that define the networks and the data they were trained on: a resumed run cannot change them.
ARCHITECTURE_FIELDS = fields_of("architecture")
# What MAMA's Destroyer stage takes from its stage-1 checkpoint unless given again: the generator it trains against.


class NonFiniteTraining(UserError):
    """The losses or weights of a step are NaN or infinite: the run stops before saving anything of it."""


def non_finite_parameters(*networks: nn.Module) -> list[str]:
    """The names of the parameters and buffers of ``networks`` that hold a NaN or an infinity."""
    return [name for network in networks for name, tensor in (*network.named_parameters(), *network.named_buffers())
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())]


@contextlib.contextmanager
def exclusive_run(weights_dir: Path, dataset: str) -> Iterator[None]:
    """One training run at a time per weights folder and dataset: a second one would overwrite the first one's
    checkpoints step after step.  An advisory lock (flock) on ``.train_<dataset>.lock``, which the system releases
    when the process ends however it ends (no stale lock blocks the next run); the file goes when the run ends."""
    path = weights_dir / f".train_{dataset}.lock"
    for _ in range(10):  # the run that held it removed the file as we opened it: open the new one
        handle = open(path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            owner = handle.read().strip() or "another process"
            handle.close()
            raise UserError(f"another training run ({owner}) is writing the {dataset} checkpoints in {weights_dir}: "
                            f"wait for it to end, or pass another --weights_dir") from None
        if path.exists() and os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino:
            break
        handle.close()
    else:
        raise UserError(f"the lock file {path} keeps being replaced: another training run is starting in "
                        f"{weights_dir}; wait for it, or pass another --weights_dir")
    with handle:
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}\n")
        handle.flush()
        try:
            yield
        finally:
            path.unlink(missing_ok=True)  # still holding the lock: whoever opens the name next finds a new file
            fcntl.flock(handle, fcntl.LOCK_UN)


def moving_average(generator: nn.Module, decay: float) -> AveragedModel:
    """An exponential moving average of ``generator``'s weights and BatchNorm statistics, with warm-up.

    The decay of update n is min(decay, (1 + n) / (10 + n)) (the num_updates rule of TensorFlow's
    ExponentialMovingAverage): with a fixed 0.999 the average would still be 61% random initial weights after 500
    steps (0.999^500), and its validations meaningless; with the warm-up it follows the network early and smooths
    it later.
    """
    def update(averages: list[torch.Tensor], currents: list[torch.Tensor], n_averaged: torch.Tensor) -> None:
        n = float(n_averaged)
        rate = min(decay, (1.0 + n) / (10.0 + n))
        # One fused in-place lerp over all floating tensors per step (this runs every training step); integer
        # buffers (BatchNorm's num_batches_tracked) are copied.
        floats = [(a, c) for a, c in zip(averages, currents) if a.is_floating_point()]
        if floats:  # AveragedModel calls this once per (device, dtype) group, integer groups included
            torch._foreach_lerp_([a for a, _ in floats], [c for _, c in floats], 1.0 - rate)
        for a, c in zip(averages, currents):
            if not a.is_floating_point():
                a.copy_(c)

    return AveragedModel(generator, multi_avg_fn=update, use_buffers=True)


def make_optimizer(network: nn.Module, lr: float, cfg: Config) -> torch.optim.Optimizer:
    """Adam over the network's trainable parameters (a frozen part, MAMA's stage-1 generator, is left out); AdamW
    with --weight_decay > 0 (MAMA)."""
    parameters = [p for p in network.parameters() if p.requires_grad]
    betas = (cfg.adam_beta1, 0.999)
    if cfg.weight_decay > 0:
        return torch.optim.AdamW(parameters, lr=lr, betas=betas, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(parameters, lr=lr, betas=betas)


def split_holdout(videos: VideoSet, n: int) -> tuple[VideoSet, Optional[VideoSet]]:
    """(training videos, the last ``n`` by name held out for label-free checkpoint selection, or None)."""
    if n == 0:
        return videos, None
    if n >= len(videos.names):
        raise UserError(f"--val_holdout={n} leaves no training video ({len(videos.names)} in the training split): "
                        f"hold out fewer")
    return (VideoSet(videos.names[:-n], videos.frames[:-n]), VideoSet(videos.names[-n:], videos.frames[-n:]))


def merge_resumed_config(stored: Config, given: Config, explicit: set[str]) -> Config:
    """The checkpoint's config, with the flags the user gave again (schedule, paths, devices) taking effect."""
    changed = [k for k in ARCHITECTURE_FIELDS if k in explicit and getattr(given, k) != getattr(stored, k)]
    if changed:
        details = ", ".join(f"--{k}={getattr(given, k)} (checkpoint: {getattr(stored, k)})" for k in changed)
        raise UserError(f"cannot resume with a different {details}: start a new run instead")
    return stored.replace(**{k: getattr(given, k) for k in explicit if k not in ARCHITECTURE_FIELDS})


def check_pseudo_anomaly_videos(training: VideoSet, clip_len: int) -> None:
    """--pseudo_anomaly=skip reads clip_len frames at stride SKIP: every training video must hold that many."""
    short = [name for name, frames in zip(training.names, training.frames)
             if strided_window_start(0, len(frames), clip_len, SKIP) < 0]
    if short:
        raise UserError(f"--pseudo_anomaly=skip needs {SKIP * (clip_len - 1) + 1} frames per training video "
                        f"(clip_len {clip_len} at stride {SKIP}); {', '.join(short[:3])} "
                        f"{'is' if len(short) == 1 else 'are'} shorter: leave --pseudo_anomaly empty or drop them")


class StepLosses:
    """The losses of one step by name (the method's ``loss_names``) plus the training PSNR; read as attributes."""

    def __init__(self, **values: float):
        self._values = dict(values)

    def __getattr__(self, name: str) -> float:
        try:
            return self.__dict__["_values"][name]
        except KeyError:
            raise AttributeError(name) from None

    def as_dict(self) -> dict[str, float]:
        return dict(self._values)


@dataclass
class TrainSummary:
    step: int
    best_auc: float
    best_step: int
    history: list[StepLosses] = field(default_factory=list)
    seconds: float = 0.0


class Trainer:
    def __init__(self, cfg: Config, resume_from: Optional[dict[str, Any]] = None, progress: bool = True):
        self.method = method_for(cfg)
        cfg = self.method.resolve(cfg)  # 'auto' inputs are recorded as what they resolved to
        # torchrun: this process is rank `rank` of `world`; everything below is the same on every rank except the
        # slice of each global batch it trains on and the share of the videos it validates.
        self.rank, self.world = ((distributed.rank(), distributed.world_size()) if distributed.active() else (0, 1))
        self.cfg, self.progress = cfg, progress and self.rank == 0
        note = self.method.selection_note(cfg)
        if note and self.rank == 0:
            print(note)
        self.device = resolve_device(cfg.device)
        configure_threads(cfg, self.device)
        seed_everything(cfg.manualseed)

        # self.generator / self.discriminator are the plain modules (state dicts, evaluation, EMA); the train step
        # calls them through DDP when there are several processes (the context's run_generator / run_discriminator).
        generator, discriminator = build_generator(cfg), build_discriminator(cfg)
        if not is_trainable(generator):
            raise UserError(f"--model={cfg.model} has no parameters to train: evaluate it with eval.py")
        # --amp/--channels_last auto: timed on copies of these networks (ffpvad/training/autotune.py), or the flag rule.
        # A resumed run keeps the precision and layout it ran with (an exact resume), whatever a new measurement
        # would say now.
        resumed = resumed_compute(cfg, self.device, (resume_from or {}).get("compute"))
        self.amp_dtype, self.channels_last = resumed or resolve_compute(
            cfg, self.device, "training", self.method,
            lambda: training_step(copy.deepcopy(generator), copy.deepcopy(discriminator),
                                  sample_inputs(cfg, self.method, cfg.batch_size), self.method.predict),
            cfg.batch_size, say=self._print)
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        self.generator = distributed.sync_batchnorm(generator, self.device).to(self.device, memory_format=memory_format)
        self.discriminator = distributed.sync_batchnorm(discriminator, self.device).to(
            self.device, memory_format=memory_format)
        self.flownet = build_flownet(cfg) if self.method.uses_flow_loss else None
        if self.flownet is not None:
            # NHWC like G and D: in NCHW, FlowNet2-SD's 6-channel first convolution was a bf16 step's slowest layer.
            store_weights_in(self.flownet.to(self.device, memory_format=memory_format), self.amp_dtype)
        elif cfg.lam_flow and self.method.uses_flow_loss:
            print(f"note: training WITHOUT the flow loss (--flownet=none); lam_flow={cfg.lam_flow} is unused")

        self.opt_g = make_optimizer(self.generator, cfg.lr_g, cfg)
        self.opt_d = make_optimizer(self.discriminator, cfg.lr_d, cfg)
        self.sched_g = torch.optim.lr_scheduler.MultiStepLR(self.opt_g, [cfg.lr_decay_step], cfg.lr_decay_gamma)
        self.sched_d = torch.optim.lr_scheduler.MultiStepLR(self.opt_d, [cfg.lr_decay_step], cfg.lr_decay_gamma)
        fp16 = self.amp_dtype == torch.float16 and self.device.type == "cuda"  # CUDA-only: fp16 needs loss scaling
        self.scaler_g = torch.amp.GradScaler("cuda", enabled=fp16)
        self.scaler_d = torch.amp.GradScaler("cuda", enabled=fp16)

        self.ema = moving_average(self.generator, cfg.ema) if cfg.ema else None
        if cfg.val_pseudo and not cfg.val_holdout:
            raise UserError(f"--val_pseudo={cfg.val_pseudo} makes its pseudo-anomalies from held-out normal "
                            f"videos: add --val_holdout=2 (or more)")
        # Rank 0 decodes the frame cache (and generates the toy data) first, the others then find it.
        training, self.holdout = distributed.in_turn(
            lambda: split_holdout(VideoSet.load(cfg, "training"), cfg.val_holdout))
        self.train_clips = TrainClips(training, cfg.clip_len)
        if cfg.pseudo_anomaly:
            check_pseudo_anomaly_videos(training, cfg.clip_len)
        # The sampler walks the global order in global batches; this rank trains on slice `rank` of each.
        self.global_batch = cfg.batch_size * self.world
        self.sampler = ClipSampler(len(self.train_clips), self.global_batch, cfg.manualseed)
        self.test_set: Optional[TestSet] = distributed.in_turn(lambda: TestSet.load(cfg)) if cfg.val_interval else None

        self.last_saved: Optional[tuple[Path, int]] = None  # (path, step) of the last 'latest' written by this run
        self.step = 0
        self.best = selection.fresh()  # each selection rule's best so far, by checkpoint kind (g_best_auc, ...)
        self.history: list[StepLosses] = []
        if resume_from is not None:
            self._restore(resume_from)
        elif cfg.pretrained:
            self._initialise_from(cfg.pretrained)
        # DDP broadcasts rank 0's weights when it wraps, then averages the gradients of every backward pass.
        self.context = TrainingContext(
            cfg=cfg, device=self.device, amp_dtype=self.amp_dtype, channels_last=self.channels_last,
            generator=self.generator, discriminator=self.discriminator, opt_g=self.opt_g, opt_d=self.opt_d,
            scaler_g=self.scaler_g, scaler_d=self.scaler_d, flownet=self.flownet, train_clips=self.train_clips,
            rank=self.rank, run_generator=distributed.wrap(self.generator, self.device),
            run_discriminator=distributed.wrap(self.discriminator, self.device))
        self.run_dir = run_dir(cfg.log_dir, cfg.dataset, self.global_batch)
        self.writer = None
        self.curves: Optional[CurveLog] = None
        self.resumed = resume_from is not None

    # --- checkpoints ------------------------------------------------------------------------------------------
    @property
    def eval_generator(self) -> nn.Module:
        """The weights that are validated and evaluated: the moving average with --ema, else the trained ones."""
        return self.ema.module if self.ema is not None else self.generator

    @property
    def scoring_discriminator(self) -> Optional[nn.Module]:
        """The discriminator when the method's score uses it (Skip-GANomaly's latent error), else None."""
        return self.discriminator if self.method.scores_with_discriminator else None

    @property
    def inference(self) -> Inference:
        """The validated weights as an inference context: how validation predicts, exactly as eval.py does."""
        return Inference(self.eval_generator, self.cfg, self.device, self.amp_dtype, self.channels_last,
                         self.scoring_discriminator)

    def state(self) -> dict[str, Any]:
        # "generator" holds the weights to evaluate (what eval.py, detect.py and --pretrained read); with --ema the
        # raw weights and the average's state are kept as well, for an exact resume.
        ema = {"generator_raw": self.generator.state_dict(), "ema": self.ema.state_dict()} if self.ema else {}
        return {
            "step": self.step, "generator": self.eval_generator.state_dict(), **ema,
            "discriminator": self.discriminator.state_dict(), "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(), "sched_g": self.sched_g.state_dict(),
            "sched_d": self.sched_d.state_dict(), "scaler_g": self.scaler_g.state_dict(),
            "scaler_d": self.scaler_d.state_dict(), "config": self.cfg.__dict__.copy(),
            **{k: v for best in self.best.values() for k, v in best.record(self.cfg).items()}, "rng": rng_state(),
            "sampler": self.sampler.state_dict(), "versions": versions(),
            # config.batch_size is per process; the sampler position counts global batches of global_batch clips.
            "distributed": {"world_size": self.world, "global_batch": self.global_batch},
            "compute": compute_record((self.amp_dtype, self.channels_last)),  # what --amp/--channels_last auto gave
        }

    def _restore(self, state: dict[str, Any]) -> None:
        source, hint = f"--resume={self.cfg.resume}", "resume it with the configuration it was trained with"
        load_weights(self.generator, state.get("generator_raw", state["generator"]), "generator", source, hint)
        load_weights(self.discriminator, state["discriminator"], "discriminator", source, hint)
        if self.ema is not None:
            load_weights(self.ema, state.get("ema"), "moving-average (--ema)", source, hint)
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.sched_g.load_state_dict(state["sched_g"])
        self.sched_d.load_state_dict(state["sched_d"])
        self.scaler_g.load_state_dict(state["scaler_g"])
        self.scaler_d.load_state_dict(state["scaler_d"])
        self.sampler.load_state_dict(state["sampler"])
        set_rng_state(state["rng"])
        self.step = state["step"]
        for best in self.best.values():
            best.restore(state, self.cfg)

    def _initialise_from(self, name: str) -> None:
        """Transfer learning: the networks of another run (any dataset), with fresh optimizers and step 0."""
        path = resolve_checkpoint(name, self.cfg.weights_dir)
        state = load_checkpoint(path)
        source = state.get("config", {})
        if source.get("model") != self.cfg.model:
            raise UserError(f"--pretrained={name} holds a '{source.get('model')}' generator but --model="
                            f"{self.cfg.model}: pretrain with the same architecture")
        generator = self.method.pretrained_part(self.generator, source, name)  # MAMA stage 2: the F2LM inside
        hint = "use the same --model, --base_channels and --clip_len"
        load_weights(generator, state.get("generator"), "generator", f"--pretrained={name}", hint)
        load_weights(self.discriminator, state.get("discriminator"), "discriminator", f"--pretrained={name}", hint)
        if self.ema is not None:
            self.ema = moving_average(self.generator, self.cfg.ema)
        print(f"initialised generator and discriminator from {path} (trained on {source.get('dataset')} for "
              f"{state.get('step')} steps); optimizers and step start fresh")

    def checkpoint_path(self, kind: str) -> Path:
        stem = self.method.checkpoint_stem(kind)  # MAMA's Destroyer stage: a_latest, a_best_auc, ...
        return Path(self.cfg.weights_dir) / f"{stem}_{self.cfg.dataset}.pth"

    def save(self, kind: str) -> Path:
        """Rank 0 writes (atomically, the stop signals held until the file is complete); other ranks do nothing.
        Weights that are no longer finite are never written: the last good checkpoint stays as it was."""
        path = self.checkpoint_path(kind)
        if self.rank != 0:
            return path
        broken = non_finite_parameters(self.generator, self.discriminator)
        if broken:
            raise NonFiniteTraining(f"step {self.step}: {len(broken)} weights are no longer finite (first: "
                                    f"{broken[0]}); {path} was not written. {self._last_good()}")
        try:
            with signals_held(*STOP_SIGNALS):
                save_checkpoint(path, self.state())
        except OSError as exc:  # WriteFailed (full disk, read-only, ...) or another OSError of the file system
            reason = exc.reason if isinstance(exc, WriteFailed) else write_reason(path, exc)
            raise UserError(f"cannot write checkpoint {path} ({reason}): "
                            f"{write_fix(exc, 'choose another --weights_dir')}. {self._last_good()}") from None
        if kind == "latest":
            self.last_saved = (path, self.step)
        return path

    def keep_if_best(self, kind: str, value: float) -> selection.Best:
        """The value of this step's validation for the rule that keeps checkpoint ``kind``: a new best is saved."""
        best = self.best[kind]
        if best.improves(value, self.step):
            self.save(kind)
        return best

    def _last_good(self) -> str:
        """Where training can continue from, for the message of a run that stops on an error."""
        if self.last_saved is None:
            return "No checkpoint of this run was written before."
        path, step = self.last_saved
        return f"The last good checkpoint is {path} (step {step}): continue with --resume={path.stem}."

    def check_finite(self, losses_: "StepLosses") -> None:
        """The first step whose losses are NaN or infinite stops the run before anything of it is saved."""
        bad = {name: value for name, value in losses_.as_dict().items() if not math.isfinite(value)}
        if bad:
            shown = ", ".join(f"{name}={value}" for name, value in bad.items())
            raise NonFiniteTraining(f"step {self.step}: the losses are no longer finite ({shown}); training stopped "
                                    f"and saved nothing of this step. {self._last_good()} Lower the learning rates "
                                    f"(--lr_g, --lr_d) or keep them from growing (--lr_decay_gamma <= 1)")

    # --- one step ---------------------------------------------------------------------------------------------
    def next_clips(self) -> tuple[np.ndarray, torch.Tensor]:
        """(clip ids, uint8 clips) of this rank: slice ``rank`` of the next global batch."""
        b = self.cfg.batch_size
        ids = self.sampler.next_batch()[self.rank * b:(self.rank + 1) * b]
        return ids, self.train_clips.batch(ids)

    def train_step(self, clip_ids, clips_uint8: torch.Tensor) -> StepLosses:
        """One alternating update on this rank's clips (the method's train_step); the losses returned are the means
        over the global batch."""
        x = to_model_range(clips_uint8.to(self.device, non_blocking=True))
        out = self.method.train_step(self.context, clip_ids, x)
        if self.ema is not None:
            self.ema.update_parameters(self.generator)  # the same on every rank: DDP keeps the weights identical
        self.sched_g.step()
        if self.method.trains_discriminator:
            self.sched_d.step()
        names = self.method.loss_names
        values = torch.stack([out[n].detach().float() for n in names]
                             + [psnr(out["prediction"].detach(), out["target"]).mean()])
        reduced = distributed.all_reduce_mean(values).tolist()  # every rank's batch has the same size
        return StepLosses(**dict(zip(names, reduced[:-1])), psnr=reduced[-1])

    # --- validation and logging -------------------------------------------------------------------------------
    def validate_holdout(self) -> None:
        """Mean PSNR on the held-out normal training videos; the best one is kept as g_best_val (no test labels)."""
        values = predict_psnr_sharded(self.inference, self.holdout, progress=False)
        mean_psnr = float(np.mean(np.concatenate(values)))
        self._figure("holdout_psnr", mean_psnr)
        best = self.keep_if_best("g_best_val", mean_psnr)
        self._print(f"step {self.step}: held-out normal PSNR {mean_psnr:.3f} dB (best {best.value:.3f} at "
                    f"step {best.step})")
        if self.cfg.val_pseudo:
            self.validate_pseudo(values)

    def validate_pseudo(self, normal_values: list[np.ndarray]) -> None:
        """The held-out clips against their pseudo-anomalous versions (ffpvad/data/pseudo.py): both figures logged, the one
        --val_pseudo names keeps g_best_pseudo (no test labels)."""
        figures = pseudo_figures(normal_values, lambda videos: predict_psnr_sharded(self.inference, videos,
                                                                                   progress=False), self.holdout)
        self._figure("pseudo_auc", figures["auc"])
        self._figure("pseudo_gap_db", figures["gap_db"])
        value = figures[STATISTICS[self.cfg.val_pseudo]]
        best = self.keep_if_best("g_best_pseudo", value)
        self._print(f"step {self.step}: pseudo-anomaly AUC {100 * figures['auc']:.2f}%, gap "
                    f"{figures['gap_db']:.2f} dB on the held-out videos (best {self.cfg.val_pseudo} at step "
                    f"{best.step})")

    def validate(self) -> float:
        if self.holdout is not None:
            self.validate_holdout()
        if self.test_set is None:
            return math.nan
        result = evaluate(self.inference, self.test_set, progress=self.progress)
        auc = result.metrics.micro_auc
        self._curve({"test_auc": auc})
        if self.writer is not None:
            self.writer.add_scalar("val/auc", auc, self.step)
            self.writer.add_scalar("val/macro_auc", result.metrics.macro.value, self.step)
            self.writer.add_scalar("val/eer", result.metrics.eer, self.step)
        best = self.keep_if_best("g_best_auc", auc)
        self._print(f"step {self.step}: test micro AUC {100 * auc:.2f}% (best {100 * best.value:.2f}% at step "
                    f"{best.step})")
        return auc

    def _print(self, message: str) -> None:
        if self.rank != 0:
            return
        tqdm.write(message)

    def _log(self, losses_: StepLosses) -> None:
        self._curve(losses_.as_dict())
        if self.writer is None:
            return
        for name, value in losses_.as_dict().items():
            tag = "train/psnr" if name == "psnr" else f"train/{name}"
            self.writer.add_scalar(tag, value, self.step)
        self.writer.add_scalar("train/lr_g", self.opt_g.param_groups[0]["lr"], self.step)

    def _log_images(self) -> None:
        if self.writer is None:
            return
        clips = self.train_clips.batch([0])
        x = to_model_range(clips.to(self.device))
        inputs, target = self.method.split(x)
        with torch.no_grad():
            self.generator.eval()
            prediction = self.method.predict(self.generator, inputs)[0].float()
            self.generator.train()
        self.writer.add_image("train/predicted_frame", ((prediction[0] + 1) / 2).clamp(0, 1).cpu(), self.step)
        self.writer.add_image("train/target_frame", ((target[0] + 1) / 2).cpu(), self.step)

    def _preflight(self) -> None:
        """Before the first step: the folders this run writes to exist and take a file, so a typo or a read-only
        folder is one line now rather than a lost run at the first checkpoint."""
        if self.rank != 0:
            return
        ensure_writable_dir(self.cfg.weights_dir, "to weights folder", "choose another --weights_dir")
        if self.cfg.tensorboard:
            ensure_writable_dir(self.run_dir, "to log folder", "choose another --log_dir, or --tensorboard=false")

    def _curve(self, values: dict[str, float]) -> None:
        if self.curves is not None:
            self.curves.add(self.step, values)

    def _figure(self, name: str, value: float) -> None:
        """A label-free validation figure, to the curves file and TensorBoard (val/<name>)."""
        self._curve({name: value})
        if self.writer is not None:
            self.writer.add_scalar(f"val/{name}", value, self.step)

    def _open_writer(self) -> None:
        if self.rank != 0:
            return
        try:
            self.curves = CurveLog(self.run_dir / CURVES, self.step if self.resumed else None)
        except OSError as exc:  # the curves are for looking at: a log folder that cannot be written costs them only
            print(f"note: no training curves ({self.run_dir / CURVES}: {exc.strerror or exc})")
        if not self.cfg.tensorboard:
            return
        from tensorboardX import SummaryWriter  # deferred: only runs that log load it
        try:  # like the curves, the TensorBoard logs are for looking at: a full log disk costs them, not the run
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_config(self.cfg, self.run_dir)
            self.writer = TensorBoardLog(self.run_dir, SummaryWriter)
        except OSError as exc:
            print(f"note: no TensorBoard logs ({write_reason(self.run_dir / 'config.json', exc)}); training goes on "
                  f"(free some space, or choose another --log_dir next time)")

    # --- the loop ---------------------------------------------------------------------------------------------
    def fit(self) -> TrainSummary:
        """Train to ``cfg.iters`` steps (validating and saving on the way), with the output folders checked first
        and, on rank 0, this weights folder's lock held."""
        with contextlib.ExitStack() as stack:
            self._preflight()
            if self.rank == 0:
                stack.enter_context(exclusive_run(Path(self.cfg.weights_dir), self.cfg.dataset))
            return self._fit()

    def _fit(self) -> TrainSummary:
        cfg = self.cfg
        self._open_writer()
        self.generator.train()
        self.discriminator.train()
        start = time.time()
        bar = tqdm(total=cfg.iters, initial=self.step, desc=f"training {cfg.dataset}", unit="step",
                   disable=not self.progress, dynamic_ncols=True)
        validated_at = -1
        latch = InterruptLatch()
        try:
            while self.step < cfg.iters:
                # Ctrl-C during a step takes effect at its end, on every rank at the same step (the ranks agree on
                # it), so the checkpoint saved then is a whole step and no rank waits for a peer that has left.
                with latch.holding():
                    ids, clips = self.next_clips()
                    step_losses = self.train_step(ids, clips)
                    self.step += 1
                    self.check_finite(step_losses)
                    self.history.append(step_losses)
                    stop = distributed.any_rank(latch.pending)
                if stop:
                    raise Interrupted(latch.signum)
                bar.update(1)
                if cfg.log_interval and self.step % cfg.log_interval == 0:
                    shown = {k: f"{v:.4f}" for k, v in step_losses.as_dict().items()
                             if k in self.method.shown_losses}
                    bar.set_postfix(**shown, psnr=f"{step_losses.psnr:.2f}")
                    self._log(step_losses)
                if cfg.val_interval and self.step % cfg.val_interval == 0:
                    self.validate()
                    self._log_images()
                    validated_at = self.step
                if cfg.save_interval and self.step % cfg.save_interval == 0:
                    self.save("latest")
            if cfg.val_interval and validated_at != self.step and self.step > 0:
                self.validate()
        except KeyboardInterrupt:
            # Rank 0 saves (no collective here: the other ranks may be gone already); torchrun then ends the job.
            with signals_ignored(*STOP_SIGNALS):  # torchrun passes the terminal's Ctrl-C on: a second SIGINT
                bar.close()
                path = self.save("latest")
                self._print(f"interrupted at step {self.step}: saved {path}; continue with --resume={path.stem}")
            raise
        finally:
            bar.close()
            if self.writer is not None:
                self.writer.close()
            if self.curves is not None:
                self.curves.close()
        path = self.save("latest")
        distributed.barrier()  # every rank returns once rank 0's last checkpoint is on disk
        seconds = time.time() - start
        self._print(f"done: {self.step} steps in {seconds:.0f} s; saved {path}"
                    + "".join(f"; {best.line(self.checkpoint_path(kind))}" for kind, best in self.best.items()
                              if best.step >= 0))
        auc = self.best["g_best_auc"]
        return TrainSummary(self.step, auc.value, auc.step, self.history, seconds)


def load_resume_state(cfg: Config, explicit: set[str]) -> tuple[Config, Optional[dict[str, Any]]]:
    """The checkpoint to resume and the merged config.  Every process reads the file (under torchrun on several
    nodes it must be visible on each: a shared filesystem, or a copy at the same path).

    Batch size rule: the run keeps its global batch.  Without --batch_size, the per-process batch becomes the
    checkpoint's global batch divided by the number of processes now (WORLD_SIZE, 1 without torchrun); if that does
    not divide, it is an error.  --batch_size given again sets the per-process batch (a new global batch: the run
    goes on, but no longer as it would have).
    """
    if not cfg.resume:
        return cfg, None
    state = load_checkpoint(resolve_checkpoint(cfg.resume, cfg.weights_dir))
    for key in ("generator", "discriminator", "opt_g", "sampler", "rng"):
        if key not in state:
            raise UserError(f"checkpoint '{cfg.resume}' has no '{key}': it cannot resume training")
    stored = config_from_dict(state["config"], where=f"--resume={cfg.resume}: its config")
    if "pretrained" in explicit and cfg.pretrained != stored.pretrained:
        started = f"--pretrained={stored.pretrained}" if stored.pretrained else "fresh weights"
        raise UserError(f"--pretrained={cfg.pretrained} with --resume={cfg.resume}: a resumed run continues from its "
                        f"own weights (it started from {started}); drop --pretrained, or start a new run from it "
                        f"without --resume")
    merged = merge_resumed_config(stored, cfg, explicit | {"resume"})
    saved = state.get("distributed", {"world_size": 1, "global_batch": stored.batch_size})
    world = distributed.world_size()
    if "batch_size" not in explicit:
        if saved["global_batch"] % world:
            raise UserError(f"checkpoint '{cfg.resume}' was trained with a global batch of {saved['global_batch']} "
                            f"({saved['world_size']} processes x {stored.batch_size}), which {world} processes cannot "
                            f"share equally: use a number of processes that divides it, or pass --batch_size=N (per "
                            f"process) to train on with a global batch of N x {world}")
        merged = merged.replace(batch_size=saved["global_batch"] // world)
    elif merged.batch_size * world != saved["global_batch"] and distributed.is_main():
        print(f"note: global batch {merged.batch_size * world} ({world} x --batch_size={merged.batch_size}) instead "
              f"of the checkpoint's {saved['global_batch']}: the run goes on, but not as it would have")
    if state["step"] >= merged.iters:  # it said "resuming at step 20 of 10", then "done: 20 steps" and saved again
        raise UserError(f"--resume={cfg.resume} has already trained {state['step']} steps, and --iters="
                        f"{merged.iters}{'' if 'iters' in explicit else ' (its own)'} leaves nothing to do: pass "
                        f"--iters=N with N > {state['step']} to train on")
    return merged, state


def stage_two_config(cfg: Config, explicit: set[str]) -> Config:
    """A later stage (``--stage``, e.g. MAMA's Destroyer) starts from the ``--pretrained`` checkpoint of the stage
    before it: the stage's method builds its config from that checkpoint's (Method.start_config).  A first stage,
    or a resumed run, is returned unchanged."""
    if cfg.stage == "generator" or cfg.resume:
        return cfg

    def source() -> Config:
        state = load_checkpoint(resolve_checkpoint(cfg.pretrained, cfg.weights_dir))
        return config_from_dict(state.get("config", {}))

    return method_of(cfg).start_config(cfg, explicit, source)


def resume_note(cfg: Config, explicit: set[str]) -> Optional[str]:
    """What the resumed run's method has to say about resuming it (MAMA: how its second stage starts), or None."""
    return method_of(cfg).resume_note(cfg, explicit) if cfg.stage == "generator" else None
