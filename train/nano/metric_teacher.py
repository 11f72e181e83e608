#!/usr/bin/env python3
"""Step 2: the metric teacher f_D, Depth Anything V2's metric architecture (DINOv2 + DPT head,
sigmoid · max_depth) in a small config, trained on metric depth of the target style.

It is trained through the project's own backend (`DepthAnythingBackend`: the same resize to
multiples of 14, ImageNet normalisation and bilinear resize back), so what it learns is what the
pipeline runs. Its 14 px patch grid (7 x 9 patches at 128 x 96) makes it accurate but smooth: the
regime of UniDepth in the paper. Loss: scale-invariant log error plus L1 of log depth.
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from common import H, OUT, TARGET, W, Budget, batch, optimize, scenes, setup
from sharpdepth_core.metrics import depth_metrics
from sharpdepth_core.models.metric import DepthAnythingBackend, load_metric_model

MAX_DEPTH = 10  # metres; the target rooms stay below 8.1 m


def nano_depth_anything() -> DepthAnythingBackend:
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config

    backbone = Dinov2Config(
        image_size=126, patch_size=14, hidden_size=96, num_hidden_layers=6, num_attention_heads=4,
        intermediate_size=384, out_indices=[3, 4, 5, 6], reshape_hidden_states=False,
    )
    config = DepthAnythingConfig(
        backbone_config=backbone, patch_size=14, reassemble_hidden_size=96, neck_hidden_sizes=[24, 48, 96, 96],
        fusion_hidden_size=32, head_hidden_size=16, depth_estimation_type="metric", max_depth=MAX_DEPTH,
    )
    return DepthAnythingBackend(DepthAnythingForDepthEstimation(config))


def loss_fn(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    g = torch.log(pred.clamp_min(1e-3)) - torch.log(gt)
    silog = (g.pow(2).mean(dim=(1, 2, 3)) - 0.85 * g.mean(dim=(1, 2, 3)).pow(2)).clamp_min(1e-8).sqrt()
    return silog.mean() + g.abs().mean()


@torch.no_grad()
def evaluate(backend, rgb: np.ndarray, depth: np.ndarray) -> dict[str, float]:
    image, gt = batch(rgb, depth, np.arange(len(rgb)), flip=False)
    pred = torch.cat([backend(image[i : i + 25]).depth for i in range(0, len(image), 25)])
    return depth_metrics(pred, gt)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=15.0)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=4e-4)
    p.add_argument("--init", help="continue training this saved f_D instead of starting from random weights")
    p.add_argument("--out", default=str(OUT / "f_D"))
    args = p.parse_args()
    setup(0)
    rgb, depth = scenes(TARGET, "f_D")
    backend = (load_metric_model("depth-anything-v2", args.init) if args.init else nano_depth_anything()).train()
    print(f"f_D: {sum(p.numel() for p in backend.parameters()) / 1e6:.2f} M parameters")
    opt = torch.optim.AdamW(backend.parameters(), lr=args.lr, weight_decay=1e-2)
    budget, step, rng = Budget(args.minutes * 60), 0, np.random.default_rng(1)
    while budget.left():
        image, gt = batch(rgb, depth, rng.integers(0, len(rgb), args.batch))
        loss = loss_fn(backend._predict(image, None).depth, gt)  # the backend's own pre/post-processing, with grad
        optimize(opt, loss, backend.parameters(), args.lr, step, budget.elapsed / budget.seconds)
        step += 1
        if step % 100 == 0:
            print(f"step {step} {budget.elapsed:.0f}s loss {loss.item():.4f}", flush=True)
    backend.eval().save_pretrained(args.out)
    loaded = load_metric_model("depth-anything-v2", args.out)  # the public loader reads it back
    m = evaluate(loaded, *scenes(TARGET, "eval"))
    print(f"f_D: {step} steps in {budget.elapsed:.0f} s -> {args.out}; held-out {TARGET} ({W}x{H}): "
          f"AbsRel {m['abs_rel']:.4f} delta1 {m['delta1']:.4f} RMSE {m['rmse']:.4f}")


if __name__ == "__main__":
    main()
