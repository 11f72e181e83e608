"""Time per optimizer step and peak memory of SharpDepth distillation, fp32 vs bf16.

One optimizer step = `grad_accum` micro-steps of `trainer.training_step` (EMA affine pass, gating,
student, frozen-teacher SDS pass, decode with gradient) + backward, gradient clipping, AdamW, and
one EMA update, under accelerate exactly as `train()` runs them. f_D and data loading are not timed
(inputs are a random image and depth, as with a warm --depth-cache).

Configs: `small` (the tiny test models) runs anywhere; `sd2-512` and `sd2-768` build the full-size
Lotus-G architecture (SD-2 UNet with 8 input channels, SD-2 VAE) from its config with random
weights and need a CUDA GPU. Each measurement runs in its own process so its peak memory is its
own (CUDA: max allocated; CPU: peak RSS of the process). Prints a table, the bf16 / fp32 time ratio
of each config (bf16 is slower than fp32 on CPUs without bf16 matrix units: train in fp32 there),
and one JSON line. Steps vary: the default 20 timed steps after 2 of warm-up (5 timed steps gave a
mean 1.7x the minimum of 20); on a shared machine compare the ratios of one run, not absolute times.
--quick (or QUICK=1): 3 timed steps after 1 of warm-up, a check of the bench, not a result. On a CPU
the bench prints its estimate first (measurements x (start + steps x seconds per step)).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import subprocess
import sys
import time

CONFIGS = {"small": 32, "sd2-512": 512, "sd2-768": 768}  # config -> square training resolution
QUICK = {"steps": 3, "warmup": 1}
# The CPU estimate (small config, 1 thread), measured 2026-12-07 on the reference machine under other
# work (load ~4): a measurement's process start (imports, models, accelerate) and seconds per optimizer
# step by precision (bf16 is emulated on this CPU).
SECONDS_CHILD_START, SECONDS_PER_STEP = 12.0, {"no": 0.1, "bf16": 0.6}


def sd2_student():
    """The full-size Lotus-G / SharpDepth student, random weights (MODELS.md: SD-2 UNet, in_channels 8)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from sharpdepth_core.models.student import DiffusionDepthModel
    from sharpdepth_core.tiny import tiny_scheduler  # the real SD-2 noise schedule

    unet = UNet2DConditionModel(
        sample_size=96, in_channels=8, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280), attention_head_dim=(5, 10, 20, 20), cross_attention_dim=1024,
        use_linear_projection=True, class_embed_type="projection", projection_class_embeddings_input_dim=4,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    )
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=4, sample_size=768,
        scaling_factor=0.18215,
    )
    return DiffusionDepthModel(unet, vae, tiny_scheduler(), torch.randn(1, 2, 1024))


def measure(config: str, precision: str, grad_accum: int, steps: int, warmup: int, checkpointing: bool,
            threads: int) -> dict:
    """One (config, precision) measurement in this process."""
    import torch
    from accelerate import Accelerator

    from sharpdepth_core.tiny import tiny_student
    from sharpdepth_core.trainer import _make_ema, training_step
    from sharpdepth_core.training_config import make_config

    cuda = torch.cuda.is_available()
    torch.set_num_threads(threads)
    acc = Accelerator(mixed_precision=precision, gradient_accumulation_steps=grad_accum, cpu=not cuda)
    torch.manual_seed(0)
    student = (tiny_student() if config == "small" else sd2_student()).to(acc.device)
    frozen_dtype = {"no": torch.float32, "bf16": torch.bfloat16}[precision]
    teacher = copy.deepcopy(student).to(dtype=frozen_dtype).requires_grad_(False).eval()
    student.requires_grad_(False).unet.requires_grad_(True).train()
    if checkpointing:
        student.unet.enable_gradient_checkpointing()
        student.vae.enable_gradient_checkpointing()
    # EMA updated after every step here (the reference: every 10th), so its cost is always included.
    cfg = make_config("reference", overrides={"ema_update_after_step": 0, "ema_update_every": 1})
    ema = _make_ema(student, cfg).to(acc.device)
    optimizer = torch.optim.AdamW(student.unet.parameters(), lr=1e-6, betas=cfg.adam_betas, weight_decay=cfg.weight_decay)
    model, optimizer = acc.prepare(student, optimizer)
    codec = student.codec
    size = CONFIGS[config]
    image = torch.rand(1, 3, size, size, device=acc.device)
    depth = 1 + 9 * torch.rand(1, 1, size, size, device=acc.device)

    def optimizer_step() -> None:
        for _ in range(grad_accum):
            with acc.accumulate(model):
                with acc.autocast():
                    out = training_step(model, codec, teacher, ema.ema_model, image, depth, cfg)
                acc.backward(out["loss"])
                if acc.sync_gradients:
                    acc.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        ema.update()

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    for _ in range(warmup):
        optimizer_step()
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        optimizer_step()
        sync()
        times.append(time.perf_counter() - t)
    return {
        "config": config, "resolution": size, "precision": precision, "grad_accum": grad_accum,
        "gradient_checkpointing": checkpointing, "device": torch.cuda.get_device_name() if cuda else "cpu",
        "threads": torch.get_num_threads(), "steps": steps,
        "s_per_step_mean": sum(times) / len(times), "s_per_step_min": min(times),
        "unet_params_M": sum(p.numel() for p in student.unet.parameters()) / 1e6,
        "peak_gpu_GiB": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        "peak_rss_GiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,  # Linux: KiB
    }


def run_child(args, config: str, precision: str) -> dict:
    cmd = [sys.executable, __file__, "--one", config, precision, "--grad-accum", str(args.grad_accum),
           "--steps", str(args.steps), "--warmup", str(args.warmup), "--threads", str(args.threads)] + (["--gradient-checkpointing"] if args.gradient_checkpointing else [])
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"config": config, "precision": precision, "error": tail[:300]}
    return json.loads(lines[-1])


def bf16_ratios(rows: list[dict]) -> list[str]:
    """One line per config measured in both precisions: bf16's time per step (min) over fp32's."""
    times = {(r["config"], r["precision"]): r for r in rows if "error" not in r}
    lines = []
    for config in dict.fromkeys(r["config"] for r in rows):
        fp32, bf16 = times.get((config, "no")), times.get((config, "bf16"))
        if fp32 and bf16:
            ratio = bf16["s_per_step_min"] / fp32["s_per_step_min"]
            where = fp32["device"] if fp32["device"] != "cpu" else "this CPU"
            advice = "; train in fp32 (mixed_precision: no) here" if ratio > 1 else ""
            lines.append(f"{config}: bf16 takes {ratio:.2f}x the fp32 time per step on {where}{advice}")
    return lines


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=None,
                        help="default: small, plus sd2-512 and sd2-768 when a CUDA GPU is present")
    parser.add_argument("--precisions", nargs="+", choices=["no", "bf16"], default=["no", "bf16"], help="no = fp32")
    parser.add_argument("--grad-accum", type=int, default=1, help="micro-steps per optimizer step (reference: 8)")
    parser.add_argument("--steps", type=int, default=20, help="timed optimizer steps (after the warm-up)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed optimizer steps first")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (1: steady figures on a shared machine)")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per measurement")
    parser.add_argument("--one", nargs=2, metavar=("CONFIG", "PRECISION"), help=argparse.SUPPRESS)
    from timing import add_quick  # bench/timing.py

    add_quick(parser, f"{QUICK['steps']} timed steps after {QUICK['warmup']} of warm-up")
    return parser


def main(argv=None) -> None:
    from timing import announce, log, progress, quick_defaults  # bench/timing.py

    parser = build_parser()
    args = quick_defaults(parser, argv, QUICK)
    if min(args.grad_accum, args.steps, args.threads) < 1 or args.warmup < 0:
        parser.error("--grad-accum, --steps and --threads must be >= 1, --warmup >= 0")
    if args.one:
        print(json.dumps(measure(*args.one, args.grad_accum, args.steps, args.warmup, args.gradient_checkpointing,
                                 args.threads)))
        return

    import torch

    cuda = torch.cuda.is_available()
    configs = args.configs or (list(CONFIGS) if cuda else ["small"])
    rows, skipped = [], []
    runs = [(c, p) for c in configs if c == "small" or cuda for p in args.precisions]
    if not cuda:
        seconds = sum(SECONDS_CHILD_START + (args.warmup + args.steps) * args.grad_accum * SECONDS_PER_STEP[p] for _, p in runs)
        announce("train_step", seconds, f"{len(runs)} measurement(s) x {args.warmup + args.steps} optimizer steps", args.quick,
                 ", ".join(f"{SECONDS_PER_STEP[p]} s a {'fp32' if p == 'no' else p} step" for p in args.precisions)
                 + f", {SECONDS_CHILD_START:.0f} s a process start")
    skipped = [{"config": c, "reason": "needs a CUDA GPU (full-size SD-2 on CPU is impractical)"} for c in configs if c != "small" and not cuda]
    for config, precision in progress(runs, desc="train_step", unit="measurement"):
        rows.append(run_child(args, config, precision))
        log(f"measured {config} {precision}")

    print(f"{'config':<8} {'res':>4} {'prec':>4} {'accum':>5} {'s/step':>8} {'min':>8} {'peak GPU GiB':>12} {'peak RSS GiB':>12}  device")
    for r in rows:
        if "error" in r:
            print(f"{r['config']:<8} {'':>4} {r['precision']:>4}  failed: {r['error']}")
            continue
        gpu = f"{r['peak_gpu_GiB']:.2f}" if r["peak_gpu_GiB"] is not None else "-"
        print(f"{r['config']:<8} {r['resolution']:>4} {r['precision']:>4} {r['grad_accum']:>5} {r['s_per_step_mean']:>8.3f} "
              f"{r['s_per_step_min']:>8.3f} {gpu:>12} {r['peak_rss_GiB']:>12.2f}  {r['device']} ({r['threads']} threads)")
    for s in skipped:
        print(f"{s['config']:<8} skipped: {s['reason']}")
    ratios = bf16_ratios(rows)
    for line in ratios:
        print(line)
    load = os.getloadavg()[0]
    if load >= 0.5:
        print(f"load average {load:.2f}: other processes shared the CPU; compare the ratios, not the times")
    print(json.dumps({"bench": "train_step", "load_average_1min": load, "results": rows, "bf16_ratios": ratios,
                      "skipped": skipped}))


if __name__ == "__main__":
    main()
