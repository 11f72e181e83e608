"""Shared settings of the small-scale reproduction: the target camera, domains, seed ranges, cached scenes.

The target domain is one robot camera: the "indoor" style seen through a fixed pinhole camera
(CAMERA: 128x96, 67.5° horizontal field of view), the way a user distils on their own robot's
images. It is what f_D learns metric depth on, what the distillation sees (images only) and what the
report scores. f_G learns on F_G_STYLE through the same camera. Seed ranges are disjoint: nothing is
scored on a scene any model trained on, and design choices are made on "val", never on "eval".
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path

import numpy as np
import torch

from sharpdepth_core.synthetic import render_scene

H, W = 96, 128
HFOV_DEG = 67.5
FOCAL = 0.5 * W / math.tan(math.radians(HFOV_DEG) / 2)
CAMERA_K = np.array([[FOCAL, 0.0, (W - 1) / 2], [0.0, FOCAL, (H - 1) / 2], [0.0, 0.0, 1.0]])
TARGET = "indoor"
F_G_STYLE = "office"  # chosen by pilot on the val seeds (bench/NANO_REPORT.md, "Design")
SEEDS = {  # (first seed, count)
    "vae": (200_000, 3000),  # RGB and depth of the target and f_G's style for the autoencoder
    "f_D": (0, 6000),  # target style, metric GT
    "f_G": (0, 6000),  # f_G's style, normalised GT
    "distill": (50_000, 1000),  # target style, images only
    "val": (110_000, 100),  # target style: pilots and design choices
    "eval": (100_000, 100),  # target style, held out from everything, scored once by the report
}


def camera() -> dict:
    """The target camera as pipeline.json records it (tools render the same domain from it)."""
    return {"width": W, "height": H, "K": CAMERA_K.tolist(), "hfov_deg": HFOV_DEG, "style": TARGET}
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
    """(rgb uint8 [N, H, W, 3], depth float32 [N, H, W] metres) of a seed range, cached as .npz."""
    first, count = SEEDS[part]
    path = OUT / "cache" / f"{style}_{first}_{count}_{W}x{H}_hfov{HFOV_DEG:g}.npz"
    if path.is_file():
        data = np.load(path)
        return data["rgb"], data["depth"]
    t = time.perf_counter()
    rgb = np.empty((count, H, W, 3), np.uint8)
    depth = np.empty((count, H, W), np.float32)
    for i in range(count):
        scene = render_scene(first + i, W, H, K=CAMERA_K, style=style)
        rgb[i], depth[i] = scene.rgb, scene.depth
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez(tmp, rgb=rgb, depth=depth)
    tmp.replace(path)
    print(f"rendered {count} {style} scenes (seeds {first}..{first + count - 1}) in {time.perf_counter() - t:.0f} s")
    return rgb, depth


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
