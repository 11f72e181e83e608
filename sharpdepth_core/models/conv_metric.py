"""The small-scale metric family: a convolutional encoder-decoder for metric depth ("small-conv").

It exists for the small-scale reproduction (`train/nano`): trained from scratch on two CPU cores it
converges about three times faster per step than a small ViT, and its coarse output grid (log depth
at 1/`output_stride` of its input, 1/16 in the shipped model, upsampled bilinearly) makes it accurate
but blurry at boundaries — the regime of UniDepth in the paper, whose 14-pixel patches play the same
role.

Architecture: 4 stride-2 stages (Conv-GroupNorm-SiLU twice) of `channels`, a global-average-pooling
term added at the bottom (scene scale needs the whole image), then U-Net-style up-stages with skip
connections until `output_stride`, and a 1x1 head predicting log depth.

Camera: the network is trained on one camera (`image_size`, focal length `focal` in pixels). It
always sees the image resized so that its longer edge is that camera's (the pipeline's processing
grid at the embedded resolution already is), and a given K is used the way Metric3D's canonical
camera does: depth = network depth x f / focal, with f the given focal length at the network's
input size. Without K the training camera's field of view is assumed.
"""
from __future__ import annotations

import math
import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import Tensor, nn

from ..geometry import focal_intrinsics
from .hub import load_own_model
from .metric_backend import MetricBackend, MetricPrediction, imagenet_normalize

BACKEND_NAME = "small-conv"


def _block(c_in: int, c_out: int, stride: int, groups: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1), nn.GroupNorm(groups, c_out), nn.SiLU(),
        nn.Conv2d(c_out, c_out, 3, padding=1), nn.GroupNorm(groups, c_out), nn.SiLU(),
    )


class ConvMetricNet(ModelMixin, ConfigMixin):
    """Normalised RGB [B, 3, H, W] (H, W multiples of 16) -> log depth [B, 1, H/s, W/s], s = output_stride."""

    config_name = "config.json"

    @register_to_config
    def __init__(
        self,
        channels: tuple[int, ...] = (32, 64, 96, 128),
        output_stride: int = 8,
        groups: int = 8,
        image_size: tuple[int, int] = (96, 128),
        focal: float = 96.0,
        init_depth: float = 3.0,
    ):
        super().__init__()
        n = len(channels)
        if output_stride not in [2**k for k in range(1, n + 1)]:
            raise ValueError(f"output_stride must be a power of two from 2 to {2**n}, got {output_stride}")
        self.down = nn.ModuleList(_block(c_in, c_out, 2, groups) for c_in, c_out in zip((3, *channels[:-1]), channels))
        self.pooled = nn.Linear(channels[-1], channels[-1])
        ups = n - int(math.log2(output_stride))  # up-stages from 1/2^n to 1/output_stride
        self.up = nn.ModuleList(
            _block(channels[n - 1 - i] + channels[n - 2 - i], channels[n - 2 - i], 1, groups) for i in range(ups)
        )
        self.head = nn.Conv2d(channels[n - 1 - ups], 1, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.constant_(self.head.bias, math.log(init_depth))

    def forward(self, x: Tensor) -> Tensor:
        skips = []
        for stage in self.down:
            x = stage(x)
            skips.append(x)
        x = x + self.pooled(x.mean(dim=(2, 3)))[:, :, None, None]
        for i, stage in enumerate(self.up):
            skip = skips[-2 - i]
            x = stage(torch.cat([F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False), skip], 1))
        return self.head(x)


class ConvMetricBackend(MetricBackend):
    """`small-conv` behind the metric-backend interface (see `metric_backend.MetricBackend`)."""

    name = BACKEND_NAME

    def __init__(self, model: ConvMetricNet):
        super().__init__()
        self.model = model

    @property
    def camera_hw(self) -> tuple[int, int]:
        return tuple(int(v) for v in self.model.config.image_size)

    def training_K(self, hw: tuple[int, int], batch: int = 1, device=None) -> Tensor:
        """The training camera's K at another image size (same field of view, centred principal point)."""
        f = float(self.model.config.focal) * max(hw) / max(self.camera_hw)
        return focal_intrinsics(torch.full((batch,), f, device=device), hw)

    def predict_log(self, image01: Tensor, K: Tensor | None) -> tuple[Tensor, Tensor]:
        """(log depth at the input size, K used); differentiable, for training and `_predict`."""
        b, _, h, w = image01.shape
        scale = max(self.camera_hw) / max(h, w)
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        x = image01.float()
        if size != (h, w):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        x = imagenet_normalize(x)
        m = 2 ** len(self.model.config.channels)
        pad_h, pad_w = -size[0] % m, -size[1] % m
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        log_depth = self.model(x.to(self.dtype)).float()
        s = self.model.config.output_stride
        log_depth = log_depth[..., : math.ceil(size[0] / s), : math.ceil(size[1] / s)]
        log_depth = F.interpolate(log_depth, size=(h, w), mode="bilinear", align_corners=False)
        used = K if K is not None else self.training_K((h, w), b, image01.device)
        f_net = torch.sqrt(used[:, 0, 0] * used[:, 1, 1]) * scale  # focal length at the network's input size
        log_depth = log_depth + torch.log(f_net / float(self.model.config.focal)).view(b, 1, 1, 1)
        return log_depth, used

    def _predict(self, image01: Tensor, K: Tensor | None) -> MetricPrediction:
        log_depth, used = self.predict_log(image01, K)
        return MetricPrediction(log_depth.exp(), used)

    @classmethod
    def from_pretrained(cls, path_or_id, device="cpu", dtype=torch.float32) -> "ConvMetricBackend":
        model = load_own_model(ConvMetricNet, path_or_id, f"metric backend {BACKEND_NAME}", torch_dtype=dtype)
        return cls(model.eval()).to(device)
