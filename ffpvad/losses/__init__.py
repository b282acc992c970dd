"""FFP training losses (Liu et al., CVPR 2018, Sec. 3.2-3.4), each a pure function of tensors.

Generator objective (paper Eq. 9): lam_int * L_int + lam_gd * L_gd + lam_op * L_op + lam_adv * L_adv^G.
Published weights (authors' hyper_params.ini): 1, 1, 2, 0.05 (Avenue intensity 0.001); see config.PRESETS.

Ours: the engine divides the flow loss by ``flow_loss_scale`` (20, FlowNet's ``div_flow``).  Our estimators
return flow in pixels; the authors' code fed the loss with flows in the networks' native, smaller units, and with
flows in pixels the published weight 2 lets the flow term swamp the intensity term (a Ped2 run with SPyNet at
128x128 reached 36% AUC after 500 steps, PSNR 17 dB, before this scale was introduced).
"""
from __future__ import annotations

import torch


def intensity_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Eq. 1: squared L2 distance in intensity space, averaged over pixels (the authors' L_NUM = 2)."""
    return (prediction - target).pow(2).mean()


def _abs_gradients(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    dx = (image[..., :, 1:] - image[..., :, :-1]).abs()
    dy = (image[..., 1:, :] - image[..., :-1, :]).abs()
    return dx, dy


def gradient_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Eq. 2: L1 distance between the absolute horizontal and vertical image gradients (alpha = 1)."""
    pdx, pdy = _abs_gradients(prediction)
    tdx, tdy = _abs_gradients(target)
    return (pdx - tdx).abs().mean() + (pdy - tdy).abs().mean()


def flow_loss(flow_prediction: torch.Tensor, flow_target: torch.Tensor) -> torch.Tensor:
    """Eq. 3: L1 distance between the flow (last input -> prediction) and the flow (last input -> target)."""
    return (flow_prediction - flow_target).abs().mean()


def generator_adversarial_loss(fake_score: torch.Tensor) -> torch.Tensor:
    """Eq. 6, least squares: the generator wants D(fake) = 1."""
    return (fake_score - 1.0).pow(2).mean() / 2.0


def discriminator_loss(real_score: torch.Tensor, fake_score: torch.Tensor) -> torch.Tensor:
    """Eq. 7, least squares: D wants D(real) = 1 and D(fake) = 0."""
    return (real_score - 1.0).pow(2).mean() / 2.0 + fake_score.pow(2).mean() / 2.0
