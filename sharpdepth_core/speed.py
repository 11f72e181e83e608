"""Speed presets: `exact`, the reference computation, and `fast`, every cheaper setting whose measured
accuracy cost on trained models stays within BUDGET (issue 20, part 3). The front ends (`predict
--speed`, the node's `speed` parameter) offer these two; docs/METHOD.md ("Speed presets") prints
what each setting costs, so that a user chooses knowingly.

What `fast` contains was decided by `bench/speed_accuracy.py --split val` on the embedded trained
models, on validation scenes (bench/speed_accuracy_val.json; a test keeps FAST and that file in step);
the figures users read are the held-out scenes' (bench/speed_accuracy.json).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # light to import (the CLI's --help reads SPEEDS): torch only where it is used
    import torch

    from .engines import FastPath

SPEEDS = ("exact", "fast")
# the most a fast setting may add to the exact path's error, relative to it (lower is better for all three)
BUDGET = {"abs_rel": 0.02, "dbe_acc": 0.05, "dbe_compl": 0.05}


@dataclass(frozen=True)
class Preset:
    """difference: how e is made (pipeline `difference`); depth_encoder: what encodes f_D's depth ("vae" or
    the pipeline folder's light encoder, "light"); bf16 / compiled: the GPU fast path (FastPath)."""

    difference: str = "exact"
    depth_encoder: str = "vae"
    bf16: bool = False
    compiled: bool = False


EXACT = Preset()
FAST = Preset(difference="latent", depth_encoder="light", bf16=True, compiled=True)  # bench/speed_accuracy.py --split val


def preset(speed: str) -> Preset:
    if speed not in SPEEDS:
        raise ValueError(f"speed must be one of {', '.join(SPEEDS)}, got {speed!r}")
    return FAST if speed == "fast" else EXACT


def fast_path(choice: Preset, device: str | torch.device) -> FastPath | None:
    """The PyTorch speed options of a preset on a device. Only CUDA gets them: bf16 helps a CPU only where it
    has native bf16 (on one without, it ran 4.3x slower than fp32: bench/RESULTS.md) and inductor
    compiles for minutes on a CPU, so a CPU runs the preset's cheaper algorithm in fp32, eagerly."""
    import torch

    from .engines import FastPath

    if torch.device(device).type != "cuda" or not (choice.bf16 or choice.compiled):
        return None
    dtype = torch.bfloat16 if choice.bf16 else None
    return FastPath(dtype, dtype, channels_last=choice.bf16, compile=choice.compiled, cuda_graphs=choice.compiled)
