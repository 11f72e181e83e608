"""What every metric depth model f_D is: `backend(image01, K=None) -> MetricPrediction`.

The interface shared by the published backends (`metric`) and the small-scale family
(`conv_metric`): input checks, no autograd, float32 out, saving; and the ImageNet normalisation
their encoders expect.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from ..geometry import check_intrinsics
from ..files import replacing_dir

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class MetricPrediction:
    depth: Tensor  # [B, 1, H, W] metres, at the input size
    K: Tensor  # [B, 3, 3] float32, the intrinsics the depth stands for


class MetricBackend(nn.Module):
    """Common validation; subclasses implement `_predict` (inputs checked, no autograd).

    static_shapes: the model's work depends only on the input's shape, so a frame can be compiled
    and replayed as a CUDA graph through it (false for a backend that loops or branches on values)."""

    name: str
    static_shapes = True

    def forward(self, image01: Tensor, K: Tensor | None = None) -> MetricPrediction:
        if not isinstance(image01, Tensor) or image01.ndim != 4 or image01.shape[1] != 3:
            raise ValueError(f"metric backend: image must be a [B, 3, H, W] tensor, got {getattr(image01, 'shape', type(image01))}")
        return self.predict(image01, check_intrinsics(K, image01.shape[0], image01.device))

    def predict(self, image01: Tensor, K: Tensor | None) -> MetricPrediction:
        """`forward` on inputs the caller has checked: checking K on the device would wait for it."""
        with torch.no_grad():
            pred = self._predict(image01, K)
        return MetricPrediction(pred.depth.float(), pred.K.float())

    def _predict(self, image01: Tensor, K: Tensor | None) -> MetricPrediction:
        raise NotImplementedError

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def save_pretrained(self, path: str | Path) -> Path:
        with replacing_dir(path) as tmp:
            self.model.save_pretrained(tmp)
        return Path(path)


def imagenet_normalize(x: Tensor) -> Tensor:
    """[0, 1] RGB -> ImageNet mean/std normalised, as the ImageNet-pretrained encoders expect."""
    mean = torch.tensor(IMAGENET_MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std
