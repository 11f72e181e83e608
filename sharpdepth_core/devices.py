"""Device and precision names as the front ends accept them (auto, cpu, cuda, cuda:N, mps; float32,
fp16, ...), checked against this machine before any model loads, so that a missing GPU is one line
rather than torch's assertion from deep inside the first `.to()`."""
from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the name check alone needs no torch (front ends check arguments before importing it)
    import torch

# the precisions front ends accept (CLI --dtype, the node's dtype) -> torch's name for them
DTYPES = {"float32": "float32", "fp32": "float32", "float16": "float16", "fp16": "float16", "bfloat16": "bfloat16", "bf16": "bfloat16"}
DEVICE_NAME = re.compile(r"^(auto|cpu|mps|cuda)$|^cuda:(\d+)$")  # the device names front ends accept


class DeviceUnavailable(ValueError):
    """A well-formed device name this machine lacks. `reason` says why without a remedy, so that each
    front end (CLI option, node parameter) can name its own."""

    def __init__(self, name: str, reason: str, remedy: str | None = "use cpu"):
        super().__init__(f"device {name!r}: {reason}" + (f"; {remedy}" if remedy else ""))
        self.reason = reason


def check_device(name: str) -> torch.device:
    """A device name (auto, cpu, cuda, cuda:N, mps) as a torch.device that exists on this machine,
    checked before any model loads; ValueError (one line) otherwise, DeviceUnavailable for a
    device this machine lacks. auto: cuda when available."""
    m = DEVICE_NAME.match(str(name))
    if not m:
        raise ValueError(f"device {name!r}: expected auto, cpu, cuda, cuda:N or mps")
    import torch  # only now: a misspelt name is said without loading it

    kind = m[1] or "cuda"
    if kind == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if kind == "cuda":
        if not torch.cuda.is_available():
            why = "this PyTorch is built without CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise DeviceUnavailable(name, f"CUDA is not available here ({why})")
        count = torch.cuda.device_count()
        if m[2] is not None and int(m[2]) >= count:
            raise DeviceUnavailable(name, f"only {count} CUDA device(s) here (cuda:0 to cuda:{count - 1})", None)
    if kind == "mps" and not torch.backends.mps.is_available():
        raise DeviceUnavailable(name, "Apple MPS is not available here")
    return torch.device(name)


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of a precision name in DTYPES."""
    import torch

    return getattr(torch, DTYPES[name])
