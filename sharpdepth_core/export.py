"""Export of the three networks a SharpDepth frame runs: the student UNet, the VAE encoder and the VAE
decoder (docs/METHOD.md, "Cost of a frame"), as ONNX graphs for onnxruntime and TensorRT, or as
AOTInductor packages (compiled ahead of time: a node starts in seconds, not after minutes of
torch.compile).

Graphs (inputs and outputs float32 whatever the precision inside, so every runtime feeds them alike):
- `unet.onnx`: x [B, 8, h, w] = concat(z_img, z_depth) -> x0 latent [B, 4, h, w]; t = 999, the
  empty-prompt embedding and the task embedding are folded in as constants.
- `vae_encoder.onnx`: x [B, 3, H, W] in [-1, 1] (2·rgb - 1, or d_n on 3 channels) -> posterior mean
  latent times the scaling factor [B, 4, H/8, W/8].
- `vae_decoder.onnx`: latent [B, 4, h, w] -> normalised depth [B, 1, 8h, 8w] (mean of the 3 channels).
`<graph>.pt2` (AOTInductor): the same three modules through `torch.export` and
`torch._inductor.aoti_compile_and_package`, for one (batch, grid) shape and one device type.
`export.json` (the manifest) records its format (onnx / aoti), precision, shapes and a SHA-256 per
file; a package is native code, so `AotiEngine` loads none whose bytes differ from that hash. A graph over 2 GB
keeps its weights in one `<graph>.onnx.data` file beside it. It also records what a user of the export
must match (`check_export_matches`): for a fixed grid, the camera size and processing_res it was made
for, and the SHA-256 of the exported student's weight files, so that a node started with another
processing_res or another model fails at start-up with one line instead of dropping every frame.

Exporter: `torch.onnx.export(..., dynamo=False)` (TorchScript tracing). On torch 2.13 the dynamo
exporter needs onnxscript (not a dependency here) and, tried with it, took ~40× longer on the tiny UNet
and specialised the batch dimension. Tracing records Python control flow once, so a dynamic-shape
UNet is traced at a latent size that is *not* a multiple of its upsampling factor: diffusers then
passes explicit upsample sizes, which the graph computes from the skip tensors at run time and which
are correct for every size.
"""
from __future__ import annotations

import copy
import hashlib
import json
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from .files import RECORD_SUFFIX, TEMP_PREFIX, Extra, is_recorded, replacing_dir
from .models.hub import to_dtype
from .models.student import DiffusionDepthModel, StudentUNet, vae_dtype

GRAPHS = ("unet", "vae_encoder", "vae_decoder")
FORMATS = {"onnx": "onnx", "aoti": "pt2"}  # export.json's format -> the graphs' file suffix
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16}
MANIFEST = "export.json"
# What an earlier ONNX export folder may hold besides the graphs and the manifest: the TensorRT engine
# cache (`TensorRTEngine`'s default place: engine plans named by `EngineKey.filename`, each with the
# record of its hash that proves the project built it, nothing else) and the external weights file of a
# graph over 2 GB.
EXPORT_EXTRAS = (
    Extra("tensorrt", files=tuple(p for g in GRAPHS for p in (f"{g}-*.plan", f"{g}-*.plan{RECORD_SUFFIX}")), owned=is_recorded),
    *(Extra(f"{g}.onnx.data") for g in GRAPHS),
)
FORMAT_EXTRAS = {"onnx": EXPORT_EXTRAS, "aoti": ()}
OPSET = 17
AOTI_SHAPE_KEY = "sharpdepth_input_shape"  # an AOTI package's own record of the one input shape it was compiled for
FORMAT_VERSION = 1
PROTOBUF_LIMIT = 2**31 - 2**20  # a little under protobuf's 2 GB: beyond it the weights go to .onnx.data


class VaeEncoder(nn.Module):
    """`x [B, 3, H, W]` in [-1, 1] -> posterior mean latent × scaling factor (DepthCodec's arithmetic)."""

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae

    def forward(self, x: Tensor) -> Tensor:
        z = self.vae.encode(x.to(self.vae.dtype)).latent_dist.mode()
        return z.float() * float(self.vae.config.scaling_factor)


class VaeDecoder(nn.Module):
    """Latent -> normalised depth [B, 1, H, W]: decode z / scaling, mean of the 3 channels (DepthCodec's arithmetic)."""

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae

    def forward(self, z: Tensor) -> Tensor:
        x = self.vae.decode(z.to(self.vae.dtype) / float(self.vae.config.scaling_factor)).sample
        return x.float().mean(dim=1, keepdim=True)


@dataclass
class GraphInfo:
    file: str
    precision: str  # "fp32" / "fp16": the weights' and arithmetic's dtype inside the graph
    input: str
    output: str
    input_channels: int
    latent_input: bool  # the input is on the latent grid (h, w) rather than the image grid (H, W)
    sha256: str = ""
    external_data: str | None = None


@dataclass
class ExportManifest:
    """What an export folder holds; engines read it instead of guessing from the files."""

    graphs: dict[str, GraphInfo]
    image_hw: tuple[int, int] | None  # fixed processing grid (padded), or None for dynamic H/W
    batch: int | None  # fixed batch, or None for dynamic
    downsample_factor: int
    latent_channels: int
    scaling_factor: float
    opset: int | None = OPSET  # ONNX only
    exporter: str = "torch.onnx.export (TorchScript tracing)"
    versions: dict[str, str] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    input_hw: tuple[int, int] | None = None  # the camera size a fixed grid was planned for
    processing_res: int | None = None  # the processing_res a fixed grid was planned with
    student_sha256: str | None = None  # `student_weights_sha256` of the exported student, when known
    format: str = "onnx"  # a key of FORMATS; manifests written before AOTI have no such field: onnx
    device: str | None = None  # aoti: the device type the packages were compiled for

    def input_shape(self, graph: str) -> tuple[int | None, ...]:
        """The graph's input shape; None where the dimension is dynamic."""
        info = self.graphs[graph]
        hw = self.image_hw
        if hw is not None and info.latent_input:
            hw = (hw[0] // self.downsample_factor, hw[1] // self.downsample_factor)
        return (self.batch, info.input_channels, *(hw or (None, None)))

    def save(self, folder: Path) -> None:
        (folder / MANIFEST).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, folder: str | Path) -> "ExportManifest":
        path = Path(folder) / MANIFEST
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no export manifest; run `sharpdepth export` to create the folder")
        try:
            raw = json.loads(path.read_text())
            if not isinstance(raw, dict) or raw.get("format_version") != FORMAT_VERSION:
                raise ValueError(f"format_version {raw.get('format_version') if isinstance(raw, dict) else None!r}, expected {FORMAT_VERSION}")
            _check_fields(raw, _MANIFEST_FIELDS, required=("graphs", "image_hw", "batch", "downsample_factor", "latent_channels", "scaling_factor"))
            for name, g in raw["graphs"].items():
                _check_fields(g, _GRAPH_FIELDS, required=("file", "precision", "input", "output", "input_channels", "latent_input"), where=f"graphs.{name}.")
            raw["graphs"] = {name: GraphInfo(**g) for name, g in raw["graphs"].items()}
            raw["image_hw"] = tuple(raw["image_hw"]) if raw["image_hw"] else None
            raw["input_hw"] = tuple(raw["input_hw"]) if raw.get("input_hw") else None
            manifest = cls(**raw)
        except (ValueError, TypeError, KeyError, RecursionError) as exc:
            raise ValueError(f"{path}: not a usable export manifest ({exc}); export again") from exc
        missing = [g for g in GRAPHS if g not in manifest.graphs or not (Path(folder) / manifest.graphs[g].file).is_file()]
        if missing:
            raise FileNotFoundError(f"{Path(folder)}: export incomplete, missing {', '.join(missing)}; export again")
        return manifest


def _positive_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _hw(v) -> bool:
    return isinstance(v, list) and len(v) == 2 and all(_positive_int(x) for x in v)


def _file_name(v) -> bool:
    """A plain file name: the manifest never points outside its folder."""
    return isinstance(v, str) and v not in ("", ".", "..") and "/" not in v and "\\" not in v


# export.json's fields: (check, what it must be); unknown fields are refused by the dataclasses
_MANIFEST_FIELDS = {
    "graphs": (lambda v: isinstance(v, dict) and set(v) <= set(GRAPHS) and all(isinstance(g, dict) for g in v.values()),
               f"an object of graphs ({', '.join(GRAPHS)})"),
    "image_hw": (lambda v: v is None or _hw(v), "null or [H, W]"),
    "batch": (lambda v: v is None or _positive_int(v), "null or a positive integer"),
    "downsample_factor": (_positive_int, "a positive integer"),
    "latent_channels": (_positive_int, "a positive integer"),
    "scaling_factor": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < float("inf"), "a positive number"),
    "opset": (lambda v: v is None or _positive_int(v), "null or a positive integer"),
    "exporter": (lambda v: isinstance(v, str), "a string"),
    "versions": (lambda v: isinstance(v, dict) and all(isinstance(x, str) for x in v.values()), "an object of strings"),
    "format_version": (_positive_int, "a positive integer"),
    "input_hw": (lambda v: v is None or _hw(v), "null or [H, W]"),
    "processing_res": (lambda v: v is None or _positive_int(v), "null or a positive integer"),
    "student_sha256": (lambda v: v is None or isinstance(v, str), "null or a string"),
    "format": (lambda v: v in FORMATS, f"one of {', '.join(FORMATS)}"),
    "device": (lambda v: v is None or v in ("cpu", "cuda"), "null, cpu or cuda"),
}
_GRAPH_FIELDS = {
    "file": (_file_name, "a file name in the export folder"),
    "precision": (lambda v: v in PRECISIONS, f"one of {', '.join(PRECISIONS)}"),
    "input": (lambda v: isinstance(v, str), "a string"),
    "output": (lambda v: isinstance(v, str), "a string"),
    "input_channels": (_positive_int, "a positive integer"),
    "latent_input": (lambda v: isinstance(v, bool), "true or false"),
    "sha256": (lambda v: isinstance(v, str), "a string"),
    "external_data": (lambda v: v is None or _file_name(v), "null or a file name in the export folder"),
}


def _check_fields(raw, fields: dict, required: tuple[str, ...], where: str = "") -> None:
    """ValueError naming the first field of `raw` that is missing or not what `fields` says."""
    if not isinstance(raw, dict):
        raise ValueError(f"{where.rstrip('.') or 'the file'}: expected an object")
    for name in required:
        if name not in raw:
            raise ValueError(f"{where}{name}: missing")
    for name, value in raw.items():
        if name in fields and not fields[name][0](value):
            raise ValueError(f"{where}{name}: expected {fields[name][1]}, got {json.dumps(value)[:40]}")


def check_image_hw(hw, multiple: int) -> tuple[int, int]:
    """A processing grid (H, W): positive multiples of the VAE's downsampling factor."""
    try:
        h, w = (int(v) for v in hw)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"image size must be (H, W), got {hw!r}") from exc
    if h <= 0 or w <= 0 or h % multiple or w % multiple:
        raise ValueError(f"image size {h}x{w} must be positive multiples of {multiple} (the VAE's downsampling)")
    return h, w


def export_onnx(
    student: DiffusionDepthModel,
    folder: str | Path,
    precision: str = "fp32",
    vae_precision: str | None = None,
    image_hw: tuple[int, int] | None = None,
    batch: int | None = None,
    opset: int = OPSET,
    processing_res: int | None = None,
    input_hw: tuple[int, int] | None = None,
    student_sha256: str | None = None,
) -> ExportManifest:
    """Write unet.onnx, vae_encoder.onnx, vae_decoder.onnx and export.json to `folder`, replacing an
    earlier ONNX export there (never a folder holding anything else: `models.hub.replacing_dir`).

    precision: the UNet's ("fp32" or "fp16"). vae_precision: the VAE's; by default the UNet's, except
    that fp16 keeps the VAE in fp32 when its config asks for upcasting (SD-2's VAE overflows in fp16).
    image_hw: a fixed padded processing grid (H, W) or None for dynamic H/W; batch: fixed or None.
    processing_res, input_hw, student_sha256: recorded for `check_export_matches` (the grid's
    processing_res and camera size; `student_weights_sha256` of the student's folder).
    The student is not modified (reduced-precision graphs are traced from copies).
    """
    graphs, manifest = _export_plan(student, "onnx", precision, vae_precision, image_hw, batch, processing_res, input_hw, student_sha256)
    manifest.opset = opset
    trace_hw = manifest.image_hw or _general_trace_hw(student)
    with replacing_dir(folder, also=EXPORT_EXTRAS) as tmp, torch.no_grad():
        for name, (module, info) in graphs.items():
            example = _example(manifest, info, trace_hw, student.device)
            _export_graph(module.eval(), example, tmp / info.file, info, dynamic_hw=image_hw is None, dynamic_batch=batch is None, opset=opset)
            manifest.graphs[name] = info
        manifest.save(tmp)
    return manifest


def export_aoti(
    student: DiffusionDepthModel,
    folder: str | Path,
    image_hw: tuple[int, int],
    batch: int = 1,
    precision: str = "fp32",
    vae_precision: str | None = None,
    processing_res: int | None = None,
    input_hw: tuple[int, int] | None = None,
    student_sha256: str | None = None,
) -> ExportManifest:
    """Write unet.pt2, vae_encoder.pt2, vae_decoder.pt2 (AOTInductor packages) and export.json to
    `folder`, replacing an earlier AOTI export there (as `export_onnx`, whose arguments these are).

    A package is compiled for exactly one input shape (`batch`, the padded grid `image_hw`) and the
    device type the student is on; the compile (C++ or CUDA code generation, a minute for the tiny
    models on one CPU core) happens here once instead of at every node start.
    """
    if image_hw is None or not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise ValueError(f"an AOTInductor export is for one (batch, grid) shape: give image_hw and a positive batch, got {image_hw!r}, {batch!r}")
    from torch._inductor import aoti_compile_and_package

    graphs, manifest = _export_plan(student, "aoti", precision, vae_precision, image_hw, batch, processing_res, input_hw, student_sha256)
    manifest.opset, manifest.exporter, manifest.device = None, "torch.export + AOTInductor", student.device.type
    with replacing_dir(folder) as tmp, torch.no_grad(), warnings.catch_warnings():
        # torch's own pytree deprecation, raised inside the packager: nothing this code can change
        warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning)
        for name, (module, info) in graphs.items():
            example = _example(manifest, info, manifest.image_hw, student.device)
            program = torch.export.export(module.eval(), (example,), strict=False)
            # The shape goes into the package itself: export.json can be edited, the hashed package cannot.
            metadata = {AOTI_SHAPE_KEY: shape_text(tuple(example.shape))}
            aoti_compile_and_package(program, package_path=str(tmp / info.file), inductor_configs={"aot_inductor.metadata": metadata})
            info.sha256 = _sha256(tmp / info.file)
            manifest.graphs[name] = info
        manifest.save(tmp)
    return manifest


def shape_text(shape: tuple[int | None, ...]) -> str:
    """A graph's input shape as the manifest and the messages write it: 1x3x96x128 (? for a dynamic axis)."""
    return "x".join("?" if s is None else str(s) for s in shape)


def _export_plan(student, fmt, precision, vae_precision, image_hw, batch, processing_res, input_hw, student_sha256):
    """The arguments both exporters take, checked: the modules to export (of the student, or of a
    converted copy) with their GraphInfo, and the manifest to fill in."""
    if not isinstance(student, DiffusionDepthModel):
        raise ValueError(f"export needs a DiffusionDepthModel, got {type(student).__name__}")
    for name, p in (("precision", precision), ("vae_precision", vae_precision)):
        if p is not None and p not in PRECISIONS:
            raise ValueError(f"{name} {p!r} is not one of {', '.join(PRECISIONS)}")
    if batch is not None and (not isinstance(batch, int) or batch < 1):
        raise ValueError(f"batch must be a positive integer or None (dynamic), got {batch!r}")
    if vae_precision is None:
        upcast = bool(student.vae.config.get("force_upcast", True))
        vae_precision = "fp32" if vae_dtype(PRECISIONS[precision], upcast) == torch.float32 else precision
    factor = student.codec.downsample_factor
    if image_hw is not None:
        image_hw = check_image_hw(image_hw, factor)
    model = _converted(student.eval(), PRECISIONS[precision], PRECISIONS[vae_precision])
    c, suffix = int(student.vae.config.latent_channels), FORMATS[fmt]
    graphs = {
        "unet": (StudentUNet(model), GraphInfo(f"unet.{suffix}", precision, "x", "x0", 2 * c, True)),
        "vae_encoder": (VaeEncoder(model.vae), GraphInfo(f"vae_encoder.{suffix}", vae_precision, "x", "latent", 3, False)),
        "vae_decoder": (VaeDecoder(model.vae), GraphInfo(f"vae_decoder.{suffix}", vae_precision, "latent", "depth", c, True)),
    }
    manifest = ExportManifest(
        graphs={},
        image_hw=image_hw,
        batch=batch,
        downsample_factor=factor,
        latent_channels=c,
        scaling_factor=float(student.vae.config.scaling_factor),
        versions=_versions(),
        input_hw=tuple(input_hw) if input_hw else None,
        processing_res=processing_res,
        student_sha256=student_sha256,
        format=fmt,
    )
    return graphs, manifest


def _example(manifest: ExportManifest, info: GraphInfo, image_hw: tuple[int, int], device: torch.device) -> Tensor:
    """A seeded input of the graph's shape at `image_hw` (the latent grid for latent inputs)."""
    f = manifest.downsample_factor
    hw = (image_hw[0] // f, image_hw[1] // f) if info.latent_input else image_hw
    return torch.randn(manifest.batch or 1, info.input_channels, *hw, generator=torch.Generator().manual_seed(0)).to(device)


def student_weights_sha256(folder: str | Path) -> str:
    """SHA-256 of a student folder's UNet and VAE weight files (names and bytes): identifies the model
    whatever dtype or device it is later loaded in."""
    folder = Path(folder)
    h = hashlib.sha256()
    for path in sorted(folder.glob("unet/*.safetensors")) + sorted(folder.glob("vae/*.safetensors")):
        h.update(path.relative_to(folder).as_posix().encode() + b"\0")
        h.update(bytes.fromhex(_sha256(path)))
    return h.hexdigest()


def check_export_matches(manifest: ExportManifest, folder: str | Path, processing_res: int | None, student_sha256=None) -> None:
    """ValueError (one line) when an export cannot serve this pipeline: a fixed grid planned for another
    processing_res, or the graphs of another student. student_sha256: the loaded student's
    `student_weights_sha256`, or a function returning it (called only when the manifest has one)."""
    if manifest.image_hw is not None and manifest.processing_res is not None and manifest.processing_res != processing_res:
        h, w = manifest.input_hw or (None, None)
        camera = f" for {w}x{h} camera images" if h else ""
        raise ValueError(
            f"export {folder} has a fixed {manifest.image_hw[0]}x{manifest.image_hw[1]} (HxW) grid made with processing_res "
            f"{manifest.processing_res}{camera}, but the pipeline runs at processing_res {processing_res}: set processing_res "
            f"to {manifest.processing_res}, or export again with --processing-res {processing_res}"
        )
    if manifest.student_sha256 and student_sha256 is not None:
        actual = student_sha256() if callable(student_sha256) else student_sha256
        if actual != manifest.student_sha256:
            raise ValueError(
                f"export {folder} is of another student model (weights SHA-256 {manifest.student_sha256[:12]} in {MANIFEST}, "
                f"{actual[:12]} loaded): export this model again with `sharpdepth export`"
            )


def _converted(student: DiffusionDepthModel, unet_dtype: torch.dtype, vae_dtype_: torch.dtype) -> DiffusionDepthModel:
    """The student itself when its dtypes already match, else a converted copy (the caller's model stays as it is)."""
    if student.unet.dtype == unet_dtype and student.vae.dtype == vae_dtype_:
        return student
    other = copy.deepcopy(student)
    to_dtype(other.unet, unet_dtype)
    to_dtype(other.vae, vae_dtype_)
    return other


def _general_trace_hw(student: DiffusionDepthModel) -> tuple[int, int]:
    """An image size whose latent is not divisible by the UNet's total upsampling (so the traced graph
    carries explicit, shape-derived upsample sizes) and has different H and W (catches axis mix-ups)."""
    up = 2 ** sum(1 for b in student.unet.up_blocks if getattr(b, "upsamplers", None))
    f = student.codec.downsample_factor
    return ((up + 1) * f, (2 * up + 1) * f)


def _export_graph(module: nn.Module, example: Tensor, path: Path, info: GraphInfo, dynamic_hw: bool, dynamic_batch: bool, opset: int) -> None:
    axes = {**({0: "batch"} if dynamic_batch else {}), **({2: "height", 3: "width"} if dynamic_hw else {})}
    staging = path.parent / f"{TEMP_PREFIX}{path.stem}.staging"  # inside replacing_dir's scratch folder
    staging.mkdir()
    staged = staging / path.name
    with warnings.catch_warnings():
        # Tracer warnings name shape checks that become constants: the trace-size choice above covers them.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")
        warnings.filterwarnings("ignore", message="The feature will be removed", category=DeprecationWarning)
        torch.onnx.export(
            module,
            (example,),
            str(staged),
            dynamo=False,
            input_names=[info.input],
            output_names=[info.output],
            dynamic_axes={info.input: axes, info.output: axes} if axes else None,
            opset_version=opset,
            do_constant_folding=True,
        )
    if len(list(staging.iterdir())) > 1:  # the exporter wrote one file per tensor (> 2 GB): gather them
        info.external_data = _single_data_file(staged, path)
    else:
        staged.rename(path)
    for leftover in staging.iterdir():
        leftover.unlink()
    staging.rmdir()
    info.sha256 = _sha256(path, path.parent / info.external_data if info.external_data else None)


def _single_data_file(src: Path, dst: Path) -> str:
    """Re-save an ONNX model whose weights are scattered over external files with all weights in one
    `<name>.data` file beside `dst`; returns that file's name."""
    import onnx

    model = onnx.load(str(src), load_external_data=True)
    location = dst.name + ".data"
    onnx.save_model(model, str(dst), save_as_external_data=True, all_tensors_to_one_file=True, location=location, size_threshold=1024)
    return location


def _sha256(*paths: Path | None) -> str:
    h = hashlib.sha256()
    for p in paths:
        if p is None:
            continue
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 24), b""):
                h.update(chunk)
    return h.hexdigest()


def _versions() -> dict[str, str]:
    import diffusers

    return {"torch": torch.__version__, "diffusers": diffusers.__version__}
