"""Difference map and noise-aware gating: where f_G and f_D disagree, the student gets noise.

`e = clip(|d̃ - d_n| / max, 0, 1)` marks pixels where the affine pass d̃ disagrees with the
normalised metric depth d_n; its nearest-downsampled version ê gates the depth latent:
`z'_d = ê ⊙ add_noise(x, ε, 999) + (1 - ê) ⊙ z_d`.
"""
from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor

from .alignment import apply_scale_shift, fit_scale_shift

TIMESTEP = 999  # the single timestep of the one-step student, Lotus and SDS


@lru_cache(maxsize=4)
def _alphas_cumprod(num_steps: int, beta_start: float, beta_end: float) -> Tensor:
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(
        num_train_timesteps=num_steps, beta_start=beta_start, beta_end=beta_end, beta_schedule="scaled_linear"
    )
    return sched.alphas_cumprod.clone()


def noise_schedule(num_steps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012) -> Tensor:
    """ᾱ_t of the SD-2 scaled-linear schedule (diffusers' own table; DDIM and DDPM share it)."""
    return _alphas_cumprod(num_steps, beta_start, beta_end).clone()


def add_noise(x0: Tensor, noise: Tensor, alpha_bar: float | None = None) -> Tensor:
    """Forward diffusion to the student's timestep, `sqrt(ᾱ) x0 + sqrt(1 - ᾱ) ε` (at t = 999 almost pure ε).
    alpha_bar: ᾱ_999 of the model's schedule, a Python float so that no call reads it from the device;
    None: the SD-2 schedule's."""
    ab = float(noise_schedule()[TIMESTEP]) if alpha_bar is None else alpha_bar
    return ab**0.5 * x0 + (1 - ab) ** 0.5 * noise


def difference_map(d_tilde: Tensor, d_n: Tensor, fit_first: bool = False, eps: float = 1e-4) -> Tensor:
    """Per-pixel disagreement in [0, 1] between the affine pass d̃ and normalised metric depth d_n.

    Both [B, 1, H, W] in normalised depth space. `fit_first` is the paper's variant: d̃ is first
    least-squares scaled and shifted onto d_n (the reference code skips this); where that fit is not
    usable d̃ is taken as it is. An image whose maximum difference is below `eps` (rounding noise in
    a [-1, 1] range, which dividing by the max would blow up to 1) gets e = 0: full agreement.
    """
    if fit_first:
        fit = fit_scale_shift(d_tilde, d_n)
        d_tilde = torch.where(fit.usable.view(-1, 1, 1, 1), apply_scale_shift(d_tilde, fit), d_tilde)
    return _by_image_max((d_tilde - d_n).abs(), eps)


def latent_difference(z_a: Tensor, z_d: Tensor, eps: float = 1e-6) -> Tensor:
    """ê straight from the latents, no decode: channel-mean |ẑ_a - z_d| on the latent grid, divided
    by its per-image maximum (an image with no difference gets 0). A cheaper stand-in for the
    decoded difference map; bench/difference_accuracy.py measures what it costs in accuracy."""
    return _by_image_max((z_a.float() - z_d.float()).abs().mean(dim=1, keepdim=True), eps)


def _by_image_max(e: Tensor, eps: float) -> Tensor:
    """e divided by its per-image maximum, in [0, 1]; an image whose maximum is below `eps` gets 0."""
    e_max = e.flatten(1).amax(dim=1).view(-1, 1, 1, 1)
    return torch.where(e_max < eps, torch.zeros_like(e), e / e_max.clamp_min(eps)).clamp(0, 1)


def downsample_to_latent(e: Tensor, latent_hw: tuple[int, int]) -> Tensor:
    """ê: nearest downsampling of e to the latent grid (one channel, broadcast over latent channels)."""
    return F.interpolate(e, size=tuple(latent_hw), mode="nearest")


def gate(z_d: Tensor, e_hat: Tensor, noisy: Tensor) -> Tensor:
    """Noise-aware gating `ê ⊙ noisy + (1 - ê) ⊙ z_d`: ê = 0 keeps z_d, ê = 1 gives the noise term."""
    e_hat = e_hat.to(z_d.dtype)
    return e_hat * noisy + (1 - e_hat) * z_d
