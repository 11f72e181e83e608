"""Shared helpers of the small-scale reproduction's training scripts: where they write (OUT), threads,
batches, the teachers' schedule and progress lines. The regime itself (camera, styles, seed ranges,
cached scenes) is `sharpdepth_core.small_scale`, which the benchmarks share."""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch

from sharpdepth_core import small_scale

OUT = Path(os.environ.get("NANO_OUT", Path(__file__).resolve().parents[2] / "out" / "nano"))


def threads() -> int:
    """NANO_THREADS, else 2 (the machine's cores) when the machine is idle and 1 when others load it:
    measured here, two threads on shared cores run a training step 3-5 times slower than one."""
    if "NANO_THREADS" in os.environ:
        return int(os.environ["NANO_THREADS"])
    return 2 if os.getloadavg()[0] < 1.5 else 1


def setup(seed: int = 0) -> None:
    """Threads (see `threads`) and a fixed seed."""
    torch.set_num_threads(threads())
    torch.manual_seed(seed)
    print(f"torch threads: {torch.get_num_threads()} (1-min load {os.getloadavg()[0]:.1f})", flush=True)


def scenes(style: str, part: str) -> tuple[np.ndarray, np.ndarray]:
    """(rgb, depth) of a seed range, cached under OUT/cache."""
    return small_scale.scenes(style, part, OUT / "cache")


def batch(rgb: np.ndarray, depth: np.ndarray, idx: np.ndarray, flip: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """image [B, 3, H, W] in [0, 1] and depth [B, 1, H, W], each image flipped left-right at random."""
    image = torch.from_numpy(rgb[idx]).permute(0, 3, 1, 2).float() / 255
    d = torch.from_numpy(depth[idx])[:, None]
    if flip:
        f = torch.rand(len(idx)) < 0.5
        image[f], d[f] = image[f].flip(-1), d[f].flip(-1)
    return image, d


def progress(steps: int, name: str, every: int = 200):
    """range(steps) that prints the step, the rate and the time left every `every` steps (a log file
    reads better than a progress bar). Budgets are steps, not minutes, so a retrain gives the same
    models on a busy machine, only later."""
    start = time.perf_counter()
    for step in range(steps):
        yield step
        if (step + 1) % every == 0 or step + 1 == steps:
            elapsed = time.perf_counter() - start
            rate = (step + 1) / elapsed
            print(f"{name}: step {step + 1}/{steps}, {rate:.2f} steps/s, {elapsed / 60:.1f} min, "
                  f"{(steps - step - 1) / rate / 60:.1f} min left", flush=True)


def optimize(opt: torch.optim.Optimizer, loss: torch.Tensor, params, base_lr: float, step: int, progress: float,
             floor: float = 0.05) -> None:
    """One step of the teachers' schedule: 100-step linear warm-up, then a linear decay over the
    budget (`progress` 0 -> 1) down to `floor` x base_lr; gradient-norm clip 1.0."""
    lr = base_lr * min(1.0, (step + 1) / 100) * (floor + (1 - floor) * max(0.0, 1 - progress))
    for g in opt.param_groups:
        g["lr"] = lr
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
