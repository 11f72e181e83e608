"""What each fast setting costs in accuracy, on trained models: the embedded small-scale pipeline on
scenes of its own camera, every setting against the exact fp32 path (same noise seed), beside that
path's own run-to-run spread (a second noise seed) and beside f_D itself (how far SharpDepth moves
from its metric teacher). Random full-size weights cannot say how a trained model degrades; timing is
`bench/pipeline.py`'s job. Prints a table and one JSON line.

Settings:
  exact              fp32, eager: the reference ("exact, seed 1": the spread)
  bf16               UNet, VAE and metric model in bf16, channels_last (FastPath), eager
  compiled           the frame compiled whole by inductor, fp32 (on CUDA also replayed as a CUDA graph)
  bf16-compiled      both: the GPU fast path
  light-difference   the difference map from the light depth decoder (difference="light")
  latent-difference  the difference map from the latents, no first decode (difference="latent")
  light-encoder      the light depth encoder instead of the VAE's encode of f_D's depth (depth_encoder="light")
  fast               the `fast` speed preset (sharpdepth_core/speed.py) as a whole

A setting's cost is its relative change of AbsRel and of both DBEs against exact (all lower-better);
it qualifies for the `fast` preset when every cost is within speed.BUDGET (AbsRel +2 %, DBE +5 %).
`--split val` (pilot scenes) decides the preset: `choose_fast` below, checked against speed.FAST by
a test; `--split eval` (held-out scenes, used for nothing else) gives the figures users read.

    .venv/bin/python bench/speed_accuracy.py --split val --json bench/speed_accuracy_val.json
    .venv/bin/python bench/speed_accuracy.py --split eval --json bench/speed_accuracy.json
    .venv/bin/python bench/speed_accuracy.py --quick     # 5 scenes, the compiled settings left out: a check, not a result

Time on the 2-core reference CPU (1 thread): the bench prints its estimate first (scenes x settings
x seconds per call, plus inductor compiling the frame once per compiled setting, the larger part of a
first run: inductor's cache makes the next runs faster).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from sharpdepth_core.metrics import depth_scores
from sharpdepth_core.models.hub import quiet_loading
from sharpdepth_core.pipeline import SharpDepthPipeline
from sharpdepth_core.small_scale import SEEDS
from sharpdepth_core.speed import BUDGET, FAST, FastPath, Preset, fast_path
from sharpdepth_core.synthetic import render_scene

from timing import add_quick, announce, log, progress, quick_defaults, quiet_known_warnings  # bench/timing.py

SPLITS = {split: SEEDS[split][0] for split in ("val", "eval")}  # val for choices, eval held out
SETTINGS = ("bf16", "compiled", "bf16-compiled", "light-difference", "latent-difference", "light-encoder", "fast")
COMPILED = ("compiled", "bf16-compiled", "fast")  # inductor compiles the frame first (minutes on a CPU)
QUICK = {"scenes": 5, "settings": [s for s in SETTINGS if s not in COMPILED]}
# Measured 2026-12-07 on the reference machine under other work (load 2-6): seconds per pipeline call
# on a scene (the embedded models' 128x96 camera), inductor's compile of one setting with an empty
# cache, and the start (imports, loading, rendering).
SECONDS_PER_CALL, SECONDS_COMPILE, SECONDS_START = 0.15, 150.0, 8.0
COSTS = ("abs_rel", "dbe_acc", "dbe_compl")
# a cheaper setting's place in a preset (the preset field it sets)
COMPONENTS = {"bf16": ("bf16", True), "compiled": ("compiled", True), "light-difference": ("difference", "light"),
              "latent-difference": ("difference", "latent"), "light-encoder": ("depth_encoder", "light")}


def pipeline_for(setting: str, device: str, preset: Preset = FAST) -> SharpDepthPipeline | None:
    """The embedded pipeline as `setting` runs it; None when this pipeline folder lacks what it needs."""
    cuda = torch.device(device).type == "cuda"
    bf16 = dict(dtype=torch.bfloat16, vae_dtype=torch.bfloat16, channels_last=True)
    options = {
        "exact": {}, "light-difference": {"difference": "light"}, "latent-difference": {"difference": "latent"},
        "light-encoder": {"depth_encoder": "light"}, "bf16": {"fast": FastPath(**bf16)},
        "compiled": {"fast": FastPath(compile=True, cuda_graphs=cuda)},
        "bf16-compiled": {"fast": FastPath(**bf16, compile=True, cuda_graphs=cuda)},
        "fast": {"difference": preset.difference, "depth_encoder": preset.depth_encoder, "fast": fast_path(preset, "cuda")},
    }[setting]
    if options.get("fast") is not None and not cuda:
        options["fast"] = replace(options["fast"], cuda_graphs=False)  # the same kernels, without the capture
    try:
        return SharpDepthPipeline.from_pretrained(device=device, **options)
    except ValueError as exc:  # e.g. no light decoder / encoder in the folder
        print(f"[bench] {setting}: skipped ({exc})", file=sys.stderr)
        return None


def within_budget(m: dict) -> bool:
    return all(m["cost"][k] <= BUDGET[k] for k in COSTS)


def choose_fast(methods: dict) -> Preset:
    """The `fast` preset's candidates: every cheaper setting within the budget on its own (of the
    difference maps the cheaper, latent, over light). Deterministic from a run's JSON."""
    fields = {}
    for name in ("bf16", "compiled", "light-encoder", "light-difference", "latent-difference"):
        if name in methods and within_budget(methods[name]):
            field, value = COMPONENTS[name]
            fields[field] = value
    return Preset(**fields)


def drop_costliest(preset: Preset, methods: dict) -> Preset:
    """The preset without its component of the largest cost on its own (used while the whole is over budget)."""
    parts = [name for name, (field, value) in COMPONENTS.items() if getattr(preset, field) == value]
    worst = max(parts, key=lambda name: max(methods[name]["cost"].values()))
    field, _ = COMPONENTS[worst]
    return replace(preset, **{field: getattr(Preset(), field)})


def score(pipe: SharpDepthPipeline, scenes: list, seed: int, name: str = "") -> tuple[list[np.ndarray], float]:
    """Each scene's depth and the seconds they took (after one untimed call: compilation is not the setting's time)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        pipe(scenes[0].rgb, seed=seed)
        t = time.perf_counter()
        depths = [pipe(sc.rgb, seed=seed).depth[0, 0].float().cpu().numpy() for sc in progress(scenes, desc=name, unit="scene")]
    return depths, time.perf_counter() - t


def estimate(scenes: int, settings: tuple[str, ...]) -> float:
    """Seconds for the run on the reference machine: every setting (and exact twice) on every scene
    plus one untimed call, f_D, and a compile per compiled setting with inductor's cache empty."""
    calls = (2 + len(settings)) * (scenes + 1) + scenes
    return SECONDS_START + SECONDS_PER_CALL * calls + SECONDS_COMPILE * sum(s in COMPILED for s in settings)


def scored(depths: list[np.ndarray], seconds: float | None, gt: np.ndarray, exact: dict | None) -> dict:
    """Metrics of one setting; against the exact path's depths and time (`exact`: its row, None for itself)."""
    m = {**depth_scores(depths, gt), "depths": depths, "seconds": seconds}
    ref = exact or m
    delta = np.abs(np.clip(np.stack(depths), 0.01, None) - np.clip(np.stack(ref["depths"]), 0.01, None))
    m.update(max_abs_diff_m=float(delta.max()), mean_abs_diff_m=float(delta.mean()),
             time_vs_exact=None if seconds is None else seconds / ref["seconds"])
    m["cost"] = {k: (m[k] - ref[k]) / ref[k] for k in COSTS}
    m["within_budget"] = within_budget(m)
    return m


def run(split: str, n: int, device: str, settings: tuple[str, ...]) -> dict:
    """Every setting on n scenes of `split`. On val the `fast` row is the preset chosen here (components
    dropped, costliest first, until the whole is within budget); on eval it is speed.FAST."""
    first_seed = SPLITS[split]
    exact = SharpDepthPipeline.from_pretrained(device=device)
    camera = exact.camera or {"width": 128, "height": 96, "K": None, "style": "indoor"}
    scenes = [render_scene(first_seed + i, camera["width"], camera["height"], K=None if camera["K"] is None else np.array(camera["K"]),
                           style=camera["style"]) for i in range(n)]
    gt = np.stack([sc.depth for sc in scenes])
    out = {"exact": scored(*score(exact, scenes, 0, "exact"), gt, None)}
    out["exact, seed 1"] = scored(*score(exact, scenes, 1, "exact, seed 1"), gt, out["exact"])
    out["f_D"] = scored([exact.metric_depth(sc.rgb)[0, 0].cpu().numpy() for sc in scenes], None, gt, out["exact"])
    for name in [s for s in settings if s != "fast"]:
        if (pipe := pipeline_for(name, device)) is not None:
            log(name + (" (compiling first)" if name in COMPILED else ""))
            out[name] = scored(*score(pipe, scenes, 0, name), gt, out["exact"])
    result = {"split": split, "scenes": n, "first_seed": first_seed, "device": device, "budget": BUDGET}
    if "fast" in settings:
        preset = choose_fast(out) if split == "val" else FAST
        while True:
            log(f"fast: {preset}")
            out["fast"] = scored(*score(pipeline_for("fast", device, preset), scenes, 0, "fast"), gt, out["exact"])
            if split != "val" or out["fast"]["within_budget"] or preset == Preset():
                break
            preset = drop_costliest(preset, out)
        result["fast_preset"] = vars(preset)
    for m in out.values():
        del m["depths"], m["seconds"]
    return {**result, "methods": out}


def table(result: dict) -> str:
    lines = [f"fast settings on the embedded models, {result['scenes']} {result['split']} scenes (seeds {result['first_seed']}..), "
             f"{result['device']}; cost: relative change against exact (budget AbsRel +{100 * BUDGET['abs_rel']:.0f} %, "
             f"DBE +{100 * BUDGET['dbe_acc']:.0f} %)",
             f"{'setting':<17} {'AbsRel':>7} {'δ1':>6} {'DBE acc':>8} {'compl':>6} {'ΔAbsRel':>8} {'ΔDBE acc':>9} {'Δcompl':>7} "
             f"{'mean|Δd| m':>11} {'time/exact':>10} {'budget':>7}"]
    for name, m in result["methods"].items():
        c, t = m["cost"], m["time_vs_exact"]
        lines.append(f"{name:<17} {m['abs_rel']:>7.4f} {m['delta1']:>6.3f} {m['dbe_acc']:>8.2f} {m['dbe_compl']:>6.2f} "
                     f"{100 * c['abs_rel']:>+7.1f}% {100 * c['dbe_acc']:>+8.1f}% {100 * c['dbe_compl']:>+6.1f}% "
                     f"{m['mean_abs_diff_m']:>11.4f} {'-' if t is None else f'{t:.2f}':>10} {'yes' if m['within_budget'] else 'no':>7}")
    if "fast_preset" in result:
        lines.append(f"fast preset measured ({'chosen on these scenes' if result['split'] == 'val' else 'speed.FAST'}): {result['fast_preset']}")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog="\n\n".join(__doc__.split("\n\n")[-2:]),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", choices=tuple(SPLITS), default="eval", help="val: decides the preset; eval: held-out figures")
    parser.add_argument("--scenes", type=int, default=100, help="scenes of the split (default 100)")
    parser.add_argument("--settings", nargs="+", choices=SETTINGS, default=list(SETTINGS))
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (1: steady time ratios on a shared machine)")
    parser.add_argument("--device", default="cpu", help="cuda: the same on the GPU (its kernels move the bf16 figures)")
    parser.add_argument("--json", type=Path, help="also write the JSON result to this file")
    add_quick(parser, f"{QUICK['scenes']} scenes, the compiled settings ({', '.join(COMPILED)}) left out")
    args = quick_defaults(parser, argv, QUICK)
    if min(args.scenes, args.threads) < 1:
        parser.error("--scenes and --threads must be >= 1")
    torch.set_num_threads(args.threads)
    quiet_loading()
    quiet_known_warnings()
    if torch.device(args.device).type == "cpu":
        n = len(args.settings)
        announce("speed_accuracy", estimate(args.scenes, tuple(args.settings)), f"{args.scenes} scenes x {n + 2} settings", args.quick,
                 f"{SECONDS_PER_CALL} s a call, {SECONDS_COMPILE:.0f} s compiling each of the "
                 f"{sum(s in COMPILED for s in args.settings)} compiled settings with inductor's cache empty")
    result = run(args.split, args.scenes, args.device, tuple(args.settings))
    print(table(result))
    line = json.dumps({"bench": "speed_accuracy", "torch": torch.__version__, "threads": args.threads, **result})
    if args.json:
        args.json.write_text(line + "\n")
    print(line)


if __name__ == "__main__":
    main()
