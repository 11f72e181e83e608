"""CPU hygiene of the inference path, each change measured against what it replaced, side by side in
one run on the embedded models (a 320x240 frame, as the node sees a small camera):

  device/dtype  the pipeline with DiffusionDepthModel's device/dtype (read from the UNet's first
                parameter) against diffusers' properties, which walk every submodule on each read
                (the code before: re-created below)
  colours       colorize_depth's built-in 256-entry table against matplotlib's colormap on the
                same normalised depth (the code before imported matplotlib on the first frame)
  threads       one pipeline frame at 1 and at 2 PyTorch threads, on the idle machine and while
                one other busy process shares the cores (the node's num_threads default is 1)

Methods are timed alternately, rounds rotating their order; medians and minima in ms. Prints a table
and one JSON line.

    .venv/bin/python bench/cpu.py            # ~20 s; --quick (or QUICK=1): 3 rounds
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
import warnings

import numpy as np
import torch

from sharpdepth_core.models.hub import quiet_loading
from sharpdepth_core.models.student import DiffusionDepthModel
from sharpdepth_core.pipeline import SharpDepthPipeline
from sharpdepth_core.synthetic import render_scene
from sharpdepth_core.visualize import _FAR, DEPTH_CMAP, colorize_depth
from timing import add_quick, announce, quick_defaults, time_alternately  # bench/timing.py

QUICK = {"rounds": 3}
# The estimate: one 320x240 pipeline frame of the embedded models (2 threads with another busy process
# cost ~2.5 of them) and the start, measured 2026-12-07 on the reference machine.
SECONDS_FRAME, SECONDS_START = 0.12, 8.0


def estimate(rounds: int) -> float:
    frames = 2 * (rounds + 1) + 3 + (4 + 1.5) * (1 + max(3, rounds // 3))  # placement, checks, threads (2 idle, 2 shared)
    return SECONDS_START + 1 + SECONDS_FRAME * frames + 0.004 * 2 * (4 * rounds + 1)  # + the other process's start, colours


class WalkingPlacement(DiffusionDepthModel):
    """The student before the fix: every .device/.dtype read walks the UNet's modules (diffusers)."""

    dtype = property(lambda self: self.unet.dtype)
    device = property(lambda self: self.unet.device)


def alternate(methods: dict, rounds: int) -> dict[str, dict[str, float]]:
    """Median and min ms of each zero-argument callable, timed alternately."""
    times = time_alternately(methods, rounds)
    return {k: {"median_ms": float(np.median(v)), "min_ms": float(np.min(v))} for k, v in times.items()}


def matplotlib_colours(depth: np.ndarray) -> np.ndarray:
    """colorize_depth before the built-in table: matplotlib's colormap in float RGBA on the valid pixels."""
    from matplotlib import colormaps

    valid = np.isfinite(depth) & (depth > 0)
    out = np.zeros((*depth.shape, 3), dtype=np.uint8)
    lo, hi = np.percentile(depth[valid], [2, 98])
    t = np.clip((hi - depth[valid]) / max(hi - lo, 1e-12), 0, 1)
    out[valid] = (colormaps[DEPTH_CMAP](_FAR + (1 - _FAR) * t)[..., :3] * 255 + 0.5).astype(np.uint8)
    return out


def busy(stop) -> None:
    """Another process on the machine: one core's worth of matrix multiplications."""
    torch.set_num_threads(1)
    a = torch.randn(256, 256)
    while not stop.is_set():
        a = (a @ a).tanh()


def frame_ms(pipe: SharpDepthPipeline, rgb: np.ndarray, threads: int, rounds: int) -> float:
    torch.set_num_threads(threads)
    pipe(rgb, seed=0)
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        pipe(rgb, seed=0)
        times.append(1e3 * (time.perf_counter() - t))
    return float(np.median(times))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--rounds", type=int, default=15, help="timed rounds per method")
    add_quick(p, f"{QUICK['rounds']} rounds")
    args = quick_defaults(p, argv, QUICK)
    announce("cpu", estimate(args.rounds), f"{args.rounds} rounds", args.quick)
    warnings.simplefilter("ignore")  # the embedded models' banner
    quiet_loading()  # no "Loading checkpoint shards" bar
    torch.set_num_threads(1)
    load = os.getloadavg()[0]
    rgb = render_scene(100_000, 320, 240).rgb
    pipe = SharpDepthPipeline.from_pretrained()
    s = pipe.student
    walking = SharpDepthPipeline(WalkingPlacement(s.unet, s.vae, s.scheduler, s.prompt_embeds), pipe.metric_model,
                                 processing_res=pipe.processing_res)
    torch.testing.assert_close(walking(rgb, seed=0).depth, pipe(rgb, seed=0).depth)  # same output first
    results = {"placement": alternate({"first parameter": lambda: pipe(rgb, seed=0), "walking (before)": lambda: walking(rgb, seed=0)},
                                      args.rounds)}

    depth = pipe(rgb, seed=0).depth[0, 0].numpy()
    assert "matplotlib" not in sys.modules, "something imported matplotlib already: its import time cannot be measured"
    t = time.perf_counter()
    import matplotlib  # noqa: F401  (the first frame's import, before)
    import_ms = 1e3 * (time.perf_counter() - t)
    table, reference = colorize_depth(depth), matplotlib_colours(depth)
    results["colours"] = alternate({"table": lambda: colorize_depth(depth), "matplotlib (before)": lambda: matplotlib_colours(depth)},
                                   args.rounds * 4)
    results["colours"]["matplotlib_import_ms"] = import_ms
    results["colours"]["max_channel_diff"] = int(np.abs(table.astype(int) - reference.astype(int)).max())

    threads = {}
    for shared in (False, True):
        stop = mp.Event()
        other = mp.Process(target=busy, args=(stop,)) if shared else None
        if other:
            other.start()
            time.sleep(1)
        for n in (1, 2):
            threads[f"{n} thread(s), {'shared' if shared else 'idle'}"] = frame_ms(pipe, rgb, n, max(3, args.rounds // 3))
        if other:
            stop.set()
            other.join()
    results["threads_ms"] = threads
    torch.set_num_threads(1)

    print(f"embedded models, one 320x240 frame, 1-minute load average {load:.2f} at the start; ms")
    print(f"{'what':<36}{'median':>10}{'min':>10}")
    for group in ("placement", "colours"):
        for name, v in results[group].items():
            if isinstance(v, dict):
                print(f"{group + ': ' + name:<36}{v['median_ms']:>10.2f}{v['min_ms']:>10.2f}")
    pl, co = results["placement"], results["colours"]
    print(f"walking / first parameter: {pl['walking (before)']['median_ms'] / pl['first parameter']['median_ms']:.2f}x (median); "
          f"matplotlib / table: {co['matplotlib (before)']['median_ms'] / co['table']['median_ms']:.1f}x, plus "
          f"{import_ms:.0f} ms to import matplotlib on the first frame; colours differ by at most {co['max_channel_diff']}/255")
    for name, ms in threads.items():
        print(f"frame at {name:<26}{ms:>10.1f}")
    print(json.dumps({"bench": "cpu", "load_average": load, **results}))


if __name__ == "__main__":
    main()
