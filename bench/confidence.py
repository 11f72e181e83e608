#!/usr/bin/env python3
"""What the per-pixel confidence costs a frame at camera size: the same 640x480 frame (embedded models,
CPU, 1 thread) with the confidence's spans through torch's max pools (what the compiled and GPU frames
use) and through OpenCV's dilate/erode (the CPU path), alternating in one process. Prints a line and JSON.

    .venv/bin/python bench/confidence.py            # 10 frames each: ~10 s
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings

import cv2
import torch

import sharpdepth_core.pipeline as pipeline
from sharpdepth_core.models.hub import quiet_loading
from sharpdepth_core.small_scale import CAMERA_K, H, TARGET, W
from sharpdepth_core.synthetic import render_scene


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n")[-1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10, help="frames per variant (alternating)")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be >= 1")
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    quiet_loading()
    pipe = pipeline.SharpDepthPipeline.from_pretrained()
    rgb = cv2.resize(render_scene(100000, W, H, K=CAMERA_K, style=TARGET).rgb, (640, 480))
    variants = {"max pools": pipeline.square_extremes_pooled, "OpenCV": pipeline.square_extremes_opencv}
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    pipe(rgb, seed=0)  # warm-up
    for _ in range(args.runs):
        for name, extremes in variants.items():
            pipeline.square_extremes_opencv = extremes  # what the CPU frame's confidence calls
            start = time.perf_counter()
            pipe(rgb, seed=0)
            seconds[name].append(time.perf_counter() - start)
    ms = {name: 1000 * statistics.median(s) for name, s in seconds.items()}
    saved = (ms["max pools"] - ms["OpenCV"]) / ms["max pools"]
    print(f"640x480 frame, median of {args.runs}: max pools {ms['max pools']:.1f} ms, OpenCV {ms['OpenCV']:.1f} ms "
          f"({100 * saved:.1f} % of the frame saved)")
    print(json.dumps({"bench": "confidence", "torch": torch.__version__, "threads": 1, "frame_ms": ms, "saved": saved}))


if __name__ == "__main__":
    main()
