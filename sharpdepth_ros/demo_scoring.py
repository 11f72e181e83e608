"""The demo's numbers: each frame's depth against the scene's ground truth beside f_D's, the moving
camera's TAE, the per-frame table, summary.json, and the embedded models' report figures."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sharpdepth_core.embedded import EMBEDDED_DIR
from sharpdepth_core.files import write_text
from sharpdepth_core.metrics import boundary_error, depth_metrics, temporal_alignment_error
from sharpdepth_core.synthetic import SEQUENCE_RATE_HZ
from sharpdepth_ros.demo_record import camera_ns
from sharpdepth_ros.replay import synthetic_scene, synthetic_sequence

# The model card that ships with the embedded weights: its results table (bench/NANO_REPORT.md's, 100
# held-out scenes) holds the figures to quote, printed before this run's few frames.
MODEL_CARD = EMBEDDED_DIR / "MODEL_CARD.md"
CARD_COLUMNS = {"AbsRel": "abs_rel", "δ1": "delta1", "DBE acc": "dbe_acc", "DBE compl": "dbe_compl"}
CARD_ROWS = {"f_D": "f_D (this folder", "SharpDepth": "**SharpDepth** (this folder"}  # how each row's label starts
# The per-frame table: (header over the column group, column header, width, format, row key)
FRAME_TABLE = (
    ("", "frame", 5, "d", "frame"),
    ("", "scene", 6, "d", "scene"),
    ("latency [ms]", "e2e", 6, ".0f", "e2e_ms"),
    ("latency [ms]", "model", 6, ".0f", "model_ms"),
    ("AbsRel", "SharpD.", 8, ".3f", "abs_rel"),
    ("AbsRel", "f_D", 6, ".3f", "f_D_abs_rel"),
    ("DBE compl [px]", "SharpD.", 8, ".2f", "dbe_compl"),
    ("DBE compl [px]", "f_D", 6, ".2f", "f_D_dbe_compl"),
    ("", "valid", 7, ".1%", "valid"),
)
# With several cameras a frame's images run as one model call: its time is the batch's, not the camera's
BATCH_NOTE = ("e2e: from publishing the frame to this camera's depth; batch: the model call that ran this frame's "
              "images of all cameras together (each camera's row shows the same call)")


@dataclass(frozen=True)
class Scenes:
    """How the replay renders the demo's scenes: scoring renders the same ones again as ground truth."""

    width: int
    height: int
    fov_deg: float  # 0: each scene's own, drawn from its seed
    seed: int
    style: str

    def scene(self, seed: int):
        return synthetic_scene(seed, self.width, self.height, self.style, self.fov_deg)


def teacher_depth(node, scene) -> np.ndarray:
    """f_D's depth of a scene from the node's own pipeline, as a frame computes it (with the camera's
    K when the node uses it)."""
    use_k = node.get_parameter("use_camera_intrinsics").value
    return node.pipeline.metric_depth(scene.rgb, K=scene.K if use_k else None)[0, 0].cpu().numpy()


def score_frame(depth: np.ndarray, metric: np.ndarray, truth: np.ndarray) -> dict:
    """AbsRel, δ1 and DBE of SharpDepth's `depth` and of f_D's `metric` against `truth`; SharpDepth's valid share."""
    row = {}
    for name, pred in (("", depth), ("f_D_", metric)):
        valid = np.isfinite(pred) & (pred > 0)
        m = depth_metrics(pred, truth, valid) if valid.any() else {"abs_rel": float("nan"), "delta1": float("nan")}
        acc, compl = boundary_error(np.where(valid, pred, 0.01).clip(0.01), truth)
        row.update({f"{name}abs_rel": m["abs_rel"], f"{name}delta1": m["delta1"], f"{name}dbe_acc": acc, f"{name}dbe_compl": compl})
    row["valid"] = float((np.isfinite(depth) & (depth > 0)).mean())
    return row


TEMPORAL = "SharpDepth temporal (odometry)"  # the walk's third row: the node's `temporal: odometry` with exact poses


def temporal_pass(sharp: list[np.ndarray], frames) -> list[np.ndarray]:
    """SharpDepth's walk as the node's `temporal: odometry` would publish it with the replay's (exact) poses:
    the same causal state (`TemporalDepth`) run over the node's per-frame depths in order, each with its
    frame's image, K, pose and stamp. A pass over the recorded outputs rather than a second node: the
    same computation, at no second model run."""
    import torch

    from sharpdepth_core.temporal import TemporalDepth

    state = TemporalDepth("odometry")
    return [state.update(torch.from_numpy(np.array(d, np.float32)), f.K, image=f.rgb, pose=f.camera_to_world,
                         stamp=t / SEQUENCE_RATE_HZ).depth.numpy() for t, (d, f) in enumerate(zip(sharp, frames))]


def score_sequence(sharp: list[np.ndarray], node, scenes: Scenes) -> tuple[dict, list, dict[str, list[np.ndarray]]]:
    """The moving camera's TAE, per pair of consecutive frames and averaged, for f_D, SharpDepth and
    SharpDepth temporal (`temporal_pass`; ground-truth depth and poses: the frames the replay sent,
    rendered again); also those frames and the three depths, for the picture."""
    frames = synthetic_sequence(len(sharp), scenes.width, scenes.height, scenes.seed, scenes.style, scenes.fov_deg,
                                SEQUENCE_RATE_HZ)
    gts, poses, K = [f.depth for f in frames], [f.camera_to_world for f in frames], frames[0].K
    depths = {"f_D": [teacher_depth(node, f) for f in frames], "SharpDepth": sharp, TEMPORAL: temporal_pass(sharp, frames)}
    tae = {name: [temporal_alignment_error(d[t:t + 2], gts[t:t + 2], K, poses[t:t + 2]) for t in range(len(d) - 1)]
           for name, d in depths.items()}
    sequence = {"scene": scenes.seed, "frames": len(frames), "rate_hz": SEQUENCE_RATE_HZ, "tae": tae,
                "mean_tae": {name: float(np.mean(v)) for name, v in tae.items()}}
    return sequence, frames, depths


def frame_table(cameras: list[str]) -> tuple:
    """FRAME_TABLE; with several cameras a camera column, and the model column named for what it is: the batch's."""
    if cameras == [""]:
        return FRAME_TABLE
    named = tuple((group, "batch" if key == "model_ms" else name, width, fmt, key) for group, name, width, fmt, key in FRAME_TABLE)
    return (("", "camera", 6, "", "camera"), *named)


def print_table_header(table: tuple) -> None:
    """The frame table's two header lines, each group's header centred over its columns."""
    groups, line = [], []
    for group, name, width, _, _ in table:
        if groups and groups[-1][0] == group:
            groups[-1][1] += width + 1
        else:
            groups.append([group, width])
        line.append(f"{name:>{width}}")
    print(" ".join(f"{group:^{width}}" for group, width in groups).rstrip())
    print(" ".join(line))


def table_line(row: dict, table: tuple) -> str:
    return " ".join(f"{row[key]:>{width}{fmt}}" for _, _, width, fmt, key in table)


def report_figures() -> dict | None:
    """{'scenes': n, 'f_D': {...}, 'SharpDepth': {...}}: the embedded models' figures on the report's
    held-out scenes, from the results table of the model card that ships with them; None without it."""
    if not MODEL_CARD.is_file():
        return None
    text = MODEL_CARD.read_text(encoding="utf-8")
    found = re.search(r"^## Results \((\d+) held-out scenes.*?\n\n((?:\|.*\n)+)", text, re.M | re.S)
    if found is None:
        raise ValueError(f"{MODEL_CARD}: no '## Results (N held-out scenes ...)' table")
    header, _, *rows = ([cell.strip() for cell in line.strip().strip("|").split("|")] for line in found.group(2).splitlines())
    figures: dict = {"scenes": int(found.group(1))}
    for model, label in CARD_ROWS.items():
        row = next((r for r in rows if r[0].startswith(label)), None)
        if row is None:
            raise ValueError(f"{MODEL_CARD}: its results table has no row '{label}...'")
        figures[model] = {key: float(row[header.index(column)]) for column, key in CARD_COLUMNS.items()}
    return figures


def print_means(title: str, figures: dict[str, dict], note: str = "") -> None:
    """AbsRel, δ1 and DBE of f_D and SharpDepth under `title`."""
    print(f"\n{title}\n{'':12}{'AbsRel':>8}{'δ1':>7}{'DBE acc':>9}{'DBE compl':>11}")
    for label, m in figures.items():
        print(f"{label:12}{m['abs_rel']:>8.3f}{m['delta1']:>7.3f}{m['dbe_acc']:>9.2f}{m['dbe_compl']:>11.2f}{note}")


def summarise(rows: list[dict], stages: dict[str, float], recorder, bag: Path, out: Path, untrained: bool,
              embedded: bool, sequence: dict | None) -> None:
    """summary.json, then the means: the report's (embedded models) before this run's small sample."""
    keys = ("abs_rel", "delta1", "dbe_acc", "dbe_compl", "f_D_abs_rel", "f_D_delta1", "f_D_dbe_acc", "f_D_dbe_compl", "e2e_ms")
    cameras = sorted({r["camera"] for r in rows if "camera" in r})
    summary = {
        "untrained_models": untrained,
        "frames": rows,
        **{f"mean_{k}": float(np.nanmean([r[k] for r in rows])) for k in keys},
        **({"cameras": {c: {f"mean_{k}": float(np.nanmean([r[k] for r in rows if r.get("camera") == c])) for k in keys}
                        for c in cameras}} if cameras else {}),
        "node_ms_per_frame": stages,
        "recorder_ms_per_frame": 1e3 * recorder.busy_s / max(len(rows), 1),
        "messages_recorded": recorder.counts,
        "bag": str(bag),
        "sequence": sequence,
    }
    write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    report = report_figures() if embedded else None
    if report is not None:
        scenes = report.pop("scenes")
        print_means(f"the embedded models on {scenes} held-out scenes (their MODEL_CARD.md, from bench/NANO_REPORT.md; "
                    "the figures to quote):", report)
    note = " (UNTRAINED models: plumbing check only)" if untrained else ""
    print_means(f"this run: {len(rows)} frame{'s' * (len(rows) != 1)}, a small sample (frame-to-frame spread is large; "
                "do not compare the two models on it)" + (": the report above is the measure" if report else ""),
                {label: {m: summary[f"mean_{key}{m}"] for m in ("abs_rel", "delta1", "dbe_acc", "dbe_compl")}
                 for label, key in (("f_D", "f_D_"), ("SharpDepth", ""))}, note)
    for c in cameras:
        m = summary["cameras"][c]
        print(f"{c}: SharpDepth AbsRel {m['mean_abs_rel']:.3f} (f_D {m['mean_f_D_abs_rel']:.3f}), end-to-end {m['mean_e2e_ms']:.0f} ms "
              f"(outputs on {camera_ns(c)}/...)")
    if sequence:
        print(f"moving camera: {sequence['frames']} frames walking through scene {sequence['scene']}'s room; TAE between "
              f"consecutive frames (ground-truth poses), a small sample (bench/temporal.py is the measure): "
              + ", ".join(f"{name} {v:.4f}" for name, v in sequence["mean_tae"].items()) + note)
    print(f"end-to-end {summary['mean_e2e_ms']:.0f} ms/frame; node ms/frame: " + ", ".join(f"{k} {v:.1f}" for k, v in stages.items())
          + f"; the demo's in-process recorder {summary['recorder_ms_per_frame']:.1f} ms/frame (not the node's)")
    mcap = next(bag.glob("*.mcap"))
    print(f"bag: {mcap} ({sum(recorder.counts.values())} messages on {len(recorder.counts)} topics; Foxglove, or `ros2 bag play {bag}`)")
    print(f"pictures: {out}/overview.png{', sequence.png' if sequence else ''} and frame_XX{'_camN' if cameras else ''}"
          "_{depth,difference,cloud}.png; "
          f"numbers: {out}/summary.json")
