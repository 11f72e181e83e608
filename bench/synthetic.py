"""Frames per second of the synthetic scene generator, per style and image size, on one core.

Prints a table and one JSON line. Wall-clock and process CPU time are both reported: on a shared
machine the wall figure drops with other load, the CPU figure much less (the load average is printed
so the two can be read in context). --quick (or QUICK=1): 10 frames per measurement, a check.
"""
import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # before numpy loads
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

from sharpdepth_core.synthetic import STYLES, render_scene  # noqa: E402
from timing import add_quick, announce, progress, quick_defaults  # noqa: E402  (bench/timing.py)

QUICK = {"frames": 10}
# The estimate: CPU seconds of a frame (process time, which other work on the machine inflates less
# than the wall clock), a + b x megapixels, measured 2026-12-07 on the reference machine (load ~2), and the start.
SECONDS_FRAME, SECONDS_PER_MP, SECONDS_START = 0.004, 0.14, 1.0


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 256x192, got {text!r}") from None
    return w, h


def measure(style: str, width: int, height: int, frames: int, bar=None) -> dict:
    for seed in range(3):  # warm-up: imports, allocator
        render_scene(seed, width, height, style=style)
    wall, cpu = time.perf_counter(), time.process_time()
    for seed in range(frames):
        render_scene(seed, width, height, style=style)
        if bar is not None:
            bar.update()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"style": style, "width": width, "height": height, "frames": frames,
            "fps_wall": frames / wall, "fps_cpu": frames / cpu, "ms_per_frame_wall": 1e3 * wall / frames}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", type=_size, default=[(256, 192), (640, 480)],
                        help="image sizes WxH (default: 256x192 640x480)")
    parser.add_argument("--styles", nargs="+", choices=STYLES, default=list(STYLES))
    parser.add_argument("--frames", type=int, default=100, help="frames per measurement (seeds 0..N-1)")
    add_quick(parser, f"{QUICK['frames']} frames per measurement")
    args = quick_defaults(parser, argv, QUICK)
    if args.frames <= 0:
        parser.error("--frames must be positive")

    runs = [(style, w, h) for w, h in args.sizes for style in args.styles]
    seconds = SECONDS_START + sum((args.frames + 3) * (SECONDS_FRAME + SECONDS_PER_MP * w * h / 1e6) for _, w, h in runs)
    announce("synthetic", seconds, f"{len(runs)} measurements x {args.frames + 3} frames", args.quick,
             f"{SECONDS_FRAME + SECONDS_PER_MP * 0.3072:.3f} s a 640x480 frame")
    with progress(total=len(runs) * args.frames, desc="synthetic", unit="frame") as bar:
        rows = [measure(style, w, h, args.frames, bar) for style, w, h in runs]
    print(f"{'style':<8} {'size':>9} {'fps (wall)':>11} {'fps (cpu)':>10} {'ms/frame':>9}")
    for r in rows:
        size = f"{r['width']}x{r['height']}"
        print(f"{r['style']:<8} {size:>9} {r['fps_wall']:>11.1f} {r['fps_cpu']:>10.1f} {r['ms_per_frame_wall']:>9.2f}")
    print(json.dumps({"bench": "synthetic", "threads": 1, "load_average_1min": os.getloadavg()[0], "results": rows}))


if __name__ == "__main__":
    main()
