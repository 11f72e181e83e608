"""The VAE's calls under each speed variant, side by side: what helps its full-resolution layers.

A frame makes four VAE calls (encode the image, encode f_D's depth, decode twice); at 768 they are
about 70 % of a full-size frame's FLOPs (bench/RESULTS.md). This bench times the three kinds of call
as the pipeline makes them (`DepthCodec` through the PyTorch engine) at one processing grid, for:

  fp32                        eager, the reference
  bf16                        bf16 weights and arithmetic, eager
  bf16-cl                     + channels_last (NHWC) activations
  bf16-cl-cudnn-benchmark     + torch.backends.cudnn.benchmark (cuDNN picks each convolution's algorithm by trial)
  bf16-cl-plain-attention     diffusers' AttnProcessor in the mid-block (materialises the score matrix)
                              instead of the default SDPA one: what SDPA buys
  bf16-cl-compile             torch.compile, default mode (and -max-autotune-no-cudagraphs, -max-autotune)
  bf16-cl-compile-graph       the default-mode compiled call captured as a CUDA graph (engines.CudaGraphed)

Per variant: ms per call of each kind, ms per frame (2 encodes + 2 decodes), speed-up over fp32,
the outputs' relative difference from fp32 (max and mean over the three calls), and on CUDA the
peak memory the calls take above the weights (activations, workspaces, CUDA graph pools).
CUDA-only variants are reported as skipped on a CPU, with the reason; inductor's C++ compile takes
minutes on a CPU, so compiled variants run there only with --compile-on-cpu. The last
line names the fastest variant whose difference stays at bf16's own level (mean within 2x bf16
eager's): what FastPath should adopt. Prints a table and one JSON line. A SIGTERM (the `timeout` of
bench/gpu_check.sh) ends the run early with the variants measured so far reported, the others
named as skipped, and exit status 143.

    .venv/bin/python bench/vae.py --config small --resolution 256          # CPU check of the bench
    .venv/bin/python bench/vae.py --quick                                  # 384, 2 calls after 1 warm-up (a check)
    python bench/vae.py --config full --device cuda                        # the GPU figures (bench/gpu_check.sh)

On a CPU the bench prints its estimate first: variants x 3 kinds of call x (warm-up + 1 + calls),
seconds per call measured on the 2-core reference CPU (1 thread), growing with the grid's pixels.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from sharpdepth_core.engines import CudaGraphed, TorchEngine
from sharpdepth_core.speed import FastPath
from sharpdepth_core.files import write_text
from sharpdepth_core.preprocessing import plan_resize

from random_models import build_models, sync  # bench/random_models.py
from timing import STOPPED_EXIT, add_quick, announce, log, progress, quick_defaults, quiet_known_warnings, until_stopped  # bench/timing.py

CALLS = ("encode_image", "encode_depth", "decode_depth")
BF16 = dict(dtype=torch.bfloat16, vae_dtype=torch.bfloat16)
COMPILE_MODES = ("default", "max-autotune-no-cudagraphs", "max-autotune")
QUICK = {"resolution": 384, "calls": 2, "warmup": 1}
# The CPU estimate, small config, 1 thread: seconds per VAE call (mean of the three kinds) at the
# 768x576 grid, from bench/RESULTS.md's run (load 1.3-2.7), the plain attention's ~2.5x that, and
# inductor's compile of the three calls.
SECONDS_PER_CALL_768, PLAIN_ATTENTION, SECONDS_COMPILE, SECONDS_START = 0.2, 2.5, 60.0, 8.0


def cpu_estimate(names: list[str], everything: dict, grid: tuple[int, int], args) -> float:
    per_call = SECONDS_PER_CALL_768 * grid[0] * grid[1] / (768 * 576)
    total = SECONDS_START
    for name in names:
        options = everything[name]
        if isinstance(options, dict):
            total += 3 * (args.warmup + 1 + args.calls) * per_call * (PLAIN_ATTENTION if options.get("plain_attention") else 1)
            total += SECONDS_COMPILE if "compile" in options else 0
    return total


def variants(cuda: bool, compile_on_cpu: bool) -> dict[str, dict | str]:
    """name -> options (fast: FastPath, cudnn_benchmark, plain_attention, compile mode, graph), or why it cannot run here."""
    out: dict[str, dict | str] = {
        "fp32": {}, "bf16": {"fast": FastPath(**BF16)}, "bf16-cl": {"fast": FastPath(**BF16, channels_last=True)},
        "bf16-cl-cudnn-benchmark": {"fast": FastPath(**BF16, channels_last=True), "cudnn_benchmark": True} if cuda else "needs CUDA (cuDNN)",
        "bf16-cl-plain-attention": {"fast": FastPath(**BF16, channels_last=True), "plain_attention": True},
    }
    for mode in COMPILE_MODES:
        name = f"bf16-cl-compile{'' if mode == 'default' else '-' + mode}"
        if cuda or (compile_on_cpu and mode == "default"):
            out[name] = {"fast": FastPath(**BF16, channels_last=True), "compile": mode}
        else:
            out[name] = ("needs CUDA (autotuning benchmarks GPU kernels)" if mode != "default"
                         else "inductor compiles for minutes on a CPU: pass --compile-on-cpu")
    out["bf16-cl-compile-graph"] = ({"fast": FastPath(**BF16, channels_last=True), "compile": "default", "graph": True} if cuda
                                    else "needs CUDA (CUDA graphs)")
    return out


def calls_of(student, options: dict) -> dict[str, Callable]:
    """The three VAE calls of a copy of the student, converted and wrapped as `options` say."""
    student = copy.deepcopy(student)
    engine = TorchEngine(student, options.get("fast"))
    if options.get("plain_attention"):
        from diffusers.models.attention_processor import AttnProcessor

        student.vae.set_attn_processor(AttnProcessor())
    fns = {name: getattr(engine, name) for name in CALLS}
    if "compile" in options:
        mode = None if options["compile"] == "default" else options["compile"]
        fns = {k: torch.compile(f, fullgraph=True, dynamic=False, mode=mode) for k, f in fns.items()}
    if options.get("graph"):
        fns = {k: CudaGraphed(f) for k, f in fns.items()}
    return fns


def measure(fns: dict[str, Callable], inputs: dict[str, torch.Tensor], device: torch.device, warmup: int, calls: int) -> tuple[dict, dict]:
    """(row: ms per call of each kind and per frame, the calls' peak memory; the outputs of the first
    timed call). The peak counts from what is allocated before the first call (the weights, this
    variant's and earlier ones'): activations, workspaces, compiled buffers, CUDA graph pools."""
    ms, outputs = {}, {}
    cuda = device.type == "cuda"
    if cuda:
        sync(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    with torch.no_grad():
        for name, fn in fns.items():
            for _ in range(warmup):
                fn(inputs[name])
            sync(device)
            # a copy: under max-autotune's CUDA graphs the next call overwrites this output and reading it then is an error
            outputs[name] = fn(inputs[name]).to(torch.float32, copy=True)
            sync(device)
            t = time.perf_counter()
            for _ in range(calls):
                fn(inputs[name])
            sync(device)
            ms[name] = 1e3 * (time.perf_counter() - t) / calls
    frame = ms["encode_image"] + ms["encode_depth"] + 2 * ms["decode_depth"]  # a frame: both encodes, two decodes
    peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20 if cuda else None
    return {"ms": ms, "frame_ms": frame, "peak_mib": peak}, outputs


def relative_difference(outputs: dict, reference: dict) -> dict[str, float]:
    """Max and mean |Δ| over the three calls, each relative to its reference output's mean magnitude."""
    rel = [(outputs[k] - reference[k]).abs() / reference[k].abs().mean().clamp_min(1e-12) for k in CALLS]
    return {"max": max(float(r.max()) for r in rel), "mean": sum(float(r.mean()) for r in rel) / len(rel)}


def run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    student, _ = build_models(args.config, device)
    plan = plan_resize((args.height, args.width), args.resolution, student.codec.downsample_factor)
    (h, w), f, c = plan.padded_hw, student.codec.downsample_factor, student.vae.config.latent_channels
    g = torch.Generator().manual_seed(0)
    inputs = {"encode_image": torch.rand(1, 3, h, w, generator=g), "encode_depth": torch.rand(1, 1, h, w, generator=g) * 2 - 1,
              "decode_depth": torch.randn(1, c, h // f, w // f, generator=g)}
    inputs = {k: v.to(device) for k, v in inputs.items()}
    everything = variants(cuda, args.compile_on_cpu)
    names = [n for n in everything if not args.variants or n in ("fp32", "bf16", *args.variants)]  # fp32: the reference
    rows, skipped, reference = [], [], None  # bf16: the difference level

    def step(name: str) -> None:
        nonlocal reference
        options = everything[name]
        if isinstance(options, str) or (reference is None and name != "fp32"):  # fp32 comes first
            skipped.append({"variant": name, "reason": options if isinstance(options, str) else "not run: no fp32 reference"})
            return
        log(name)
        try:
            torch.backends.cudnn.benchmark = bool(options.get("cudnn_benchmark"))
            row, outputs = measure(calls_of(student, options), inputs, device, args.warmup, args.calls)
            reference = outputs if name == "fp32" else reference
            rows.append({"variant": name, **row, "difference_vs_fp32": relative_difference(outputs, reference)})
        except Exception as exc:  # a variant that fails here is reported, not fatal
            skipped.append({"variant": name, "reason": f"{type(exc).__name__}: {exc}"[:300]})
        finally:
            torch.backends.cudnn.benchmark = False

    if not cuda:
        runnable = [n for n in names if isinstance(everything[n], dict)]
        announce("vae", cpu_estimate(names, everything, (h, w), args), f"{len(runnable)} variants x 3 calls x "
                 f"{args.warmup + 1 + args.calls} at a {w}x{h} grid (config {args.config})", args.quick)
    with progress(total=len(names), desc="vae", unit="variant") as bar:
        finished, stopped = until_stopped(names, lambda name: (step(name), bar.update()))
    if stopped and finished < len(names):
        stopped += f" during the {names[finished]!r} variant"
        for k, name in enumerate(names[finished:]):
            options = everything[name]
            why = stopped if k == 0 else options if isinstance(options, str) else f"not run: {stopped}"
            skipped.append({"variant": name, "reason": why})
    for r in rows:
        r["speedup"] = rows[0]["frame_ms"] / r["frame_ms"]
    bf16 = [r["difference_vs_fp32"]["mean"] for r in rows if r["variant"] == "bf16"]
    at_bf16_level = [r for r in rows if r["variant"] != "fp32" and bf16 and r["difference_vs_fp32"]["mean"] <= 2 * bf16[0]]
    best = min(at_bf16_level, key=lambda r: r["frame_ms"])["variant"] if at_bf16_level else None
    label = torch.cuda.get_device_name(device) if cuda else f"CPU, {torch.get_num_threads()} thread(s)"
    return {"bench": "vae", "device": label, "config": args.config, "grid": [h, w], "calls": args.calls, "torch": torch.__version__,
            "results": rows, "skipped": skipped, "fastest_at_bf16_level": best, "stopped": stopped}


def table(result: dict) -> str:
    h, w = result["grid"]
    lines = [f"VAE calls at a {w}x{h} grid, config {result['config']}, {result['device']} (ms per call, mean of {result['calls']})",
             f"{'variant':<38} {'enc image':>9} {'enc depth':>9} {'decode':>8} {'frame':>8} {'x fp32':>7} {'max Δ':>8} {'mean Δ':>8} {'MiB':>7}"]
    for r in result["results"]:
        ms, d = r["ms"], r["difference_vs_fp32"]
        mem = f"{r['peak_mib']:.0f}" if r["peak_mib"] is not None else "-"
        lines.append(f"{r['variant']:<38} {ms['encode_image']:>9.2f} {ms['encode_depth']:>9.2f} {ms['decode_depth']:>8.2f} "
                     f"{r['frame_ms']:>8.2f} {r['speedup']:>7.2f} {d['max']:>8.1e} {d['mean']:>8.1e} {mem:>7}")
    lines += [f"skipped {s['variant']}: {s['reason']}" for s in result["skipped"]]
    lines.append("frame: 2 encodes + 2 decodes; Δ: output difference from fp32, relative to its mean magnitude; MiB: the calls' "
                 f"peak memory above the weights (CUDA); fastest at bf16's own difference level: {result['fastest_at_bf16_level']}")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog="\n\n".join(__doc__.split("\n\n")[-2:]),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", choices=("small", "full"), default="full" if torch.cuda.is_available() else "small")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--resolution", type=int, default=768, help="processing resolution (longer edge of the grid)")
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--calls", type=int, default=10, help="timed calls of each kind per variant")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls first (compilation, autotuning, capture)")
    p.add_argument("--compile-on-cpu", action="store_true", help="also run the default-mode compiled variant on a CPU (minutes)")
    p.add_argument("--variants", nargs="+", choices=tuple(variants(True, True)), help="only these (default: all; fp32 always, "
                   "the reference); max-autotune's kernel search takes minutes")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path, help="also write the JSON result to this file")
    add_quick(p, "grid at 384, 2 timed calls after 1 warm-up")
    args = quick_defaults(p, argv, QUICK)
    if min(args.calls, args.threads) < 1 or args.warmup < 0:
        p.error("--calls and --threads must be >= 1, --warmup >= 0")
    torch.set_num_threads(args.threads)
    quiet_known_warnings()
    result = run(args)  # a SIGTERM (gpu_check.sh's timeout) ends it with what was measured
    print(table(result))
    line = json.dumps(result)
    if args.json:
        write_text(args.json, line + "\n")
    print(line)
    if result["stopped"]:
        sys.exit(STOPPED_EXIT)


if __name__ == "__main__":
    main()
