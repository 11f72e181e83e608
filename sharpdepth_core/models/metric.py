"""Metric depth f_D behind one interface: `backend(image01, K=None) -> MetricPrediction`.

image01 is [B, 3, H, W] RGB in [0, 1]; K an optional [B, 3, 3] camera matrix (pixel centres at
integer coordinates). A backend returns metric depth (metres along the optical axis) at the input
size and the K it stands for: the given one, else the backend's own estimate, else — for backends
that predict none (Depth Anything) — a nominal camera with a 60° horizontal field of view and the
principal point at the image centre (`geometry.nominal_intrinsics`); only unprojection uses that K.

Backends, chosen by name (`load_metric_model`):
- "unidepth-v1", "unidepth-v2": UniDepth, the paper's f_D. CC BY-NC, not on PyPI: imported lazily
  when installed by the user; it takes 0..255 RGB and the camera (V2 `camera=`, V1 `intrinsics=`).
- "depth-pro": transformers' DepthProForDepthEstimation (canonical inverse depth + field of view).
- "depth-anything-v2": transformers' DepthAnythingForDepthEstimation, metric head (metres).
- "small-conv": the small-scale family (`conv_metric`), trained in this repository on synthetic
  scenes for the embedded models; it uses a given K through its training camera's focal length.
Pre-processing is done here in torch (the transformers image processors need torchvision).
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..choices import METRIC_BACKENDS
from ..geometry import focal_intrinsics, nominal_intrinsics
from ..hub_ids import DEFAULT_METRIC_IDS
from .hub import CheckpointError, MissingWeightsError, load_component, read_config, resolve_model_dir, weight_files
from .metric_backend import MetricBackend, MetricPrediction, imagenet_normalize



def _load_transformers(model_cls, model_type: str, path_or_id, what: str, dtype: torch.dtype):
    """transformers `from_pretrained` with safetensors only and every key accounted for."""
    folder = resolve_model_dir(path_or_id, what)
    config_file = folder / "config.json"
    found = read_config(config_file, what).get("model_type")
    if found != model_type:
        raise CheckpointError(f"{what}: {config_file} has model_type {found!r}, expected {model_type!r}")
    model = load_component(
        lambda: model_cls.from_pretrained(folder, use_safetensors=True, dtype=dtype, output_loading_info=True),
        weight_files(folder),
        what,
    )
    return model.eval()


# --- Depth Pro -------------------------------------------------------------------------------


def depth_pro_inputs(image01: Tensor, size: int) -> Tensor:
    """Normalise to [-1, 1] (mean = std = 0.5), then bilinear resize to size² (no antialias, as
    transformers' DepthProImageProcessor)."""
    x = (image01 - 0.5) / 0.5
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=False)


def depth_pro_to_metric(
    inverse_depth: Tensor, fov_deg: Tensor | None, input_hw: tuple[int, int], K: Tensor | None
) -> MetricPrediction:
    """Canonical inverse depth [B, h, w] -> metres at input_hw.

    f = K[0, 0] when K is given, else 0.5 W / tan(fov / 2) from the predicted horizontal field of view
    (degrees), else — a checkpoint without a field-of-view head — the nominal camera, a 60° horizontal
    field of view; inverse depth `pred · W / f` is resized to (H, W) and `depth = 1 / clamp(inv, 1e-4, 1e4)`.
    """
    h, w = input_hw
    b = inverse_depth.shape[0]
    if K is not None:
        f = K[:, 0, 0].float()
    elif fov_deg is not None:
        f = 0.5 * w / torch.tan(torch.deg2rad(fov_deg.float().reshape(b)) / 2)
    else:
        f = nominal_intrinsics(b, input_hw, inverse_depth.device)[:, 0, 0]
    inv = inverse_depth.float()[:, None] * (w / f).view(b, 1, 1, 1)
    inv = F.interpolate(inv, size=(h, w), mode="bilinear", align_corners=False)
    depth = 1.0 / inv.clamp(1e-4, 1e4)
    return MetricPrediction(depth, K if K is not None else focal_intrinsics(f, input_hw))


class DepthProBackend(MetricBackend):
    name = "depth-pro"

    def __init__(self, model):
        super().__init__()
        self.model = model
        c = model.config
        self.image_size = round(c.patch_size / min(c.scaled_images_ratios))  # 1536 for apple/DepthPro-hf

    def _predict(self, image01: Tensor, K: Tensor | None) -> MetricPrediction:
        x = depth_pro_inputs(image01.float(), self.image_size).to(self.dtype)
        out = self.model(pixel_values=x)
        return depth_pro_to_metric(out.predicted_depth, out.field_of_view, tuple(image01.shape[-2:]), K)

    @classmethod
    def from_pretrained(cls, path_or_id=DEFAULT_METRIC_IDS["depth-pro"], device="cpu", dtype=torch.float32):
        from transformers import DepthProForDepthEstimation

        model = _load_transformers(DepthProForDepthEstimation, "depth_pro", path_or_id, "metric backend depth-pro", dtype)
        return cls(model).to(device)


# --- Depth Anything V2 (metric) ----------------------------------------------------------------


def depth_anything_input_size(hw: tuple[int, int], size: int, multiple: int = 14) -> tuple[int, int]:
    """transformers' DPT rule with keep_aspect_ratio: scale by whichever of size/H, size/W is
    closer to 1, then round each side to a multiple of the patch size."""
    h, w = hw
    sh, sw = size / h, size / w
    s = sw if abs(1 - sw) < abs(1 - sh) else sh
    return tuple(max(multiple, round(v * s / multiple) * multiple) for v in (h, w))


def depth_anything_inputs(image01: Tensor, size: int, multiple: int = 14) -> Tensor:
    """Bicubic resize (aspect kept, sides multiples of 14), then ImageNet mean/std normalisation."""
    x = F.interpolate(
        image01, size=depth_anything_input_size(tuple(image01.shape[-2:]), size, multiple), mode="bicubic",
        align_corners=False, antialias=True,
    ).clamp(0, 1)
    return imagenet_normalize(x)


class DepthAnythingBackend(MetricBackend):
    """Output is already metres (sigmoid · max_depth), resized back bicubically as transformers'
    post-processing does; bicubic can overshoot at a boundary, so the result is kept >= 1 mm.

    The default checkpoint is Indoor-Small, whose metric head is capped at 20 m: for outdoor scenes
    load an Outdoor checkpoint (max 80 m): `checkpoints.DEPTH_ANYTHING_OUTDOOR_ID`."""

    name = "depth-anything-v2"

    def __init__(self, model):
        super().__init__()
        if model.config.depth_estimation_type != "metric":
            raise CheckpointError("metric backend depth-anything-v2: this checkpoint predicts relative depth; use a -Metric- one")
        self.model = model
        self.image_size = int(model.config.backbone_config.image_size)  # 518 for the released models
        self.multiple = int(model.config.patch_size)

    def _predict(self, image01: Tensor, K: Tensor | None) -> MetricPrediction:
        x = depth_anything_inputs(image01.float(), self.image_size, self.multiple).to(self.dtype)
        out = self.model(pixel_values=x).predicted_depth.float()[:, None]
        hw = tuple(image01.shape[-2:])
        depth = F.interpolate(out, size=hw, mode="bicubic", align_corners=False).clamp_min(1e-3)
        return MetricPrediction(depth, K if K is not None else nominal_intrinsics(image01.shape[0], hw, image01.device))

    @classmethod
    def from_pretrained(cls, path_or_id=DEFAULT_METRIC_IDS["depth-anything-v2"], device="cpu", dtype=torch.float32):
        from transformers import DepthAnythingForDepthEstimation

        model = _load_transformers(
            DepthAnythingForDepthEstimation, "depth_anything", path_or_id, "metric backend depth-anything-v2", dtype
        )
        return cls(model).to(device)


# --- UniDepth (optional, user-installed) -------------------------------------------------------


class UniDepthBackend(MetricBackend):
    """UniDepth V1/V2 through its own `infer`, one image at a time (its documented call)."""

    static_shapes = False  # `infer` loops over images and builds dicts: it is run eagerly before the compiled rest

    def __init__(self, model: nn.Module, version: int):
        super().__init__()
        if version not in (1, 2):
            raise ValueError(f"UniDepth version must be 1 or 2, got {version}")
        self.model, self.version = model, version
        self.name = f"unidepth-v{version}"

    def _predict(self, image01: Tensor, K: Tensor | None) -> MetricPrediction:
        depths, Ks = [], []
        for i in range(image01.shape[0]):
            rgb = (image01[i].float() * 255).int()  # [3, H, W], 0..255 truncated, as the reference passes it
            kwargs = {} if K is None else {("camera" if self.version == 2 else "intrinsics"): K[i]}
            pred = self.model.infer(rgb, **kwargs)
            depths.append(pred["depth"].reshape(1, 1, *image01.shape[-2:]).float())
            Ks.append(K[i] if K is not None else pred["intrinsics"].reshape(3, 3).float())
        return MetricPrediction(torch.cat(depths), torch.stack(Ks).to(image01.device))

    @classmethod
    def from_pretrained(cls, path_or_id=None, version: int = 2, device="cpu", dtype=torch.float32):
        """UniDepth runs in its own precision; `dtype` is accepted for a uniform signature."""
        try:
            from unidepth.models import UniDepthV1, UniDepthV2
        except ImportError as exc:
            raise ImportError(_NO_UNIDEPTH.format(version=version)) from exc
        what = f"metric backend unidepth-v{version}"
        folder = resolve_model_dir(path_or_id or DEFAULT_METRIC_IDS[f"unidepth-v{version}"], what)
        model_cls = UniDepthV2 if version == 2 else UniDepthV1
        model = load_component(lambda: model_cls.from_pretrained(str(folder)), weight_files(folder), what)
        return cls(model.eval(), version).to(device)


_NO_UNIDEPTH = ("metric backend unidepth-v{version} needs the UniDepth package, which is not installed (not on PyPI, "
                "CC BY-NC 4.0): pip install git+https://github.com/lpiccinelli-eth/UniDepth, or choose depth-pro / depth-anything-v2")


def _unidepth_installed() -> bool:
    """Without importing it (seconds of torch hub code)."""
    try:
        return importlib.util.find_spec("unidepth") is not None
    except ValueError:  # already imported, without a module spec
        return True


def metric_weights(name: str, path_or_id: str | Path | None = None) -> str | Path:
    """Where backend `name`'s weights come from: `path_or_id`, else its published hub id. Checked before
    anything loads: an unknown name, UniDepth without its package and small-conv without a folder are
    one-line errors (ValueError, ImportError, MissingWeightsError)."""
    if name not in METRIC_BACKENDS:
        raise ValueError(f"unknown metric backend {name!r}; choose one of {', '.join(METRIC_BACKENDS)}")
    if name.startswith("unidepth") and not _unidepth_installed():
        raise ImportError(_NO_UNIDEPTH.format(version=name[-1]))
    if path_or_id is None and name not in DEFAULT_METRIC_IDS:
        raise MissingWeightsError(f"metric backend {name}: no published checkpoint; pass its folder (e.g. the embedded metric/)")
    return path_or_id or DEFAULT_METRIC_IDS[name]


def load_metric_model(
    name: str, path_or_id: str | Path | None = None, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> MetricBackend:
    """The metric backend `name` (one of METRIC_BACKENDS) from a folder or hub id (default: its
    usual hub checkpoint, see DEFAULT_METRIC_IDS)."""
    path_or_id = metric_weights(name, path_or_id)
    if name == "small-conv":
        from .conv_metric import ConvMetricBackend

        return ConvMetricBackend.from_pretrained(path_or_id, device=device, dtype=dtype)
    if name.startswith("unidepth"):
        return UniDepthBackend.from_pretrained(path_or_id, version=int(name[-1]), device=device, dtype=dtype)
    backend_cls = DepthProBackend if name == "depth-pro" else DepthAnythingBackend
    return backend_cls.from_pretrained(path_or_id, device=device, dtype=dtype)
