"""Methods: what a generator is trained to output, with which losses, and how its frames are scored.

The training loop (engine.py), checkpoints, resume, logging and evaluation (evaluation.py) are shared; a method
supplies the rest:

- ``split``: the generator's input and target from a clip (B, clip_len, 3, H, W) in [-1, 1];
- ``train_step``: one alternating G/D update on a batch, returning its losses;
- ``frame_errors``: per-frame errors beyond PSNR that the score needs (computed during evaluation);
- ``anomaly_values``: the per-frame anomaly value (higher = more anomalous) before normalisation.

``prediction`` (FFP, Liu et al., CVPR 2018; the ffp and stemgan generators): clip -> next frame, the FFP losses,
score = -PSNR.  ``skipganomaly`` (Akcay et al., IJCNN 2019): frame -> the same frame, adversarial + contextual +
latent losses, score = lambda * reconstruction MSE + (1 - lambda) * latent MSE (losses/skipganomaly.py).

Every method's scored frames are the last frame of each clip, so with the same ``--clip_len`` a reconstruction
method is scored on exactly the frames a prediction method is (each video's first clip_len-1 frames dropped) and
the AUCs compare like for like; ``--clip_len=1`` scores every frame of a reconstruction method.  A generator
declares its method when it registers (models/__init__.py).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

import numpy as np
import torch
from torch import nn

import losses
import losses.skipganomaly as sg
from config import Config
from errors import UserError
from runtime import autocast

if TYPE_CHECKING:  # engine imports this module
    from engine import Trainer


def _channels_last(trainer: "Trainer", *tensors: torch.Tensor) -> list[torch.Tensor]:
    if not trainer.channels_last:
        return list(tensors)
    return [t.contiguous(memory_format=torch.channels_last) for t in tensors]


def _optimizer_step(loss: torch.Tensor, optimizer, scaler) -> None:
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()


class PredictionMethod:
    """FFP: predict frame t from frames t-clip_len+1 .. t-1 (Liu et al., CVPR 2018; see engine.py and losses/)."""

    name = "prediction"
    scores_with_discriminator = False
    loss_names = ("g_total", "g_int", "g_grad", "g_flow", "g_adv", "d_loss")

    def check(self, cfg: Config) -> None:
        if cfg.clip_len < 2:
            raise UserError(f"--model={cfg.model} predicts a frame from the ones before it: --clip_len must be at "
                            f"least 2, got {cfg.clip_len}")
        if cfg.discriminator == "dcgan":
            raise UserError(f"--discriminator=dcgan is Skip-GANomaly's (a logit and features per frame); "
                            f"--model={cfg.model} trains with a patch discriminator: use --discriminator=pixel")

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x[:, :-1].flatten(1, 2), x[:, -1]

    def train_step(self, trainer: "Trainer", clip_ids, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """D step on the detached prediction, then G step with D frozen (paper Algorithm 1)."""
        cfg, G, D = trainer.cfg, trainer._g_step, trainer._d_step
        inputs, target = _channels_last(trainer, *self.split(x))
        last = x[:, -2]
        with autocast(trainer.device, trainer.amp_dtype):
            prediction = G(inputs).float()
        with autocast(trainer.device, trainer.amp_dtype):
            d_loss = losses.discriminator_loss(D(target).float(), D(prediction.detach()).float())
        _optimizer_step(d_loss, trainer.opt_d, trainer.scaler_d)

        # G step with D frozen: G's backward passes through D without touching D's gradients.  Under DDP it calls
        # the plain D (no gradient of D to synchronise); G's gradients are averaged by G's DDP wrapper.
        flownet = trainer.flownet
        flow_target = trainer._ground_truth_flow(clip_ids, last, target) if flownet is not None else None
        D = trainer.discriminator
        D.requires_grad_(False)
        try:
            with autocast(trainer.device, trainer.amp_dtype):
                g_adv = losses.generator_adversarial_loss(D(prediction).float())
                g_flow = torch.zeros((), device=trainer.device)
                if flownet is not None:
                    flow_pred = flownet(torch.stack([last, prediction], dim=2)).float()
                    g_flow = losses.flow_loss(flow_pred, flow_target) / cfg.flow_loss_scale
            g_int = losses.intensity_loss(prediction, target)
            g_grad = losses.gradient_loss(prediction, target)
            g_total = cfg.lam_int * g_int + cfg.lam_grad * g_grad + cfg.lam_adv * g_adv
            if flownet is not None:
                g_total = g_total + cfg.lam_flow * g_flow
            _optimizer_step(g_total, trainer.opt_g, trainer.scaler_g)
        finally:
            D.requires_grad_(True)
        return dict(g_total=g_total, g_int=g_int, g_grad=g_grad, g_flow=g_flow, g_adv=g_adv, d_loss=d_loss,
                    prediction=prediction, target=target)

    def frame_errors(self, prediction: torch.Tensor, target: torch.Tensor,
                     discriminator: Optional[nn.Module]) -> dict[str, torch.Tensor]:
        return {}

    def anomaly_values(self, psnr: list[np.ndarray], extras: dict[str, list[np.ndarray]],
                       cfg: Config) -> list[np.ndarray]:
        return [-np.asarray(p, dtype=np.float64) for p in psnr]


class SkipGANomalyMethod:
    """Skip-GANomaly: reconstruct the frame (Akcay et al., IJCNN 2019; models/ and losses/skipganomaly.py).

    Authors' code, followed: G is updated before D on the same reconstruction; D is re-initialised when its loss
    falls below ``--d_reinit_below`` (1e-5); Adam 2e-4 with beta1 0.5 and no decay (config.MODEL_PRESETS).
    Fixed: no latent loss in D's objective, no noise added to G's input (losses/ and models/skipganomaly.py say why).
    Ours: scoring runs G and D in eval mode (BatchNorm running statistics; the authors never call eval()), so a
    frame's score does not depend on the frames batched with it, and D's features in fp32; the score is min-max
    normalised per video like FFP's, and over the whole test set (the authors' rule) with ``--score_norm=global``.
    Label-free selection (``--val_holdout``) picks the checkpoint that reconstructs held-out normal frames best,
    which favours a generator that copies its input: for this method, read it with the normal/anomalous PSNR gap.
    """

    name = "skipganomaly"
    scores_with_discriminator = True
    loss_names = ("g_total", "g_adv", "g_con", "g_lat", "d_loss", "d_reinit")

    def check(self, cfg: Config) -> None:
        if cfg.discriminator != "dcgan":
            raise UserError(f"--model={cfg.model} needs its DCGAN discriminator (its features give the latent loss "
                            f"and score): drop --discriminator={cfg.discriminator}")
        if cfg.flownet != "none":
            raise UserError(f"--model={cfg.model} reconstructs single frames and has no flow loss: drop "
                            f"--flownet={cfg.flownet}")

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x[:, -1], x[:, -1]

    def train_step(self, trainer: "Trainer", clip_ids, x: torch.Tensor) -> dict[str, torch.Tensor]:
        import distributed
        from models.skipganomaly import init_weights

        cfg, G = trainer.cfg, trainer._g_step
        frame, _ = _channels_last(trainer, *self.split(x))
        with autocast(trainer.device, trainer.amp_dtype):
            reconstruction = G(frame).float()

        D = trainer.discriminator  # G step first (the authors' order), D frozen as in the prediction method
        D.requires_grad_(False)
        try:
            with autocast(trainer.device, trainer.amp_dtype):
                fake_logit, fake_features = D(reconstruction)
                _, real_features = D(frame)
            g_adv = sg.adversarial_loss(fake_logit.float())
            g_con = sg.contextual_loss(reconstruction, frame.float())
            g_lat = sg.latent_loss(real_features.float(), fake_features.float())
            g_total = cfg.lam_adv * g_adv + cfg.lam_con * g_con + cfg.lam_lat * g_lat
            _optimizer_step(g_total, trainer.opt_g, trainer.scaler_g)
        finally:
            D.requires_grad_(True)

        with autocast(trainer.device, trainer.amp_dtype):
            real_logit, _ = trainer._d_step(frame)
            fake_logit, _ = trainer._d_step(reconstruction.detach())
        d_loss = sg.discriminator_loss(real_logit.float(), fake_logit.float())
        _optimizer_step(d_loss, trainer.opt_d, trainer.scaler_d)

        # The authors' guard against a discriminator that has won outright; every rank decides on the mean loss.
        reinit = torch.zeros((), device=trainer.device)
        if cfg.d_reinit_below > 0:
            mean_d = float(distributed.all_reduce_mean(d_loss.detach().float().reshape(1))[0])
            if mean_d < cfg.d_reinit_below:
                trainer.discriminator.apply(init_weights)
                distributed.broadcast_module(trainer.discriminator)  # DDP syncs gradients, not re-drawn weights
                reinit = torch.ones((), device=trainer.device)
        return dict(g_total=g_total, g_adv=g_adv, g_con=g_con, g_lat=g_lat, d_loss=d_loss, d_reinit=reinit,
                    prediction=reconstruction, target=frame)

    def frame_errors(self, prediction: torch.Tensor, target: torch.Tensor,
                     discriminator: Optional[nn.Module]) -> dict[str, torch.Tensor]:
        if discriminator is None:
            raise ValueError("Skip-GANomaly's score needs the discriminator's features")
        was_training = discriminator.training
        discriminator.eval()
        # fp32 even under autocast: in bf16 the two feature vectors would each be rounded (~0.4%) before their
        # difference is taken, a sizeable share of a small latent error.
        with torch.autocast(target.device.type, enabled=False):
            _, real = discriminator(target.float())
            _, fake = discriminator(prediction.float())
        discriminator.train(was_training)
        return {"reconstruction_mse": sg.per_sample_mse(prediction, target), "latent_mse": sg.per_sample_mse(real, fake)}

    def anomaly_values(self, psnr: list[np.ndarray], extras: dict[str, list[np.ndarray]],
                       cfg: Config) -> list[np.ndarray]:
        return [sg.anomaly_score(r, l, cfg.score_lambda)
                for r, l in zip(extras["reconstruction_mse"], extras["latent_mse"])]


METHODS: dict[str, Any] = {"prediction": PredictionMethod(), "skipganomaly": SkipGANomalyMethod()}


def method_for(cfg: Config):
    """The method of ``cfg.model``, after checking that the config suits it."""
    from models import method_name

    method = METHODS[method_name(cfg.model)]
    method.check(cfg)
    return method
