"""FFP's method: predict the next frame (Liu et al., "Future Frame Prediction for Anomaly Detection -- A New
Baseline", CVPR 2018); generators ``ffp`` (ffpvad/models/ffp.py), ``stemgan`` (ffpvad/models/stemgan.py) and the baselines.

Paper (Sec. 3, Algorithm 1): the generator maps the clip's input frames to frame t; D is updated on the real target
and the *detached* prediction (least-squares GAN, Eq. 8), then G on
lam_int * L_int (Eq. 1) + lam_grad * L_gd (Eq. 2) + lam_flow * L_op (Eq. 3) + lam_adv * L_adv (Eq. 7) with D frozen.
The score is the PSNR of the predicted frame (Eq. 10), min-max normalised per video (Eq. 11).
Ours: ``--pseudo_anomaly=skip`` adds lam_pseudo * (lam_int * L_int + lam_grad * L_gd) of G's prediction from a
stride-3 clip against that clip's last input frame (ffpvad/data/pseudo.py states the loss and why); off by default.
Ours: the ground-truth flow of a clip is computed once and kept (TrainingContext.ground_truth_flow); flows enter the
flow loss divided by ``--flow_loss_scale`` (FlowNet's native unit; docs/flow.md).
"""
from __future__ import annotations

import torch

from ffpvad import losses
from ffpvad.config import Config
from ffpvad.errors import UserError
from ffpvad.flow import resolve_flownet_name
from ffpvad.methods.base import METHODS, Method, TrainingContext, frozen_discriminator


class PredictionMethod(Method):
    """FFP: predict frame t from frames t-clip_len+1 .. t-1; score = -PSNR."""

    name = "prediction"
    description = "a frame-prediction method"
    uses_flow_loss = True
    scores_by_psnr = True
    trains_with_pseudo_anomalies = True
    loss_names = ("g_total", "g_int", "g_grad", "g_flow", "g_adv", "g_pseudo", "d_loss")

    def check(self, cfg: Config) -> None:
        if cfg.clip_len < 2:
            raise UserError(f"--model={cfg.model} predicts a frame from the ones before it: --clip_len must be at "
                            f"least 2, got {cfg.clip_len}")
        if cfg.discriminator == "dcgan":
            raise UserError(f"--discriminator=dcgan is Skip-GANomaly's (a logit and features per frame); "
                            f"--model={cfg.model} trains with a patch discriminator: use --discriminator=pixel")

    def resolve(self, cfg: Config) -> Config:
        return cfg.replace(flownet=resolve_flownet_name(cfg))  # 'auto' is recorded as what it resolved to

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x[:, :-1].flatten(1, 2), x[:, -1]

    def train_step(self, ctx: TrainingContext, clip_ids, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """D step on the detached prediction, then G step with D frozen (paper Algorithm 1)."""
        cfg = ctx.cfg
        inputs, target = ctx.layout(*self.split(x))
        last = x[:, -2]
        pseudo = ctx.pseudo_clips(clip_ids)
        if pseudo is None:
            with ctx.autocast():
                prediction = ctx.run_generator(inputs).float()
        else:  # one forward pass for the normal and the pseudo-anomalous clips (DDP: one forward per backward)
            pseudo_inputs = ctx.layout(self.split(pseudo)[0])[0]  # its own target is never used
            with ctx.autocast():
                both = ctx.run_generator(torch.cat([inputs, pseudo_inputs])).float()
            prediction, pseudo_prediction = both[:len(inputs)], both[len(inputs):]
        with ctx.autocast():
            d_loss = losses.discriminator_loss(ctx.run_discriminator(target).float(),
                                               ctx.run_discriminator(prediction.detach()).float())
        ctx.step_discriminator(d_loss)

        # G step with D frozen: G's backward passes through D without touching D's gradients.  Under DDP it calls
        # the plain D (no gradient of D to synchronise); G's gradients are averaged by G's DDP wrapper.
        flownet = ctx.flownet
        flow_target = ctx.ground_truth_flow(clip_ids, last, target) if flownet is not None else None
        with frozen_discriminator(ctx.discriminator) as D:
            with ctx.autocast():
                g_adv = losses.generator_adversarial_loss(D(prediction).float())
                g_flow = torch.zeros((), device=ctx.device)
                if flownet is not None:
                    flow_pred = flownet(torch.stack([last, prediction], dim=2)).float()
                    g_flow = losses.flow_loss(flow_pred, flow_target) / cfg.flow_loss_scale
            g_int = losses.intensity_loss(prediction, target)
            g_grad = losses.gradient_loss(prediction, target)
            g_total = cfg.lam_int * g_int + cfg.lam_grad * g_grad + cfg.lam_adv * g_adv
            if flownet is not None:
                g_total = g_total + cfg.lam_flow * g_flow
            g_pseudo = torch.zeros((), device=ctx.device)
            if pseudo is not None:  # "nothing here moves this fast": predict the pseudo clip's last input frame
                still = pseudo[:, -2]
                g_pseudo = (cfg.lam_int * losses.intensity_loss(pseudo_prediction, still)
                            + cfg.lam_grad * losses.gradient_loss(pseudo_prediction, still))
                g_total = g_total + cfg.lam_pseudo * g_pseudo
            ctx.step_generator(g_total)
        return dict(g_total=g_total, g_int=g_int, g_grad=g_grad, g_flow=g_flow, g_adv=g_adv, g_pseudo=g_pseudo,
                    d_loss=d_loss, prediction=prediction, target=target)


METHODS.register("prediction", PredictionMethod())
