"""Skip-GANomaly's losses and anomaly score (Akcay et al., IJCNN 2019, Sec. III-B and III-C), as pure functions.

Paper, Eq. 1-5: G minimises w_adv * L_adv + w_con * L_con + w_lat * L_lat with L_adv the standard GAN loss, L_con
= |x - G(x)|_1 and L_lat = |f(x) - f(G(x))|_2 (f: the discriminator's penultimate features); the anomaly score
(Eq. 6) is A(x) = lambda * R(x) + (1 - lambda) * L(x) with R the reconstruction error, L the latent error, lambda 0.9.
The authors' code (docs/methods.md 'Skip-GANomaly'): weights 1 / 50 / 1, BCE for L_adv, mean L1 for L_con, MSE for
L_lat, and at test time R = mean squared error and L = mean squared feature error per sample, inputs in [-1, 1].

Ours: the authors' code adds the latent loss to D's loss as well (D then also pulls the features of real and fake
together, against its own job); D's loss here is the plain BCE of the paper.  Logits + BCE-with-logits replace
sigmoid + BCE (the same value, numerically safe under autocast).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def adversarial_loss(fake_logit: torch.Tensor) -> torch.Tensor:
    """G wants D to call its reconstruction real: BCE(D(G(x)), 1)."""
    return F.binary_cross_entropy_with_logits(fake_logit, torch.ones_like(fake_logit))


def contextual_loss(reconstruction: torch.Tensor, frame: torch.Tensor) -> torch.Tensor:
    """L_con: mean absolute error between the frame and its reconstruction."""
    return (reconstruction - frame).abs().mean()


def latent_loss(real_features: torch.Tensor, fake_features: torch.Tensor) -> torch.Tensor:
    """L_lat: mean squared error between D's features of the frame and of its reconstruction."""
    return (real_features - fake_features).pow(2).mean()


def discriminator_loss(real_logit: torch.Tensor, fake_logit: torch.Tensor) -> torch.Tensor:
    """BCE(D(x), 1) + BCE(D(G(x)), 0), the two terms summed as in the authors' code."""
    return (F.binary_cross_entropy_with_logits(real_logit, torch.ones_like(real_logit))
            + F.binary_cross_entropy_with_logits(fake_logit, torch.zeros_like(fake_logit)))


def per_sample_mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(B,) mean squared difference of each sample over all its other axes."""
    return (a.float() - b.float()).pow(2).flatten(1).mean(dim=1)


def anomaly_score(reconstruction_error, latent_error, lam: float = 0.9):
    """Eq. 6: lambda * R + (1 - lambda) * L, elementwise (tensors or arrays), before any normalisation."""
    return lam * reconstruction_error + (1.0 - lam) * latent_error
