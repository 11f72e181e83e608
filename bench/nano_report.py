#!/usr/bin/env python3
"""Report of the small-scale SharpDepth reproduction (train/nano): does the method do what the paper claims?

On held-out scenes of the target style (never seen by any model) it scores, in metres against the
scenes' ground truth: f_D; f_G aligned to f_D by a least-squares scale and shift (the paper's
"Lotus aligned to UniDepth"); SharpDepth; and the ablations of METHOD.md. Accuracy: AbsRel, δ1,
RMSE (`depth_metrics`, no GT alignment); sharpness: the pseudo depth-boundary error (acc, compl)
of `boundary_error`. Every prediction goes through the same clamp to >= 1 cm before scoring (a
fitted affine output can dip below zero; the metrics need positive depth).

Writes NANO_REPORT.md (table, verdict on each target, diagnostics: the VAE's ceiling, f_G in its
own and the target style, f_D fitted to GT), nano_report.json and nano_report.png (image, ground
truth, f_D, f_G aligned, SharpDepth, difference map for a few scenes). A hand-written "## Findings"
section at the end of an existing NANO_REPORT.md is kept.

  python bench/nano_report.py                       # models of out/nano (train/nano/run_all.py)
  python bench/nano_report.py --scenes 20 --out /tmp/r
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "train" / "nano"))
from common import OTHER, H, OUT, SEEDS, TARGET, W, scenes  # noqa: E402

from sharpdepth_core.alignment import apply_scale_shift, fit_scale_shift  # noqa: E402
from sharpdepth_core.gating import difference_map  # noqa: E402
from sharpdepth_core.metrics import boundary_error, depth_metrics  # noqa: E402
from sharpdepth_core.models import DiffusionDepthModel, load_metric_model  # noqa: E402
from sharpdepth_core.normalization import normalize_depth  # noqa: E402
from sharpdepth_core.pipeline import SharpDepthPipeline, fit_to_metric  # noqa: E402
from sharpdepth_core.preprocessing import resize_and_pad, unpad_and_resize  # noqa: E402

MIN_DEPTH = 0.01  # metres
FINDINGS = "## Findings"  # a hand-written section from here on is kept when the report is regenerated
ABLATIONS = yaml.safe_load((REPO / "train" / "nano" / "configs" / "ablations.yaml").read_text())
LABELS = {
    "f_D": "f_D (metric teacher)",
    "f_G_aligned": "f_G aligned to f_D (LSQ)",
    "full": "**SharpDepth**",
    "no_gating": "ablation: no difference-map gating (plain noise)",
    "clean_z_d": "ablation: clean z_d (no noise)",
    "no_sds": "ablation: no SDS",
    "no_rec": "ablation: no reconstruction loss",
    "frozen_f_G": "ablation: frozen f_G for the difference map",
}


@torch.no_grad()
def affine_pass(model: DiffusionDepthModel, image: torch.Tensor, seed: int) -> torch.Tensor:
    """d̃ = dec(G([z_i, ε])) at the input size (normalised depth): an affine-invariant prediction."""
    codec = model.codec
    x, plan = resize_and_pad(image, max(image.shape[-2:]), codec.downsample_factor)
    z_i = codec.encode_image(x)
    eps = torch.randn(z_i.shape, generator=torch.Generator().manual_seed(seed))
    return unpad_and_resize(codec.decode_depth(model(z_i, eps)), plan)


@torch.no_grad()
def ungated(pipe: SharpDepthPipeline, image: torch.Tensor, seed: int, mode: str) -> torch.Tensor:
    """The inference of the two gating ablations, with the student input they were trained on:
    "noise" — the answer is the affine pass G([z_i, ε]) itself; "clean" — G([z_i, z_d]). Everything
    else as the pipeline: difference map from the affine pass, final fit on e < 0.5."""
    codec, student = pipe.student.codec, pipe.student
    metric = pipe.metric_model(image).depth
    x, plan = resize_and_pad(image, pipe.processing_res, codec.downsample_factor)
    d, _ = resize_and_pad(metric, pipe.processing_res, codec.downsample_factor)
    d_n, _, _ = normalize_depth(d)
    z_i, z_d = codec.encode_image(x), codec.encode_depth(d_n)
    eps = torch.randn(z_i.shape, generator=torch.Generator().manual_seed(seed))
    d_tilde = codec.decode_depth(student(z_i, eps))
    e = difference_map(d_tilde, d_n)
    d_hat_n = d_tilde if mode == "noise" else codec.decode_depth(student(z_i, z_d))
    d_hat_n, e = unpad_and_resize(d_hat_n, plan), unpad_and_resize(e, plan).clamp(0, 1)
    return fit_to_metric(d_hat_n, metric, e)[0]


def score(preds: list[np.ndarray], gts: np.ndarray) -> dict[str, float]:
    p = np.clip(np.stack(preds), MIN_DEPTH, None)
    m = depth_metrics(p, gts)
    acc, compl = boundary_error(p, gts)
    return {"abs_rel": m["abs_rel"], "delta1": m["delta1"], "rmse": m["rmse"], "dbe_acc": acc, "dbe_compl": compl}


@torch.no_grad()
def diagnostics(f_g: DiffusionDepthModel, metric, n: int) -> dict[str, dict[str, float]]:
    """Why the regime holds or not, on n held-out scenes: the VAE's own ceiling (GT depth encoded and
    decoded, fitted to GT), f_G fitted to GT in its own style and in the target style (the gap), and
    f_D fitted to GT in the target style (its error without the part a scale and shift remove)."""
    from sharpdepth_core.synthetic import render_scene

    out = {}
    for style in (OTHER, TARGET):
        found = {"vae_round_trip": [], "f_G": [], **({"f_D": []} if style == TARGET else {})}
        gts = []
        for i in range(n):
            scene = render_scene(SEEDS["eval"][0] + i, W, H, style=style)
            image = torch.from_numpy(scene.rgb).permute(2, 0, 1)[None].float() / 255
            gt = torch.from_numpy(scene.depth)[None, None]
            d_n, _, _ = normalize_depth(gt)
            codec = f_g.codec
            named = [("vae_round_trip", codec.decode_depth(codec.encode_depth(d_n))), ("f_G", affine_pass(f_g, image, i))]
            if style == TARGET:
                named.append(("f_D", metric(image).depth))
            for name, pred in named:
                found[name].append(apply_scale_shift(pred, fit_scale_shift(pred, gt))[0, 0].numpy())
            gts.append(scene.depth)
        for name, preds in found.items():
            out[f"{name} aligned to GT, {style}"] = score(preds, np.stack(gts))
    return out


def halfway(value: float, start: float, goal: float) -> bool:
    """At least half of the way from `start` (f_D) towards `goal` (f_G)."""
    return goal < start and (start - value) >= 0.5 * (start - goal)


def verdict(r: dict[str, dict[str, float]]) -> list[tuple[str, bool, str]]:
    fd, fg, sd = r["f_D"], r["f_G_aligned"], r["full"]
    checks = [
        ("regime: f_D AbsRel <= 0.10", fd["abs_rel"] <= 0.10, f"{fd['abs_rel']:.3f}"),
        ("regime: aligned f_G less accurate than f_D (AbsRel)", fg["abs_rel"] > fd["abs_rel"],
         f"{fg['abs_rel']:.3f} vs {fd['abs_rel']:.3f}"),
        ("regime: f_G sharper than f_D (DBE acc and compl)", fg["dbe_acc"] < fd["dbe_acc"] and fg["dbe_compl"] < fd["dbe_compl"],
         f"acc {fg['dbe_acc']:.2f} vs {fd['dbe_acc']:.2f}, compl {fg['dbe_compl']:.2f} vs {fd['dbe_compl']:.2f}"),
        ("SharpDepth AbsRel within 10 % of f_D's", sd["abs_rel"] <= 1.10 * fd["abs_rel"],
         f"{sd['abs_rel']:.3f} vs {fd['abs_rel']:.3f} ({100 * (sd['abs_rel'] / fd['abs_rel'] - 1):+.1f} %)"),
        ("SharpDepth AbsRel better than aligned f_G's", sd["abs_rel"] < fg["abs_rel"], f"{sd['abs_rel']:.3f} vs {fg['abs_rel']:.3f}"),
        ("SharpDepth DBE acc at least halfway from f_D to f_G", halfway(sd["dbe_acc"], fd["dbe_acc"], fg["dbe_acc"]),
         f"{sd['dbe_acc']:.2f} (f_D {fd['dbe_acc']:.2f}, f_G {fg['dbe_acc']:.2f})"),
        ("SharpDepth DBE compl at least halfway from f_D to f_G", halfway(sd["dbe_compl"], fd["dbe_compl"], fg["dbe_compl"]),
         f"{sd['dbe_compl']:.2f} (f_D {fd['dbe_compl']:.2f}, f_G {fg['dbe_compl']:.2f})"),
    ]
    if "no_sds" in r:
        ns = r["no_sds"]
        checks.append(("no SDS keeps f_D's blur (DBE compl nearer f_D's than SharpDepth's is)",
                       abs(ns["dbe_compl"] - fd["dbe_compl"]) < abs(sd["dbe_compl"] - fd["dbe_compl"]),
                       f"compl {ns['dbe_compl']:.2f} (f_D {fd['dbe_compl']:.2f}, SharpDepth {sd['dbe_compl']:.2f})"))
    if "no_rec" in r:
        nr = r["no_rec"]
        checks.append(("no reconstruction loses metric accuracy (AbsRel worse than SharpDepth's)",
                       nr["abs_rel"] > sd["abs_rel"], f"{nr['abs_rel']:.3f} vs {sd['abs_rel']:.3f}"))
    return checks


def figure(path: Path, rows: list[dict[str, np.ndarray]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sharpdepth_core.visualize import colorize_depth, colorize_difference

    cols = ["image", "ground truth", "f_D", "f_G aligned", "SharpDepth", "difference map e"]
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


def markdown(r: dict, checks: list, meta: dict) -> str:
    lines = [
        "# SharpDepth, small scale: report",
        "",
        f"Generated by `bench/nano_report.py` from the models of `train/nano/run_all.py` (`make nano`). "
        f"{meta['scenes']} held-out `{TARGET}` scenes (seeds {meta['first_seed']}..{meta['first_seed'] + meta['scenes'] - 1}), "
        f"{W}x{H}, metres, no GT alignment except where named. DBE = pseudo depth-boundary error in pixels "
        "(acc, compl; lower is sharper). Synthetic scenes only: not a statement about real cameras.",
        "",
        "| model | AbsRel ↓ | δ1 ↑ | RMSE [m] ↓ | DBE acc ↓ | DBE compl ↓ |",
        "|---|---|---|---|---|---|",
    ]
    for name, m in r.items():
        lines.append(f"| {LABELS[name]} | {m['abs_rel']:.3f} | {m['delta1']:.3f} | {m['rmse']:.3f} | "
                     f"{m['dbe_acc']:.2f} | {m['dbe_compl']:.2f} |")
    lines += ["", "## Targets", "", "| target | met | value |", "|---|---|---|"]
    lines += [f"| {name} | {'yes' if ok else '**no**'} | {value} |" for name, ok, value in checks]
    if meta.get("diagnostics"):
        lines += ["", f"## Diagnostics ({meta['diagnostic_scenes']} held-out scenes per style, fitted to GT)", "",
                  "| what | AbsRel | DBE acc | DBE compl |", "|---|---|---|---|"]
        lines += [f"| {k} | {m['abs_rel']:.3f} | {m['dbe_acc']:.2f} | {m['dbe_compl']:.2f} |" for k, m in meta["diagnostics"].items()]
    if meta.get("timings"):
        lines += ["", "## Retrain time (this run)", "", "| stage | minutes |", "|---|---|"]
        lines += [f"| {k} | {v / 60:.1f} |" for k, v in meta["timings"].items()]
    lines += ["", "![scenes](nano_report.png)", ""]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=str(OUT), help="folder with f_D/, f_G/ and runs/<ablation>/pipeline/student")
    p.add_argument("--scenes", type=int, default=SEEDS["eval"][1])
    p.add_argument("--out", default=str(REPO / "bench"), help="where NANO_REPORT.md, .json, .png go")
    p.add_argument("--figure-scenes", type=int, default=4)
    args = p.parse_args()
    torch.set_num_threads(1 if __import__("os").getloadavg()[0] > 1.5 else 2)
    models, out = Path(args.models), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rgb, gt = scenes(TARGET, "eval")
    rgb, gt = rgb[: args.scenes], gt[: args.scenes]
    metric = load_metric_model("depth-anything-v2", models / "f_D")
    f_g = DiffusionDepthModel.from_pretrained(models / "f_G")
    students = {name: models / "runs" / name / "pipeline" / "student" for name in ABLATIONS}
    missing = [n for n, s in students.items() if not s.is_dir()]
    if "full" in missing:
        raise FileNotFoundError(f"no SharpDepth student at {students['full']}: run train/nano/run_all.py first")
    for name in missing:
        print(f"note: {name} not trained ({students[name]} missing), left out")
    t0 = time.perf_counter()
    preds: dict[str, list[np.ndarray]] = {k: [] for k in ["f_D", "f_G_aligned", *[n for n in ABLATIONS if n not in missing]]}
    rows = []
    images = torch.from_numpy(rgb).permute(0, 3, 1, 2).float() / 255
    for name in preds:
        if name in ABLATIONS:
            pipe = SharpDepthPipeline(DiffusionDepthModel.from_pretrained(students[name]), metric, processing_res=max(H, W))
        for i in range(len(images)):
            image = images[i : i + 1]
            if name == "f_D":
                depth = metric(image).depth
            elif name == "f_G_aligned":
                d_tilde = affine_pass(f_g, image, seed=i)
                depth = apply_scale_shift(d_tilde, fit_scale_shift(d_tilde, metric(image).depth))
            elif ABLATIONS[name]["inference"] == "gated":
                res = pipe(image, seed=i)
                depth = res.depth
                if name == "full" and i < args.figure_scenes:
                    rows.append({"image": rgb[i], "gt": gt[i], "difference": res.difference[0, 0].numpy()})
            else:
                depth = ungated(pipe, image, i, ABLATIONS[name]["inference"])
            preds[name].append(depth[0, 0].numpy())
        print(f"{name}: done ({time.perf_counter() - t0:.0f} s)", flush=True)
    results = {name: score(p_, gt) for name, p_ in preds.items()}
    for i, row in enumerate(rows):
        row.update({k: preds[k][i] for k in ("f_D", "f_G_aligned", "full")})
    checks = verdict(results)
    timings_file = models / "timings.json"
    meta = {"scenes": len(gt), "first_seed": SEEDS["eval"][0], "size": [W, H], "style": TARGET,
            "timings": json.loads(timings_file.read_text()) if timings_file.is_file() else {}}
    meta["diagnostic_scenes"] = min(30, args.scenes)
    meta["diagnostics"] = diagnostics(f_g, metric, meta["diagnostic_scenes"])
    figure(out / "nano_report.png", rows)
    write_atomic(out / "nano_report.json", json.dumps(
        {"results": results, "targets": [{"target": n, "met": ok, "value": v} for n, ok, v in checks], **meta}, indent=2) + "\n")
    report = out / "NANO_REPORT.md"
    findings = report.read_text().partition(FINDINGS)[2] if report.is_file() else ""
    write_atomic(report, markdown(results, checks, meta) + (f"\n{FINDINGS}{findings}" if findings else ""))
    print(markdown(results, checks, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
