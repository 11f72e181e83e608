#!/usr/bin/env python3
"""Report of the small-scale SharpDepth reproduction (train/nano): does the method do what the paper claims?

On held-out scenes of the target camera (never seen by any model, never used for a design choice) it
scores, in metres against the scenes' ground truth: f_D; f_G fitted to the ground truth and f_G
aligned to f_D by a least-squares scale and shift (the paper's "Lotus aligned to UniDepth");
SharpDepth with two training seeds (their difference is the run-to-run spread); and the ablations of
docs/METHOD.md. Accuracy: AbsRel, δ1, RMSE (no GT alignment); sharpness: the pseudo depth-boundary
error (acc, compl); both by `depth_scores`, which clamps every prediction to >= 1 cm before scoring
(a fitted affine output can dip below zero; the metrics need positive depth).

Writes NANO_REPORT.md (the regime's gates first, then the table, the targets with the spread, the
inference-order comparison, diagnostics and retrain times), nano_report.json and nano_report.png. A
hand-written section from "## Findings" on in an existing NANO_REPORT.md is kept.

  python bench/nano_report.py                       # models of out/nano (train/nano/run_all.py)
  python bench/nano_report.py --gates-only          # the three gates on the val seeds (exit 1 if one fails)
  python bench/nano_report.py --scenes 20 --out /tmp/r
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from sharpdepth_core.alignment import apply_scale_shift, fit_scale_shift
from sharpdepth_core.gating import difference_map
from sharpdepth_core.geometry import scale_intrinsics
from sharpdepth_core.metrics import depth_scores
from sharpdepth_core.models import DiffusionDepthModel, load_metric_model
from sharpdepth_core.normalization import normalize_depth
from sharpdepth_core.pipeline import SharpDepthPipeline, fit_to_metric
from sharpdepth_core.preprocessing import resize_and_pad, unpad_and_resize
from sharpdepth_core.small_scale import CAMERA_K, F_G_STYLE, H, HFOV_DEG, SEEDS, TARGET, W, scenes

REPO = Path(__file__).resolve().parents[1]
OUT = Path(os.environ.get("NANO_OUT", REPO / "out" / "nano"))  # where train/nano/run_all.py writes (its common.OUT)

FINDINGS = "## Findings"  # a hand-written section from here on is kept when the report is regenerated
ABLATIONS = yaml.safe_load((REPO / "train" / "nano" / "configs" / "ablations.yaml").read_text())
LABELS = {
    "f_D": "f_D (metric teacher)",
    "f_G_gt": "f_G fitted to GT (affine, not metric)",
    "f_G_aligned": "f_G aligned to f_D (LSQ)",
    "full": "**SharpDepth** (seed 0)",
    "full_seed1": "**SharpDepth** (seed 1)",
    "no_gating": "ablation: no difference-map gating (plain noise)",
    "clean_z_d": "ablation: clean z_d (no noise)",
    "no_sds": "ablation: no SDS",
    "no_rec": "ablation: no reconstruction loss",
    "frozen_f_G": "ablation: frozen f_G for the difference map",
}
SHARPNESS_GATE = 0.75  # f_G's DBE compl must be at least 25 % below f_D's


def images_of(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(rgb).permute(0, 3, 1, 2).float() / 255


@torch.no_grad()
def affine_pass(model: DiffusionDepthModel, image: torch.Tensor, seed: int) -> torch.Tensor:
    """d̃ = dec(G([z_i, ε])) at the input size (normalised depth): an affine-invariant prediction."""
    codec = model.codec
    x, plan = resize_and_pad(image, max(image.shape[-2:]), codec.downsample_factor)
    z_i = codec.encode_image(x)
    eps = torch.randn(z_i.shape, generator=torch.Generator().manual_seed(seed))
    return unpad_and_resize(codec.decode_depth(model(z_i, eps)), plan)


def fitted(pred: torch.Tensor, target: torch.Tensor) -> np.ndarray:
    return apply_scale_shift(pred, fit_scale_shift(pred, target))[0, 0].numpy()


@torch.no_grad()
def ungated(pipe: SharpDepthPipeline, image: torch.Tensor, seed: int, mode: str) -> torch.Tensor:
    """The inference of the two gating ablations, with the student input they were trained on:
    "noise" — the answer is the affine pass G([z_i, ε]) itself; "clean" — G([z_i, z_d]). Everything
    else as the pipeline: difference map from the affine pass, final fit on e < 0.5."""
    codec, student = pipe.student.codec, pipe.student
    x, plan = resize_and_pad(image, pipe.processing_res, codec.downsample_factor)
    d, metric, _ = pipe._metric_depth(image, x, plan, None, pipe.processing_res)
    d_n, _, _ = normalize_depth(d)
    z_i, z_d = codec.encode_image(x), codec.encode_depth(d_n)
    eps = torch.randn(z_i.shape, generator=torch.Generator().manual_seed(seed))
    d_tilde = codec.decode_depth(student(z_i, eps))
    e = difference_map(d_tilde, d_n)
    d_hat_n = d_tilde if mode == "noise" else codec.decode_depth(student(z_i, z_d))
    d_hat_n, e = unpad_and_resize(d_hat_n, plan), unpad_and_resize(e, plan).clamp(0, 1)
    return fit_to_metric(d_hat_n, metric, e)[0]


@torch.no_grad()
def teachers(metric, f_g: DiffusionDepthModel, rgb: np.ndarray, gt: np.ndarray) -> tuple[dict, dict]:
    """Scores of f_D, f_G fitted to GT and f_G aligned to f_D, and the predictions (for the figure)."""
    preds: dict[str, list[np.ndarray]] = {"f_D": [], "f_G_gt": [], "f_G_aligned": []}
    for i, image in enumerate(images_of(rgb)):
        d = metric(image[None]).depth  # no K, as the pipeline calls it here (the camera is f_D's own)
        d_tilde = affine_pass(f_g, image[None], seed=i)
        preds["f_D"].append(d[0, 0].numpy())
        preds["f_G_gt"].append(fitted(d_tilde, torch.from_numpy(gt[i])[None, None]))
        preds["f_G_aligned"].append(fitted(d_tilde, d))
    return {k: depth_scores(v, gt) for k, v in preds.items()}, preds


def gates(r: dict[str, dict[str, float]]) -> list[tuple[str, bool, str]]:
    """The regime the paper's claim needs (the small-scale issue's gates)."""
    fd, fg, al = r["f_D"], r["f_G_gt"], r["f_G_aligned"]
    return [
        ("1. f_D AbsRel <= 0.13 (unaligned, metres)", fd["abs_rel"] <= 0.13, f"{fd['abs_rel']:.3f}"),
        ("2. f_G (fitted to GT) sharper than f_D: DBE compl >= 25 % lower, acc not higher",
         fg["dbe_compl"] <= SHARPNESS_GATE * fd["dbe_compl"] and fg["dbe_acc"] <= fd["dbe_acc"],
         f"compl {fg['dbe_compl']:.2f} vs {fd['dbe_compl']:.2f} ({100 * (fg['dbe_compl'] / fd['dbe_compl'] - 1):+.0f} %), "
         f"acc {fg['dbe_acc']:.2f} vs {fd['dbe_acc']:.2f}"),
        ("3. f_G aligned to f_D less accurate than f_D (AbsRel)", al["abs_rel"] > fd["abs_rel"],
         f"{al['abs_rel']:.3f} vs {fd['abs_rel']:.3f}"),
    ]


def halfway(value: float, start: float, goal: float) -> bool:
    """At least half of the way from `start` (f_D) towards `goal` (f_G)."""
    return goal < start and (start - value) >= 0.5 * (start - goal)


def spread(r: dict[str, dict[str, float]]) -> dict[str, float]:
    """Run-to-run spread: |seed 0 - seed 1| of the full method, per metric (0 when one seed is missing)."""
    if "full_seed1" not in r:
        return {k: 0.0 for k in r["full"]}
    return {k: abs(r["full"][k] - r["full_seed1"][k]) for k in r["full"]}


def targets(r: dict[str, dict[str, float]]) -> list[tuple[str, bool, str]]:
    """The paper's claim in miniature, and the ablations' order; an order is claimed only beyond the spread."""
    fd, fg, sd, sp = r["f_D"], r["f_G_gt"], r["full"], spread(r)
    checks = [
        ("SharpDepth AbsRel within 10 % of f_D's", sd["abs_rel"] <= 1.10 * fd["abs_rel"],
         f"{sd['abs_rel']:.3f} vs {fd['abs_rel']:.3f} ({100 * (sd['abs_rel'] / fd['abs_rel'] - 1):+.1f} %)"),
        ("SharpDepth DBE acc at least halfway from f_D's to f_G's", halfway(sd["dbe_acc"], fd["dbe_acc"], fg["dbe_acc"]),
         f"{sd['dbe_acc']:.2f} (f_D {fd['dbe_acc']:.2f}, f_G {fg['dbe_acc']:.2f})"),
        ("SharpDepth DBE compl at least halfway from f_D's to f_G's", halfway(sd["dbe_compl"], fd["dbe_compl"], fg["dbe_compl"]),
         f"{sd['dbe_compl']:.2f} (f_D {fd['dbe_compl']:.2f}, f_G {fg['dbe_compl']:.2f})"),
    ]

    def worse(name: str, key: str, what: str) -> None:
        if name in r:
            gap = r[name][key] - sd[key]
            checks.append((f"{LABELS[name].removeprefix('ablation: ')}: {what}", gap > sp[key],
                           f"{r[name][key]:.3f} vs {sd[key]:.3f} (gap {gap:+.3f}, spread {sp[key]:.3f})"))

    if "no_sds" in r:
        ns = r["no_sds"]
        checks.append(("no SDS keeps f_D's blur (DBE compl nearer f_D's than SharpDepth's, beyond the spread)",
                       abs(ns["dbe_compl"] - fd["dbe_compl"]) + sp["dbe_compl"] < abs(sd["dbe_compl"] - fd["dbe_compl"]),
                       f"compl {ns['dbe_compl']:.2f} (f_D {fd['dbe_compl']:.2f}, SharpDepth {sd['dbe_compl']:.2f}, spread {sp['dbe_compl']:.2f})"))
    worse("no_rec", "abs_rel", "loses metric accuracy (AbsRel worse than SharpDepth's beyond the spread)")
    worse("no_gating", "abs_rel", "worse than the full method (AbsRel, beyond the spread)")
    worse("clean_z_d", "abs_rel", "worse than the full method (AbsRel, beyond the spread)")
    worse("frozen_f_G", "abs_rel", "worse than the full method (AbsRel, beyond the spread)")
    return checks


@torch.no_grad()
def diagnostics(f_g: DiffusionDepthModel, metric, n: int, cache: Path) -> dict[str, dict[str, float]]:
    """Why the regime holds or not, on n val scenes: the VAE's own ceiling (GT depth encoded and
    decoded, fitted to GT), f_G fitted to GT in its own style and in the target style, and f_D fitted
    to GT (its error without the part a scale and shift remove)."""
    out = {}
    codec = f_g.codec
    for style in dict.fromkeys((F_G_STYLE, TARGET)):
        rgb, gt = scenes(style, "val", cache)
        found: dict[str, list[np.ndarray]] = {"VAE round trip": [], "f_G": [], **({"f_D": []} if style == TARGET else {})}
        for i, image in enumerate(images_of(rgb[:n])):
            g = torch.from_numpy(gt[i])[None, None]
            d_n, _, _ = normalize_depth(g)
            found["VAE round trip"].append(fitted(codec.decode_depth(codec.encode_depth(d_n)), g))
            found["f_G"].append(fitted(affine_pass(f_g, image[None], i), g))
            if style == TARGET:
                found["f_D"].append(fitted(metric(image[None]).depth, g))
        for name, preds in found.items():
            out[f"{name} fitted to GT, {style}"] = depth_scores(preds, gt[:n])
    return out


@torch.no_grad()
def inference_order(student: DiffusionDepthModel, metric, n: int, scale: int = 2) -> dict[str, dict[str, float]]:
    """docs/METHOD.md: f_D on the processing grid (reference) or at the input size, on the eval scenes
    rendered `scale` times larger with the same field of view (at the camera's own size the two are
    the same), processing grid = the camera's size."""
    from sharpdepth_core.synthetic import render_scene

    K = scale_intrinsics(CAMERA_K, (H, W), (H * scale, W * scale))
    first = SEEDS["eval"][0]
    scenes_ = [render_scene(first + i, W * scale, H * scale, K=K, style=TARGET) for i in range(n)]
    gt = np.stack([sc.depth for sc in scenes_])
    out = {}
    for name, at_input in (("f_D on the grid (reference, default)", False), ("f_D at the input size", True)):
        pipe = SharpDepthPipeline(student, metric, processing_res=max(H, W), metric_at_input_res=at_input)
        out[name] = depth_scores([pipe(sc.rgb, seed=i).depth[0, 0].numpy() for i, sc in enumerate(scenes_)], gt)
    return out


def figure(path: Path, rows: list[dict[str, np.ndarray]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sharpdepth_core.visualize import colorize_depth, colorize_difference

    cols = ["image", "ground truth", "f_D", "f_G aligned to f_D", "SharpDepth", "difference map e"]
    fig, axes = plt.subplots(len(rows), len(cols), figsize=(2.2 * len(cols), 1.75 * len(rows)), squeeze=False)
    for r, row in enumerate(rows):
        lo, hi = float(row["gt"].min()), float(row["gt"].max())  # one colour scale per scene
        pictures = [row["image"], colorize_depth(row["gt"], lo, hi), colorize_depth(row["f_D"], lo, hi),
                    colorize_depth(row["f_G_aligned"], lo, hi), colorize_depth(row["full"], lo, hi),
                    colorize_difference(row["difference"])]
        for c, pic in enumerate(pictures):
            axes[r, c].imshow(pic, interpolation="nearest")
            axes[r, c].set_axis_off()
            if r == 0:
                axes[r, c].set_title(cols[c], fontsize=9)
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def check_table(checks: list) -> list[str]:
    return ["| check | met | value |", "|---|---|---|"] + [f"| {n} | {'yes' if ok else '**no**'} | {v} |" for n, ok, v in checks]


def metrics_table(r: dict, labels: dict | None = None) -> list[str]:
    lines = ["| model | AbsRel ↓ | δ1 ↑ | RMSE [m] ↓ | DBE acc ↓ | DBE compl ↓ |", "|---|---|---|---|---|---|"]
    for name, m in r.items():
        lines.append(f"| {(labels or {}).get(name, name)} | {m['abs_rel']:.3f} | {m['delta1']:.3f} | {m['rmse']:.3f} | "
                     f"{m['dbe_acc']:.2f} | {m['dbe_compl']:.2f} |")
    return lines


def markdown(r: dict, meta: dict) -> str:
    sp = spread(r)
    lines = [
        "# SharpDepth, small scale: report",
        "",
        f"Generated by `bench/nano_report.py` from the models of `train/nano/run_all.py` (`make nano`). "
        f"{meta['scenes']} held-out scenes of the target camera (`{TARGET}` style, {W}x{H}, {HFOV_DEG:g}° horizontal "
        f"field of view; seeds {meta['first_seed']}..{meta['first_seed'] + meta['scenes'] - 1}, used for nothing else), "
        "metres, no GT alignment except where named. DBE = pseudo depth-boundary error in pixels (acc, compl; "
        "lower is sharper). Synthetic scenes only: not a statement about real cameras.",
        "",
        "## The regime (gates)",
        "",
        *check_table(meta["gates"]),
        "",
        "## Results",
        "",
        *metrics_table(r, LABELS),
        "",
        f"Run-to-run spread (|seed 0 − seed 1| of the full method): AbsRel {sp['abs_rel']:.3f}, "
        f"DBE acc {sp['dbe_acc']:.2f}, compl {sp['dbe_compl']:.2f}.",
        "",
        "## Targets",
        "",
        *check_table(meta["targets"]),
    ]
    if meta.get("inference_order"):
        lines += ["", f"## Inference order (docs/METHOD.md): {meta['order_scenes']} eval scenes at {2 * W}x{2 * H}, grid {W}x{H}",
                  "", *metrics_table(meta["inference_order"])]
    if meta.get("diagnostics"):
        lines += ["", f"## Diagnostics ({meta['diagnostic_scenes']} val scenes per style)", "",
                  "| what | AbsRel | DBE acc | DBE compl |", "|---|---|---|---|"]
        lines += [f"| {k} | {m['abs_rel']:.3f} | {m['dbe_acc']:.2f} | {m['dbe_compl']:.2f} |" for k, m in meta["diagnostics"].items()]
    if meta.get("timings"):
        lines += ["", "## Retrain time (out/nano/timings.json)", "", "| stage | minutes |", "|---|---|"]
        lines += [f"| {k} | {v / 60:.1f} |" for k, v in meta["timings"].items()]
    lines += ["", "![scenes](nano_report.png)", ""]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=str(OUT), help="folder with f_D/, f_G/ and runs/<ablation>/pipeline/student")
    p.add_argument("--scenes", type=int, default=SEEDS["eval"][1])
    p.add_argument("--gates-only", action="store_true", help="the gates on the val seeds only; exit 1 if one fails")
    p.add_argument("--out", default=str(REPO / "bench"), help="where NANO_REPORT.md, .json, .png go")
    p.add_argument("--figure-scenes", type=int, default=4)
    args = p.parse_args()
    torch.set_num_threads(1 if os.getloadavg()[0] > 1.5 else 2)
    models, out = Path(args.models), Path(args.out)
    cache = models / "cache"
    metric = load_metric_model("small-conv", models / "f_D")
    f_g = DiffusionDepthModel.from_pretrained(models / "f_G")
    if args.gates_only:
        rgb, gt = scenes(TARGET, "val", cache)
        results, _ = teachers(metric, f_g, rgb, gt)
        checks = gates(results)
        print("\n".join(metrics_table(results, LABELS) + [""] + check_table(checks)))
        return 0 if all(ok for _, ok, _ in checks) else 1

    students = {name: models / "runs" / name / "pipeline" / "student" for name in ABLATIONS}
    missing = [n for n, s in students.items() if not s.is_dir()]
    if "full" in missing:
        raise SystemExit(f"no SharpDepth student at {students['full']}: run train/nano/run_all.py first")
    for name in missing:
        print(f"note: {name} not trained ({students[name]} missing), left out")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    rgb, gt = scenes(TARGET, "eval", cache)
    rgb, gt = rgb[: args.scenes], gt[: args.scenes]
    results, preds = teachers(metric, f_g, rgb, gt)
    print(f"teachers: done ({time.perf_counter() - t0:.0f} s)", flush=True)
    rows = []
    images = images_of(rgb)
    for name in [n for n in ABLATIONS if n not in missing]:
        pipe = SharpDepthPipeline(DiffusionDepthModel.from_pretrained(students[name]), metric, processing_res=max(H, W))
        if name == "full":
            full = pipe.student  # also for the inference-order comparison
        preds[name] = []
        for i in range(len(images)):
            image = images[i : i + 1]
            if ABLATIONS[name]["inference"] == "gated":
                res = pipe(image, seed=i)
                depth = res.depth
                if name == "full" and i < args.figure_scenes:
                    rows.append({"image": rgb[i], "gt": gt[i], "difference": res.difference[0, 0].numpy()})
            else:
                depth = ungated(pipe, image, i, ABLATIONS[name]["inference"])
            preds[name].append(depth[0, 0].numpy())
        results[name] = depth_scores(preds[name], gt)
        print(f"{name}: done ({time.perf_counter() - t0:.0f} s)", flush=True)
    for i, row in enumerate(rows):
        row.update({k: preds[k][i] for k in ("f_D", "f_G_aligned", "full")})
    timings_file = models / "timings.json"
    meta = {"scenes": len(gt), "first_seed": SEEDS["eval"][0], "size": [W, H], "hfov_deg": HFOV_DEG, "style": TARGET,
            "f_G_style": F_G_STYLE, "timings": json.loads(timings_file.read_text()) if timings_file.is_file() else {},
            "gates": gates(results), "targets": targets(results), "spread": spread(results)}
    meta["order_scenes"] = min(30, args.scenes)
    meta["inference_order"] = inference_order(full, metric, meta["order_scenes"])
    meta["diagnostic_scenes"] = min(30, args.scenes)
    meta["diagnostics"] = diagnostics(f_g, metric, meta["diagnostic_scenes"], cache)
    figure(out / "nano_report.png", rows)
    as_json = {**meta, "results": results,
               "gates": [{"gate": n, "met": ok, "value": v} for n, ok, v in meta["gates"]],
               "targets": [{"target": n, "met": ok, "value": v} for n, ok, v in meta["targets"]]}
    write_atomic(out / "nano_report.json", json.dumps(as_json, indent=2) + "\n")
    report = out / "NANO_REPORT.md"
    findings = report.read_text().partition(FINDINGS)[2] if report.is_file() else ""
    write_atomic(report, markdown(results, meta) + (f"\n{FINDINGS}{findings}" if findings else ""))
    print(markdown(results, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
