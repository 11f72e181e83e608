#!/usr/bin/env python3
"""Flicker on a moving camera: does SharpDepth's depth stay put from frame to frame where f_D's does?

Held-out sequences (`render_sequence`: the embedded models' camera walking through rooms no model was
trained on, 10 frames/s) through the embedded pipeline, called as the node calls it (the camera's K).
Per model: TAE (Video Depth Anything's temporal alignment error: AbsRel between frame t's depth
reprojected into frame t+1 with the ground-truth poses and frame t+1's depth, both directions, valid
co-visible pixels), the static-point flicker (mm: how far a point of the cloud on a static surface
jumps between frames; every surface here is static) and the single-frame AbsRel. Models: the ground
truth (the warp's own error), f_D, SharpDepth with the node's default noise (one seed, the same draw
every frame), with fresh noise per frame (the node's seed -1), and with each cheaper difference map;
every noisy model under two noise seeds, whose difference is the spread; the temporal mode
(`sharpdepth_core.temporal`, issue 29) on the node default's frames: image only, odometry with exact
poses and with drifting odometry; its cut streams (a scene change, a dropped second: is the cut
flagged, is that frame the per-frame result) and its cost side by side with the frame's. Prints a table and one JSON
line; writes a figure (consecutive frames per model, with their reprojection error into the next).

    .venv/bin/python bench/temporal.py                          # 4 eval sequences x 30 frames and their cut streams, 1 thread: ~5 min
    .venv/bin/python bench/temporal.py --quick                  # 1 sequence x 8 frames: ~20 s (a check, not a result)
    .venv/bin/python bench/temporal.py --first-seed 110000      # validation sequences: for choosing anything
"""
from __future__ import annotations

import argparse
import io
import json
import math
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from sharpdepth_core.files import write_bytes
from sharpdepth_core.geometry import relative_pose
from sharpdepth_core.models.hub import quiet_loading
from sharpdepth_core.metrics import (boundary_error, depth_edges, depth_metrics, reprojection_error, static_point_flicker,
                                     temporal_alignment_error)
from sharpdepth_core.pipeline import SharpDepthPipeline
from sharpdepth_core.synthetic import SEQUENCE_RATE_HZ, render_sequence
from sharpdepth_core.temporal import TemporalDepth

from timing import add_quick, announce, progress, quick_defaults  # bench/timing.py

# name -> (difference map, noise): "fixed" = one seed for every frame (the node's default, seed 0),
# "fresh" = a new draw per frame (the node's seed -1; seeded per frame here, so runs repeat)
RUNS = {
    "SharpDepth (node default: same noise every frame)": ("exact", "fixed"),
    "SharpDepth, fresh noise per frame": ("exact", "fresh"),
    "SharpDepth, light difference map": ("light", "fixed"),
    "SharpDepth, latent difference map": ("latent", "fixed"),
}
NOISE_SEEDS = (0, 1)
DEFAULT = "SharpDepth (node default: same noise every frame)"
# the temporal mode (sharpdepth_core.temporal) on the node default's frames: name -> (mode, odometry)
TEMPORAL = {
    "SharpDepth temporal (image only)": ("image", None),
    "SharpDepth temporal (odometry, exact poses)": ("odometry", "exact"),
    "SharpDepth temporal (odometry, 2 % + 1°/m drift)": ("odometry", "drift"),
}
CUT_AT = 15  # the cut streams: 15 frames of a walk, then the cut, then 15 more frames
QUICK = {"sequences": 1, "frames": 8}
# Seconds per frame of a sequence (f_D, the four SharpDepth runs under both noise seeds, the scores)
# and the start (imports, loading), measured 2026-12-07 on the reference machine under other work
# (load 2-4): `--sequences 1 --frames 8` against `--frames 3`.
SECONDS_PER_FRAME, SECONDS_START = 1.5, 6.0
# the cut streams (--frames >= 2 x CUT_AT): per frame of a walk, measured 2026-12-07 likewise (2 validation
# walks x 30 frames: 147 s in all)
SECONDS_PER_FRAME_CUTS = 0.85


def drifting_odometry(poses: list[np.ndarray], seed: int, scale_error: float = 0.02, heading_deg_per_m: float = 1.0,
                      jitter: float = 0.01, jitter_deg: float = 0.05) -> list[np.ndarray]:
    """A robot's odometry of the walk: each step's motion with its length 2 % long and a heading error
    of 1° per metre travelled (about the camera's vertical axis: the walks keep it level), plus a
    random 1 % of the step and 0.05° per step, integrated from the first pose (so it drifts)."""
    rng = np.random.default_rng(seed)
    out = [np.asarray(poses[0], dtype=np.float64)]
    for a, b in zip(poses, poses[1:]):
        step = np.linalg.inv(a) @ b
        dist = float(np.linalg.norm(step[:3, 3]))
        step[:3, 3] = step[:3, 3] * (1 + scale_error) + jitter * dist * rng.standard_normal(3)
        yaw = math.radians(heading_deg_per_m * dist + jitter_deg * rng.standard_normal())
        turn = np.eye(4)
        turn[[0, 0, 2, 2], [0, 2, 0, 2]] = math.cos(yaw), math.sin(yaw), -math.sin(yaw), math.cos(yaw)
        out.append(out[-1] @ step @ turn)
    return out


def temporal_run(frames, depths: list[np.ndarray], mode: str, poses: list[np.ndarray] | None,
                 stamps: list[float] | None = None) -> tuple[list[np.ndarray], list[bool]]:
    """The temporal mode over one stream, frame by frame as the node runs it: (outputs, cut flags)."""
    state, outs, cuts = TemporalDepth(mode), [], []
    for t, (f, d) in enumerate(zip(frames, depths)):
        r = state.update(torch.from_numpy(d), f.K, image=f.rgb, pose=None if poses is None else poses[t],
                         stamp=None if stamps is None else stamps[t])
        outs.append(r.depth.numpy())
        cuts.append(r.cut)
    return outs, cuts


def frame_seed(noise: str, noise_seed: int, t: int) -> int:
    return noise_seed if noise == "fixed" else 1_000_003 * (noise_seed + 1) + t


def predictions(pipe: SharpDepthPipeline, frames, bar=None) -> dict[str, list[list[np.ndarray]]]:
    """Per model, per noise seed (one for the deterministic models), the depth of every frame; `bar`
    (a progress bar) advances by one per frame. The temporal rows update on the node default's frames
    as they come (one state per noise seed), and their cost is timed side by side with that frame's
    pipeline call (COST)."""
    K = frames[0].K
    out = {"ground truth": [[f.depth.astype(np.float64) for f in frames]],
           "f_D": [[pipe.metric_depth(f.rgb, K=K)[0, 0].numpy() for f in frames]]}
    poses = {"exact": [f.camera_to_world for f in frames], "drift": drifting_odometry([f.camera_to_world for f in frames], frames[0].seed)}
    states = {name: [TemporalDepth(mode) for _ in NOISE_SEEDS] for name, (mode, _) in TEMPORAL.items()}
    for t, f in enumerate(frames):
        for name, (method, noise) in RUNS.items():
            if out.get(name, True) is None:
                continue
            try:
                depths = []
                for s in NOISE_SEEDS:
                    start = time.perf_counter()
                    depths.append(pipe(f.rgb, K=K, seed=frame_seed(noise, s, t), difference=method).depth[0, 0].numpy())
                    if name == DEFAULT and t:  # the first frame: warm-up, and the temporal mode's restart
                        COST["frame_s"].append(time.perf_counter() - start)
            except ValueError:  # no light decoder in this pipeline folder (the light networks load on first use)
                if method != "light" or t:
                    raise
                out[name] = None
                continue
            runs = out.setdefault(name, [[] for _ in NOISE_SEEDS])
            for run, depth in zip(runs, depths):
                run.append(depth)
        for name, (mode, odometry) in TEMPORAL.items():
            runs = out.setdefault(name, [[] for _ in NOISE_SEEDS])
            for state, run, depth in zip(states[name], runs, out[DEFAULT]):
                start = time.perf_counter()
                r = state.update(torch.from_numpy(depth[t]), K, image=f.rgb, pose=poses[odometry][t] if odometry else None)
                if t:
                    COST[name].append(time.perf_counter() - start)
                run.append(r.depth.numpy())
        if bar is not None:
            bar.update()
    return {name: runs for name, runs in out.items() if runs is not None}


COST: dict[str, list[float]] = {"frame_s": [], **{name: [] for name in TEMPORAL}}  # seconds, side by side


def scores(depths: list[np.ndarray], frames) -> dict[str, float]:
    """TAE, flicker, AbsRel, and the TAE left once each frame is scaled onto its ground truth (median
    ratio): the part of the flicker that is not a frame-wide change of scale."""
    gts, poses, K = [f.depth for f in frames], [f.camera_to_world for f in frames], frames[0].K
    rescaled = [d * np.median(g / np.clip(d, 0.01, None)) for d, g in zip(depths, gts)]
    edged = [t for t, g in enumerate(gts) if depth_edges(g).any()]  # DBE is undefined on a frame without edges
    acc, compl = boundary_error(np.clip(np.stack([depths[t] for t in edged]), 0.01, None), np.stack([gts[t] for t in edged]))
    return {"tae": temporal_alignment_error(depths, gts, K, poses), "dbe_acc": acc, "dbe_compl": compl,
            "tae_scaled": temporal_alignment_error(rescaled, gts, K, poses),
            "flicker_mm": 1000 * static_point_flicker(depths, gts, K, poses),
            "abs_rel": depth_metrics(np.clip(np.stack(depths), 0.01, None), np.stack(gts))["abs_rel"]}


def temporal(first_seed: int, sequences: int, frames: int) -> tuple[dict, dict]:
    """The scores (mean over sequences; per noise seed and their spread), the cut streams, the cost,
    and the first sequence's predictions (for the figure)."""
    pipe = SharpDepthPipeline.from_pretrained()
    per: dict[str, list[list[dict]]] = {}
    first = None
    with warnings.catch_warnings(), progress(total=sequences * frames, desc="temporal", unit="frame") as bar:
        warnings.simplefilter("ignore", RuntimeWarning)
        walks = []
        for i in range(sequences):
            seq = render_sequence(first_seed + i, frames)
            preds = predictions(pipe, seq, bar)
            first = first or (seq, preds)
            walks.append((seq, preds))
            for name, runs in preds.items():
                per.setdefault(name, [[] for _ in runs])
                for k, depths in enumerate(runs):
                    per[name][k].append(scores(depths, seq))
        stream_cuts = cuts(pipe, walks) if frames >= 2 * CUT_AT else {}
    out = {}
    for name, runs in per.items():
        by_seed = [{k: float(np.mean([s[k] for s in run])) for k in run[0]} for run in runs]
        row = {k: float(np.mean([b[k] for b in by_seed])) for k in by_seed[0]}
        row["per_noise_seed"] = by_seed
        row["spread"] = {k: abs(by_seed[0][k] - by_seed[-1][k]) for k in by_seed[0]}
        row["per_sequence_tae"] = [float(np.mean([run[j]["tae"] for run in runs])) for j in range(sequences)]
        row["per_sequence_tae_by_seed"] = [[run[j]["tae"] for j in range(sequences)] for run in runs]
        out[name] = row
    cost = {"frame_ms": 1000 * float(np.mean(COST["frame_s"]))}
    cost.update({name: 1000 * float(np.mean(COST[name])) for name in TEMPORAL})
    return {"first_seed": first_seed, "sequences": sequences, "frames": frames, "models": out, "cuts": stream_cuts,
            "cost_ms": cost}, first


def cuts(pipe: SharpDepthPipeline, walks: list) -> dict:
    """Per kind of cut, per temporal mode: how many streams flagged the cut at its first frame (whose
    output is then the per-frame result itself), how many frames elsewhere were flagged, and the TAE
    within the two halves against f_D's. A stream is CUT_AT frames of walk i, then: `scene change`
    CUT_AT frames of walk i+1, the odometry carrying on as if nothing happened (a jump it missed, a
    new room); `dropped second` the same walk 1 s (10 frames) later, the odometry right, without stamps
    (the images alone must show it); `dropped second, stamped` the same stream with each frame's stamp,
    as the node has them (the 1.1 s gap itself is a cut). Noise seed 0."""
    rows: dict = {}
    for i, (seq, preds) in enumerate(walks):
        other, other_preds = walks[(i + 1) % len(walks)]
        long = render_sequence(seq[0].seed, 2 * CUT_AT + 10)
        dropped = list(long[:CUT_AT]) + list(long[CUT_AT + 10:])
        per_frame = [pipe(f.rgb, K=f.K, seed=NOISE_SEEDS[0]) for f in dropped]  # each with f_D's depth (its metric_depth)
        dropped_depths, dropped_fd = [o.depth[0, 0].numpy() for o in per_frame], [o.metric_depth[0, 0].numpy() for o in per_frame]
        anchor = seq[CUT_AT - 1].camera_to_world @ np.linalg.inv(other[0].camera_to_world)
        streams = {  # frames, per-frame depths, f_D's depths (the walks' own where predictions() has them), odometry
            "scene change": (list(seq[:CUT_AT]) + list(other[:CUT_AT]), preds[DEFAULT][0][:CUT_AT] + other_preds[DEFAULT][0][:CUT_AT],
                             preds["f_D"][0][:CUT_AT] + other_preds["f_D"][0][:CUT_AT],
                             [f.camera_to_world for f in seq[:CUT_AT]] + [anchor @ f.camera_to_world for f in other[:CUT_AT]]),
            "dropped second": (dropped, dropped_depths, dropped_fd, [f.camera_to_world for f in dropped]),
        }
        streams["dropped second, stamped"] = streams["dropped second"]
        baselines: dict[int, tuple[float, float]] = {}  # id(stream) -> f_D's and the per-frame TAE: once per stream
        for kind, stream in streams.items():
            frames, depths, fd, odometry = stream
            stamps = [t / SEQUENCE_RATE_HZ for t in list(range(CUT_AT)) + list(range(CUT_AT + 10, 2 * CUT_AT + 10))] if "stamped" in kind else None
            gts, true = [f.depth for f in frames], [f.camera_to_world for f in frames]
            halves = (slice(0, CUT_AT), slice(CUT_AT, None))
            tae = lambda ds: float(np.mean([temporal_alignment_error(ds[h], gts[h], frames[0].K, true[h]) for h in halves]))
            if id(stream) not in baselines:
                baselines[id(stream)] = tae(fd), tae(depths)
            row = rows.setdefault(kind, {"f_D": [], DEFAULT: []})
            row["f_D"].append(baselines[id(stream)][0])
            row[DEFAULT].append(baselines[id(stream)][1])
            for name, (mode, kind_of_odometry) in TEMPORAL.items():
                poses = None if mode == "image" else (odometry if kind_of_odometry == "exact" else drifting_odometry(odometry, frames[0].seed))
                outs, flags = temporal_run(frames, depths, mode, poses, stamps)
                r = row.setdefault(name, {"tae": [], "flagged": 0, "same_as_per_frame": 0, "false_cuts": 0})
                r["tae"].append(tae(outs))
                r["flagged"] += int(flags[CUT_AT])
                r["same_as_per_frame"] += int(np.array_equal(outs[CUT_AT], depths[CUT_AT]))
                r["false_cuts"] += sum(flags[1:CUT_AT]) + sum(flags[CUT_AT + 1:])
                if i == 0 and kind == "scene change" and mode == "image":
                    CUT_FIGURE.update(frames=frames, per_frame=depths, temporal=outs, flags=flags)
    return rows


CUT_FIGURE: dict = {}  # the first scene-change stream, image mode, for the figure


def table(result: dict) -> str:
    which = "validation" if result["first_seed"] >= 110_000 else "held-out"
    lines = [f"{result['sequences']} {which} sequences x {result['frames']} frames (seeds {result['first_seed']}..), "
             "mean over sequences and noise seeds, ± the spread of two noise seeds:",
             f"{'model':<52} {'TAE':>16} {'flicker mm':>12} {'AbsRel':>16} {'TAE, scaled':>16}"]
    for name, m in result["models"].items():
        cells = [f"{m[k]:.4f} ± {m['spread'][k]:.4f}" if k != "flicker_mm" else f"{m[k]:.1f} ± {m['spread'][k]:.1f}"
                 for k in ("tae", "flicker_mm", "abs_rel", "tae_scaled")]
        lines.append(f"{name:<52} {cells[0]:>16} {cells[1]:>12} {cells[2]:>16} {cells[3]:>16}")
    fd = result["models"]["f_D"]["per_sequence_tae"]
    lines.append("TAE / f_D's per walk: mean of the noise seeds (each seed's), DBE acc / compl:")
    for name, m in result["models"].items():
        if name not in ("ground truth", "f_D"):
            ratios = " ".join(f"{a / b:.2f} ({'/'.join(f'{run[j] / b:.2f}' for run in m['per_sequence_tae_by_seed'])})"
                              for j, (a, b) in enumerate(zip(m["per_sequence_tae"], fd)))
            lines.append(f"  {name:<50} {ratios}   DBE {m['dbe_acc']:.2f} / {m['dbe_compl']:.2f}")
    for kind, row in result.get("cuts", {}).items():
        n = len(row["f_D"])
        lines.append(f"cut: {kind} ({n} streams; TAE within the halves): f_D {np.mean(row['f_D']):.4f}, "
                     f"SharpDepth {np.mean(row[DEFAULT]):.4f}")
        for name in TEMPORAL:
            r = row[name]
            lines.append(f"  {name:<50} TAE {np.mean(r['tae']):.4f}, cut flagged {r['flagged']}/{n}, output = per-frame "
                         f"{r['same_as_per_frame']}/{n}, other frames flagged {r['false_cuts']}")
    if "cost_ms" in result:
        c = result["cost_ms"]
        lines.append(f"cost: a frame {c['frame_ms']:.1f} ms; " + ", ".join(f"{name} {c[name]:.1f} ms ({100 * c[name] / c['frame_ms']:.1f} %)" for name in TEMPORAL))
    return "\n".join(lines)


FONT_PT, FIGURE_DPI = 10, 100  # the figure was 6-7 pt at 64 dpi: letters ~4 px tall (issue 30 item 10)


def figure(path: Path, seq, preds: dict, start: int, count: int = 5, cut: dict | None = None) -> None:
    """Per model two rows: depth of `count` consecutive frames (one colour scale), and each frame's
    reprojection error into the next (0-10 %, black where not scored). Text sized to be read at the
    PNG's own size (10 pt at 100 dpi: about 10 px capitals)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sharpdepth_core.visualize import colorize_depth, colorize_difference

    lo, hi = min(float(f.depth.min()) for f in seq), max(float(f.depth.max()) for f in seq)
    extra = 2 if cut else 0
    fig, axes = plt.subplots(2 * len(preds) + extra, count, figsize=(1.9 * count + 1.5, 1.5 * (2 * len(preds) + extra)), squeeze=False)
    for r, (name, runs) in enumerate(preds.items()):
        depths = runs[0]
        for c, t in enumerate(range(start, start + count)):
            a, b = seq[t], seq[t + 1]
            e = reprojection_error(depths[t], depths[t + 1], a.depth, b.depth, a.K, relative_pose(a.camera_to_world, b.camera_to_world))
            tae = float(np.nanmean(e))
            shown = colorize_difference(np.nan_to_num(np.clip(e / 0.1, 0, 1), nan=0.0))
            shown[~np.isfinite(e)] = 0
            for row, pic, title in ((2 * r, colorize_depth(depths[t], lo, hi), f"t={t}"), (2 * r + 1, shown, f"{t}→{t + 1}: {tae:.3f}")):
                axes[row, c].imshow(pic, interpolation="nearest")
                axes[row, c].set_axis_off()
                axes[row, c].set_title(title, fontsize=FONT_PT)
        axes[2 * r, 0].text(-0.05, 0.5, name.replace(" (", "\n(").replace(", ", ",\n").replace(": ", ":\n"), fontsize=FONT_PT, ha="right",
                            va="center", transform=axes[2 * r, 0].transAxes)
    if cut:  # the scene-change stream around its cut: the per-frame result and the image-only mode, which restarts on it
        frames = cut["frames"]
        c_lo, c_hi = min(float(f.depth.min()) for f in frames), max(float(f.depth.max()) for f in frames)
        for row, (label, depths) in enumerate((("scene change:\nSharpDepth", cut["per_frame"]),
                                               ("scene change:\ntemporal (image only)", cut["temporal"])), start=2 * len(preds)):
            for c, t in enumerate(range(CUT_AT - count // 2, CUT_AT - count // 2 + count)):
                axes[row, c].imshow(colorize_depth(depths[t], c_lo, c_hi), interpolation="nearest")
                axes[row, c].set_axis_off()
                flag = " CUT: per-frame" if cut["flags"][t] and row > 2 * len(preds) else (" (new room)" if t == CUT_AT else "")
                axes[row, c].set_title(f"t={t}{flag}", fontsize=FONT_PT, color="red" if "CUT" in flag else "black")
            axes[row, 0].text(-0.05, 0.5, label, fontsize=FONT_PT, ha="right", va="center", transform=axes[row, 0].transAxes)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, dpi=FIGURE_DPI, format="png")
    plt.close(fig)
    write_bytes(path, buf.getvalue())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n")[-1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--first-seed", type=int, default=100_000,
                        help="first sequence's room (default: the evaluation range; 110000.. is validation)")
    parser.add_argument("--sequences", type=int, default=4)
    parser.add_argument("--frames", type=int, default=30, help="frames per sequence (10 per second)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the JSON result to this file")
    parser.add_argument("--figure", type=Path, help="write the strip of frames to this PNG")
    add_quick(parser, f"{QUICK['sequences']} sequence x {QUICK['frames']} frames")
    args = quick_defaults(parser, argv, QUICK)
    if min(args.sequences, args.threads) < 1 or args.frames < 2:
        parser.error("--sequences and --threads must be >= 1, --frames >= 2")
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    quiet_loading()
    per_frame = SECONDS_PER_FRAME + (SECONDS_PER_FRAME_CUTS if args.frames >= 2 * CUT_AT else 0)
    announce("temporal", SECONDS_START + per_frame * args.sequences * args.frames,
             f"{args.sequences} sequence(s) x {args.frames} frames" + (", the cut streams" if args.frames >= 2 * CUT_AT else ""),
             args.quick, f"{per_frame:.2f} s a frame")
    result, (seq, preds) = temporal(args.first_seed, args.sequences, args.frames)
    result["seconds"] = time.perf_counter() - start
    print(table(result))
    line = json.dumps({"bench": "temporal", "torch": torch.__version__, "threads": args.threads, **result})
    if args.json:
        write_bytes(args.json, (line + "\n").encode())
    if args.figure:
        figure(args.figure, seq, preds, start=min(10, args.frames - 6) if args.frames > 6 else 0, count=min(5, args.frames - 1),
               cut=CUT_FIGURE or None)
    print(line)


if __name__ == "__main__":
    main()
