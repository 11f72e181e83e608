"""Per-image min/max depth normalisation to [-1, 1], the space both teachers and the student share."""
from __future__ import annotations

import torch
from torch import Tensor


def normalize_depth(depth: Tensor, eps: float = 1e-6, check: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """`d_n = 2 (d - min) / (max - min) - 1` per image over all pixels, clipped to [-1, 1].

    depth: [B, 1, H, W] (or [B, C, H, W]; min/max are taken per image over C, H, W).
    Returns (d_n, d_min, d_max) with d_min/d_max shaped [B, 1, 1, 1] for `denormalize_depth`.
    Constant depth (max - min < eps) maps to 0 everywhere, the midpoint, rather than dividing by 0.
    Non-finite input raises: a NaN here would silently poison every later stage. check=False skips
    that test, which waits for the device: for callers that test the input themselves later (the
    pipeline reports it with the frame's result).
    """
    if depth.ndim != 4:
        raise ValueError(f"depth must be [B, C, H, W], got shape {tuple(depth.shape)}")
    if check and not torch.isfinite(depth).all():
        raise ValueError("depth contains NaN or inf; cannot normalise")
    flat = depth.flatten(1)
    d_min = flat.amin(dim=1).view(-1, 1, 1, 1)
    d_max = flat.amax(dim=1).view(-1, 1, 1, 1)
    span = d_max - d_min
    safe = torch.where(span < eps, torch.ones_like(span), span)
    d_n = torch.where(span < eps, torch.zeros_like(depth), 2 * (depth - d_min) / safe - 1)
    return d_n.clamp(-1, 1), d_min, d_max


def denormalize_depth(d_n: Tensor, d_min: Tensor, d_max: Tensor) -> Tensor:
    """Inverse of `normalize_depth` (for a constant image it returns that constant)."""
    return (d_n + 1) / 2 * (d_max - d_min) + d_min
