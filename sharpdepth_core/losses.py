"""The two GT-free distillation losses: score distillation (SDS, x0 form) and noise-aware reconstruction.

SDS pulls the student's latent ẑ towards what the frozen diffusion teacher f_G makes of a noised copy
of it (sharp, affine structure). The reconstruction loss keeps the decoded depth on the metric
teacher's normalised depth, weighted by the difference map e: where the teachers disagree, gating fed
the student noise instead of f_D's depth, so that is where it must learn to recover f_D's metric depth.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .gating import TIMESTEP, noise_schedule


def sds_weight(t: int = TIMESTEP) -> float:
    """w = 1 - ᾱ_t, the SDS weighting of the SD-2 schedule (≈ 0.995 at t = 999)."""
    return 1.0 - noise_schedule()[t].item()


def sds_loss(z_hat: Tensor, x_hat: Tensor, weight: float) -> Tensor:
    """SDS in x0 form as a plain loss: its gradient w.r.t. ẑ is exactly `w (ẑ - x̂) / N`.

    x̂ is the teacher's clean-latent prediction for a noised ẑ (no gradient flows into it). The
    gradient `g = w (ẑ - x̂)` is written as the residual of an MSE against the detached target
    ẑ - g, computed in fp32 so a bf16 student still gets an exact direction; non-finite entries of g
    are zeroed (one bad teacher pixel must not poison the update).
    """
    z = z_hat.float()
    g = torch.nan_to_num(weight * (z - x_hat.detach().float()), nan=0.0, posinf=0.0, neginf=0.0)
    return 0.5 * F.mse_loss(z, (z - g).detach(), reduction="mean")


def reconstruction_loss(d_hat: Tensor, d_n: Tensor, e: Tensor, eps: float = 1e-8) -> Tensor:
    """Noise-aware reconstruction `Σ e |(d̂/2+½) - (d_n/2+½)| / (Σ e + eps)`, full resolution.

    d_hat (student, decoded through the frozen VAE), d_n (normalised f_D depth) and e (difference
    map in [0, 1]) are [B, 1, H, W]; the sums run over the whole batch. Both depths are compared in
    [0, 1]. Pixels with e = 0 do not contribute at all.
    """
    if not (d_hat.shape == d_n.shape == e.shape):
        raise ValueError(f"d_hat {tuple(d_hat.shape)}, d_n {tuple(d_n.shape)} and e {tuple(e.shape)} must match")
    err = ((d_hat.float() / 2 + 0.5) - (d_n.float() / 2 + 0.5)).abs()
    e = e.float()
    return (e * err).sum() / (e.sum() + eps)
