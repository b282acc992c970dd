"""MAMA's two stages (Hong et al., "Making Anomalies More Anomalous: Video Anomaly Detection Using a Novel
Generator and Destroyer", IEEE Access 12, 2024): the F2LM generator (stage 1) and the Destroyer trained against it
(stage 2).  Networks in ffpvad/models/f2lm.py, losses and score in ffpvad/losses/mama.py, the authors' settings in
docs/methods.md 'MAMA'.

Authors' code, followed: G is updated first (intensity + gradient + 0.05 least-squares adversarial + the two
triplet losses; no flow loss: flows are an input), then D on the detached prediction; AdamW with weight decay equal
to the G learning rate (1e-4 on Ped1/2, 2e-4 on Avenue/ShanghaiTech) and no decay schedule.
Ours: the flows and semantic maps of the training frames come from frozen networks and are computed once per frame
pair / frame and kept (fp16, on the CPU), not every step.  The score is the fixed-weight sum of the z-scored
generator error and triplet hinges (ffpvad/losses/mama.py); the Destroyer's checkpoints are a_latest / a_best_auc /
a_best_val and hold both networks (ffpvad/models/f2lm.MAMA); they start from a stage-1 checkpoint (--pretrained).
"""
from __future__ import annotations

import os
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import nn

from ffpvad import losses
from ffpvad.losses import mama
from ffpvad.config import Config, fields_of, number_list
from ffpvad.errors import UserError
from ffpvad.methods.base import METHODS, Method, TrainingContext, frozen_discriminator
from ffpvad.methods.prediction import PredictionMethod
from ffpvad.models.f2lm import resolve_inputs


def check_cache_fits(ctx: TrainingContext, aux) -> None:
    """MAMA's input cache grows to (2 flow + 21 label channels) x H x W fp16 values per training frame, in RAM (and
    per process under torchrun): say how much, and stop before a run that cannot hold it starts."""
    channels = 2 * (aux.flow is not None) + 21 * (aux.semantic is not None)
    frames = sum(ctx.train_clips.videos.counts)
    need = channels * ctx.cfg.img_size ** 2 * 2 * frames
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        ram = 0
    if ctx.rank == 0 and need > 2 ** 30:
        print(f"note: F2LM's input cache will grow to {need / 2 ** 30:.1f} GiB of RAM per process over the first "
              f"epoch ({frames} training frames)")
    if ram and need > 0.8 * ram:
        raise UserError(f"F2LM's flows/semantic maps of the {frames} training frames need {need / 2 ** 30:.1f} GiB "
                        f"of RAM ({ram / 2 ** 30:.1f} GiB here): lower --img_size, or drop the label stream with "
                        f"--semantic=none")


class F2LMMethod(Method):
    """MAMA stage 1, the F2LM generator: prediction with triplet losses; score = weighted z-scored errors."""

    name = "f2lm"
    description = "scored by more than PSNR"
    # Flows feed an encoder (no flow loss), intensity 1 on every dataset, no decay schedule.
    settings: dict[str, Any] = dict(flownet="auto", lr_decay_gamma=1.0, lam_int=1.0, lam_grad=1.0, lam_adv=0.05)
    stages = {"destroyer": "destroyer"}
    loss_names = ("g_total", "g_int", "g_grad", "g_adv", "g_triplet_motion", "g_triplet_label", "d_loss")

    def derived_settings(self, cfg: Config) -> dict[str, Any]:
        return dict(weight_decay=cfg.lr_g)  # the authors': 1e-4 on Ped1/2, 2e-4 on Avenue/ShanghaiTech

    def resume_note(self, cfg: Config, explicit: set[str]) -> Optional[str]:
        """MAMA's README resumes a stage-1 checkpoint to train the Destroyer; here --resume continues the run."""
        if "stage" in explicit:
            return None
        return (f"note: --resume={cfg.resume} continues training the F2LM generator (stage 1); MAMA's Destroyer "
                f"stage is --stage=destroyer --pretrained={cfg.resume}")

    def check(self, cfg: Config) -> None:
        if cfg.model != "f2lm":
            raise UserError(f"--stage={cfg.stage} trains MAMA (--model=f2lm), not --model={cfg.model}")
        PredictionMethod.check(self, cfg)  # type: ignore[arg-type]

    def resolve(self, cfg: Config) -> Config:
        return resolve_inputs(cfg)

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x[:, :-1].flatten(1, 2), x[:, -1]

    @staticmethod
    def f2lm(ctx: TrainingContext) -> nn.Module:
        return getattr(ctx.generator, "generator", ctx.generator)  # stage 2 holds it inside MAMA

    def auxiliary_inputs(self, ctx: TrainingContext, clip_ids, x: torch.Tensor):
        """(motion, semantic) of these training clips, (B, 2(n-1), H, W) and (B, 21n, H, W) or None, from the
        per-frame cache (the input networks are frozen and a frame's inputs never change)."""
        aux = self.f2lm(ctx).aux
        n, b = ctx.cfg.n_inputs, x.shape[0]
        starts = ctx.train_clips.index[np.asarray(clip_ids)]
        if "f2lm" not in ctx.cache:
            check_cache_fits(ctx, aux)
        cache = ctx.cache.setdefault("f2lm", {"flow": {}, "labels": {}})

        def cached(kind: str, count: int, compute) -> torch.Tensor:
            store = cache[kind]
            keys = [(int(v), int(s) + k) for v, s in starts for k in range(count)]  # (video, first frame)
            missing = {key: i for i, key in enumerate(keys) if key not in store}
            if missing:
                slots = list(missing.values())
                with ctx.autocast():
                    values = compute([i // count for i in slots], [i % count for i in slots])
                for key, value in zip(missing, values):
                    store[key] = value.to("cpu", torch.float16)
            stacked = torch.stack([store[key] for key in keys]).to(ctx.device, torch.float32)
            return stacked.reshape(b, -1, *stacked.shape[-2:])

        motion = semantic = None
        if aux.flow is not None:
            motion = cached("flow", n - 1, lambda bi, ki: aux.flows(x[bi, ki], x[bi, [k + 1 for k in ki]]))
        if aux.semantic is not None:
            semantic = cached("labels", n, lambda bi, ki: aux.logits(x[bi, ki]))
        return motion, semantic

    def train_step(self, ctx: TrainingContext, clip_ids, x: torch.Tensor) -> dict[str, torch.Tensor]:
        cfg = ctx.cfg
        inputs, target = ctx.layout(*self.split(x))
        motion, semantic = ctx.layout(*self.auxiliary_inputs(ctx, clip_ids, x))
        with frozen_discriminator(ctx.discriminator) as D:  # G step first (the authors' order), D frozen
            with ctx.autocast():
                prediction, features = ctx.run_generator(inputs, motion, semantic, with_features=True)
                prediction = prediction.float()
                g_adv = losses.generator_adversarial_loss(D(prediction).float())
            g_int = losses.intensity_loss(prediction, target)
            g_grad = losses.gradient_loss(prediction, target)
            zero = torch.zeros((), device=ctx.device)
            x4 = features["x4"].float()
            t_motion = (mama.triplet_loss(features["f2m"].float(), features["y4"].float(), x4, cfg.triplet_margin)
                        if features["f2m"] is not None else zero)
            t_label = (mama.triplet_loss(features["f2l"].float(), features["z4"].float(), x4, cfg.triplet_margin)
                       if features["f2l"] is not None else zero)
            g_total = (cfg.lam_int * g_int + cfg.lam_grad * g_grad + cfg.lam_adv * g_adv
                       + cfg.lam_triplet * (t_motion + t_label))
            ctx.step_generator(g_total)
        with ctx.autocast():
            d_loss = losses.discriminator_loss(ctx.run_discriminator(target).float(),
                                               ctx.run_discriminator(prediction.detach()).float())
        ctx.step_discriminator(d_loss)
        return dict(g_total=g_total, g_int=g_int, g_grad=g_grad, g_adv=g_adv, g_triplet_motion=t_motion,
                    g_triplet_label=t_label, d_loss=d_loss, prediction=prediction, target=target)

    def predict(self, generator: nn.Module, inputs: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The prediction and the call's terms: the triplet hinges and, in stage 2, the Destroyer's output."""
        return generator.predict_with_terms(inputs)

    def frame_errors(self, prediction: torch.Tensor, target: torch.Tensor, terms: dict[str, torch.Tensor],
                     discriminator: Optional[nn.Module]) -> dict[str, torch.Tensor]:
        """The generator's error, the triplet hinges and the Destroyer's error (stage 2)."""
        terms = dict(terms)
        errors = {"generator_mse": mama.per_frame_mse01(prediction, target)}
        restored = terms.pop("restored", None)
        if restored is not None:
            errors["destroyer_mse"] = mama.per_frame_mse01(restored, target)
        return {**errors, **terms}

    def anomaly_values(self, psnr: list[np.ndarray], extras: dict[str, list[np.ndarray]],
                       cfg: Config) -> list[np.ndarray]:
        weights = number_list(cfg.score_weights, 4)  # motion triplet, label triplet, generator and Destroyer error
        return [mama.combined_score({name: values[v] for name, values in extras.items()}, weights)
                for v in range(len(psnr))]


class DestroyerMethod(F2LMMethod):
    """MAMA stage 2: train the Destroyer against the frozen F2LM (ffpvad/losses/mama.py: patch dropout, SSIM-weighted
    black-or-restore target; AdamW at the generator's learning rate)."""

    name = "destroyer"
    stages: dict[str, str] = {}
    trains_discriminator = False
    loss_names = ("a_loss",)
    shown_losses = ("a_loss",)
    checkpoint_names = {"latest": "a_latest", "g_best_auc": "a_best_auc", "g_best_val": "a_best_val"}

    def check(self, cfg: Config) -> None:
        super().check(cfg)
        if cfg.val_holdout:
            raise UserError("--val_holdout selects by the generator's PSNR on held-out videos, which the Destroyer "
                            "stage never changes: drop it (stage 2's label-free checkpoint is the last, a_latest)")

    def resolve(self, cfg: Config) -> Config:
        if "auto" in (cfg.flownet, cfg.semantic):
            raise UserError("--stage=destroyer takes its inputs from the stage-1 checkpoint: pass "
                            "--pretrained=g_best_auc_<dataset> (or --resume=a_latest_<dataset>)")
        return cfg

    def start_config(self, cfg: Config, explicit: set[str], source: Callable[[], Config]) -> Config:
        """The Destroyer trains against the F2LM of ``--pretrained``: it takes that run's generator settings
        (config fields of kind stage_one) unless they are given again."""
        if not cfg.pretrained:
            raise UserError("--stage=destroyer trains MAMA's Destroyer against a trained F2LM generator: add "
                            f"--pretrained=g_best_auc_{cfg.dataset} (the stage-1 checkpoint)")
        stage_one = source()
        if stage_one.model != "f2lm":
            raise UserError(f"--pretrained={cfg.pretrained} holds a '{stage_one.model}' generator: MAMA's Destroyer "
                            f"stage starts from an F2LM checkpoint (train one with --model=f2lm)")
        # The frozen generator reads what it was trained on: other inputs or sizes would load (same shapes) and
        # mislead.
        fields = fields_of("stage_one")
        changed = [k for k in fields if k in explicit and getattr(cfg, k) != getattr(stage_one, k)
                   and k != "flownet_weights"]
        if changed:
            details = ", ".join(f"--{k}={getattr(cfg, k)} (stage 1: {getattr(stage_one, k)})" for k in changed)
            raise UserError(f"the Destroyer trains against the stage-1 generator as it was trained: drop {details}")
        return cfg.replace(**{k: getattr(stage_one, k) for k in fields if k not in explicit})

    def pretrained_part(self, generator: nn.Module, source: dict[str, Any], name: str) -> nn.Module:
        """Stage 2 starts from the stage-1 F2LM (inside MAMA), with a fresh Destroyer."""
        if source.get("stage", "generator") != "generator":
            raise UserError(f"--pretrained={name} is already a stage-2 (Destroyer) checkpoint: start from the "
                            f"stage-1 F2LM checkpoint (g_best_auc_<dataset>), or continue with --resume={name}")
        return generator.generator

    def train_step(self, ctx: TrainingContext, clip_ids, x: torch.Tensor) -> dict[str, torch.Tensor]:
        inputs, target = ctx.layout(*self.split(x))
        motion, semantic = self.auxiliary_inputs(ctx, clip_ids, x)
        with torch.no_grad(), ctx.autocast():
            clean = self.f2lm(ctx)(inputs, motion, semantic).float()
        noisy = mama.corrupt_patches(clean)
        with ctx.autocast():
            output = ctx.run_generator(destroy=ctx.layout(noisy)[0]).float()
        a_loss = mama.destroyer_loss(output, clean, noisy, target)
        ctx.step_generator(a_loss)
        return dict(a_loss=a_loss, prediction=clean, target=target)


METHODS.register("f2lm", F2LMMethod())
METHODS.register("destroyer", DestroyerMethod())
