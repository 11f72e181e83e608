"""Pictures of depth for the CLI, demo, ROS node and trainer: coloured depth, difference map, a
point-cloud render, and atomic PNG writing. numpy only (plus matplotlib's colormaps and Pillow).

Colours: depth uses "inferno" with near = warm/bright and far = dark purple, stopping short of
black so that invalid pixels (NaN, inf, <= 0), drawn black, stay distinguishable; the difference
map uses "viridis" (0 = agreement, dark; 1 = disagreement, yellow).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

DEPTH_CMAP, DIFFERENCE_CMAP = "inferno", "viridis"
_FAR = 0.15  # colormap position of the far end


def _as_2d(a, name: str) -> np.ndarray:
    a = np.asarray(a.detach().cpu() if hasattr(a, "detach") else a, dtype=np.float64)
    a = a.reshape(a.shape[-2:]) if a.ndim > 2 and int(np.prod(a.shape[:-2])) == 1 else a
    if a.ndim != 2:
        raise ValueError(f"{name} must be HxW (or 1x1xHxW), got shape {a.shape}")
    return a


def _lut(name: str, t: np.ndarray) -> np.ndarray:
    from matplotlib import colormaps

    return (colormaps[name](t)[..., :3] * 255 + 0.5).astype(np.uint8)


def colorize_depth(depth, vmin: float | None = None, vmax: float | None = None) -> np.ndarray:
    """Metric depth HxW -> uint8 HxWx3 RGB, near = warm. The range defaults to the 2nd-98th
    percentile of the valid depth, so a few outliers do not wash the picture out."""
    d = _as_2d(depth, "depth")
    valid = np.isfinite(d) & (d > 0)
    out = np.zeros((*d.shape, 3), dtype=np.uint8)
    if not valid.any():
        return out
    lo, hi = np.percentile(d[valid], [2, 98])
    lo = lo if vmin is None else vmin
    hi = hi if vmax is None else vmax
    t = np.clip((hi - d[valid]) / max(hi - lo, 1e-12), 0, 1)  # 1 = near
    out[valid] = _lut(DEPTH_CMAP, _FAR + (1 - _FAR) * t)
    return out


def colorize_difference(e) -> np.ndarray:
    """Difference map e HxW in [0, 1] -> uint8 HxWx3 (non-finite -> black)."""
    e = _as_2d(e, "difference map")
    valid = np.isfinite(e)
    out = np.zeros((*e.shape, 3), dtype=np.uint8)
    out[valid] = _lut(DIFFERENCE_CMAP, np.clip(e[valid], 0, 1))
    return out


def _rotation(yaw_deg: float, pitch_deg: float) -> np.ndarray:
    y, p = np.radians(yaw_deg), np.radians(pitch_deg)
    ry = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    rx = np.array([[1, 0, 0], [0, np.cos(p), -np.sin(p)], [0, np.sin(p), np.cos(p)]])
    return rx @ ry


def render_point_cloud(
    xyz,
    rgb=None,
    size: tuple[int, int] = (240, 320),
    yaw_deg: float = 25.0,
    pitch_deg: float = -15.0,
    splat: int = 2,
    background: tuple[int, int, int] = (24, 24, 24),
) -> np.ndarray:
    """A z-buffered splat render of a point cloud (camera optical frame: x right, y down, z forward)
    seen from a viewpoint orbited by (yaw, pitch) about the cloud's median point.

    xyz: HxWx3 (organised, NaN = no point) or Nx3; rgb: matching uint8 colours, or None to colour
    by depth. Returns uint8 size[0] x size[1] x 3. The nearest point wins each pixel.
    """
    h, w = size
    pts = np.asarray(xyz, dtype=np.float64).reshape(-1, 3)
    if rgb is None:
        colours = colorize_depth(pts[:, 2][None]).reshape(-1, 3)
    else:
        colours = np.asarray(rgb, dtype=np.uint8).reshape(-1, 3)
        if len(colours) != len(pts):
            raise ValueError(f"rgb has {len(colours)} points, xyz has {len(pts)}")
    image = np.empty((h, w, 3), dtype=np.uint8)
    image[:] = background
    keep = np.isfinite(pts).all(axis=1) & (pts[:, 2] > 0)
    if not keep.any():
        return image
    pts, colours = pts[keep], colours[keep]
    centre = np.median(pts, axis=0)
    view = (pts - centre) @ _rotation(yaw_deg, pitch_deg).T
    view[:, 2] += np.linalg.norm(centre)  # orbit at the original viewing distance
    front = view[:, 2] > 1e-3 * max(np.linalg.norm(centre), 1e-6)
    view, colours = view[front], colours[front]
    if not len(view):
        return image
    x, y = view[:, 0] / view[:, 2], view[:, 1] / view[:, 2]
    half_x, half_y = np.percentile(np.abs(x), 99) + 1e-9, np.percentile(np.abs(y), 99) + 1e-9
    f = 0.9 * min((w / 2) / half_x, (h / 2) / half_y)
    u = np.round(f * x + (w - 1) / 2).astype(np.int64)
    v = np.round(f * y + (h - 1) / 2).astype(np.int64)
    offsets = [(du, dv) for dv in range(splat) for du in range(splat)]
    u = np.concatenate([u + du for du, _ in offsets])
    v = np.concatenate([v + dv for _, dv in offsets])
    z = np.tile(view[:, 2], len(offsets))
    colours = np.tile(colours, (len(offsets), 1))
    inside = (u >= 0) & (u < w) & (v >= 0) & (v < h)
    pixel, z, colours = (v * w + u)[inside], z[inside], colours[inside]
    order = np.lexsort((z, pixel))  # by pixel, nearest first
    first = np.unique(pixel[order], return_index=True)[1]
    winners = order[first]
    image.reshape(-1, 3)[pixel[winners]] = colours[winners]
    return image


def save_png(path: str | Path, image) -> Path:
    """Write uint8 HxW / HxWx3 / HxWx4 or uint16 HxW (e.g. depth in millimetres) as PNG, atomically."""
    from PIL import Image

    a = np.asarray(image)
    ok = (a.dtype == np.uint8 and (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (3, 4)))) or (
        a.dtype == np.uint16 and a.ndim == 2
    )
    if not ok:
        raise ValueError(f"save_png takes uint8 HxW/HxWx3/HxWx4 or uint16 HxW, got {a.dtype} of shape {a.shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        Image.fromarray(np.ascontiguousarray(a)).save(tmp, format="PNG")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
