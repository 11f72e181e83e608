"""SharpDepthPipeline: the reference one-step inference of SharpDepth (docs/METHOD.md, "Inference").

metric depth d = f_D(I) -> latents z_i = enc(I), z_d = enc(norm(d)) -> affine pass on noise
ẑ_a = G(z_i, ε1), d̃ = dec(ẑ_a) -> difference map e = |d̃ - norm(d)| / max -> gated sharpening pass
ẑ = G(z_i, ê ⊙ add_noise(ẑ_a, ε2, 999) + (1 - ê) ⊙ z_d) -> d̂_n = dec(ẑ) -> back to the input size ->
least-squares scale and shift of d̂_n onto d over the pixels with e < 0.5; and a per-pixel confidence
of the result (`confidence_map`).
"""
from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .alignment import apply_scale_shift, fit_scale_shift
from .choices import DEPTH_ENCODERS, DIFFERENCE_METHODS
from .engines import DepthEngine, TorchEngine, compiled, exported_engine
from .files import Extra, replacing_dir
from .gating import TIMESTEP, add_noise, difference_map, downsample_to_latent, gate, latent_difference
from .geometry import check_intrinsics, scale_intrinsics
from .models import EMBEDDED_DIR, DiffusionDepthModel, MetricBackend, MissingWeightsError, load_metric_model
from .models.hub import to_dtype
from .models.light_decoder import LIGHT_DECODER_DIR, LightDepthDecoder
from .models.light_encoder import LIGHT_ENCODER_DIR, LightDepthEncoder
from .normalization import normalize_depth
from . import pipeline_config
from .limits import check_processing_res
from .preprocessing import Resize, plan_resize, to_grid, unpad_and_resize
from .speed import FastPath, resolve

CONFIDENCE_SCALE = 0.1  # relative uncertainty at which the confidence is 0.5
FIT_THRESHOLD = 0.5  # the final fit trusts pixels where f_G and f_D disagree by less than this
DEFAULT_PROCESSING_RES = 768  # the SharpDepth release's grid when nothing records one
# what an earlier save may hold besides what a new one writes: light networks (the files their saves write)
EARLIER_SAVE = tuple(Extra(name, files=("config.json", "*.safetensors")) for name in (LIGHT_DECODER_DIR, LIGHT_ENCODER_DIR))


@dataclass
class SharpDepthOutput:
    depth: Tensor  # [B, 1, H, W] sharpened metric depth, metres (values <= 0 are invalid)
    metric_depth: Tensor  # [B, 1, H, W] f_D's depth, metres
    difference: Tensor  # [B, 1, H, W] e in [0, 1]: where the affine pass disagrees with f_D
    confidence: Tensor  # [B, 1, H, W] in [0, 1], higher = more trusted; 0 where depth is invalid (`confidence_map`)
    K: Tensor  # [B, 3, 3] the intrinsics used (given, else the metric backend's)
    timings: dict[str, float]  # seconds per stage, plus "total"
    fallback: list[bool] = field(default_factory=list)  # per image: degenerate fit, depth = metric_depth


def as_image_batch(image, device: torch.device | str = "cpu") -> Tensor:
    """uint8 HxWx3 numpy, or a [B, 3, H, W] / [3, H, W] tensor (float in [0, 1] or uint8) -> float [B, 3, H, W]
    on `device` (uint8 crosses to the device before it is widened: a quarter of the bytes)."""
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"numpy image must be uint8 HxWx3 RGB, got {image.dtype} of shape {image.shape}")
        image = torch.from_numpy(np.require(image, requirements=["C", "W"])).permute(2, 0, 1)
    if not isinstance(image, Tensor):
        raise ValueError(f"image must be a uint8 HxWx3 numpy array or a [B, 3, H, W] tensor, got {type(image).__name__}")
    if image.ndim == 3:
        image = image[None]
    if image.ndim != 4 or image.shape[1] != 3:
        raise ValueError(f"image tensor must be [B, 3, H, W], got shape {tuple(image.shape)}")
    if image.dtype == torch.uint8:
        return image.to(device).float() / 255
    if not image.is_floating_point():
        raise ValueError(f"image tensor must be float in [0, 1] or uint8, got {image.dtype}")
    image = image.float()
    if not torch.isfinite(image).all() or image.min() < 0 or image.max() > 1:
        raise ValueError("image tensor values must be finite and in [0, 1]")
    return image.to(device)


def fit_to_metric(d_hat_n: Tensor, metric_depth: Tensor, e: Tensor, threshold: float = FIT_THRESHOLD) -> tuple[Tensor, Tensor]:
    """`s d̂_n + b` with (s, b) the least-squares fit onto the metric depth over pixels where
    e < threshold and the metric depth is valid. A degenerate fit (too few pixels, scale <= 0)
    returns the metric depth for that image; the [B] bool tensor says which images fell back (a
    tensor, so that the frame never waits for the device to say)."""
    mask = (e < threshold) & torch.isfinite(metric_depth) & (metric_depth > 0)
    fit = fit_scale_shift(d_hat_n, metric_depth, mask=mask)
    usable = fit.usable.view(-1, 1, 1, 1)
    depth = torch.where(usable, apply_scale_shift(d_hat_n, fit), metric_depth)
    return depth, ~fit.usable


def _relative_span(depth: Tensor, radius: int) -> Tensor:
    """(max - min) / min of the depth in the (2 radius + 1)² square around each pixel: how far apart the
    surfaces a pixel could belong to are, relative to the nearer one (0 on a flat patch)."""
    on_cpu = depth.device.type == "cpu" and not torch.compiler.is_compiling()
    high, low = (square_extremes_opencv if on_cpu else square_extremes_pooled)(depth, radius)
    return (high - low) / low.clamp_min(1e-3)


def square_extremes_opencv(depth: Tensor, radius: int) -> tuple[Tensor, Tensor]:
    """(max, min) over the (2 radius + 1)² square, on CPU: the same values as `square_extremes_pooled`
    from OpenCV's dilate/erode, 30-50x faster, where torch's max pools made the confidence a quarter of
    a 640x480 frame (the embedded models; bench/confidence.py)."""
    kernel = np.ones((2 * radius + 1,) * 2, np.uint8)
    planes = depth.detach().float().reshape(-1, *depth.shape[-2:]).contiguous().numpy()
    high = torch.from_numpy(np.stack([cv2.dilate(p, kernel) for p in planes])).reshape(depth.shape).to(depth.dtype)
    low = torch.from_numpy(np.stack([cv2.erode(p, kernel) for p in planes])).reshape(depth.shape).to(depth.dtype)
    return high, low


def square_extremes_pooled(depth: Tensor, radius: int) -> tuple[Tensor, Tensor]:
    """(max, min) over the (2 radius + 1)² square, outside the image ignored: device ops (a compiled or
    GPU frame); separable max pools, O(radius) not O(radius²)."""
    def square_max(x: Tensor) -> Tensor:
        x = F.max_pool2d(x, (1, 2 * radius + 1), stride=1, padding=(0, radius))
        return F.max_pool2d(x, (2 * radius + 1, 1), stride=1, padding=(radius, 0))

    return square_max(depth), -square_max(-depth)


def confidence_map(depth: Tensor, metric_depth: Tensor, radius: int = 1) -> Tensor:
    """Per-pixel confidence in [0, 1] of `depth` (higher = more trusted), from what a frame already has:
    c = 1 / (1 + u / CONFIDENCE_SCALE), u = span(depth) + span(f_D) + ½ |depth - f_D| / f_D, a relative
    (dimensionless) uncertainty: `_relative_span` over `radius` pixels of each depth (a pixel next to a
    depth discontinuity in either teacher may belong to either side) plus half the disagreement of the
    sharpened depth with f_D after the final fit (where the teachers disagree, one is wrong). c = 0.5 at
    u = 10 %. For f_D alone (no sharpening) call it with depth = f_D's depth: u = 2 span(f_D). Chosen on
    the val scenes by sparsification (bench/obstacles.py, bench/RESULTS.md); invalid depth gets 0. Device
    ops only, so it runs inside the compiled frame."""
    valid = torch.isfinite(depth) & (depth > 0) & torch.isfinite(metric_depth) & (metric_depth > 0)
    d, m = torch.where(valid, depth, 1.0), torch.where(valid, metric_depth, 1.0)
    u = _relative_span(d, radius) + _relative_span(m, radius) + 0.5 * (d - m).abs() / m
    return torch.where(valid, 1.0 / (1.0 + u / CONFIDENCE_SCALE), 0.0)


def confidence_radius(plan: Resize) -> int:
    """The span's radius at the input size: one processing-grid pixel, in input pixels (rounded up),
    since the way back to the input size spreads each grid step over that many."""
    return max(1, math.ceil(max(plan.input_hw[0] / plan.resized_hw[0], plan.input_hw[1] / plan.resized_hw[1])))


class _Clock:
    """Seconds per stage (summed when a stage repeats) without waiting for the device inside a frame: on
    CUDA each stage is a pair of CUDA events, read after the frame's one synchronisation (`total`);
    elsewhere the host's clock. Each stage is also a `record_function` range, so a profiler
    (bench/pipeline.py --profile) can group ops by stage."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self._marks: list[tuple[str, object, object]] = []
        self._wall = time.perf_counter()

    def _mark(self):
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start = self._mark()
        with torch.profiler.record_function(f"stage:{stage}"):
            yield
        self._marks.append((stage, start, self._mark()))

    def total(self) -> dict[str, float]:
        """The stage times and the wall time since the clock started, once the device has finished."""
        if self.cuda:
            torch.cuda.current_stream().synchronize()
        timings: dict[str, float] = {}
        for stage, start, end in self._marks:
            seconds = start.elapsed_time(end) / 1e3 if self.cuda else end - start
            timings[stage] = timings.get(stage, 0.0) + seconds
        return {**timings, "total": time.perf_counter() - self._wall}


def _no_clock(stage: str):
    """The clock of a compiled frame: its stages are fused, so only the whole frame is timed."""
    return nullcontext()


class SharpDepthPipeline:
    """Sharp metric depth from one image: `pipeline(image, K=None, seed=None, processing_res=None,
    difference=None) -> SharpDepthOutput`; the per-frame settings left None are the pipeline's own.

    By default every step is the reference code's (docs/METHOD.md, "Inference"), so released weights
    give the reference's numbers. Options, each a named departure:
    - processing_res: longer edge of the diffusion grid (None: the input size); a call may override it.
    - metric_at_input_res: run f_D on the full-size input and resize its depth onto the grid
      (antialiased) instead of running it on the grid image.
    - pass_k_to_metric: give a known camera K (scaled to where f_D runs) to the metric backend; the
      reference never passes one, but calls without K are reference-exact either way.
    - difference_fit_first: the paper's difference map (d̃ least-squares fitted to d first).
    - difference: how e is made: "exact" (VAE decode of the affine pass, the reference), "light"
      (a small decoder trained to reproduce the VAE's depth output, `light_decoder`), or "latent"
      (|ẑ_a - z_d| on the latent grid, no decode at all); a call may override it.
    - depth_encoder: what encodes f_D's normalised depth into z_d: "vae" (the reference) or "light" (a
      small encoder trained to reproduce the VAE's encode, `light_encoder`).
    untrained: the weights are random (tiny models), so anything showing the output must say so.
    engine: runs the UNet and VAE calls (`engines`; default the student's own modules). fast: the
    PyTorch speed options (`engines.FastPath`): the student's and the metric model's precision and
    memory format (converted in place), and compiling each frame whole and replaying it as one CUDA
    graph (no host synchronisation inside a frame; stage times then only for the whole frame). camera: the
    camera the models were trained for, where known (`pipeline.json`; the embedded models have one).
    distilled_from: what a trained student learned from (`pipeline.json`, written by the trainer): its
    teachers, and `embedded`, true when they are the embedded synthetic-scene models. light_folder: where
    light networks that are not passed in are found when a call first needs one (a saved pipeline's
    folder): a setting that never uses them never reads them, so a damaged one cannot stop it.
    """

    def __init__(
        self,
        student: DiffusionDepthModel | None,
        metric_model: MetricBackend,
        processing_res: int | None = DEFAULT_PROCESSING_RES,
        difference_fit_first: bool = False,
        pass_k_to_metric: bool = True,
        untrained: bool = False,
        engine: DepthEngine | None = None,
        metric_at_input_res: bool = False,
        difference: str = "exact",
        light_decoder: LightDepthDecoder | None = None,
        depth_encoder: str = "vae",
        light_encoder: LightDepthEncoder | None = None,
        camera: dict | None = None,
        distilled_from: dict | None = None,
        fast: FastPath | None = None,
        light_folder: Path | None = None,
        scheduler=None,
    ):
        if fast is not None and engine is not None:
            raise ValueError("fast applies to the PyTorch engine it makes; an exported engine has its own precision")
        if student is None and (engine is None or scheduler is None):
            raise ValueError("without the PyTorch student, a pipeline needs the engine that runs its networks and its noise schedule")
        if fast is not None and fast.dtype is not None:
            to_dtype(metric_model, fast.dtype)
        if fast is not None and fast.channels_last:
            metric_model.to(memory_format=torch.channels_last)
        self.student, self.metric_model, self.fast = student, metric_model, fast
        self.processing_res = check_processing_res(processing_res)
        self.difference_fit_first = difference_fit_first
        self.pass_k_to_metric = pass_k_to_metric
        self.metric_at_input_res = metric_at_input_res
        self.untrained = untrained
        self.engine = engine if engine is not None else TorchEngine(student, fast)
        if fast is not None and fast.cuda_graphs and self.device.type != "cuda":
            raise ValueError(f"FastPath.cuda_graphs needs the models on a CUDA device; they are on {self.device}")
        self._alpha_bar = float((scheduler or student.scheduler).alphas_cumprod[TIMESTEP])
        self._seeded_noise: dict[tuple, tuple[Tensor, Tensor]] = {}
        self._compiled: dict[tuple, Callable[..., tuple[Tensor, ...]]] = {}
        self.light_decoder, self.light_encoder, self.light_folder = light_decoder, light_encoder, light_folder
        self.difference = self._checked_difference(difference)
        if depth_encoder not in DEPTH_ENCODERS:
            raise ValueError(f"depth_encoder must be one of {', '.join(DEPTH_ENCODERS)}, got {depth_encoder!r}")
        if depth_encoder == "light":
            self.light_encoder = self._light(self.light_encoder, LIGHT_ENCODER_DIR, LightDepthEncoder, "depth_encoder 'light'")
        self.depth_encoder = depth_encoder
        self.camera = camera
        self.distilled_from = distilled_from

    @property
    def synthetic_only(self) -> bool:
        """Whether these models know only the procedural rooms of the embedded small models: they are
        those models or were distilled from them (`distilled_from.embedded`). Front ends say so."""
        return bool((self.distilled_from or {}).get("embedded"))

    def _checked_difference(self, method: str) -> str:
        if method not in DIFFERENCE_METHODS:
            raise ValueError(f"difference must be one of {', '.join(DIFFERENCE_METHODS)}, got {method!r}")
        if method == "light":
            self.light_decoder = self._light(self.light_decoder, LIGHT_DECODER_DIR, LightDepthDecoder, "difference 'light'")
        return method

    def _light(self, loaded, name: str, kind, setting: str):
        """A light network a setting needs: the one passed in, else `light_folder/name` loaded now; one
        ValueError naming where it goes and how to train one when there is none."""
        light = loaded if loaded is not None else self._load_light(name, kind)
        if light is None:
            raise ValueError(f"{setting} needs a {kind.what} ({name}/ in the pipeline folder; train one with "
                             f"train/{name}.py)")
        return light

    def _load_light(self, name: str, kind):
        """The light network `light_folder/name` (loaded when first needed), or None where there is none."""
        folder = None if self.light_folder is None else self.light_folder / name
        return kind.load(folder, device=self.device) if folder is not None and folder.is_dir() else None

    @property
    def device(self) -> torch.device:
        return self.engine.device

    def to(self, device: str | torch.device) -> "SharpDepthPipeline":
        if self.student is None:
            raise ValueError(f"a pipeline on the {self.engine.name} engine stays on the device its export was loaded for")
        self.student.to(device)
        self.metric_model.to(device)
        for light in (self.light_decoder, self.light_encoder):
            if light is not None:
                light.to(device)
        self._compiled.clear()  # compiled and captured for the old device
        return self

    @torch.no_grad()
    def __call__(self, image, K=None, seed: int | None = None, processing_res: int | None = None,
                 difference: str | None = None) -> SharpDepthOutput:
        """image: uint8 HxWx3 numpy or float [B, 3, H, W] in [0, 1]; K: [3, 3] or [B, 3, 3]; seed: makes
        both noise draws reproducible; processing_res, difference: this call's (None: the pipeline's).
        All outputs are at the input size."""
        res = self.processing_res if processing_res is None else check_processing_res(processing_res)
        method = self.difference if difference is None else self._checked_difference(difference)
        clock = _Clock(self.device)
        image = as_image_batch(image, self.device)
        K = check_intrinsics(K, image.shape[0])  # on the host: checking it on the device would wait for it
        K = None if K is None else K.to(self.device)
        plan = plan_resize(tuple(image.shape[-2:]), res, self.engine.downsample_factor)  # the processing grid
        self.engine.check_frame(plan.input_hw, res, image.shape[0])  # an export's fixed grid, said in camera sizes
        eps1, eps2 = self._noise(image.shape[0], plan, seed)
        inputs = (image, eps1, eps2) if K is None else (image, eps1, eps2, K)
        if self.fast is not None and self.fast.compile:
            with clock("frame"):
                depth, metric_depth, e, confidence, flags, metric_K = self._compiled_frame(plan, method)(*inputs)
        else:
            depth, metric_depth, e, confidence, flags, metric_K = self._frame(*inputs, plan=plan, method=method, clock=clock)
        fallback, finite = flags.tolist()  # the frame's one wait for the device, after all of it is queued
        if not all(finite):
            raise ValueError("the metric backend's depth contains NaN or inf; cannot normalise")
        if any(fallback):
            which = [i for i, f in enumerate(fallback) if f]
            warnings.warn(
                f"SharpDepth: degenerate final fit for image(s) {which} (too few pixels with e < {FIT_THRESHOLD} "
                "or non-positive scale); returning the metric backend's depth for them",
                RuntimeWarning,
                stacklevel=3,  # the caller of __call__ (through torch.no_grad's wrapper)
            )
        return SharpDepthOutput(
            depth=depth,
            metric_depth=metric_depth,
            difference=e,
            confidence=confidence,
            K=K if K is not None else metric_K,
            timings=clock.total(),
            fallback=fallback,
        )

    def _frame(self, image: Tensor, eps1: Tensor, eps2: Tensor, K: Tensor | None = None, *, plan: Resize, method: str,
               clock) -> tuple[Tensor, ...]:
        """Steps 1-8 on the device: tensors in, tensors out, and never a wait for the device, so that the
        whole frame compiles as one graph and replays as one CUDA graph (`fast`). Returns (depth, f_D's
        depth, e, confidence, [fallback; f_D finite] per image, K)."""
        # 1. metric depth d = f_D(I): on the grid image (reference), or on the input, then resized
        with clock("metric"):
            x, d, metric_depth, metric_K = self._metric_stage(image, K, plan)
        return (*self._sharpen(x, d, metric_depth, eps1, eps2, plan=plan, method=method, clock=clock), metric_K)

    def _sharpen(self, x: Tensor, d: Tensor, metric_depth: Tensor, eps1: Tensor, eps2: Tensor, *, plan: Resize,
                 method: str, clock) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Steps 2-8, from the grid image and f_D's depth to the sharpened metric depth and its confidence."""
        engine = self.engine
        # 2. z_i = enc(I), z_d = enc(norm(d)) (the image latent serves both passes); f_D's finiteness is
        # reported with the result rather than checked here, which would wait for the device
        with clock("encode"):
            d_n, _, _ = normalize_depth(d, check=False)
            z_i = engine.encode_image(x)
            z_d = engine.encode_depth(d_n) if self.depth_encoder == "vae" else self.light_encoder(d_n)

        # 3. affine pass on pure noise: ẑ_a = G(z_i, ε1)
        with clock("affine_pass"):
            z_a = engine.unet(z_i, eps1)

        # 4. difference map e = |dec(ẑ_a) - d_n| / max, and its latent-grid version ê (nearest)
        e, e_hat = self._difference_map(method, z_a, z_d, d_n, clock)

        # 5-6. noise-aware gating, sharpening pass: ẑ = G(z_i, ê ⊙ add_noise(ẑ_a, ε2) + (1 - ê) ⊙ z_d)
        with clock("sharpen_pass"):
            z_gated = gate(z_d, e_hat, add_noise(z_a, eps2, alpha_bar=self._alpha_bar))
            z = engine.unet(z_i, z_gated)
        with clock("decode"):
            d_hat_n = engine.decode_depth(z)

        # 7-8. back to the input size; scale and shift onto the metric depth where e < 0.5; the confidence
        with clock("fit"):
            d_hat_n, e = unpad_and_resize(d_hat_n, plan), unpad_and_resize(e, plan).clamp(0, 1)
            depth, fallback = fit_to_metric(d_hat_n, metric_depth, e)
            confidence = confidence_map(depth, metric_depth, confidence_radius(plan))
        return depth, metric_depth, e, confidence, torch.stack([fallback, torch.isfinite(d).flatten(1).all(1)])

    def _compiled_frame(self, plan: Resize, method: str) -> Callable[..., tuple[Tensor, ...]]:
        """The frame compiled (and on CUDA captured) once per grid and method: whole, or from the encodes on
        for a metric backend whose shapes are not fixed per camera (`MetricBackend.static_shapes`)."""
        key = (plan, method)
        if key not in self._compiled:
            if self.metric_model.static_shapes:
                # transformers' models install output hooks on their first call, under a lock dynamo cannot
                # trace: that first call is made here, eagerly, on a blank grid image
                self.metric_model.predict(torch.zeros(1, 3, *plan.padded_hw, device=self.device), None)
                self._compiled[key] = compiled(partial(self._frame, plan=plan, method=method, clock=_no_clock), self.fast)
            else:
                sharpen = compiled(partial(self._sharpen, plan=plan, method=method, clock=_no_clock), self.fast)

                def frame(image: Tensor, eps1: Tensor, eps2: Tensor, K: Tensor | None = None) -> tuple[Tensor, ...]:
                    x, d, metric_depth, metric_K = self._metric_stage(image, K, plan)
                    return (*sharpen(x, d, metric_depth, eps1, eps2), metric_K)

                self._compiled[key] = frame
        return self._compiled[key]

    @torch.no_grad()
    def metric_depth(self, image, K=None, processing_res: int | None = None) -> Tensor:
        """f_D's depth at the input size, exactly as a full call with the same arguments computes it
        (same grid, same K use): the teacher's output beside SharpDepth's, for comparisons."""
        res = self.processing_res if processing_res is None else check_processing_res(processing_res)
        image = as_image_batch(image, self.device)
        K = check_intrinsics(K, image.shape[0], self.device)
        return self._metric_stage(image, K, plan_resize(tuple(image.shape[-2:]), res, self.engine.downsample_factor))[2]

    def _metric_stage(self, image: Tensor, K: Tensor | None, plan: Resize) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(the grid image, d on the grid, f_D's depth at the input size, the K f_D stands for at the input size).

        Reference order: f_D sees the resized and padded grid image (K scaled to the grid), its depth
        is normalised there, and brought back to the input size (bilinear, no antialias) for the fit.
        """
        x = to_grid(image, plan)
        k = K if self.pass_k_to_metric else None
        if self.metric_at_input_res:
            metric = self.metric_model.predict(image, k)
            d = to_grid(metric.depth, plan)
            return x, d, metric.depth, metric.K
        K_grid = None if k is None else scale_intrinsics(k, plan.input_hw, plan.resized_hw)
        metric = self.metric_model.predict(x, K_grid)
        return x, metric.depth, unpad_and_resize(metric.depth, plan), scale_intrinsics(metric.K, plan.resized_hw, plan.input_hw)

    def _difference_map(self, method: str, z_a: Tensor, z_d: Tensor, d_n: Tensor, clock: _Clock) -> tuple[Tensor, Tensor]:
        """e on the processing grid and ê on the latent grid, made by `method` (see the class)."""
        latent_hw = tuple(z_a.shape[-2:])
        if method == "latent":
            with clock("difference"):
                e_hat = latent_difference(z_a, z_d)
                e = F.interpolate(e_hat, size=tuple(d_n.shape[-2:]), mode="bilinear", align_corners=False)
            return e, e_hat
        with clock("decode"):
            d_tilde = self.engine.decode_depth(z_a) if method == "exact" else self.light_decoder(z_a)
        with clock("difference"):
            e = difference_map(d_tilde, d_n, fit_first=self.difference_fit_first)
            return e, downsample_to_latent(e, latent_hw)

    def _noise(self, batch: int, plan: Resize, seed: int | None) -> tuple[Tensor, Tensor]:
        """ε1 (affine pass) and ε2 (gating) on the latent grid. Seeded: drawn on the CPU and shared by every
        image of the batch, so an image's result depends on neither the device nor its batch mates; kept
        on the device for the next frame with the same seed and grid (no copy from the host per frame)."""
        shape = (self.engine.latent_channels, *(n // self.engine.downsample_factor for n in plan.padded_hw))
        if seed is None:
            return tuple(torch.randn((batch, *shape), device=self.device) for _ in range(2))
        key = (int(seed), shape, self.device)
        if key not in self._seeded_noise:
            g = torch.Generator().manual_seed(int(seed))
            if len(self._seeded_noise) >= 8:  # a handful of grids (cameras) at a time
                self._seeded_noise.clear()
            self._seeded_noise[key] = tuple(torch.randn((1, *shape), generator=g).to(self.device) for _ in range(2))
        return tuple(eps.expand(batch, *shape) for eps in self._seeded_noise[key])

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path | None = None,
        *,
        student: str | Path | None = None,
        metric: str | None = None,
        metric_path: str | Path | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        processing_res: int | None = None,
        speed: str = "exact",
        difference: str | None = None,
        depth_encoder: str | None = None,
        metric_at_input_res: bool = False,
        fast: FastPath | None = None,
        engine: str = "pytorch",
        engine_dir: str | Path | None = None,
        engine_cache: str | Path | None = None,
    ) -> "SharpDepthPipeline":
        """The one place a pipeline is assembled: the CLI, the node and the benchmarks only map their
        settings to these arguments.

        Either a pipeline folder (`student/`, `pipeline.json`, and `metric/` unless pipeline.json
        names the metric weights; default: the embedded models), or components: `student` (folder or
        hub id, e.g. jingheya/lotus-depth-g-v1-0) and `metric` (a backend name) with `metric_path`
        (default: that backend's usual hub id). A student saved by the trainer has a pipeline.json
        beside it that supplies the metric backend and the processing resolution it was trained at.
        speed: a preset (`speed.SPEEDS`) giving difference, depth_encoder and fast where they are None
        (`speed.resolve`). engine: "pytorch", or an exported engine ("onnx", "tensorrt", "aoti") on the
        `sharpdepth export` folder `engine_dir` (TensorRT plans cached in `engine_cache`, default inside
        it); an export of another student or grid is refused in one line, and the PyTorch student's
        weights are then never loaded. processing_res, difference, depth_encoder, metric_at_input_res,
        fast: see the class."""
        if student is None:
            folder = Path(path) if path is not None else EMBEDDED_DIR
            if not folder.is_dir():
                raise MissingWeightsError(f"SharpDepth pipeline: no folder {folder} (pass a pipeline folder, or a student and a metric backend)")
            config = pipeline_config.read(folder)
            student = folder / "student"
            own_metric = folder / "metric"
        elif path is not None:
            raise ValueError("pass either a pipeline folder or a student, not both")
        else:
            config = pipeline_config.beside_student(student)
            own_metric = None
        metric, metric_path = pipeline_config.metric_source(config, metric, metric_path, own_metric)
        if metric is None:
            raise ValueError("a metric backend name is needed (e.g. 'depth-anything-v2'): --metric / metric_backend")
        beside = Path(student).parent if config else None  # a saved pipeline keeps its light networks beside the student
        exported = engine != "pytorch"
        settings = resolve(speed, device, beside, exported=exported, difference=difference, depth_encoder=depth_encoder, fast=fast)
        processing_res = check_processing_res(processing_res or config.get("processing_res", DEFAULT_PROCESSING_RES))
        if exported:
            runner = exported_engine(engine, engine_dir, student, processing_res, device, engine_cache)
            student_model, scheduler = None, DiffusionDepthModel.load_scheduler(student)
        elif engine_dir:
            raise ValueError(f"an engine folder ({engine_dir}) goes with an exported engine (onnx, tensorrt or aoti), not {engine!r}")
        else:
            runner, student_model, scheduler = None, DiffusionDepthModel.from_pretrained(student, dtype=dtype, device=device), None
        return cls(
            student_model,
            load_metric_model(metric, metric_path, device=device, dtype=dtype),
            processing_res=processing_res,
            difference_fit_first=bool(config.get("difference_fit_first", False)),
            untrained=bool(config.get("untrained", False)),
            engine=runner,
            difference=settings.difference,
            metric_at_input_res=metric_at_input_res,
            depth_encoder=settings.depth_encoder,
            light_folder=beside,
            camera=config.get("camera"),
            distilled_from=config.get("distilled_from"),
            fast=settings.fast,
            scheduler=scheduler,
        )

    def config(self) -> dict:
        """What `pipeline.json` records."""
        return pipeline_config.make(self.metric_model.name, self.processing_res, self.difference_fit_first, self.untrained,
                                    camera=self.camera, distilled_from=self.distilled_from)

    def save_pretrained(self, path: str | Path) -> Path:
        """Write a pipeline folder that `from_pretrained(path)` reads back."""
        if self.student is None:
            raise ValueError(f"a pipeline on the {self.engine.name} engine has no PyTorch student to save; save the pipeline it was exported from")
        with replacing_dir(path, also=EARLIER_SAVE) as tmp:
            self.student.save_pretrained(tmp / "student")
            self.metric_model.save_pretrained(tmp / "metric")
            for name, kind, light in ((LIGHT_DECODER_DIR, LightDepthDecoder, self.light_decoder),
                                      (LIGHT_ENCODER_DIR, LightDepthEncoder, self.light_encoder)):
                light = light or self._load_light(name, kind)
                if light is not None:
                    light.save_pretrained(tmp / name)
            pipeline_config.write(tmp, self.config())
        return Path(path)
