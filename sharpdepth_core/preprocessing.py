"""Processing resolution: resize so the longer edge matches, replicate-pad to a multiple of 8, undo.

The same arithmetic as the reference code's image processor (diffusers 0.28's Marigold processor):
grid size by floor division `h * R // max(h, w)`, bilinear with antialias on the way in, bottom/right
replicate padding, and bilinear *without* antialias on the way back to the input size.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor



@dataclass(frozen=True)
class Resize:
    """How an input was mapped to the processing grid, so the mapping can be undone exactly."""

    input_hw: tuple[int, int]
    resized_hw: tuple[int, int]  # after the resize, before padding
    padded_hw: tuple[int, int]  # after bottom/right replicate padding

    @property
    def scale(self) -> tuple[float, float]:
        """(sx, sy): resized / input size along x and y."""
        return self.resized_hw[1] / self.input_hw[1], self.resized_hw[0] / self.input_hw[0]


def plan_resize(input_hw: tuple[int, int], processing_res: int | None, multiple: int = 8) -> Resize:
    """Longer edge -> processing_res (None keeps the size), then pad bottom/right to a multiple.

    Floor division as the reference: 375x1242 at 768 is 231x768 (rounding would give 232)."""
    h, w = (int(v) for v in input_hw)
    if h <= 0 or w <= 0:
        raise ValueError(f"image size must be positive, got {h}x{w}")
    if processing_res:
        rh, rw = max(1, h * processing_res // max(h, w)), max(1, w * processing_res // max(h, w))
    else:
        rh, rw = h, w
    ph, pw = -(-rh // multiple) * multiple, -(-rw // multiple) * multiple
    return Resize((h, w), (rh, rw), (ph, pw))


def resize_and_pad(x: Tensor, processing_res: int | None, multiple: int = 8) -> tuple[Tensor, Resize]:
    """[B, C, H, W] -> processing grid. Bilinear with antialias (no torchvision), replicate padding."""
    plan = plan_resize(tuple(x.shape[-2:]), processing_res, multiple)
    return to_grid(x, plan), plan


def to_grid(x: Tensor, plan: Resize) -> Tensor:
    """[B, C, H, W] at plan.input_hw -> the processing grid of `plan` (see `resize_and_pad`)."""
    if plan.resized_hw != plan.input_hw:
        x = F.interpolate(x, size=plan.resized_hw, mode="bilinear", align_corners=False, antialias=True)
    pad_h = plan.padded_hw[0] - plan.resized_hw[0]
    pad_w = plan.padded_hw[1] - plan.resized_hw[1]
    if pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
    return x


def unpad_and_resize(x: Tensor, plan: Resize) -> Tensor:
    """Inverse of `resize_and_pad`: crop the padding, resize back to the input size (bilinear, no
    antialias, as the reference; it differs from antialiased only where the grid is the larger)."""
    x = x[..., : plan.resized_hw[0], : plan.resized_hw[1]]
    if plan.resized_hw != plan.input_hw:
        x = F.interpolate(x, size=plan.input_hw, mode="bilinear", align_corners=False)
    return x
