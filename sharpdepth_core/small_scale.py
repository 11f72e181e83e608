"""The small-scale regime of the embedded models: one robot camera, two scene styles, and the disjoint
seed ranges that every training script (train/nano) and benchmark (bench/) draws from.

The target domain is one robot camera: the "indoor" style seen through a fixed pinhole camera
(128x96, 67.5° horizontal field of view), the way a user distils on their own robot's images. It is
what f_D learns metric depth on, what the distillation sees (images only) and what the report scores.
f_G learns on F_G_STYLE through the same camera. Seed ranges are disjoint: nothing is scored on a
scene any model trained on, and design choices are made on "val", never on "eval".
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from .files import atomic_write

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
    """The target camera as pipeline.json records it (tools render the same domain from it): the embedded
    models' camera (train/nano wrote their pipeline.json from it; test_nano keeps the two equal)."""
    return {"width": W, "height": H, "K": CAMERA_K.tolist(), "hfov_deg": HFOV_DEG, "style": TARGET}


def scenes(style: str, part: str, cache: Path) -> tuple[np.ndarray, np.ndarray]:
    """(rgb uint8 [N, H, W, 3], depth float32 [N, H, W] metres) of a seed range, cached as .npz in `cache`."""
    from .synthetic import render_scene  # which renders with this module's camera by default

    first, count = SEEDS[part]
    path = cache / f"{style}_{first}_{count}_{W}x{H}_hfov{HFOV_DEG:g}.npz"
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
    with atomic_write(path) as f:
        np.savez(f, rgb=rgb, depth=depth)
    print(f"rendered {count} {style} scenes (seeds {first}..{first + count - 1}) in {time.perf_counter() - t:.0f} s")
    return rgb, depth
