"""SharpDepth inference speed: per stage and end to end, reference settings against the fast paths.

A 640x480 synthetic frame (uint8, as the node receives it) through `SharpDepthPipeline` at
processing resolutions 512 / 768 / 1024, then unprojected to a point cloud on the host. Settings
(side by side in one run, same seed, so each reports its output difference against `reference`):

  reference   fp32, eager PyTorch: the reference code's settings (its evaluation runs at 1024)
  light       reference with the light depth decoder making the difference map (difference="light")
  latent      reference with the difference map from the latents, no first decode (difference="latent")
  torch-bf16  bf16 UNet, VAE and metric model, channels_last, eager
  torch-fast  torch-bf16 + the whole frame compiled and replayed as one CUDA graph (CUDA only): the
              fast path of the exact algorithm
  fast        the `fast` speed preset (sharpdepth_core/speed.py): its cheaper algorithm (difference
              map, light depth encoder; random-weight light networks here) and, on CUDA, torch-fast's path
  onnx        onnxruntime on the fp32 ONNX graphs (metric model in PyTorch, fp32)
  tensorrt    TensorRT engines: fp16 UNet, VAE per --trt-vae-precision (metric model PyTorch bf16)

Configs: `small` (the tiny test models, default without a GPU) or `full` (default on CUDA): the
SD-2 UNet (8 input channels) and VAE and a ViT-L Depth Anything V2 metric model, built from their
configs with random weights (speed does not depend on weight values; output differences on random
weights only show that the numbers stay close, not how a trained model degrades). What the cheaper
difference maps, the light encoder and bf16 cost in accuracy, and so what the `fast` preset holds, is
measured on trained models by `bench/speed_accuracy.py`.

FLOPs per frame are counted on the meta device with torch's FlopCounterMode (matmuls, convolutions
and attention; norms and elementwise work are not counted) for the config being timed and for the
full-size one. The matmul rate is measured here, bf16 on CUDA and fp32 on CPU (CPUs without native
bf16 emulate it at a tiny fraction of fp32), and "of peak" is the counted FLOPs at the achieved
frame rate over that rate. Prints a table and one JSON line.

    .venv/bin/python bench/pipeline.py                       # CPU: small config, reference, light, latent, fast, onnx
    .venv/bin/python bench/pipeline.py --quick               # CPU: the same at 512 only (a check, not a result)
    .venv/bin/python bench/pipeline.py --config full         # CUDA: the figures of bench/RESULTS.md

On a CPU the bench prints its estimate first: settings x resolutions x frames, a frame's seconds
growing with the cube of the resolution (measured on the 2-core reference CPU, 1 thread).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

from sharpdepth_core.engines import OnnxEngine, TensorRTEngine
from sharpdepth_core.export import VaeDecoder, VaeEncoder, export_onnx
from sharpdepth_core.models.student import StudentUNet
from sharpdepth_core.geometry import unproject
from sharpdepth_core.models.light_decoder import LightDepthDecoder
from sharpdepth_core.models.light_encoder import LightDepthEncoder
from sharpdepth_core.pipeline import SharpDepthOutput, SharpDepthPipeline
from sharpdepth_core.preprocessing import plan_resize
from sharpdepth_core.synthetic import render_scene

from sharpdepth_core.speed import FAST, FastPath, fast_path

from random_models import build_models, difference_options, fast_preset_options, sync  # bench/random_models.py
from timing import STOPPED_EXIT, add_quick, announce, log, progress, quick_defaults, quiet_known_warnings, until_stopped  # bench/timing.py

SETTINGS = ("reference", "light", "latent", "torch-bf16", "torch-fast", "fast", "onnx", "tensorrt")
RESOLUTIONS = (512, 768, 1024)
STAGES = ("metric", "encode", "unet", "decode", "difference", "fit", "point_cloud")
TARGET_FPS, TARGET_FPS_FAST, TARGET_SPEEDUP, TARGET_RES = 20.0, 30.0, 4.0, 768
EXACT_ALGORITHM = ("reference", "torch-bf16", "torch-fast", "onnx", "tensorrt")  # no light or latent shortcut
QUICK = {"resolutions": [512]}
# The CPU estimate, small config, 640x480 in, 1 thread, measured 2026-12-07 on the reference machine
# under other work (load 2-6): seconds of a frame at 512 (the settings within about 1.5x of each other),
# growing with the cube of the resolution, and the start (imports, matmul rates, FLOP counts, the ONNX export).
SECONDS_FRAME_512, SECONDS_START = 1.2, 25.0


def cpu_estimate(args) -> float:
    frames = (args.warmup + args.frames) * len(set(args.settings) | {"reference"})
    return SECONDS_START + SECONDS_FRAME_512 * frames * sum((r / 512) ** 3 for r in args.resolutions)

# --- FLOPs and the matmul rate -------------------------------------------------------------------


def count_flops(config: str, image_hw: tuple[int, int], grid_hw: tuple[int, int]) -> dict[str, float]:
    """FLOPs of one call of each network on the meta device, and of one frame (1 metric, 2 of each other)."""
    from torch.utils.flop_counter import FlopCounterMode

    student, metric = build_models(config, "meta")
    (h, w), f = grid_hw, student.codec.downsample_factor
    c = student.vae.config.latent_channels
    calls = {
        "metric": (metric, torch.empty(1, 3, *image_hw, device="meta")),
        "encode": (VaeEncoder(student.vae), torch.empty(1, 3, h, w, device="meta")),
        "unet": (StudentUNet(student), torch.empty(1, 2 * c, h // f, w // f, device="meta")),
        "decode": (VaeDecoder(student.vae), torch.empty(1, c, h // f, w // f, device="meta")),
    }
    flops = {}
    with torch.no_grad():
        for name, (module, x) in calls.items():
            counter = FlopCounterMode(display=False)
            with counter:
                module(x)
            flops[name] = float(counter.get_total_flops())
        counter = FlopCounterMode(display=False)
        with counter:
            LightDepthDecoder(c).to("meta")(torch.empty(1, c, h // f, w // f, device="meta"))
        flops["light_decode"] = float(counter.get_total_flops())
        counter = FlopCounterMode(display=False)
        with counter:
            LightDepthEncoder(c).to("meta")(torch.empty(1, 1, h, w, device="meta"))
        flops["light_encode"] = float(counter.get_total_flops())
    flops["frame"] = flops["metric"] + 2 * (flops["encode"] + flops["unet"] + flops["decode"])
    flops["frame_light"] = flops["frame"] - flops["decode"] + flops["light_decode"]
    flops["frame_latent"] = flops["frame"] - flops["decode"]
    flops["frame_fast"] = (flops[FRAME_FLOPS[FAST.difference]] - flops["encode"]
                           + (flops["light_encode"] if FAST.depth_encoder == "light" else flops["encode"]))
    return flops


def matmul_rate(device: torch.device, dtype: torch.dtype) -> float:
    """Measured dense matmul FLOP/s (n³ products, best of a few)."""
    n, reps = (8192, 20) if device.type == "cuda" else (1024, 3)
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    best = float("inf")
    for _ in range(3):
        sync(device)
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        sync(device)
        best = min(best, (time.perf_counter() - t) / reps)
    return 2 * n**3 / best


def cpu_name() -> str:
    try:
        models = [ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("model name")]
    except OSError:
        models = []
    return f"{models[0] if models else platform.machine()} CPU ({os.cpu_count()} cores)"


# --- settings -----------------------------------------------------------------------------------


FRAME_FLOPS = {"exact": "frame", "light": "frame_light", "latent": "frame_latent"}  # the counted frame of each method


def make_pipeline(setting: str, student, metric, device: torch.device, workdir: Path, trt_vae_precision: str):
    """(pipeline, None) for a setting, or (None, why it cannot run here)."""
    cuda = device.type == "cuda"
    if setting == "reference":
        return SharpDepthPipeline(student, metric, untrained=True), None
    if setting in ("light", "latent"):
        return SharpDepthPipeline(student, metric, untrained=True, **difference_options(setting, student, device)), None
    if setting in ("torch-bf16", "torch-fast"):
        if setting == "torch-fast" and not cuda:
            return None, "needs CUDA (CUDA graphs; inductor compiles for minutes on CPU)"
        fast = fast_path(FAST, device) if setting == "torch-fast" else FastPath(torch.bfloat16, torch.bfloat16, channels_last=True)
        s = copy.deepcopy(student)  # fast converts the models in place
        return SharpDepthPipeline(s, copy.deepcopy(metric), untrained=True, fast=fast), None
    if setting == "fast":
        s = copy.deepcopy(student)
        return SharpDepthPipeline(s, copy.deepcopy(metric), untrained=True, fast=fast_path(FAST, device), **fast_preset_options(s, device)), None
    if setting == "onnx":
        import onnxruntime as ort

        if cuda and "CUDAExecutionProvider" not in ort.get_available_providers():
            return None, "onnxruntime has no CUDAExecutionProvider here (install onnxruntime-gpu)"
        folder = workdir / "onnx-fp32"
        if not (folder / "export.json").is_file():
            log("exporting fp32 ONNX graphs")
            export_onnx(student, folder)
        return SharpDepthPipeline(student, metric, untrained=True, engine=OnnxEngine(folder, device, threads=torch.get_num_threads())), None
    if setting == "tensorrt":
        try:
            import tensorrt  # noqa: F401
        except ImportError:
            return None, "tensorrt is not installed (it needs CUDA)"
        if not cuda:
            return None, "needs CUDA"
        folder = workdir / f"onnx-fp16-vae{trt_vae_precision}"
        if not (folder / "export.json").is_file():
            log("exporting fp16 ONNX graphs for TensorRT")
            export_onnx(student, folder, precision="fp16", vae_precision=trt_vae_precision)
        metric_bf16 = copy.deepcopy(metric).to(torch.bfloat16)
        return SharpDepthPipeline(student, metric_bf16, untrained=True, engine=TensorRTEngine(folder, device=device)), None
    raise ValueError(setting)


def run_frame(pipe: SharpDepthPipeline, rgb, device: torch.device, res: int):
    """One frame as the node runs it: uint8 image in, depth out, point cloud on the host."""
    t0 = time.perf_counter()
    out = pipe(rgb, seed=0, processing_res=res)
    t1 = time.perf_counter()
    with torch.profiler.record_function("stage:point_cloud"):
        xyz = unproject(out.depth[0, 0], out.K[0]).cpu()  # the cloud leaves the GPU for the message
    t2 = time.perf_counter()
    t = out.timings  # a compiled frame is fused: it has no stages, only its total (the columns show "-")
    nan = float("nan")
    stages = {
        "metric": t.get("metric", nan), "encode": t.get("encode", nan), "unet": t.get("affine_pass", nan) + t.get("sharpen_pass", nan),
        "decode": t.get("decode", nan), "difference": t.get("difference", nan), "fit": t.get("fit", nan),
        "point_cloud": t2 - t1, "total": t2 - t0,
    }
    return out, stages, xyz


def measure(pipe, setting: str, res: int, rgb, device, warmup: int, frames: int,
            reference_out: SharpDepthOutput | None) -> tuple[dict, SharpDepthOutput]:
    """(table row, first frame's output) of `frames` timed frames at processing resolution `res`."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # random weights: degenerate fits happen
        for _ in range(warmup):
            run_frame(pipe, rgb, device, res)
        runs = [run_frame(pipe, rgb, device, res) for _ in range(frames)]
    out = runs[0][0]
    mean = {k: sum(r[1][k] for r in runs) / frames for k in runs[0][1]}
    row = {"setting": setting, "res": res, "difference": pipe.difference, "frames": frames, "s": mean, "fps": 1 / mean["total"],
           "min_total_s": min(r[1]["total"] for r in runs), "fallback": out.fallback[0]}
    if reference_out is not None:
        ref = reference_out.depth.float().cpu()
        span = float(ref.max() - ref.min()) or 1.0
        diff = (out.depth.float().cpu() - ref).abs()
        row["depth_diff_vs_reference"] = {"max_rel": float(diff.max()) / span, "mean_rel": float(diff.mean()) / span}
    return row, out


# --- profile -----------------------------------------------------------------------------------

# Host synchronisations are counted from the profiler's CUDA runtime calls (not set_sync_debug_mode,
# which misses explicit synchronisations). Expected per frame: the uploads of the image (and K) before the
# frame's work is queued, reading its per-image flags (fallback, f_D finite) and its clock's CUDA events
# after all of it is queued, and the point cloud's copy to the host. Anything more is a wait inside the frame.
SYNC_CALLS = ("cudaDeviceSynchronize", "cudaStreamSynchronize", "cudaEventSynchronize", "cudaMemcpy")


def stage_of(event) -> str:
    """The pipeline stage (a `stage:` record_function range, pipeline._Clock) an event ran under."""
    while event is not None:
        if event.name.startswith("stage:"):
            return event.name[len("stage:"):]
        event = event.cpu_parent
    return "other"


def profile(pipe, setting: str, res: int, rgb, device: torch.device, warmup: int, frames: int, top: int) -> dict:
    """Top ops per stage over `frames` profiled frames: CUDA kernel time on CUDA, self CPU time on CPU."""
    from torch.profiler import ProfilerActivity

    cuda = device.type == "cuda"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for _ in range(warmup):
            run_frame(pipe, rgb, device, res)
        with torch.profiler.profile(activities=[ProfilerActivity.CPU] + [ProfilerActivity.CUDA] * cuda) as prof:
            for _ in range(frames):
                run_frame(pipe, rgb, device, res)
    wall, ops, syncs = {}, {}, {name: 0 for name in SYNC_CALLS}
    for e in prof.events():
        if e.name.startswith("stage:"):
            wall[e.name[6:]] = wall.get(e.name[6:], 0.0) + e.cpu_time_total
            continue
        if e.name in syncs:
            syncs[e.name] += 1
        stage = ops.setdefault(stage_of(e), {})
        for name, us in ([(k.name, k.duration) for k in e.kernels] if cuda else [(e.name, e.self_cpu_time_total)]):
            time_us, calls = stage.get(name, (0.0, 0))
            stage[name] = (time_us + us, calls + 1)
    stages = {}
    for name in sorted(wall, key=lambda k: -wall[k]) + ["other"] * ("other" in ops):  # other: outside the stages (resizing)
        by_op = sorted(ops.get(name, {}).items(), key=lambda kv: -kv[1][0])
        stages[name] = {"wall_ms": wall.get(name, 0.0) / frames / 1e3, "op_ms": sum(t for _, (t, _) in by_op) / frames / 1e3,
                        "top": [{"name": n, "ms": t / frames / 1e3, "calls": c / frames} for n, (t, c) in by_op[:top]]}
    host_syncs = ({"total": sum(syncs.values()) / frames, "by_call": {n: c / frames for n, c in syncs.items()}}
                  if cuda else "n/a (CPU)")
    return {"setting": setting, "res": res, "frames": frames, "time": "CUDA kernel" if cuda else "self CPU",
            "stages": stages, "host_syncs_per_frame": host_syncs}


def profile_table(result: dict) -> str:
    lines = [f"profile: {result['setting']} @ {result['res']}, {result['time']} time per frame, top ops per stage"]
    for stage, s in result["stages"].items():
        lines.append(f"  {stage:<12} wall {s['wall_ms']:8.2f} ms, ops {s['op_ms']:8.2f} ms")
        lines += [f"      {op['ms']:8.3f} ms  x{op['calls']:<5g} {op['name'][:90]}" for op in s["top"]]
    syncs = result["host_syncs_per_frame"]
    lines.append("host synchronisations per frame: " + (syncs if isinstance(syncs, str) else
                 f"{syncs['total']:g} (expected: image upload before the frame, flags and clock after it, the cloud; {syncs['by_call']})"))
    return "\n".join(lines)


# --- report -------------------------------------------------------------------------------------


def table(rows: list[dict], flops: dict, rate: float, rate_name: str) -> str:
    ref = {r["res"]: r for r in rows if r["setting"] == "reference"}
    ref_top = ref.get(max(ref)) if ref else None
    head = f"{'setting':<11} {'res':>4} " + " ".join(f"{s[:8]:>8}" for s in STAGES) + f" {'total':>8} {'fps':>7} {'x ref@res':>9} {'x ref@top':>9} {'of peak':>7} {'Δdepth':>8}"
    lines = [head, "-" * len(head)]
    for r in rows:
        s = r["s"]
        same = ref.get(r["res"])
        x_same = f"{same['s']['total'] / s['total']:.2f}" if same else "-"
        x_top = f"{ref_top['s']['total'] / s['total']:.2f}" if ref_top else "-"
        peak = flops[r["res"]]["frame_fast" if r["setting"] == "fast" else FRAME_FLOPS[r["difference"]]] * r["fps"] / rate
        diff = f"{r['depth_diff_vs_reference']['max_rel']:.1e}" if "depth_diff_vs_reference" in r else "-"
        lines.append(
            f"{r['setting']:<11} {r['res']:>4} " + " ".join(f"{1e3 * s[k]:>8.1f}" if s[k] == s[k] else f"{'-':>8}" for k in STAGES)
            + f" {1e3 * s['total']:>8.1f} {r['fps']:>7.2f} {x_same:>9} {x_top:>9} {100 * peak:>6.1f}% {diff:>8}"
        )
    lines.append("stage columns and total in ms per frame (means); x ref@res: speed-up over `reference` at the same resolution; "
                 f"x ref@top: over `reference` at {max(ref) if ref else '-'}; of peak: counted FLOPs x fps / measured {rate_name} matmul rate; "
                 "Δdepth: max |depth - reference depth| / reference depth range, same seed")
    return "\n".join(lines)


def parse_args(argv, cuda: bool) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog="\n\n".join(__doc__.split("\n\n")[-2:]),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=("small", "full"), default="full" if cuda else "small",
                        help="small: tiny test models; full: SD-2 UNet/VAE + ViT-L metric model (default on CUDA)")
    parser.add_argument("--settings", nargs="+", choices=SETTINGS, default=list(SETTINGS) if cuda else ["reference", "light", "latent", "fast", "onnx"],
                        help="default: all on CUDA; reference, light, latent, fast and onnx on CPU (bf16 is emulated on most CPUs)")
    parser.add_argument("--resolutions", nargs="+", type=int, default=list(RESOLUTIONS))
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--frames", type=int, default=10 if cuda else 1, help="timed frames per setting and resolution")
    parser.add_argument("--warmup", type=int, default=3 if cuda else 1, help="untimed frames first (compilation, capture, engine builds)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (1: steady figures on a shared machine)")
    parser.add_argument("--trt-vae-precision", choices=("fp32", "fp16"), default="fp32",
                        help="TensorRT VAE precision (SD-2's VAE is documented to overflow in fp16: measure before trusting)")
    parser.add_argument("--workdir", type=Path, help="keep ONNX exports and TensorRT engines here (default: a temporary folder)")
    parser.add_argument("--json", type=Path, help="also write the JSON result to this file")
    parser.add_argument("--profile", action="store_true",
                        help="instead of timing: profile the first setting at the first resolution (torch.profiler), "
                             "top ops per stage and host synchronisations per frame")
    parser.add_argument("--top", type=int, default=5, help="ops listed per stage with --profile")
    add_quick(parser, "processing resolution 512 only")
    args = quick_defaults(parser, argv, QUICK)
    if min(args.frames, args.threads) < 1 or args.warmup < 0 or min(args.resolutions) < 8:
        parser.error("--frames and --threads must be >= 1, --warmup >= 0, resolutions >= 8")
    return args


def run_settings(args: argparse.Namespace, device: torch.device) -> tuple[list[dict], list[dict], str | None]:
    """(rows, skipped, stopped): every setting at every resolution on one synthetic frame, `reference`
    first (the Δdepth baseline); a setting that fails to build or run is reported, not fatal; a SIGTERM
    ends the run with what was measured (`stopped` says where)."""
    scene = render_scene(0, width=args.width, height=args.height)
    student, metric = build_models(args.config, device)
    rows, skipped = [], []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        reference_out: dict[int, SharpDepthOutput] = {}
        order = ["reference"] + [s for s in args.settings if s != "reference"]
        with progress(total=len(order) * len(args.resolutions), desc="pipeline", unit="setting@res") as bar:
            finished, stopped = until_stopped(
                order, lambda setting: measure_setting(setting, args, device, workdir, student, metric, scene, reference_out, rows, skipped, bar))
    if stopped and finished < len(order):
        stopped += f" during {order[finished]!r}"
        skipped += [{"setting": s, "reason": stopped if k == 0 else f"not run: {stopped}"} for k, s in enumerate(order[finished:])]
    return rows, skipped, stopped


def measure_setting(setting: str, args, device, workdir: Path, student, metric, scene, reference_out: dict,
                    rows: list, skipped: list, bar=None) -> None:
    """One setting at every resolution: its rows appended, what could not run to `skipped`."""
    try:
        pipe, why = make_pipeline(setting, student, metric, device, workdir, args.trt_vae_precision)
    except Exception as exc:
        pipe, why = None, f"{type(exc).__name__}: {exc}"[:300]
    if pipe is None:
        skipped.append({"setting": setting, "reason": why})
        log(f"{setting}: skipped ({why})")
        if bar is not None:
            bar.update(len(args.resolutions))
        return
    for k, res in enumerate(args.resolutions):
        if bar is not None and k:  # the previous resolution is done (measured or failed)
            bar.update()
        try:
            row, out = measure(pipe, setting, res, scene.rgb, device, args.warmup, args.frames, reference_out.get(res))
        except Exception as exc:
            skipped.append({"setting": setting, "res": res, "reason": f"{type(exc).__name__}: {exc}"[:300]})
            log(f"{setting} @ {res}: failed ({type(exc).__name__}: {exc})")
            continue
        if setting == "reference":
            reference_out[res] = out
        rows.append(row)
        log(f"{setting} @ {res}: {1e3 * row['s']['total']:.1f} ms/frame")
    if bar is not None:
        bar.update()
    del pipe
    if device.type == "cuda":
        torch.cuda.empty_cache()


def targets(rows: list[dict], args: argparse.Namespace, cuda: bool) -> dict | None:
    """The speed targets at TARGET_RES (full config on CUDA only): the best setting of the exact algorithm
    (no light or latent shortcut) against TARGET_FPS and its speed-up, the `fast` preset against TARGET_FPS_FAST."""
    exact = [r for r in rows if r["res"] == TARGET_RES and r["setting"] in EXACT_ALGORITHM]
    fast = [r for r in rows if r["res"] == TARGET_RES and r["setting"] == "fast"]
    ref_top = [r for r in rows if r["setting"] == "reference" and r["res"] == max(args.resolutions)]
    if not (cuda and args.config == "full" and (exact or fast) and ref_top):
        print(f"targets ({TARGET_FPS} frames/s exact, {TARGET_FPS_FAST} fast, {TARGET_SPEEDUP}x reference at {TARGET_RES}) "
              "apply to the full config on one H100")
        return None
    out = {}
    if exact:
        best = max(exact, key=lambda r: r["fps"])
        speedup = best["fps"] / ref_top[0]["fps"]
        print(f"targets at {TARGET_RES}: exact algorithm {best['setting']} {best['fps']:.1f} frames/s (target {TARGET_FPS}), "
              f"{speedup:.2f}x reference@{max(args.resolutions)} (target {TARGET_SPEEDUP}x)")
        out.update(best_setting=best["setting"], fps=best["fps"], speedup_vs_reference=speedup,
                   fps_target_met=best["fps"] >= TARGET_FPS, speedup_target_met=speedup >= TARGET_SPEEDUP)
    if fast:
        print(f"targets at {TARGET_RES}: fast preset {fast[0]['fps']:.1f} frames/s (target {TARGET_FPS_FAST})")
        out.update(fast_fps=fast[0]["fps"], fast_fps_target_met=fast[0]["fps"] >= TARGET_FPS_FAST)
    return out


def main(argv=None) -> None:
    cuda = torch.cuda.is_available()
    args = parse_args(argv, cuda)
    torch.set_num_threads(args.threads)
    quiet_known_warnings()
    device = torch.device("cuda" if cuda else "cpu")
    name = torch.cuda.get_device_name(device) if cuda else f"{cpu_name()}, {args.threads} thread(s)"
    log(f"device: {name}; config {args.config}")
    if not cuda and not args.profile:
        announce("pipeline", cpu_estimate(args), f"{len(set(args.settings) | {'reference'})} settings x resolutions "
                 f"{'/'.join(map(str, args.resolutions))} x {args.warmup + args.frames} frames (config {args.config})", args.quick,
                 f"{SECONDS_FRAME_512} s a frame at 512, x (res/512)^3")
    if args.profile:
        return main_profile(args, device, name)
    rates = {"bf16": matmul_rate(device, torch.bfloat16), "fp32": matmul_rate(device, torch.float32)}
    peak = "bf16" if cuda else "fp32"
    log("matmul rates: " + ", ".join(f"{k} {v / 1e12:.3f} TFLOP/s" for k, v in rates.items()))
    grids = {r: plan_resize((args.height, args.width), r).padded_hw for r in args.resolutions}
    flops = {r: count_flops(args.config, (args.height, args.width), g) for r, g in grids.items()}
    flops_full = flops if args.config == "full" else {r: count_flops("full", (args.height, args.width), g) for r, g in grids.items()}
    rows, skipped, stopped = run_settings(args, device)  # gpu_check.sh's timeout: what was measured is still reported

    print(f"SharpDepth inference, {args.width}x{args.height} input, config {args.config}, on {name}")
    print("measured matmul rate: " + ", ".join(f"{k} {v / 1e12:.3f} TFLOP/s" for k, v in rates.items()))
    print(table(rows, flops, rates[peak], peak))
    for s in skipped:
        print(f"skipped {s['setting']}{' @ ' + str(s['res']) if 'res' in s else ''}: {s['reason']}")
    print("GFLOPs per call / frame (counted; 1 metric + 2 encodes + 2 UNet passes + 2 decodes; frame_light / frame_latent:"
          " the first decode replaced by the light decoder / by nothing; frame_fast: the fast preset's frame):")
    for label, table_flops in (("this config", flops), ("full size", flops_full)):
        for r, f in table_flops.items():
            print(f"  {label:<11} {r:>4} ({grids[r][1]}x{grids[r][0]}): " + ", ".join(f"{k} {v / 1e9:,.1f}" for k, v in f.items()))
    reached = targets(rows, args, cuda)
    result = {
        "bench": "pipeline", "device": name, "config": args.config, "input": [args.width, args.height],
        "torch": torch.__version__, "load_average_1min": os.getloadavg()[0], "matmul_flops_per_s": rates, "peak_rate": peak,
        "flops": {str(r): f for r, f in flops.items()}, "flops_full_size": {str(r): f for r, f in flops_full.items()},
        "results": rows, "skipped": skipped, "targets": reached, "stopped": stopped,
    }
    line = json.dumps(result)
    if args.json:
        args.json.write_text(line + "\n")
    print(line)
    if stopped:
        sys.exit(STOPPED_EXIT)


def main_profile(args: argparse.Namespace, device: torch.device, name: str) -> None:
    setting, res = args.settings[0], args.resolutions[0]
    student, metric = build_models(args.config, device)
    with tempfile.TemporaryDirectory() as tmp:
        pipe, why = make_pipeline(setting, student, metric, device, args.workdir or Path(tmp), args.trt_vae_precision)
        if pipe is None:
            sys.exit(f"bench/pipeline.py --profile: {setting} cannot run here: {why}")
        result = profile(pipe, setting, res, render_scene(0, width=args.width, height=args.height).rgb, device,
                         args.warmup, args.frames, args.top)
    result = {"bench": "pipeline-profile", "device": name, "config": args.config, "input": [args.width, args.height],
              "torch": torch.__version__, **result}
    print(f"SharpDepth profile, {args.width}x{args.height} input, config {args.config}, on {name}")
    print(profile_table(result))
    line = json.dumps(result)
    if args.json:
        args.json.write_text(line + "\n")
    print(line)


if __name__ == "__main__":
    main()
