"""What the cheaper difference maps cost in accuracy, on trained models: the embedded small-scale
pipeline on held-out (val) scenes of its own camera, each method (`exact`, `light`, `latent`) against
the exact path and against the exact path's own run-to-run spread (two noise seeds). A shortcut
qualifies for the fast settings (`FAST_DIFFERENCE` below) only when every metric moves by less
than that spread. (Timing on full-size random weights is `bench/pipeline.py`'s job; random weights
cannot say how a trained model degrades.) Prints a table and one JSON line.

    .venv/bin/python bench/difference_accuracy.py              # 30 val scenes, 1 thread, ~1 min
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from sharpdepth_core.metrics import depth_scores
from sharpdepth_core.pipeline import SharpDepthPipeline
from sharpdepth_core.synthetic import render_scene

# The fast settings' difference map (bench/pipeline.py's torch-bf16 / torch-fast): a shortcut only where its
# accuracy change stayed within the exact path's own run-to-run spread here (bench/RESULTS.md); else exact.
FAST_DIFFERENCE = "exact"


def difference_accuracy(n: int, first_seed: int = 110_000, device: str = "cpu") -> dict:
    """The difference-map methods on trained models: the embedded pipeline on n held-out val scenes of
    its own camera (the nano report scores other seeds). Per method: AbsRel, δ1, DBE of the final
    depth, |Δdepth| against exact (seed 0) and the CPU time ratio; the exact path's spread over two
    noise seeds is the yardstick a shortcut must stay within."""
    pipe = SharpDepthPipeline.from_pretrained(device=device)
    camera = pipe.camera or {"width": 128, "height": 96, "K": None, "style": "indoor"}
    K = None if camera["K"] is None else np.array(camera["K"])
    scenes = [render_scene(first_seed + i, camera["width"], camera["height"], K=K, style=camera["style"]) for i in range(n)]
    runs = {"exact": ("exact", 0), "exact, seed 1": ("exact", 1), "latent": ("latent", 0)}
    if pipe.light_decoder is not None:
        runs["light"] = ("light", 0)
    depths, seconds = {}, {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for name, (method, seed) in runs.items():
            t = time.perf_counter()
            depths[name] = [pipe(sc.rgb, seed=seed, difference=method).depth[0, 0].cpu().numpy() for sc in scenes]
            seconds[name] = time.perf_counter() - t
    gt = np.stack([sc.depth for sc in scenes])
    out = {}
    for name, d in depths.items():
        delta = np.abs(np.clip(np.stack(d), 0.01, None) - np.clip(np.stack(depths["exact"]), 0.01, None))
        out[name] = {**depth_scores(d, gt), "max_abs_diff_m": float(delta.max()), "mean_abs_diff_m": float(delta.mean()),
                     "time_vs_exact": seconds[name] / seconds["exact"]}
    keys = ("abs_rel", "delta1", "dbe_acc", "dbe_compl")
    spread = {k: abs(out["exact"][k] - out["exact, seed 1"][k]) for k in keys}
    for name in ("light", "latent"):
        if name in out:
            out[name]["within_spread"] = all(abs(out[name][k] - out["exact"][k]) < spread[k] for k in keys)
    return {"scenes": n, "first_seed": first_seed, "methods": out, "spread": spread}


def accuracy_table(acc: dict) -> str:
    lines = [f"difference-map methods on the embedded models, {acc['scenes']} held-out val scenes (seeds {acc['first_seed']}..):",
             f"{'method':<14} {'AbsRel':>7} {'δ1':>6} {'DBE acc':>8} {'compl':>6} {'max|Δd| m':>10} {'mean|Δd| m':>11} {'time/exact':>10} {'in spread':>9}"]
    for name, m in acc["methods"].items():
        within = {True: "yes", False: "no"}.get(m.get("within_spread"), "-")
        lines.append(f"{name:<14} {m['abs_rel']:>7.4f} {m['delta1']:>6.3f} {m['dbe_acc']:>8.2f} {m['dbe_compl']:>6.2f} "
                     f"{m['max_abs_diff_m']:>10.3f} {m['mean_abs_diff_m']:>11.4f} {m['time_vs_exact']:>10.2f} {within:>9}")
    sp = acc["spread"]
    lines.append(f"spread (|exact seed 0 - seed 1|): AbsRel {sp['abs_rel']:.4f}, δ1 {sp['delta1']:.3f}, "
                 f"DBE acc {sp['dbe_acc']:.2f}, compl {sp['dbe_compl']:.2f}; fast settings use: {FAST_DIFFERENCE}")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenes", type=int, default=30, help="held-out val scenes")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (1: steady time ratios on a shared machine)")
    parser.add_argument("--device", default="cpu", help="cuda: the same on the GPU (its kernels may move the figures)")
    parser.add_argument("--json", type=Path, help="also write the JSON result to this file")
    args = parser.parse_args(argv)
    if min(args.scenes, args.threads) < 1:
        parser.error("--scenes and --threads must be >= 1")
    torch.set_num_threads(args.threads)
    print(f"[bench] difference-map accuracy on {args.scenes} held-out scenes", file=sys.stderr, flush=True)
    accuracy = difference_accuracy(args.scenes, device=args.device)
    print(accuracy_table(accuracy))
    line = json.dumps({"bench": "difference_accuracy", "torch": torch.__version__, "threads": args.threads, "device": args.device, **accuracy})
    if args.json:
        args.json.write_text(line + "\n")
    print(line)


if __name__ == "__main__":
    main()
