"""Frames per second of the synthetic scene generator, per style and image size, on one core.

Prints a table and one JSON line. Wall-clock and process CPU time are both reported: on a shared
machine the wall figure drops with other load, the CPU figure much less (the load average is printed
so the two can be read in context).
"""
import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # before numpy loads
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

from sharpdepth_core.synthetic import STYLES, render_scene  # noqa: E402


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 256x192, got {text!r}") from None
    return w, h


def measure(style: str, width: int, height: int, frames: int) -> dict:
    for seed in range(3):  # warm-up: imports, allocator
        render_scene(seed, width, height, style=style)
    wall, cpu = time.perf_counter(), time.process_time()
    for seed in range(frames):
        render_scene(seed, width, height, style=style)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"style": style, "width": width, "height": height, "frames": frames,
            "fps_wall": frames / wall, "fps_cpu": frames / cpu, "ms_per_frame_wall": 1e3 * wall / frames}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", type=_size, default=[(256, 192), (640, 480)],
                        help="image sizes WxH (default: 256x192 640x480)")
    parser.add_argument("--styles", nargs="+", choices=STYLES, default=list(STYLES))
    parser.add_argument("--frames", type=int, default=100, help="frames per measurement (seeds 0..N-1)")
    args = parser.parse_args(argv)
    if args.frames <= 0:
        parser.error("--frames must be positive")

    rows = [measure(style, w, h, args.frames) for w, h in args.sizes for style in args.styles]
    print(f"{'style':<8} {'size':>9} {'fps (wall)':>11} {'fps (cpu)':>10} {'ms/frame':>9}")
    for r in rows:
        size = f"{r['width']}x{r['height']}"
        print(f"{r['style']:<8} {size:>9} {r['fps_wall']:>11.1f} {r['fps_cpu']:>10.1f} {r['ms_per_frame_wall']:>9.2f}")
    print(json.dumps({"bench": "synthetic", "threads": 1, "load_average_1min": os.getloadavg()[0], "results": rows}))


if __name__ == "__main__":
    main()
