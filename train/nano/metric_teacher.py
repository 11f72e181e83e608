#!/usr/bin/env python3
"""Step 2: the metric teacher f_D, the small-scale family (`small-conv`: a convolutional encoder-decoder
predicting log depth on a coarse grid), trained on metric depth of the target camera.

Chosen by pilot (bench/NANO_REPORT.md, "Design"): on two CPU cores it converges about three times
faster per step than a Depth Anything V2-tiny ViT or a GLPN-tiny, and its output grid (1/16 of the
input, upsampled bilinearly) makes it accurate but blurry at boundaries: UniDepth's regime in the
paper. It is trained through the project's own backend (`ConvMetricBackend.predict_log`: the same
resize, normalisation and use of K as at inference), so what it learns is what the pipeline runs.
Loss: scale-invariant log error plus L1 of log depth. Scored at the end on the val seeds.
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from common import OUT, batch, optimize, progress, scenes, setup
from sharpdepth_core.small_scale import CAMERA_K, FOCAL, H, TARGET, W
from sharpdepth_core.metrics import depth_metrics
from sharpdepth_core.models.conv_metric import ConvMetricBackend, ConvMetricNet
from sharpdepth_core.models.metric import load_metric_model

OUTPUT_STRIDE = 16  # chosen by pilot: at 1/8 its boundaries were as good as f_G's (no sharpness to add)


def loss_fn(log_pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    g = log_pred - torch.log(gt)
    silog = (g.pow(2).mean(dim=(1, 2, 3)) - 0.85 * g.mean(dim=(1, 2, 3)).pow(2)).clamp_min(1e-8).sqrt()
    return silog.mean() + g.abs().mean()


@torch.no_grad()
def evaluate(backend, rgb: np.ndarray, depth: np.ndarray) -> dict[str, float]:
    image, gt = batch(rgb, depth, np.arange(len(rgb)), flip=False)
    K = torch.as_tensor(CAMERA_K, dtype=torch.float32)
    pred = torch.cat([backend(image[i : i + 25], K).depth for i in range(0, len(image), 25)])
    return depth_metrics(pred, gt)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=8000)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--stride", type=int, default=OUTPUT_STRIDE, help="output grid: 1/stride of the input")
    p.add_argument("--out", default=str(OUT / "f_D"))
    args = p.parse_args()
    setup(0)
    rgb, depth = scenes(TARGET, "f_D")
    backend = ConvMetricBackend(ConvMetricNet(output_stride=args.stride, image_size=(H, W), focal=FOCAL)).train()
    print(f"f_D: {sum(p.numel() for p in backend.parameters()) / 1e6:.2f} M parameters, output grid 1/{args.stride}")
    opt = torch.optim.AdamW(backend.parameters(), lr=args.lr, weight_decay=1e-2)
    rng, K = np.random.default_rng(1), torch.as_tensor(CAMERA_K, dtype=torch.float32)
    for step in progress(args.steps, "f_D"):
        image, gt = batch(rgb, depth, rng.integers(0, len(rgb), args.batch))
        loss = loss_fn(backend.predict_log(image, K.expand(len(image), 3, 3))[0], gt)  # with grad
        optimize(opt, loss, backend.parameters(), args.lr, step, step / args.steps)
    backend.eval().save_pretrained(args.out)
    loaded = load_metric_model("small-conv", args.out)  # the public loader reads it back
    m = evaluate(loaded, *scenes(TARGET, "val"))
    print(f"f_D: {args.steps} steps -> {args.out}; val {TARGET} ({W}x{H}): "
          f"AbsRel {m['abs_rel']:.4f} delta1 {m['delta1']:.4f} RMSE {m['rmse']:.4f}")


if __name__ == "__main__":
    main()
