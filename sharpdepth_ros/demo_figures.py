"""The demo's pictures: per frame its depth (with a colour bar), difference map and point cloud; the
overview (a row per frame) and sequence.png (the moving camera). Depth is drawn in the one depth
colour map of `sharpdepth_core.visualize`, as the node's depth/colored and predict's pictures are."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from sharpdepth_core.files import atomic_write
from sharpdepth_core.visualize import (DIFFERENCE_CMAP, colorize_depth, colorize_difference, depth_colormap, depth_colour_bar, depth_range,
                                       render_point_cloud, save_png)

PICTURES = ("depth", "difference", "cloud")  # frame_XX[_camN]_<name>.png


def frame_stem(i: int, camera: str) -> str:
    return f"frame_{i:02d}" + (f"_{camera}" if camera else "")


def write_frame_pictures(out: Path, stem: str, depth: np.ndarray, difference: np.ndarray, xyz: np.ndarray,
                         rgb: np.ndarray) -> np.ndarray:
    """<stem>_depth.png (its own range: the structure; the range in metres on the bar below it),
    <stem>_difference.png, <stem>_cloud.png; returns the cloud's render."""
    lo, hi = depth_range(depth) or (float("nan"), float("nan"))
    save_png(out / f"{stem}_depth.png", np.vstack([colorize_depth(depth, lo, hi), depth_colour_bar(depth.shape[1], lo, hi)]))
    save_png(out / f"{stem}_difference.png", colorize_difference(difference))
    cloud = render_point_cloud(xyz, rgb, size=depth.shape)
    save_png(out / f"{stem}_cloud.png", cloud)
    return cloud


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _colour_bar(fig, image, axes, label: str) -> None:
    bar = fig.colorbar(image, ax=axes, fraction=0.05, pad=0.02)
    bar.set_label(label, fontsize=7)
    bar.ax.tick_params(labelsize=7)


def _save(fig, path: Path) -> None:
    with atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=100, bbox_inches="tight")


def write_overview(rows: list[dict], panels: list[dict[str, np.ndarray]], out: Path, untrained: bool) -> None:
    """overview.png, a row per frame: image | ground truth | f_D | SharpDepth (one depth colour scale per
    row, with its colour bar, so scale errors and blur compare directly) | e | point cloud."""
    plt = _pyplot()
    columns = list(panels[0])
    h, w = panels[0]["image"].shape[:2]
    fig, axes = plt.subplots(len(rows), len(columns), squeeze=False, layout="constrained",  # bars and labels never overlap
                             figsize=(1.6 + 2.0 * len(columns) * max(1.0, w / h / 1.33), 0.6 + 1.6 * len(rows)))
    for r, (row, pics) in enumerate(zip(rows, panels)):
        lo, hi = np.percentile(pics["ground truth"], [1, 99])
        for c, name in enumerate(columns):
            ax = axes[r, c]
            if name in ("ground truth", "f_D", "SharpDepth"):
                shown = ax.imshow(pics[name], cmap=depth_colormap(), vmin=lo, vmax=hi, interpolation="nearest")
            elif name == "difference map e":
                _colour_bar(fig, ax.imshow(pics[name], cmap=DIFFERENCE_CMAP, vmin=0, vmax=1, interpolation="nearest"), ax, "e")
            else:
                ax.imshow(pics[name], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=9)
            key = {"f_D": "f_D_", "SharpDepth": ""}.get(name)
            if key is not None and np.isfinite(row[key + "abs_rel"]):
                ax.set_xlabel(f"AbsRel {row[key + 'abs_rel']:.3f}, DBE {row[key + 'dbe_acc']:.1f}/{row[key + 'dbe_compl']:.1f}", fontsize=7)
        axes[r, 0].set_ylabel(f"scene {row['scene']}" + (f", {row['camera']}" if "camera" in row else ""), fontsize=8)
        _colour_bar(fig, shown, axes[r, 1:4].tolist(), "depth [m]")
    if untrained:
        fig.suptitle("UNTRAINED random-weight models: plumbing check only", color="red")
    _save(fig, out / "overview.png")
    plt.close(fig)


def write_sequence_picture(frames, depths: dict[str, list[np.ndarray]], tae: dict[str, list[float]], out: Path,
                           untrained: bool) -> None:
    """sequence.png: a column per consecutive frame; rows image | ground truth | f_D | SharpDepth | SharpDepth
    temporal on one depth colour scale, each depth labelled with its TAE into the next frame."""
    plt = _pyplot()
    rows = {"image": [f.rgb for f in frames], "ground truth": [f.depth for f in frames], **depths}
    lo, hi = np.percentile(np.stack(rows["ground truth"]), [1, 99])
    h, w = frames[0].rgb.shape[:2]
    fig, axes = plt.subplots(len(rows), len(frames), squeeze=False, layout="constrained",
                             figsize=(1.2 + 1.8 * len(frames) * max(1.0, w / h / 1.33), 0.6 + 1.5 * len(rows)))
    for r, (name, pictures) in enumerate(rows.items()):
        for t, picture in enumerate(pictures):
            ax = axes[r, t]
            shown = ax.imshow(picture, interpolation="nearest",
                              **({} if name == "image" else {"cmap": depth_colormap(), "vmin": lo, "vmax": hi}))
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"t = {t}", fontsize=9)
            if name in tae and t < len(frames) - 1:
                ax.set_xlabel(f"TAE {t}→{t + 1}: {tae[name][t]:.4f}", fontsize=7)
        axes[r, 0].set_ylabel(name.replace(" temporal", "\ntemporal"), fontsize=8)
    _colour_bar(fig, shown, axes[1:, :].ravel().tolist(), "depth [m]")
    fig.suptitle("moving camera: consecutive frames" + (" (UNTRAINED random-weight models: plumbing check only)" if untrained else ""),
                 color="red" if untrained else "black", fontsize=10)
    _save(fig, out / "sequence.png")
    plt.close(fig)
