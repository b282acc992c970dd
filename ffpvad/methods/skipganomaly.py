"""Skip-GANomaly's method: reconstruct the frame (Akcay et al., "Skip-GANomaly: Skip Connected and Adversarially
Trained Encoder-Decoder Anomaly Detection", IJCNN 2019); generator and discriminator in ffpvad/models/skipganomaly.py,
losses in ffpvad/losses/skipganomaly.py, the authors' settings in docs/methods.md 'Skip-GANomaly'.

Authors' code, followed: G is updated before D on the same reconstruction; D is re-initialised when its loss falls
below ``--d_reinit_below`` (1e-5); Adam 2e-4 with beta1 0.5 and no decay (:attr:`SkipGANomalyMethod.settings`).
Fixed: no latent loss in D's objective, no noise added to G's input (ffpvad/losses/ and ffpvad/models/skipganomaly.py say why).
Ours: scoring runs G and D in eval mode (BatchNorm running statistics; the authors never call eval()), so a frame's
score does not depend on the frames batched with it, and D's features in fp32; the score is min-max normalised per
video like FFP's, and over the whole test set (the authors' rule) with ``--score_norm=global``.  Label-free
selection (``--val_holdout``) picks the checkpoint that reconstructs held-out normal frames best, which favours a
generator that copies its input: for this method, read it with the normal/anomalous PSNR gap.

Every method's scored frames are the last frame of each clip, so with the same ``--clip_len`` this reconstruction
method is scored on exactly the frames a prediction method is (each video's first clip_len-1 frames dropped) and
the AUCs compare like for like; ``--clip_len=1`` scores every frame.
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from ffpvad.losses import skipganomaly as sg
from ffpvad.config import Config
from ffpvad.errors import UserError
from ffpvad.methods.base import METHODS, Method, TrainingContext, frozen_discriminator
from ffpvad.models.skipganomaly import init_weights


class SkipGANomalyMethod(Method):
    """Frame -> the same frame; score = lambda * reconstruction MSE + (1 - lambda) * latent MSE."""

    name = "skipganomaly"
    description = "a reconstruction method"
    # The authors' code: DCGAN discriminator, Adam 2e-4 for both networks with beta1 0.5, never decayed, weights
    # adversarial 1, contextual 50, latent 1, D re-initialised below a loss of 1e-5.  A reconstruction method has
    # no use for a flow network.
    settings: dict[str, Any] = dict(
        discriminator="dcgan", flownet="none", lr_g=2e-4, lr_d=2e-4, adam_beta1=0.5, lr_decay_gamma=1.0,
        lam_adv=1.0, lam_con=50.0, lam_lat=1.0, d_reinit_below=1e-5,
    )
    scores_with_discriminator = True
    loss_names = ("g_total", "g_adv", "g_con", "g_lat", "d_loss", "d_reinit")

    def check(self, cfg: Config) -> None:
        if cfg.discriminator != "dcgan":
            raise UserError(f"--model={cfg.model} needs its DCGAN discriminator (its features give the latent loss "
                            f"and score): drop --discriminator={cfg.discriminator}")
        if cfg.flownet != "none":
            raise UserError(f"--model={cfg.model} reconstructs single frames and has no flow loss: drop "
                            f"--flownet={cfg.flownet}")

    def selection_note(self, cfg: Config) -> Optional[str]:
        if not cfg.val_holdout:
            return None
        return (f"note: --val_holdout picks the checkpoint that reconstructs held-out normal frames best, which "
                f"favours a --model={cfg.model} that copies its input; check the normal/anomalous PSNR gap")

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x[:, -1], x[:, -1]

    def train_step(self, ctx: TrainingContext, clip_ids, x: torch.Tensor) -> dict[str, torch.Tensor]:
        cfg = ctx.cfg
        frame, _ = ctx.layout(*self.split(x))
        with ctx.autocast():
            reconstruction = ctx.run_generator(frame).float()

        # G step first (the authors' order), D frozen as in the prediction method.
        with frozen_discriminator(ctx.discriminator) as D:
            with ctx.autocast():
                fake_logit, fake_features = D(reconstruction)
                _, real_features = D(frame)
            g_adv = sg.adversarial_loss(fake_logit.float())
            g_con = sg.contextual_loss(reconstruction, frame.float())
            g_lat = sg.latent_loss(real_features.float(), fake_features.float())
            g_total = cfg.lam_adv * g_adv + cfg.lam_con * g_con + cfg.lam_lat * g_lat
            ctx.step_generator(g_total)

        with ctx.autocast():
            real_logit, _ = ctx.run_discriminator(frame)
            fake_logit, _ = ctx.run_discriminator(reconstruction.detach())
        d_loss = sg.discriminator_loss(real_logit.float(), fake_logit.float())
        ctx.step_discriminator(d_loss)

        # The authors' guard against a discriminator that has won outright; every rank decides on the mean loss.
        reinit = torch.zeros((), device=ctx.device)
        if cfg.d_reinit_below > 0 and ctx.mean_over_processes(d_loss) < cfg.d_reinit_below:
            ctx.reinitialise_discriminator(init_weights)
            reinit = torch.ones((), device=ctx.device)
        return dict(g_total=g_total, g_adv=g_adv, g_con=g_con, g_lat=g_lat, d_loss=d_loss, d_reinit=reinit,
                    prediction=reconstruction, target=frame)

    def frame_errors(self, prediction: torch.Tensor, target: torch.Tensor, terms: dict[str, torch.Tensor],
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
        return {"reconstruction_mse": sg.per_sample_mse(prediction, target),
                "latent_mse": sg.per_sample_mse(real, fake)}

    def anomaly_values(self, psnr: list[np.ndarray], extras: dict[str, list[np.ndarray]],
                       cfg: Config) -> list[np.ndarray]:
        return [sg.anomaly_score(r, l, cfg.score_lambda)
                for r, l in zip(extras["reconstruction_mse"], extras["latent_mse"])]


METHODS.register("skipganomaly", SkipGANomalyMethod())
