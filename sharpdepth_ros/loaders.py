"""The pipeline the depth node's parameters name: one loader per inference engine, and the start-up
line that says what loaded (a mistyped parameter shows there). No ROS here: settings are a dict of
the node's parameter values."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from sharpdepth_core.engines import DeviceUnavailable, FastPath, check_device, exported_engine
from sharpdepth_core.embedded import EMBEDDED_DIR
from sharpdepth_core.pipeline import SharpDepthPipeline

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_device(name: str) -> str:
    """The torch device to load on; a device this machine lacks is a one-line ValueError (a FATAL
    line at start-up), not torch's assertion from deep inside the first `.to()`."""
    try:
        return str(check_device(name))
    except DeviceUnavailable as exc:
        raise ValueError(f"device '{name}' is not available: {exc.reason}; use device:=cpu or auto") from None


def load_pytorch_pipeline(settings: dict, fast: FastPath | None = None) -> SharpDepthPipeline:
    """The PyTorch engine: `SharpDepthPipeline.from_pretrained` on a pipeline folder (default: the
    embedded models) or on a student + metric backend, at the `speed` preset (`fast`: instead of the
    preset's PyTorch options)."""
    device = resolve_device(settings["device"])
    return SharpDepthPipeline.from_pretrained(
        None if settings["student"] else (settings["model"] or EMBEDDED_DIR),
        student=settings["student"] or None,
        metric=settings["metric_backend"] or None,
        metric_path=settings["metric_model"] or None,
        device=device,
        dtype=DTYPES[settings["dtype"]],
        processing_res=settings["processing_res"] or None,
        speed=settings["speed"],
        difference=settings["difference_map"] or None,
        fast=fast,
    )


def load_exported_pipeline(settings: dict) -> SharpDepthPipeline:
    """onnx / tensorrt / aoti: the same pipeline, its networks run from a `sharpdepth export` folder
    (the metric model stays in PyTorch). TensorRT engines build on first use unless prebuilt
    (`sharpdepth export --tensorrt`), so the first frame may take minutes; AOTI packages are compiled
    at export. An export made for another processing grid or of another student is refused here, in
    one line, instead of every frame."""
    pipe = load_pytorch_pipeline(settings, fast=FastPath())  # the networks run as exported: the preset's algorithm only
    pipe.engine = exported_engine(
        settings["engine"],
        settings["engine_dir"] or None,
        settings["student"] or Path(settings["model"] or EMBEDDED_DIR) / "student",
        pipe.processing_res,
        device=pipe.device,
        cache_dir=settings["engine_cache"] or None,
    )
    return pipe


# The node's `engine` parameter -> loader(settings) -> callable(rgb uint8 HxWx3, K=..., seed=...,
# processing_res=...) -> SharpDepthOutput.
PIPELINE_LOADERS: dict[str, Callable[[dict], object]] = {
    "pytorch": load_pytorch_pipeline,
    "onnx": load_exported_pipeline,
    "tensorrt": load_exported_pipeline,
    "aoti": load_exported_pipeline,
}


def _speed_parts(pipeline) -> str:
    """What a preset turned on, as it ended up (a light network the folder lacks is left out)."""
    fast = getattr(pipeline, "fast", None)
    parts = [f"difference {getattr(pipeline, 'difference', '?')}", f"depth encoder {getattr(pipeline, 'depth_encoder', '?')}"]
    if fast is not None and fast.dtype is not None:
        parts.append(str(fast.dtype).removeprefix("torch."))
    if fast is not None and fast.compile:
        parts.append("compiled frame" + (" + CUDA graph" if fast.cuda_graphs else ""))
    return ", ".join(parts)


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
    student = getattr(pipeline, "student", None)
    grid = settings["processing_res"] or getattr(pipeline, "processing_res", "unknown")  # the grid frames will use
    parts = [
        f"metric backend {getattr(getattr(pipeline, 'metric_model', None), 'name', 'unknown')}",
        f"device {getattr(pipeline, 'device', 'unknown')}",
        f"dtype {str(getattr(student, 'dtype', 'unknown')).removeprefix('torch.')}",
        f"processing grid {grid} px (longer edge)",
        f"speed {settings['speed']}" + (f" ({_speed_parts(pipeline)})" if settings["speed"] != "exact" else ""),
        f"engine {settings['engine']}" + (f" ({settings['engine_dir']})" if settings["engine_dir"] else ""),
        f"{torch.get_num_threads()} CPU thread(s)",
    ]
    return f"SharpDepth: {model}; " + ", ".join(parts), synthetic
