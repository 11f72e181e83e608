#!/usr/bin/env python3
"""Retrain the whole small-scale SharpDepth from nothing, then write the report (`make nano`).

  1. VAE (vae.py), then 3. f_G (diffusion_teacher.py)  ‖  2. f_D (metric_teacher.py) all along:
     single-thread processes side by side (on two shared cores, faster than one process on two threads)
  4. SharpDepth distillation with train/distill.py on target-style images (no GT), and the five
     ablations of METHOD.md (configs/sharpdepth.yaml + configs/ablations.yaml), three at a time
  5. the full run's pipeline folder (student + f_D) -> sharpdepth_core/weights/nano (the embedded
     default), then bench/nano_report.py
Everything goes under out/nano (NANO_OUT); wall-clock minutes per stage go to out/nano/timings.json.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml
from PIL import Image

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))
from common import OUT, TARGET, scenes  # noqa: E402

PY = sys.executable
EMBEDDED = REPO / "sharpdepth_core" / "weights" / "nano"
PARALLEL_RUNS = 3  # distillation runs side by side
STAGES = ("teachers", "f_G", "distill", "report")  # teachers: VAE, f_D and then f_G
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "NANO_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def start(name: str, cmd: list[str]) -> tuple[str, subprocess.Popen, float, object]:
    log = open(OUT / "logs" / f"{name}.log", "w")
    print(f"[{time.strftime('%H:%M:%S')}] start {name}: {' '.join(cmd)} (log: {log.name})", flush=True)
    return name, subprocess.Popen(cmd, cwd=REPO, env=ONE_THREAD, stdout=log, stderr=subprocess.STDOUT), time.perf_counter(), log


def wait(job, timings: dict) -> None:
    name, proc, t0, log = job
    rc = proc.wait()
    log.close()
    timings[name] = round(time.perf_counter() - t0, 1)
    json.dump(timings, open(OUT / "timings.json", "w"), indent=2)
    tail = Path(log.name).read_text().strip().splitlines()[-1:] or [""]
    print(f"[{time.strftime('%H:%M:%S')}] {name}: exit {rc} after {timings[name] / 60:.1f} min | {tail[0]}", flush=True)
    if rc != 0:
        raise SystemExit(f"{name} failed (exit {rc}); see {log.name}")


def distill_images() -> Path:
    """The distillation data: target-style images only, as a plain image folder (no depth)."""
    folder = OUT / "data" / "distill"
    rgb, _ = scenes(TARGET, "distill")
    if len(list(folder.glob("*.png"))) != len(rgb):
        folder.mkdir(parents=True, exist_ok=True)
        for i, im in enumerate(rgb):
            Image.fromarray(im).save(folder / f"{i:05d}.png")
    return folder


def distill_cmd(name: str, overrides: dict) -> list[str]:
    sets = [f"--set={k}={json.dumps(v)}" for k, v in overrides.items()]
    return [PY, "train/distill.py", "--config", str(HERE / "configs" / "sharpdepth.yaml"), *sets,
            f"--set=output_dir={OUT / 'runs' / name}", f"--set=teacher={OUT / 'f_G'}", f"--set=metric_path={OUT / 'f_D'}",
            f"--set=data=[{OUT / 'data' / 'distill'}]", f"--set=depth_cache={OUT / 'depth_cache'}"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, nargs=3, default=[12, 36, 22], metavar=("VAE", "F_D", "F_G"))
    p.add_argument("--ablations", nargs="*", help="distillation runs (default: all of configs/ablations.yaml)")
    p.add_argument("--no-ship", action="store_true", help="do not copy the result into sharpdepth_core/weights/nano")
    p.add_argument("--from", dest="first", choices=STAGES, default=STAGES[0],
                   help="start at this stage, keeping what the earlier ones left in out/nano (after a failure)")
    args = p.parse_args()
    t_all = time.perf_counter()
    (OUT / "logs").mkdir(parents=True, exist_ok=True)
    todo = STAGES[STAGES.index(args.first):]
    stale = {"teachers": ["vae", "f_D", "f_G"], "f_G": ["f_G"], "distill": ["runs", "depth_cache"]}
    for stage in todo:
        for name in stale.get(stage, []):
            shutil.rmtree(OUT / name, ignore_errors=True)
    timings: dict[str, float] = json.loads((OUT / "timings.json").read_text()) if args.first != STAGES[0] else {}
    t0 = time.perf_counter()
    if "teachers" in todo:
        vae = start("vae", [PY, str(HERE / "vae.py"), "--minutes", str(args.minutes[0])])
        f_d = start("f_D", [PY, str(HERE / "metric_teacher.py"), "--minutes", str(args.minutes[1])])
        wait(vae, timings)
    if "f_G" in todo:
        f_g = start("f_G", [PY, str(HERE / "diffusion_teacher.py"), "--minutes", str(args.minutes[2])])
    if "teachers" in todo:
        wait(f_d, timings)
    if "f_G" in todo:
        wait(f_g, timings)
    distill_images()
    ablations = yaml.safe_load((HERE / "configs" / "ablations.yaml").read_text())
    names = args.ablations or list(ablations)
    for i in range(0, len(names) if "distill" in todo else 0, PARALLEL_RUNS):
        jobs = [start(f"distill_{n}", distill_cmd(n, ablations[n]["overrides"])) for n in names[i : i + PARALLEL_RUNS]]
        for job in jobs:
            wait(job, timings)
    timings["training (this invocation)"] = round(time.perf_counter() - t0, 1)
    json.dump(timings, open(OUT / "timings.json", "w"), indent=2)
    if not args.no_ship:
        tmp = EMBEDDED.with_name(".nano.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(OUT / "runs" / "full" / "pipeline", tmp)
        if (EMBEDDED / "MODEL_CARD.md").is_file():
            shutil.copy2(EMBEDDED / "MODEL_CARD.md", tmp / "MODEL_CARD.md")
        shutil.rmtree(EMBEDDED, ignore_errors=True)
        tmp.rename(EMBEDDED)
    report = subprocess.run([PY, "bench/nano_report.py", "--models", str(OUT)], cwd=REPO, env=ONE_THREAD)
    timings["total with report"] = round(time.perf_counter() - t_all, 1)
    json.dump(timings, open(OUT / "timings.json", "w"), indent=2)
    print("\nmodels:")
    print(f"  VAE                      {OUT / 'vae'}")
    print(f"  f_D (Depth Anything V2)  {OUT / 'f_D'}")
    print(f"  f_G (Lotus-G)            {OUT / 'f_G'}")
    for n in names:
        print(f"  student {n:<16} {OUT / 'runs' / n / 'pipeline'}")
    if not args.no_ship:
        print(f"  embedded default         {EMBEDDED}")
    print(f"  report                   {REPO / 'bench' / 'NANO_REPORT.md'}")
    print(f"total: {timings['total with report'] / 60:.1f} min")
    return report.returncode


if __name__ == "__main__":
    sys.exit(main())
