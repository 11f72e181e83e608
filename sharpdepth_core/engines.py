"""Inference engines: the four network calls of a SharpDepth frame behind one small interface, so the
pipeline reads the same on PyTorch, onnxruntime, TensorRT and AOTInductor.

An engine has `unet(z_img, z_depth) -> x0 latent`, `encode_image(rgb01) -> latent`,
`encode_depth(d_n) -> latent`, `decode_depth(z) -> d_n`, and `device` / `downsample_factor`.
Tensors go in and come out as float32 torch tensors on `device`. The PyTorch fast path and
TensorRT never wait for the host inside a call (onnxruntime's `run` is blocking by design).

- "pytorch" (`TorchEngine`): the student's own modules. Without options it *is* `student(...)` and
  `student.codec.*`; `FastPath` adds fp16/bf16 and channels_last (its torch.compile and CUDA graphs
  apply to the pipeline's whole frame, `compiled`).
- "onnx" (`OnnxEngine`): the graphs of `sharpdepth_core.export` through onnxruntime.
- "tensorrt" (`TensorRTEngine`): TensorRT engines built from those graphs, one per graph and input
  shape, cached on disk under a name holding the GPU, TensorRT version, shape, precision and the
  ONNX file's hash. tensorrt is imported only when this engine is asked for.
- "aoti" (`AotiEngine`): the AOTInductor packages of `sharpdepth export --engine aoti`, compiled
  ahead of time for one (batch, grid) shape: no compilation at start-up.
"""
from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from torch import Tensor

from .choices import EXPORTED_ENGINES
from .export import AOTI_SHAPE_KEY, GRAPHS, ExportManifest, check_export_matches, shape_text, student_weights_sha256
from .files import read_recorded, write_recorded
from .models.hub import to_dtype
from .models.student import DiffusionDepthModel, StudentUNet
from .speed import FastPath

log = logging.getLogger(__name__)
FRAME_RECOMPILE_LIMIT = 64  # compiled frames kept per pipeline function (`compiled`)


class DepthEngine(Protocol):
    name: str
    device: torch.device
    downsample_factor: int
    latent_channels: int

    def unet(self, z_img: Tensor, z_depth: Tensor) -> Tensor: ...
    def encode_image(self, rgb01: Tensor) -> Tensor: ...
    def encode_depth(self, d_n: Tensor) -> Tensor: ...
    def decode_depth(self, z: Tensor) -> Tensor: ...
    def check_frame(self, camera_hw: tuple[int, int], processing_res: int | None, batch: int) -> None: ...


# --- PyTorch -----------------------------------------------------------------------------------


class TorchEngine:
    """The student's own modules. Without `fast` every call is the reference call, looked up at call
    time (`student(...)`, `student.codec.*`); `fast` converts the modules in place (the engine then
    owns the student) to its precision and memory format."""

    name = "pytorch"

    def __init__(self, student: DiffusionDepthModel, fast: FastPath | None = None):
        self.student, self.fast = student, fast
        self._calls = None if fast is None else self._fast_calls(student, fast)

    @property
    def device(self) -> torch.device:
        return self.student.device

    @property
    def downsample_factor(self) -> int:
        return self.student.codec.downsample_factor

    @property
    def latent_channels(self) -> int:
        return int(self.student.vae.config.latent_channels)

    def check_frame(self, camera_hw: tuple[int, int], processing_res: int | None, batch: int) -> None:
        """Nothing to refuse: the modules run any size and batch."""

    def unet(self, z_img: Tensor, z_depth: Tensor) -> Tensor:
        return self.student(z_img, z_depth) if self._calls is None else self._calls["unet"](z_img, z_depth)

    def encode_image(self, rgb01: Tensor) -> Tensor:
        return self.student.codec.encode_image(rgb01) if self._calls is None else self._calls["encode_image"](rgb01)

    def encode_depth(self, d_n: Tensor) -> Tensor:
        return self.student.codec.encode_depth(d_n) if self._calls is None else self._calls["encode_depth"](d_n)

    def decode_depth(self, z: Tensor) -> Tensor:
        return self.student.codec.decode_depth(z) if self._calls is None else self._calls["decode_depth"](z)

    @staticmethod
    def _fast_calls(student: DiffusionDepthModel, fast: FastPath) -> dict[str, Callable[..., Tensor]]:
        """The calls on the student converted to `fast`'s precision and memory format (compiling and
        CUDA graphs apply to the pipeline's whole frame: `compiled`)."""
        fmt = torch.channels_last if fast.channels_last else torch.contiguous_format
        if fast.dtype is not None:
            to_dtype(student.unet, fast.dtype)
        if fast.vae_dtype is not None:
            to_dtype(student.vae, fast.vae_dtype)
        student.unet.to(memory_format=fmt)
        student.vae.to(memory_format=fmt)
        net, codec = StudentUNet(student), student.codec
        device = student.device

        def unet(z_img: Tensor, z_depth: Tensor) -> Tensor:
            return net(torch.cat([z_img, z_depth], dim=1).to(device).contiguous(memory_format=fmt))

        return {
            "unet": unet,
            "encode_image": lambda rgb01: codec.encode_image(rgb01.contiguous(memory_format=fmt)),
            "encode_depth": lambda d_n: codec.encode_depth(d_n.contiguous(memory_format=fmt)),
            "decode_depth": lambda z: codec.decode_depth(z.contiguous(memory_format=fmt)),
        }


def compiled(fn: Callable[..., Tensor | tuple[Tensor, ...]], fast: FastPath) -> Callable[..., Tensor | tuple[Tensor, ...]]:
    """`fn` compiled whole (fullgraph, static shapes: a graph break or a wait for the device inside is
    an error, not a slow path) when `fast.compile`, and captured as a CUDA graph per input signature
    when `fast.cuda_graphs` (compile's default mode: the capture is ours, around the compiled code)."""
    if fast.compile:
        # one compiled graph per (grid, batch, method, K given): a multi-camera node passes dynamo's default
        # of 8 per function, after which it would run the frame uncompiled without saying so
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, FRAME_RECOMPILE_LIMIT)
        fn = torch.compile(fn, fullgraph=True, dynamic=False, backend=fast.compile_backend)
    return CudaGraphed(fn) if fast.cuda_graphs else fn


class CudaGraphed:
    """A function of CUDA tensors captured into a CUDA graph per input signature and replayed.

    First call for a signature: warm-up on a side stream (cuDNN autotuning, lazy compilation), then
    capture with static input buffers. Later calls copy the inputs into those buffers, replay, and
    return copies of the static outputs (a tensor or a tuple of tensors; the next replay overwrites
    them). The function must not synchronise with the host, which the pipeline's frame guarantees.
    """

    WARMUP = 3

    def __init__(self, fn: Callable[..., Tensor | tuple[Tensor, ...]]):
        self.fn = fn
        self._graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, list[Tensor], Tensor | tuple[Tensor, ...]]] = {}

    @torch.no_grad()
    def __call__(self, *args: Tensor) -> Tensor | tuple[Tensor, ...]:
        key = tuple((tuple(a.shape), a.stride(), a.dtype, a.device) for a in args)
        if key not in self._graphs:
            self._graphs[key] = self._capture(args)
        graph, static_in, static_out = self._graphs[key]
        for buf, a in zip(static_in, args):
            buf.copy_(a)
        graph.replay()
        return static_out.clone() if isinstance(static_out, Tensor) else tuple(t.clone() for t in static_out)

    def _capture(self, args: tuple[Tensor, ...]):
        static_in = [a.contiguous().clone() for a in args]  # own buffers (an expanded input's would overlap)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.WARMUP):
                self.fn(*static_in)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = self.fn(*static_in)
        return graph, static_in, static_out


# --- exported graphs (onnxruntime, TensorRT, AOTInductor) ----------------------------------------


class _GraphEngine:
    """The four calls on top of the three exported graphs (`_run(graph, x)` is the runtime's)."""

    name: str
    format: str = "onnx"  # the export.json format this engine runs
    manifest: ExportManifest
    device: torch.device

    def _load_manifest(self, folder: Path) -> ExportManifest:
        """The folder's manifest, refused in one line when it is an export of another format."""
        manifest = ExportManifest.load(folder)
        if manifest.format != self.format:
            engines = "aoti" if manifest.format == "aoti" else "onnx or tensorrt"
            raise ValueError(f"engine {self.name!r}: export {folder} holds {manifest.format} files, not {self.format}; "
                             f"use engine {engines}, or export again with --engine {self.format}")
        return manifest

    @property
    def downsample_factor(self) -> int:
        return self.manifest.downsample_factor

    @property
    def latent_channels(self) -> int:
        return self.manifest.latent_channels

    def unet(self, z_img: Tensor, z_depth: Tensor) -> Tensor:
        return self._call("unet", torch.cat([z_img, z_depth], dim=1))

    def encode_image(self, rgb01: Tensor) -> Tensor:
        if rgb01.ndim != 4 or rgb01.shape[1] != 3:
            raise ValueError(f"image must be [B, 3, H, W], got shape {tuple(rgb01.shape)}")
        return self._call("vae_encoder", rgb01 * 2 - 1)

    def encode_depth(self, d_n: Tensor) -> Tensor:
        if d_n.ndim != 4 or d_n.shape[1] != 1:
            raise ValueError(f"normalised depth must be [B, 1, H, W], got shape {tuple(d_n.shape)}")
        return self._call("vae_encoder", d_n.expand(-1, 3, -1, -1))

    def decode_depth(self, z: Tensor) -> Tensor:
        return self._call("vae_decoder", z)

    def check_frame(self, camera_hw: tuple[int, int], processing_res: int | None, batch: int) -> None:
        """ValueError (one line) when `batch` camera images of `camera_hw` (H, W) at `processing_res` do not
        fit this export's fixed grid or batch, in the sizes a user knows: the camera's, and the export command
        that fits. The pipeline asks before the frame runs; the graphs themselves see only the padded grid."""
        from .preprocessing import plan_resize

        m = self.manifest
        grid = plan_resize(camera_hw, processing_res, self.downsample_factor).padded_hw
        grid_ok, batch_ok = m.image_hw in (None, grid), m.batch in (None, batch)
        if grid_ok and batch_ok:
            return
        h, w = camera_hw
        res_differs = m.processing_res is not None and processing_res != m.processing_res
        got = f"a {w}x{h} image" + (f" at processing_res {processing_res}" if res_differs else "")
        got += "" if batch_ok else f", {batch} at once"
        fixed, parts = m.image_hw is not None, ["sharpdepth export"]
        parts += ["--engine aoti"] if self.format == "aoti" else ["--fixed"] if fixed else []
        parts += ["--tensorrt"] if self.name == "tensorrt" else []
        if fixed or self.name == "tensorrt":  # the grid follows from the camera size
            parts += [f"--input-size {w}x{h}"] + ([f"--processing-res {processing_res}"] if processing_res else [])
        parts += [f"--batch {batch}"] if self.format == "aoti" and batch != 1 else []  # onnx: dynamic by default
        runs = self._runs() + ("" if batch_ok else f", {m.batch} at a time")
        raise ValueError(f"engine {self.name!r}: export {self.folder} runs {runs}; got {got}: export again with `{' '.join(parts)} ...`")

    def _runs(self) -> str:
        """The image size the export runs, as its refusals say it: the camera size and processing_res where
        export.json records them (`sharpdepth export` does), else the fixed grid."""
        m = self.manifest
        if m.image_hw is None:
            return "images of any size"
        if m.input_hw and m.processing_res:
            return f"{m.input_hw[1]}x{m.input_hw[0]} camera images (processing_res {m.processing_res})"
        return f"images on a fixed {m.image_hw[1]}x{m.image_hw[0]} (WxH) grid"

    def _call(self, graph: str, x: Tensor) -> Tensor:
        expected = self.manifest.input_shape(graph)
        f = self.downsample_factor
        if x.ndim == 4 and not self.manifest.graphs[graph].latent_input and (x.shape[-2] % f or x.shape[-1] % f):
            raise ValueError(f"image size {tuple(x.shape[-2:])} must be a multiple of {f} for the VAE (pad it first)")
        if x.ndim != 4 or any(e is not None and e != s for e, s in zip(expected, x.shape)):  # direct calls: the pipeline
            raise ValueError(f"engine {self.name!r}: {graph} takes input [{shape_text(expected)}], got {tuple(x.shape)}: "
                             f"export {self.folder} runs {self._runs()}; export again for this shape")  # checks first
        return self._run(graph, x.detach().to(self.device, torch.float32).contiguous())

    def _run(self, graph: str, x: Tensor) -> Tensor:
        raise NotImplementedError


class OnnxEngine(_GraphEngine):
    """onnxruntime sessions on an export folder. On CUDA (CUDAExecutionProvider) inputs and outputs
    are bound to torch's device memory (I/O binding): no copies through the host."""

    name = "onnx"

    def __init__(self, folder: str | Path, device: str | torch.device = "cpu", threads: int | None = None):
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise ImportError("engine 'onnx' needs onnxruntime: pip install onnxruntime (onnxruntime-gpu for CUDA)") from exc
        self.folder, self.device = Path(folder), torch.device(device)
        self.manifest = self._load_manifest(self.folder)
        if self.device.type == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise ValueError(
                    f"engine 'onnx' on {self.device}: onnxruntime has no CUDAExecutionProvider "
                    f"(available: {', '.join(ort.get_available_providers())}); install onnxruntime-gpu"
                )
            providers = [("CUDAExecutionProvider", {"device_id": self.device.index or 0}), "CPUExecutionProvider"]
        elif self.device.type == "cpu":
            providers = ["CPUExecutionProvider"]
        else:
            raise ValueError(f"engine 'onnx' runs on cpu or cuda, not {self.device}")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        self.sessions = {
            g: ort.InferenceSession(str(self.folder / self.manifest.graphs[g].file), options, providers=providers) for g in GRAPHS
        }

    def _run(self, graph: str, x: Tensor) -> Tensor:
        info, session = self.manifest.graphs[graph], self.sessions[graph]
        if self.device.type == "cpu":
            return torch.from_numpy(session.run([info.output], {info.input: x.numpy()})[0])
        import numpy as np

        out = torch.empty(self._output_shape(graph, x), dtype=torch.float32, device=self.device)
        binding = session.io_binding()
        index = self.device.index or 0
        binding.bind_input(info.input, "cuda", index, np.float32, tuple(x.shape), x.data_ptr())
        binding.bind_output(info.output, "cuda", index, np.float32, tuple(out.shape), out.data_ptr())
        torch.cuda.current_stream(self.device).synchronize()  # ORT runs on its own stream: order it after torch's
        session.run_with_iobinding(binding)
        return out

    def _output_shape(self, graph: str, x: Tensor) -> tuple[int, ...]:
        b, _, h, w = x.shape
        f, c = self.manifest.downsample_factor, self.manifest.latent_channels
        return {"unet": (b, c, h, w), "vae_encoder": (b, c, h // f, w // f), "vae_decoder": (b, 1, h * f, w * f)}[graph]


# --- TensorRT ----------------------------------------------------------------------------------


def import_tensorrt():
    """The tensorrt module, or an ImportError that says what to install."""
    try:
        import tensorrt
    except ImportError as exc:
        raise ImportError(
            "engine 'tensorrt' needs NVIDIA TensorRT's Python package and a CUDA GPU "
            "(pip install tensorrt, matching your CUDA); without them use engine 'onnx' or 'pytorch'"
        ) from exc
    return tensorrt


@dataclass(frozen=True)
class EngineKey:
    """Everything a serialized TensorRT engine is only valid for."""

    graph: str
    precision: str
    input_shape: tuple[int, ...]
    gpu: str
    compute_capability: tuple[int, int]
    tensorrt: str
    onnx_sha256: str

    def filename(self) -> str:
        gpu = re.sub(r"[^A-Za-z0-9]+", "-", self.gpu).strip("-").lower()
        shape = "x".join(str(s) for s in self.input_shape)
        cc = "".join(str(v) for v in self.compute_capability)
        return f"{self.graph}-{self.precision}-{shape}-{gpu}-sm{cc}-trt{self.tensorrt}-{self.onnx_sha256[:12]}.plan"


def build_engine(trt, onnx_path: Path, input_name: str, shape: tuple[int, ...], fp16: bool) -> bytes:
    """Parse an ONNX file (external weights beside it are found by path) and build a serialized
    engine for exactly `shape` (the optimisation profile has min = opt = max = shape)."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    explicit = 0 if int(trt.__version__.split(".")[0]) >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(explicit)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    if any(d == -1 for t in inputs for d in t.shape):
        profile = builder.create_optimization_profile()
        profile.set_shape(input_name, shape, shape, shape)
        config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path} for input {shape} (see its log above)")
    return bytes(plan)


def cached_engine(trt, key: EngineKey, onnx_path: Path, input_name: str, cache_dir: Path) -> bytes:
    """The serialized engine for `key`: read from `cache_dir` when it is one this project built (its hash
    recorded beside it and unchanged), else built and written there with that record. A file of that
    name that is not such a plan (damaged, replaced, the user's) is refused, never read or overwritten."""
    path = cache_dir / key.filename()
    if path.exists() or path.is_symlink():
        plan = read_recorded(path)
        if plan is None:
            raise RuntimeError(f"{path}: not a TensorRT engine this project built (no matching {path.name}.sha256 record); "
                               "move it away and the engine is built again")
        return plan
    log.warning("building TensorRT engine %s (once; minutes for the full-size UNet)", path.name)
    plan = build_engine(trt, onnx_path, input_name, key.input_shape, fp16=key.precision == "fp16")
    cache_dir.mkdir(parents=True, exist_ok=True)
    write_recorded(path, plan)
    return plan


class _TrtGraph:
    """One deserialized engine and its execution context, enqueued on torch's current stream."""

    def __init__(self, runtime, plan: bytes, info, shape: tuple[int, ...], device: torch.device):
        self.engine = runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            raise RuntimeError("TensorRT could not deserialize a cached engine; delete the cache folder to rebuild")
        self.context = self.engine.create_execution_context()
        self.input, self.output, self.device = info.input, info.output, device
        self.context.set_input_shape(self.input, shape)
        self.out_shape = tuple(self.context.get_tensor_shape(self.output))

    def __call__(self, x: Tensor) -> Tensor:
        out = torch.empty(self.out_shape, dtype=torch.float32, device=self.device)
        self.context.set_tensor_address(self.input, x.data_ptr())
        self.context.set_tensor_address(self.output, out.data_ptr())
        if not self.context.execute_async_v3(torch.cuda.current_stream(self.device).cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        return out


class TensorRTEngine(_GraphEngine):
    """TensorRT engines for an export folder, built on first use per input shape (or ahead of time
    with `prebuild`) and cached in `cache_dir` (default: `<export folder>/tensorrt`). A graph exported
    in fp16 is built with TensorRT's FP16 flag; fp32 graphs keep TensorRT's default (TF32 allowed)."""

    name = "tensorrt"

    def __init__(self, folder: str | Path, cache_dir: str | Path | None = None, device: str | torch.device = "cuda"):
        self.trt = import_tensorrt()
        self.device = torch.device(device)
        if self.device.type != "cuda" or not torch.cuda.is_available():
            raise ValueError(f"engine 'tensorrt' needs a CUDA device; asked for {self.device}, CUDA available: {torch.cuda.is_available()}")
        if self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.folder = Path(folder)
        self.manifest = self._load_manifest(self.folder)
        self.cache_dir = Path(cache_dir) if cache_dir else self.folder / "tensorrt"
        self.runtime = self.trt.Runtime(self.trt.Logger(self.trt.Logger.WARNING))
        self._graphs: dict[tuple[str, tuple[int, ...]], _TrtGraph] = {}

    def key(self, graph: str, shape: tuple[int, ...]) -> EngineKey:
        info = self.manifest.graphs[graph]
        return EngineKey(
            graph=graph,
            precision=info.precision,
            input_shape=tuple(int(s) for s in shape),
            gpu=torch.cuda.get_device_name(self.device),
            compute_capability=torch.cuda.get_device_capability(self.device),
            tensorrt=self.trt.__version__,
            onnx_sha256=info.sha256,
        )

    def prebuild(self, image_hw: tuple[int, int], batch: int = 1) -> list[Path]:
        """Build (or find) the engines a frame at this padded processing grid needs; returns their files."""
        h, w = image_hw
        f, c = self.downsample_factor, self.manifest.latent_channels
        shapes = {"unet": (batch, 2 * c, h // f, w // f), "vae_encoder": (batch, 3, h, w), "vae_decoder": (batch, c, h // f, w // f)}
        for graph, shape in shapes.items():
            self._graph(graph, shape)
        return [self.cache_dir / self.key(g, s).filename() for g, s in shapes.items()]

    def _graph(self, graph: str, shape: tuple[int, ...]) -> _TrtGraph:
        if (graph, shape) not in self._graphs:
            info = self.manifest.graphs[graph]
            with torch.cuda.device(self.device):
                plan = cached_engine(self.trt, self.key(graph, shape), self.folder / info.file, info.input, self.cache_dir)
                self._graphs[graph, shape] = _TrtGraph(self.runtime, plan, info, shape, self.device)
        return self._graphs[graph, shape]

    def _run(self, graph: str, x: Tensor) -> Tensor:
        return self._graph(graph, tuple(x.shape))(x)


# --- AOTInductor ------------------------------------------------------------------------------


class AotiEngine(_GraphEngine):
    """The AOTInductor packages of an export folder (`sharpdepth export --engine aoti`): compiled code
    for one input shape per graph (other shapes are refused in one line: a package would run them
    wrongly, not fail) on the device type and torch version it was compiled with.

    A package is a shared library: loading it runs its code. Each is loaded from bytes whose SHA-256
    matches export.json, so a package replaced or damaged after the export is refused; the folder as a
    whole (export.json included) must be trusted like any binary.
    """

    name = "aoti"
    format = "aoti"

    def __init__(self, folder: str | Path, device: str | torch.device = "cpu"):
        import io

        from torch._inductor import aoti_load_package

        self.folder, self.device = Path(folder), torch.device(device)
        self.manifest = self._load_manifest(self.folder)
        made = f"export {self.folder} was compiled for {self.manifest.device} with torch {self.manifest.versions.get('torch')}"
        if self.manifest.device != self.device.type:
            raise ValueError(f"engine 'aoti': {made}, but the pipeline runs on {self.device}: export again with --device {self.device}")
        if self.manifest.versions.get("torch") != torch.__version__:
            raise ValueError(f"engine 'aoti': {made}, but this is torch {torch.__version__}: export again with this torch")
        self.packages = {}
        for graph in GRAPHS:
            info = self.manifest.graphs[graph]
            data = (self.folder / info.file).read_bytes()
            if hashlib.sha256(data).hexdigest() != info.sha256:
                raise ValueError(f"engine 'aoti': {self.folder / info.file} is not the package export.json records "
                                 "(SHA-256 differs); not loading it: export again")
            index = self.device.index if self.device.index is not None else -1
            try:
                self.packages[graph] = aoti_load_package(io.BytesIO(data), device_index=index)
            except Exception as exc:  # torch's loader speaks of zip members and codecs: say what it means here
                raise ValueError(f"engine 'aoti': {self.folder / info.file} is not a loadable AOTInductor package "
                                 f"({type(exc).__name__}: {str(exc)[:120]}); export again") from exc
            compiled, recorded = self.packages[graph].get_metadata().get(AOTI_SHAPE_KEY), shape_text(self.manifest.input_shape(graph))
            if compiled != recorded:  # run on another shape, a package reads past its input instead of failing
                raise ValueError(f"engine 'aoti': {self.folder / info.file} was compiled for input "
                                 f"{compiled or 'an unrecorded shape (an older export)'}, but export.json says {recorded}: export again")

    def _run(self, graph: str, x: Tensor) -> Tensor:
        return self.packages[graph](x)


def exported_engine(
    name: str, export_dir: str | Path | None, student_dir: str | Path, processing_res: int,
    device: str | torch.device, cache_dir: str | Path | None = None,
) -> DepthEngine:
    """The engine `name` on an export folder for a pipeline of the student in `student_dir` (a folder
    or hub id) at `processing_res`; an export of another student or grid is refused in one line
    before any graph loads (`check_export_matches`)."""
    from .models import resolve_model_dir

    if export_dir:
        check_export_matches(
            ExportManifest.load(export_dir), export_dir, processing_res,
            lambda: student_weights_sha256(resolve_model_dir(student_dir, "student model")),
        )
    return load_engine(name, export_dir, device, cache_dir)


def load_engine(name: str, export_dir: str | Path | None, device: str | torch.device | None = None,
                cache_dir: str | Path | None = None) -> DepthEngine:
    """The exported engine `name` ("onnx", "tensorrt", "aoti") on a folder written by `sharpdepth export`
    (the PyTorch engine is the pipeline's own: `SharpDepthPipeline.from_pretrained(engine="pytorch")`)."""
    if name not in EXPORTED_ENGINES:
        raise ValueError(f"unknown exported engine {name!r}; choose one of {', '.join(EXPORTED_ENGINES)}")
    if export_dir is None:
        raise ValueError(f"engine {name!r} needs an export folder: write one with `sharpdepth export --out DIR`")
    if name == "onnx":
        return OnnxEngine(export_dir, device or "cpu")
    if name == "aoti":
        return AotiEngine(export_dir, device or "cpu")
    return TensorRTEngine(export_dir, cache_dir, device or "cuda")
