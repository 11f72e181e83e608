"""SharpDepthPipeline: the reference one-step inference of SharpDepth (METHOD.md, "Inference").

metric depth d = f_D(I) -> latents z_i = enc(I), z_d = enc(norm(d)) -> affine pass on noise
ẑ_a = G(z_i, ε1), d̃ = dec(ẑ_a) -> difference map e = |d̃ - norm(d)| / max -> gated sharpening pass
ẑ = G(z_i, ê ⊙ add_noise(ẑ_a, ε2, 999) + (1 - ê) ⊙ z_d) -> d̂_n = dec(ẑ) -> back to the input size ->
least-squares scale and shift of d̂_n onto d over the pixels with e < 0.5.
"""
from __future__ import annotations

import json
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .alignment import apply_scale_shift, fit_scale_shift
from .engines import DepthEngine, TorchEngine
from .gating import TIMESTEP, add_noise, difference_map, downsample_to_latent, gate
from .models import EMBEDDED_DIR, DiffusionDepthModel, MetricBackend, MissingWeightsError, load_metric_model
from .models.hub import CheckpointError, replacing_dir
from .models.metric import check_intrinsics
from .normalization import normalize_depth
from .preprocessing import resize_and_pad, unpad_and_resize

FIT_THRESHOLD = 0.5  # the final fit trusts pixels where f_G and f_D disagree by less than this
PIPELINE_CONFIG = "pipeline.json"


@dataclass
class SharpDepthOutput:
    depth: Tensor  # [B, 1, H, W] sharpened metric depth, metres (values <= 0 are invalid)
    metric_depth: Tensor  # [B, 1, H, W] f_D's depth, metres
    difference: Tensor  # [B, 1, H, W] e in [0, 1]: where the affine pass disagrees with f_D
    K: Tensor  # [B, 3, 3] the intrinsics used (given, else the metric backend's)
    timings: dict[str, float]  # seconds per stage, plus "total"
    fallback: list[bool] = field(default_factory=list)  # per image: degenerate fit, depth = metric_depth


def as_image_batch(image) -> Tensor:
    """uint8 HxWx3 numpy, or a [B, 3, H, W] / [3, H, W] tensor (float in [0, 1] or uint8) -> float [B, 3, H, W]."""
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"numpy image must be uint8 HxWx3 RGB, got {image.dtype} of shape {image.shape}")
        return torch.from_numpy(np.require(image, requirements=["C", "W"])).permute(2, 0, 1)[None].float() / 255
    if not isinstance(image, Tensor):
        raise ValueError(f"image must be a uint8 HxWx3 numpy array or a [B, 3, H, W] tensor, got {type(image).__name__}")
    if image.ndim == 3:
        image = image[None]
    if image.ndim != 4 or image.shape[1] != 3:
        raise ValueError(f"image tensor must be [B, 3, H, W], got shape {tuple(image.shape)}")
    if image.dtype == torch.uint8:
        return image.float() / 255
    if not image.is_floating_point():
        raise ValueError(f"image tensor must be float in [0, 1] or uint8, got {image.dtype}")
    image = image.float()
    if not torch.isfinite(image).all() or image.min() < 0 or image.max() > 1:
        raise ValueError("image tensor values must be finite and in [0, 1]")
    return image


def fit_to_metric(d_hat_n: Tensor, metric_depth: Tensor, e: Tensor, threshold: float = FIT_THRESHOLD) -> tuple[Tensor, list[bool]]:
    """`s d̂_n + b` with (s, b) the least-squares fit onto the metric depth over pixels where
    e < threshold and the metric depth is valid. A degenerate fit (too few pixels, scale <= 0)
    returns the metric depth for that image; the list says which images fell back."""
    mask = (e < threshold) & torch.isfinite(metric_depth) & (metric_depth > 0)
    fit = fit_scale_shift(d_hat_n, metric_depth, mask=mask)
    usable = fit.usable.view(-1, 1, 1, 1)
    depth = torch.where(usable, apply_scale_shift(d_hat_n, fit), metric_depth)
    return depth, [not u for u in fit.usable.tolist()]


class _Clock:
    """Seconds per stage (summed when a stage repeats); waits for the GPU only on CUDA."""

    def __init__(self, device: torch.device):
        self.device, self.timings = device, {}
        self._start = time.perf_counter()

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        self._sync()
        t = time.perf_counter()
        yield
        self._sync()
        self.timings[stage] = self.timings.get(stage, 0.0) + time.perf_counter() - t

    def total(self) -> dict[str, float]:
        self._sync()
        return {**self.timings, "total": time.perf_counter() - self._start}


class SharpDepthPipeline:
    """Sharp metric depth from one image: `pipeline(image, K=None, seed=None) -> SharpDepthOutput`.

    processing_res: longer edge of the diffusion grid (None: the input size). difference_fit_first:
    the paper's difference map (d̃ least-squares fitted to d first) instead of the reference's.
    pass_k_to_metric: give a known camera K to the metric backend (UniDepth V2, Depth Pro use it);
    the returned K is the camera's either way. untrained: the weights are random (tiny models), so
    anything showing the output must say so. engine: runs the UNet and VAE calls (`engines`; default
    the student's own modules, exactly as they are).
    """

    def __init__(
        self,
        student: DiffusionDepthModel,
        metric_model: MetricBackend,
        processing_res: int | None = 768,
        difference_fit_first: bool = False,
        pass_k_to_metric: bool = True,
        untrained: bool = False,
        engine: DepthEngine | None = None,
    ):
        if processing_res is not None and (not isinstance(processing_res, int) or processing_res < 8):
            raise ValueError(f"processing_res must be an integer >= 8 or None, got {processing_res!r}")
        self.student, self.metric_model = student, metric_model
        self.processing_res = processing_res
        self.difference_fit_first = difference_fit_first
        self.pass_k_to_metric = pass_k_to_metric
        self.untrained = untrained
        self.engine = engine if engine is not None else TorchEngine(student)

    @property
    def device(self) -> torch.device:
        return self.engine.device

    def to(self, device: str | torch.device) -> "SharpDepthPipeline":
        self.student.to(device)
        self.metric_model.to(device)
        return self

    @torch.no_grad()
    def __call__(self, image, K=None, seed: int | None = None) -> SharpDepthOutput:
        """image: uint8 HxWx3 numpy or float [B, 3, H, W] in [0, 1]; K: [3, 3] or [B, 3, 3]; seed: makes
        both noise draws reproducible. All outputs are at the input size."""
        clock = _Clock(self.device)
        image = as_image_batch(image).to(self.device)
        K = check_intrinsics(K, image.shape[0], self.device)
        engine = self.engine

        # 1. metric depth d = f_D(I), at the input size
        with clock("metric"):
            metric = self.metric_model(image, K if self.pass_k_to_metric else None)

        # 2. z_i = enc(I), z_d = enc(norm(d)) on the processing grid (the image latent serves both passes)
        with clock("encode"):
            x, plan = resize_and_pad(image, self.processing_res, engine.downsample_factor)
            d, _ = resize_and_pad(metric.depth, self.processing_res, engine.downsample_factor)
            d_n, _, _ = normalize_depth(d)
            z_i, z_d = engine.encode_image(x), engine.encode_depth(d_n)
        eps1, eps2 = self._noise(z_i, seed)

        # 3. affine pass on pure noise: ẑ_a = G(z_i, ε1), d̃ = dec(ẑ_a)
        with clock("affine_pass"):
            z_a = engine.unet(z_i, eps1)
        with clock("decode"):
            d_tilde = engine.decode_depth(z_a)

        # 4. difference map e and its latent-grid version ê (nearest)
        with clock("difference"):
            e = difference_map(d_tilde, d_n, fit_first=self.difference_fit_first)
            e_hat = downsample_to_latent(e, tuple(z_a.shape[-2:]))

        # 5-6. noise-aware gating, sharpening pass: ẑ = G(z_i, ê ⊙ add_noise(ẑ_a, ε2) + (1 - ê) ⊙ z_d)
        with clock("sharpen_pass"):
            z_gated = gate(z_d, e_hat, add_noise(z_a, eps2, TIMESTEP, self.student.alphas_cumprod))
            z = engine.unet(z_i, z_gated)
        with clock("decode"):
            d_hat_n = engine.decode_depth(z)

        # 7-8. back to the input size; scale and shift onto the metric depth where e < 0.5
        with clock("fit"):
            d_hat_n, e = unpad_and_resize(d_hat_n, plan), unpad_and_resize(e, plan).clamp(0, 1)
            depth, fallback = fit_to_metric(d_hat_n, metric.depth, e)
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
            metric_depth=metric.depth,
            difference=e,
            K=K if K is not None else metric.K,
            timings=clock.total(),
            fallback=fallback,
        )

    @staticmethod
    def _noise(like: Tensor, seed: int | None) -> tuple[Tensor, Tensor]:
        """ε1 (affine pass) and ε2 (gating). Seeded: drawn once on the CPU and shared by every image
        of the batch, so an image's result depends on neither the device nor its batch mates."""
        if seed is None:
            return torch.randn_like(like), torch.randn_like(like)
        g = torch.Generator().manual_seed(int(seed))
        shape = (1, *like.shape[1:])
        return tuple(torch.randn(shape, generator=g).to(like.device, like.dtype).expand_as(like) for _ in range(2))

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
    ) -> "SharpDepthPipeline":
        """Either a pipeline folder (`student/`, `metric/`, `pipeline.json`; default: the embedded
        models), or components: `student` (folder or hub id, e.g. jingheya/lotus-depth-g-v1-0) and
        `metric` (a backend name) with `metric_path` (default: that backend's usual hub id)."""
        config: dict = {}
        if student is None:
            folder = Path(path) if path is not None else EMBEDDED_DIR
            config_file = folder / PIPELINE_CONFIG
            if not config_file.is_file():
                raise MissingWeightsError(
                    f"SharpDepth pipeline: no {PIPELINE_CONFIG} in {folder}; pass a pipeline folder (student/, metric/, "
                    f"{PIPELINE_CONFIG}) or a student and a metric backend"
                )
            try:
                config = json.loads(config_file.read_text())
            except ValueError as exc:
                raise CheckpointError(f"{config_file}: not valid JSON ({exc})") from exc
            student, metric_path = folder / "student", metric_path or folder / "metric"
            metric = metric or config.get("metric_backend")
        elif path is not None:
            raise ValueError("pass either a pipeline folder or a student, not both")
        if metric is None:
            raise ValueError("a metric backend name is needed (e.g. 'depth-anything-v2')")
        return cls(
            DiffusionDepthModel.from_pretrained(student, dtype=dtype, device=device),
            load_metric_model(metric, metric_path, device=device, dtype=dtype),
            processing_res=processing_res or config.get("processing_res", 768),
            difference_fit_first=bool(config.get("difference_fit_first", False)),
            untrained=bool(config.get("untrained", False)),
        )

    def save_pretrained(self, path: str | Path) -> Path:
        """Write a pipeline folder that `from_pretrained(path)` reads back."""
        config = {
            "metric_backend": self.metric_model.name,
            "processing_res": self.processing_res,
            "difference_fit_first": self.difference_fit_first,
            "untrained": self.untrained,
        }
        with replacing_dir(path) as tmp:
            self.student.save_pretrained(tmp / "student")
            self.metric_model.save_pretrained(tmp / "metric")
            (tmp / PIPELINE_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        return Path(path)
