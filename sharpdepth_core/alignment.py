"""Masked, weighted least-squares scale and shift: aligns affine-invariant depth to metric depth."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class ScaleShift:
    """A per-image fit `target ≈ scale * pred + shift`; `usable` says whether to trust it."""

    scale: Tensor  # [B]
    shift: Tensor  # [B]
    usable: Tensor  # [B] bool: enough pixels, finite, positive scale
    count: Tensor  # [B] number of pixels that entered the fit


def fit_scale_shift(
    pred: Tensor,
    target: Tensor,
    mask: Tensor | None = None,
    weight: Tensor | None = None,
    min_pixels: int = 16,
) -> ScaleShift:
    """Closed-form weighted LSQ of `min Σ w (s·pred + b - target)²` per image, batched.

    pred, target, mask, weight: [B, ...] with matching shapes. Non-finite pixels of either input are
    excluded. The 2x2 normal equations are solved in float64 for stability on large depth ranges.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    p = pred.flatten(1).double()
    t = target.flatten(1).double()
    valid = torch.isfinite(p) & torch.isfinite(t)
    if mask is not None:
        valid &= mask.flatten(1).bool()
    w = valid.double() if weight is None else weight.flatten(1).double() * valid
    w = torch.nan_to_num(w.clamp_min(0))
    p = torch.where(valid, p, 0)
    t = torch.where(valid, t, 0)
    sw, sp, st = w.sum(1), (w * p).sum(1), (w * t).sum(1)
    spp, spt = (w * p * p).sum(1), (w * p * t).sum(1)
    det = sw * spp - sp * sp
    ok_det = det.abs() > 1e-12 * (sw * spp).clamp_min(1e-300)
    det_safe = torch.where(ok_det, det, torch.ones_like(det))
    scale = (sw * spt - sp * st) / det_safe
    shift = (st - scale * sp) / torch.where(sw > 0, sw, torch.ones_like(sw))
    count = valid.sum(1)
    usable = ok_det & (count >= min_pixels) & torch.isfinite(scale) & torch.isfinite(shift) & (scale > 0)
    dtype = pred.dtype if pred.is_floating_point() else torch.float32
    return ScaleShift(scale.to(dtype), shift.to(dtype), usable, count)


def apply_scale_shift(pred: Tensor, fit: ScaleShift) -> Tensor:
    """`scale * pred + shift`, broadcasting the per-image fit over the remaining dims."""
    shape = (-1,) + (1,) * (pred.ndim - 1)
    return pred * fit.scale.view(shape).to(pred.dtype) + fit.shift.view(shape).to(pred.dtype)
