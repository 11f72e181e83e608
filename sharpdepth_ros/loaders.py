"""The pipeline the depth node's parameters name, and the start-up line that says what loaded (a
mistyped parameter shows there). No ROS here: settings are a dict of the node's parameter values,
mapped one to one to `SharpDepthPipeline.from_pretrained`, where every pipeline is assembled."""
from __future__ import annotations

import gc
import time

import torch

from sharpdepth_core.devices import DeviceUnavailable, check_device, torch_dtype
from sharpdepth_core.embedded import EMBEDDED_DIR
from sharpdepth_core.pipeline import SharpDepthPipeline

def resolve_device(name: str) -> str:
    """The torch device to load on; a device this machine lacks is a one-line ValueError (a FATAL
    line at start-up), not torch's assertion from deep inside the first `.to()`."""
    try:
        return str(check_device(name))
    except DeviceUnavailable as exc:
        raise ValueError(f"device '{name}' is not available: {exc.reason}; use device:=cpu or auto") from None


def load_pipeline(settings: dict) -> SharpDepthPipeline:
    """A pipeline folder (default: the embedded models) or a student + metric backend, at the `speed`
    preset, its networks run by `engine` (an exported one from `engine_dir`: TensorRT plans build on
    first use unless prebuilt with `sharpdepth export --tensorrt`, AOTI packages were compiled at export;
    an export made for another grid or student is refused in one line instead of every frame)."""
    return SharpDepthPipeline.from_pretrained(
        None if settings["student"] else (settings["model"] or EMBEDDED_DIR),
        student=settings["student"] or None,
        metric=settings["metric_backend"] or None,
        metric_path=settings["metric_model"] or None,
        device=resolve_device(settings["device"]),
        dtype=torch_dtype(settings["dtype"]),
        processing_res=settings["processing_res"] or None,
        speed=settings["speed"],
        difference=settings["difference_map"] or None,
        engine=settings["engine"],
        engine_dir=settings["engine_dir"] or None,
        engine_cache=settings["engine_cache"] or None,
    )


def ready(settings: dict, pipeline, supplied: bool, logger) -> None:
    """Say what loaded (a warning for synthetic-scene or untrained models) and warm up a fixed-grid
    export on the camera size it records (building TensorRT plans, proving the export runs); PyTorch
    takes any size, so its first frame warms it up."""
    line, embedded = describe(settings, pipeline, supplied)
    (logger.warning if embedded else logger.info)(line)
    if getattr(pipeline, "untrained", False):
        logger.warning("UNTRAINED random-weight models: the depth means nothing, only the plumbing is real")
    manifest = getattr(getattr(pipeline, "engine", None), "manifest", None)
    if manifest is not None and manifest.image_hw is not None:
        h, w = manifest.input_hw or manifest.image_hw
        t0 = time.perf_counter()
        pipeline(torch.zeros(1, 3, h, w, dtype=torch.uint8), seed=0)
        logger.info(f"warmed up on {w}x{h} images in {time.perf_counter() - t0:.1f} s")


class MemoryFreed:
    """What a release gives back: resident memory (the CPU's), and CUDA's allocated memory where a GPU exists."""

    def __init__(self) -> None:
        self.rss, self.cuda = resident_mb(), _cuda_mb()

    def collect(self) -> str:
        """Collect what was let go (and empty CUDA's cache); the line that says how much it was."""
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        cuda = f"; CUDA allocated {self.cuda:.0f} -> {_cuda_mb():.0f} MB" if torch.cuda.is_available() else ""
        return f"resident memory {self.rss:.0f} -> {resident_mb():.0f} MB{cuda}"


def _cuda_mb() -> float:
    return torch.cuda.memory_allocated() / 2**20 if torch.cuda.is_available() else 0.0


def resident_mb() -> float:
    """This process's resident memory (VmRSS), MB."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def _speed_parts(pipeline) -> str:
    """What a preset turned on, as it ended up (a light network the folder lacks is left out)."""
    fast = getattr(pipeline, "fast", None)
    parts = [f"difference {getattr(pipeline, 'difference', '?')}", f"depth encoder {getattr(pipeline, 'depth_encoder', '?')}"]
    if fast is not None and fast.dtype is not None:
        parts.append(str(fast.dtype).removeprefix("torch."))
    if fast is not None and fast.compile:
        parts.append("compiled frame" + (" + CUDA graph" if fast.cuda_graphs else ""))
    return ", ".join(parts)


def _precision(pipeline) -> str:
    """The UNet's precision: the PyTorch student's dtype, or what the export recorded (no student is loaded then)."""
    student, manifest = getattr(pipeline, "student", None), getattr(getattr(pipeline, "engine", None), "manifest", None)
    if student is not None:
        return str(student.dtype).removeprefix("torch.")
    return f"{manifest.graphs['unet'].precision} (exported)" if manifest is not None else "unknown"


def describe(settings: dict, pipeline, supplied: bool) -> tuple[str, bool]:
    """The start-up line (what runs, where, at which grid) and whether its models know synthetic scenes
    only (the embedded models, or a student distilled from them)."""
    synthetic = bool(getattr(pipeline, "synthetic_only", False))
    if supplied:
        model = "a pipeline supplied in-process"
    elif settings["student"]:
        model = f"student {settings['student']}"
    elif settings["model"]:
        model = f"model {settings['model']}"
    else:
        model = f"the EMBEDDED synthetic-scene models ({EMBEDDED_DIR})"
    if synthetic:
        model += (" (distilled from the embedded synthetic-scene models)" if settings["student"] or settings["model"] else "")
        model += ": not for real cameras (set model or student to full-size models)"
    grid = settings["processing_res"] or getattr(pipeline, "processing_res", "unknown")  # the grid frames will use
    parts = [
        f"metric backend {getattr(getattr(pipeline, 'metric_model', None), 'name', 'unknown')}",
        f"device {getattr(pipeline, 'device', 'unknown')}",
        f"dtype {_precision(pipeline)}",
        f"processing grid {grid} px (longer edge)",
        f"speed {settings['speed']}" + (f" ({_speed_parts(pipeline)})" if settings["speed"] != "exact" else ""),
        f"engine {settings['engine']}" + (f" ({settings['engine_dir']})" if settings["engine_dir"] else ""),
        f"{torch.get_num_threads()} CPU thread(s)",
    ]
    return f"SharpDepth: {model}; " + ", ".join(parts), synthetic
