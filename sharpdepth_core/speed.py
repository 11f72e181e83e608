"""Speed: the presets `exact`, the reference computation, and `fast`, every cheaper setting whose
measured accuracy cost on trained models stays within BUDGET; the PyTorch speed options (`FastPath`);
and `resolve`, which turns a preset and a device into the pipeline's settings. The front ends
(`predict --speed`, the node's `speed` parameter) offer the two presets; docs/METHOD.md ("Speed
presets") prints what each setting costs, so that a user chooses knowingly.

What `fast` contains was decided by `bench/speed_accuracy.py --split val` on the embedded trained
models, on validation scenes (bench/speed_accuracy_val.json; a test keeps FAST and that file in step);
the figures users read are the held-out scenes' (bench/speed_accuracy.json).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # light to import (the CLI's --help reads SPEEDS): torch only where it is used
    import torch

SPEEDS = ("exact", "fast")
# the most a fast setting may add to the exact path's error, relative to it (lower is better for all three)
BUDGET = {"abs_rel": 0.02, "dbe_acc": 0.05, "dbe_compl": 0.05}
BUDGET_TEXT = f"+{BUDGET['abs_rel']:.0%} AbsRel and +{max(BUDGET['dbe_acc'], BUDGET['dbe_compl']):.0%} DBE"  # for help texts


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


@dataclass(frozen=True)
class FastPath:
    """Speed options of the PyTorch path. None of them changes the algorithm; reduced precision
    changes the numbers (bench/speed_accuracy.py measures by how much on trained models).

    dtype / vae_dtype: the UNet's and the metric model's / the VAE's weights and arithmetic (None keeps
    them as loaded).
    channels_last: NHWC activations (faster convolutions on tensor cores).
    compile: torch.compile the pipeline's whole frame with fullgraph=True and static shapes
    (compile_backend "inductor"; "eager" only traces, which is how the CPU tests check that a frame
    compiles without graph breaks or host synchronisations: inductor's C++ code generation takes
    minutes on CPU).
    cuda_graphs: capture the frame once per input shape and replay it (CUDA only): one launch per
    frame instead of thousands of kernel launches.
    """

    dtype: torch.dtype | None = None
    vae_dtype: torch.dtype | None = None
    channels_last: bool = False
    compile: bool = False
    compile_backend: str = "inductor"
    cuda_graphs: bool = False


@dataclass(frozen=True)
class Settings:
    """What a pipeline runs: its `difference` and `depth_encoder` methods and the PyTorch `fast` options."""

    difference: str
    depth_encoder: str
    fast: FastPath | None


def preset(speed: str) -> Preset:
    if speed not in SPEEDS:
        raise ValueError(f"speed must be one of {', '.join(SPEEDS)}, got {speed!r}")
    return FAST if speed == "fast" else EXACT


def fast_path(choice: Preset, device: str | torch.device) -> FastPath | None:
    """The PyTorch speed options of a preset on a device. Only CUDA gets them: bf16 helps a CPU only where it
    has native bf16 (on one without, it ran 4.3x slower than fp32: bench/RESULTS.md) and inductor
    compiles for minutes on a CPU, so a CPU runs the preset's cheaper algorithm in fp32, eagerly."""
    import torch

    if torch.device(device).type != "cuda" or not (choice.bf16 or choice.compiled):
        return None
    dtype = torch.bfloat16 if choice.bf16 else None
    return FastPath(dtype, dtype, channels_last=choice.bf16, compile=choice.compiled, cuda_graphs=choice.compiled)


def resolve(speed: str, device: str | torch.device, light_folder: Path | None, *, exported: bool = False,
            difference: str | None = None, depth_encoder: str | None = None, fast: FastPath | None = None) -> Settings:
    """The settings of preset `speed` on `device`; explicit choices win. A light network the preset names
    but `light_folder` lacks is left out with a warning (the exact method runs instead). An exported engine
    (`exported`) has its own precision: the preset's PyTorch options do not apply to it."""
    from .models.light_decoder import LIGHT_DECODER_DIR
    from .models.light_encoder import LIGHT_ENCODER_DIR

    choice = preset(speed)

    def part(wanted: str, folder: str, instead: str) -> str:
        if wanted != "light" or (light_folder is not None and (light_folder / folder).is_dir()):
            return wanted
        warnings.warn(f"speed {speed}: the pipeline folder has no {folder}/, so that part of the preset runs as {instead}",
                      RuntimeWarning, stacklevel=4)  # the caller of from_pretrained
        return instead

    return Settings(
        difference=difference or part(choice.difference, LIGHT_DECODER_DIR, "exact"),
        depth_encoder=depth_encoder or part(choice.depth_encoder, LIGHT_ENCODER_DIR, "vae"),
        fast=None if exported else fast if fast is not None else fast_path(choice, device),
    )
