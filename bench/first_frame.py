"""Time to the first depth from process start, per engine: what a robot waits for after starting the
node. Each engine runs in a fresh Python process (imports, model load, any compilation, one frame;
then a second frame for the steady state), timed from the moment the process is spawned:

  eager          the PyTorch engine as loaded (the reference calls)
  compile        the pipeline's frame with torch.compile (FastPath(compile=True), inductor), with an
                 empty inductor cache (a first start) and again with the cache it left (a restart)
  aoti           the AOTInductor packages of `sharpdepth export --engine aoti`, written once before
                 (that export's time is reported on its own line)

Every process gets its own inductor cache folder under --workdir, so nothing compiled before this
run is reused. Prints a table and one JSON line.

    OMP_NUM_THREADS=1 .venv/bin/python bench/first_frame.py            # embedded models, 320x240, CPU
    .venv/bin/python bench/first_frame.py --device cuda --model DIR --input-size 640x480
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNS = ("eager", "compile (cold cache)", "compile (warm cache)", "aoti")


def child(args) -> None:
    """One engine in this fresh process; prints a JSON line of wall-clock stamps (time.time())."""
    stamps = {"start": time.time()}
    import numpy as np
    import torch

    from sharpdepth_core.embedded import EMBEDDED_DIR
    from sharpdepth_core.pipeline import SharpDepthPipeline
    from sharpdepth_core.speed import FastPath
    from sharpdepth_core.synthetic import render_scene

    torch.set_num_threads(args.threads)
    stamps["imported"] = time.time()
    model = Path(args.model or EMBEDDED_DIR)
    fast = FastPath(compile=True) if args.child.startswith("compile") else None
    engine = {"engine": "aoti", "engine_dir": args.export} if args.child == "aoti" else {}
    pipe = SharpDepthPipeline.from_pretrained(model, device=args.device, fast=fast, **engine)
    stamps["loaded"] = time.time()
    w, h = args.input_size
    rgb = render_scene(0, w, h).rgb
    depth = pipe(rgb, seed=0).depth
    float(depth.sum())  # the depth is on the host: a GPU has finished
    stamps["first_depth"] = time.time()
    pipe(rgb, seed=0).depth.sum().item()
    stamps["second_depth"] = time.time()
    print(json.dumps({"stamps": stamps, "depth": depth[0, 0].cpu().numpy().astype(np.float64).tolist()}))


def spawn(run: str, args, cache: Path) -> dict:
    """Run one engine in a fresh process; seconds from the spawn to each of its stamps."""
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache), "PYTHONPATH": f"{ROOT}:{ROOT / 'bench'}"}
    command = [sys.executable, str(Path(__file__).resolve()), "--child", run, "--export", str(args.workdir / "aoti"),
               "--device", args.device, "--threads", str(args.threads), "--input-size", "{}x{}".format(*args.input_size)]
    if args.model:
        command += ["--model", str(args.model)]
    t0 = time.time()
    out = subprocess.run(command, env=env, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{run}: failed\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    s = result["stamps"]
    return {
        "first_depth_s": s["first_depth"] - t0,
        "import_s": s["imported"] - t0,
        "load_s": s["loaded"] - s["imported"],
        "first_frame_s": s["first_depth"] - s["loaded"],
        "second_frame_s": s["second_depth"] - s["first_depth"],
        "depth": result["depth"],
    }


def export_aoti(args, cache: Path) -> float:
    """`sharpdepth export --engine aoti` for the benchmark's camera size, in its own process; seconds."""
    w, h = args.input_size
    # --overwrite: a second run into the same --workdir (gpu_check.sh's OUT) replaces the first run's export
    command = [sys.executable, "-m", "sharpdepth_core.cli", "export", "--engine", "aoti", "--out", str(args.workdir / "aoti"),
               "--overwrite", "--input-size", f"{w}x{h}", "--device", args.device, *(["--model", str(args.model)] if args.model else [])]
    t0 = time.time()
    done = subprocess.run(command, env={**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache), "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True)
    if done.returncode:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise SystemExit(f"first_frame.py: the aoti export failed (exit {done.returncode}): {last}")
    return time.time() - t0


def size(value: str) -> tuple[int, int]:
    w, h = (int(v) for v in value.lower().split("x"))
    return w, h


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="pipeline folder (default: the embedded models)")
    parser.add_argument("--input-size", type=size, default=(320, 240), metavar="WxH", help="camera image size (default 320x240)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="PyTorch CPU threads per process (default 1)")
    parser.add_argument("--workdir", type=Path, help="export and inductor caches (default: a temporary folder)")
    parser.add_argument("--runs", nargs="+", choices=RUNS, default=list(RUNS),
                        help="which starts to time (default: all; eager is always timed, the reference of Δdepth)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--export", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    import numpy as np

    with tempfile.TemporaryDirectory(prefix="first-frame-") as tmp:
        args.workdir = args.workdir or Path(tmp)
        args.workdir.mkdir(parents=True, exist_ok=True)
        export_s = export_aoti(args, args.workdir / "cache-export") if "aoti" in args.runs else None
        results = {}
        for run in [r for r in RUNS if r == "eager" or r in args.runs]:
            cache = args.workdir / ("cache-compile" if run.startswith("compile") else f"cache-{run}")
            results[run] = spawn(run, args, cache)
    reference = np.array(results["eager"].pop("depth"))
    print(f"time to the first depth from process start, {args.device}, {args.input_size[0]}x{args.input_size[1]}, "
          f"{args.threads} thread(s)" + (f"; aoti export (once, before): {export_s:.1f} s" if export_s is not None else ""))
    print("| run | first depth (s) | import | load | first frame | next frame | max |Δdepth| vs eager (m) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for run, r in results.items():
        delta = 0.0 if run == "eager" else float(np.abs(np.array(r.pop("depth")) - reference).max())
        r["max_abs_delta_m"] = delta
        print(f"| {run} | {r['first_depth_s']:.1f} | {r['import_s']:.1f} | {r['load_s']:.1f} | {r['first_frame_s']:.1f} "
              f"| {r['second_frame_s']:.2f} | {delta:.1e} |")
    print(json.dumps({"device": args.device, "input_size": args.input_size, "threads": args.threads,
                      "aoti_export_s": export_s, "runs": results}))


if __name__ == "__main__":
    main()
