#!/usr/bin/env python3
"""Retrain the whole small-scale SharpDepth from nothing, then write the report (`make nano`).

Stages (each skipped when its output is already in out/nano, so an interrupted run continues where it
stopped; `--redo STAGE` trains one again), two single-thread lanes side by side on two cores (one
scheduler: a stage starts when a lane is free and the stage it reads has finished):
  vae -> f_G            (train/nano/vae.py, then diffusion_teacher.py)
  f_D                   (train/nano/metric_teacher.py)
  gates                 the regime's three gates on the val seeds; no distillation unless they hold
  distill               SharpDepth with train/distill.py on target-camera images (no GT): the full
                        method twice (seeds 0 and 1: the run-to-run spread) and the five ablations
  light_decoder         train/light_decoder.py for the full run's pipeline (the light difference map)
  light_encoder         train/light_encoder.py for the full run's pipeline (the fast preset's z_d encode)
  ship                  full run + f_G teacher + light decoder and encoder -> sharpdepth_core/weights/nano
  report                bench/nano_report.py on the held-out eval seeds -> bench/NANO_REPORT.md
Budgets are steps (the same models on a busy machine, only later); wall-clock minutes per stage go to
out/nano/timings.json and into the report.
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
from common import OUT, scenes  # noqa: E402
from sharpdepth_core.small_scale import camera, H, TARGET, W  # noqa: E402

from sharpdepth_core import pipeline_config  # noqa: E402
from sharpdepth_core.embedded import EMBEDDED_DIR as EMBEDDED  # noqa: E402

PY = sys.executable
STEPS = {"vae": 1200, "f_D": 16000, "f_G": 2600, "light_decoder": 800, "light_encoder": 1500}  # distillation: configs/sharpdepth.yaml
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "NANO_THREADS": "1", "PYTHONUNBUFFERED": "1",
              "NANO_OUT": str(OUT)}
SHARD_SIZE = "4MB"  # the shipped UNets are ~12 MB: stored as shards, every file in git stays small
LANES = 2  # processes side by side: one per core
OUTPUTS = {"vae": ["vae"], "f_D": ["f_D"], "f_G": ["f_G"], "distill": ["runs", "depth_cache"], "light_decoder": ["light_decoder"],
           "light_encoder": ["light_encoder"]}
NEEDED_BY = {"vae": ["f_G"], "f_G": ["distill"], "f_D": ["distill"], "distill": ["light_decoder", "light_encoder"], "light_decoder": [],
             "light_encoder": []}


def redo_set(stages: list[str]) -> set[str]:
    """The stages to train again: those asked for and every trained stage that depends on them."""
    out, todo = set(), [s for s in stages if s in OUTPUTS]
    while todo:
        stage = todo.pop()
        if stage not in out:
            out.add(stage)
            todo += NEEDED_BY[stage]
    return out


def done(stage: str) -> bool:
    marker = {"vae": "vae/config.json", "f_D": "f_D/config.json", "f_G": "f_G/unet/config.json",
              "light_decoder": "light_decoder/config.json", "light_encoder": "light_encoder/config.json"}.get(stage)
    return marker is not None and (OUT / marker).is_file()


def start(name: str, cmd: list[str]) -> tuple[str, subprocess.Popen, float, object]:
    log = open(OUT / "logs" / f"{name}.log", "w")
    print(f"[{time.strftime('%H:%M:%S')}] start {name} (log: {log.name})", flush=True)
    return name, subprocess.Popen(cmd, cwd=REPO, env=ONE_THREAD, stdout=log, stderr=subprocess.STDOUT), time.perf_counter(), log


def wait(job, timings: dict) -> None:
    name, proc, t0, log = job
    rc = proc.wait()
    log.close()
    timings[name] = round(time.perf_counter() - t0, 1)
    (OUT / "timings.json").write_text(json.dumps(timings, indent=2))
    tail = Path(log.name).read_text().strip().splitlines()[-1:] or [""]
    print(f"[{time.strftime('%H:%M:%S')}] {name}: exit {rc} after {timings[name] / 60:.1f} min | {tail[0]}", flush=True)
    if rc != 0:
        raise SystemExit(f"{name} failed (exit {rc}); see {log.name}; run again to continue from here")


def run_lanes(jobs: list[tuple[str, list[str], str | None]], timings: dict) -> None:
    """The one stage scheduler: run jobs (name, command, after) in order, LANES at a time, starting the
    first ready one as soon as any lane is free (ready: the job named `after`, whose output it reads, is
    neither queued nor running); a failure stops the others (a later invocation starts them again)."""
    queue, running = list(jobs), []
    try:
        while queue or running:
            waiting = {job[0] for job in queue + running}
            ready = [job for job in queue if job[2] not in waiting]
            if ready and len(running) < LANES:
                queue.remove(ready[0])
                running.append(start(*ready[0][:2]))
                continue
            finished = next((job for job in running if job[1].poll() is not None), None)
            if finished is None:
                time.sleep(1)
                continue
            running.remove(finished)
            wait(finished, timings)
    finally:
        for _, proc, _, _ in running:
            proc.terminate()
            proc.wait()


def distill_images() -> Path:
    """The distillation data: target-camera images only, as a plain image folder (no depth)."""
    folder = OUT / "data" / "distill"
    rgb, _ = scenes(TARGET, "distill")
    if len(list(folder.glob("*.png"))) != len(rgb):
        folder.mkdir(parents=True, exist_ok=True)
        for i, im in enumerate(rgb):
            Image.fromarray(im).save(folder / f"{i:05d}.png")
    return folder


def distill_cmd(name: str, overrides: dict, scale: float) -> list[str]:
    base = yaml.safe_load((HERE / "configs" / "sharpdepth.yaml").read_text())
    overrides = {"max_steps": max(2, round(base["max_steps"] * scale)), **overrides}
    sets = [f"--set={k}={json.dumps(v)}" for k, v in overrides.items()]
    return [PY, "train/distill.py", "--config", str(HERE / "configs" / "sharpdepth.yaml"), *sets,
            f"--set=output_dir={OUT / 'runs' / name}", f"--set=teacher={OUT / 'f_G'}", f"--set=metric_path={OUT / 'f_D'}",
            f"--set=data=[{OUT / 'data' / 'distill'}]", f"--set=depth_cache={OUT / 'depth_cache'}"]


def ship() -> None:
    """The full run's pipeline, the f_G teacher (for offline distillation) and the light decoder ->
    the embedded default, written beside it and swapped in; the hand-written model card is kept."""
    from diffusers import UNet2DConditionModel

    tmp = EMBEDDED.with_name(".nano.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(OUT / "runs" / "full" / "pipeline", tmp)
    shutil.copytree(OUT / "f_G", tmp / "teacher")
    for light in ("light_decoder", "light_encoder"):
        shutil.copytree(OUT / light, tmp / light)
    pipeline_config.write(tmp, {**pipeline_config.read(tmp), "camera": camera()})
    for unet in (tmp / "student" / "unet", tmp / "teacher" / "unet"):  # files under 5 MiB in git: diffusers' shards
        UNet2DConditionModel.from_pretrained(unet).save_pretrained(unet, max_shard_size=SHARD_SIZE)
        (unet / "diffusion_pytorch_model.safetensors").unlink()
    for path in tmp.rglob("config.json"):  # diffusers records where a model was loaded from: this machine's paths
        config = json.loads(path.read_text())
        if config.pop("_name_or_path", None) is not None:
            path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    if (EMBEDDED / "MODEL_CARD.md").is_file():
        shutil.copy2(EMBEDDED / "MODEL_CARD.md", tmp / "MODEL_CARD.md")
    shutil.rmtree(EMBEDDED, ignore_errors=True)
    tmp.rename(EMBEDDED)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--redo", nargs="+", choices=list(OUTPUTS), default=[],
                   help="train these stages again, and the stages that depend on them")
    p.add_argument("--scale", type=float, default=1.0, help="multiply every step budget (e.g. 0.02: a quick end-to-end check)")
    p.add_argument("--ignore-gates", action="store_true", help="distil even if a gate fails")
    p.add_argument("--no-ship", action="store_true", help="leave sharpdepth_core/weights/nano as it is")
    args = p.parse_args()
    t_all = time.perf_counter()
    (OUT / "logs").mkdir(parents=True, exist_ok=True)
    for stage in redo_set(args.redo):
        for name in OUTPUTS[stage]:
            shutil.rmtree(OUT / name, ignore_errors=True)
    timings_file = OUT / "timings.json"
    timings: dict[str, float] = json.loads(timings_file.read_text()) if timings_file.is_file() else {}
    steps = {k: max(2, round(v * args.scale)) for k, v in STEPS.items()}

    teachers = (("vae", "vae.py", None), ("f_D", "metric_teacher.py", None), ("f_G", "diffusion_teacher.py", "vae"))
    run_lanes([(name, [PY, str(HERE / script), "--steps", str(steps[name])], after)
               for name, script, after in teachers if not done(name)], timings)

    t0 = time.perf_counter()
    gates = subprocess.run([PY, str(REPO / "bench" / "nano_report.py"), "--models", str(OUT), "--gates-only"],
                           cwd=REPO, env=ONE_THREAD)
    timings["gates"] = round(time.perf_counter() - t0, 1)
    if gates.returncode != 0 and not args.ignore_gates:
        print("a gate of the regime failed on the val seeds (above): not distilling; --ignore-gates to go on anyway")
        return 1

    distill_images()
    ablations = yaml.safe_load((HERE / "configs" / "ablations.yaml").read_text())
    todo = [n for n in ablations if not (OUT / "runs" / n / "pipeline" / pipeline_config.FILE).is_file()]
    for n in todo:  # a run that was interrupted starts again from its own start
        shutil.rmtree(OUT / "runs" / n, ignore_errors=True)
    jobs = [(f"distill_{n}", distill_cmd(n, ablations[n]["overrides"], args.scale), None) for n in todo]
    for light_stage in ("light_encoder", "light_decoder"):  # they need the full run's pipeline: queued right after it
        if not done(light_stage):
            light = [PY, f"train/{light_stage}.py", "--model", str(OUT / "runs" / "full" / "pipeline"), "--data", str(OUT / "data" / "distill"),
                     "--resolution", str(H), str(W), "--out", str(OUT / light_stage), "--steps", str(steps[light_stage])]
            jobs.insert(min(LANES, len(jobs)), (light_stage, light, "distill_full"))
    run_lanes(jobs, timings)
    timings["training (this invocation)"] = round(time.perf_counter() - t_all, 1)
    timings_file.write_text(json.dumps(timings, indent=2))
    if not args.no_ship:
        ship()
    report = subprocess.run([PY, "bench/nano_report.py", "--models", str(OUT)], cwd=REPO, env=ONE_THREAD)
    timings["total (this invocation, with report)"] = round(time.perf_counter() - t_all, 1)
    timings_file.write_text(json.dumps(timings, indent=2))
    print(f"\nmodels in {OUT}; embedded default {'unchanged' if args.no_ship else EMBEDDED}; "
          f"report {REPO / 'bench' / 'NANO_REPORT.md'}; this invocation {timings['total (this invocation, with report)'] / 60:.1f} min")
    return report.returncode


if __name__ == "__main__":
    sys.exit(main())
