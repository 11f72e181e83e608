"""Pinhole geometry: intrinsics under resize/pad/crop, organised unprojection, coloured PLY export.

Pixel convention: pixel centres at integer coordinates, as in OpenCV and ROS CameraInfo. Every image
operation is an affine map of pixel coordinates `A`, and intrinsics (K 3x3 or P 3x4) transform as
`A @ K`, which keeps K and P consistent with each other by construction.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from .files import atomic_write

if TYPE_CHECKING:  # torch loads in the functions that use it: the replay and --help import this module without it
    from torch import Tensor

MAX_FOCAL_PX = 1e6  # a 0.1° field of view at 4k: anything larger is a unit or calibration error (size unknown)
NOMINAL_HFOV_DEG = 60.0  # the camera assumed when none is given or predicted
# The field of view K gives an image, as a pinhole (2 atan(w / 2 fx)), must lie in this range: below 1° is a
# telescope, and 180° is an infinite image plane, so a focal length outside it is a unit or calibration
# error (fx = 1e-6 px would put a 64 px image at 180° and its depth at 1e-8 m). A fisheye's K spans less
# than the lens does (its r = f theta), so the bound never refuses a real fisheye.
FOV_RANGE_DEG = (1.0, 179.0)
MAX_PIXEL_ASPECT = 10.0  # fy / fx: anamorphic lenses and uneven binning reach 2-4
# longer / shorter image side for the fov_deg pinhole that stands in for a missing calibration: a wide panorama
# reaches 4-8; a 1x5000 image at 60° horizontally would be seen at 179.96° vertically (points at 2.7 km)
MAX_FALLBACK_ASPECT = 10.0
MIN_RECTIFIED_COVERAGE = 0.5  # least share of a rectified image whose pixels come from inside the raw image
ROTATION_TOLERANCE = 1e-2  # |R Rᵀ - I| and |det R - 1| of a rotation written with a few decimals
# distortion model (ROS CameraInfo names, OpenCV's models) -> accepted numbers of coefficients in D
DISTORTION_MODELS = {"plumb_bob": (4, 5, 8, 12, 14), "rational_polynomial": (8, 12, 14), "equidistant": (4,)}


def resize_transform(sx: float, sy: float) -> np.ndarray:
    """Pixel map of a resize by (sx, sy) with half-pixel centres: u' = (u + 0.5) sx - 0.5."""
    return np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5], [0.0, 0.0, 1.0]])


def crop_transform(x0: float, y0: float) -> np.ndarray:
    """Pixel map of a crop whose top-left corner is (x0, y0); padding top/left by p is x0 = -p."""
    return np.array([[1.0, 0.0, -x0], [0.0, 1.0, -y0], [0.0, 0.0, 1.0]])


def _is_tensor(x) -> bool:
    """Whether `x` is a torch tensor, without importing torch (none exists before torch is imported)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def transform_intrinsics(m, transform: np.ndarray):
    """Apply a pixel map to K ([..., 3, 3]) or P ([..., 3, 4]); numpy in, numpy out; torch likewise."""
    if _is_tensor(m):
        import torch

        return torch.as_tensor(transform, dtype=m.dtype, device=m.device) @ m
    return transform @ np.asarray(m, dtype=np.float64)


def scale_intrinsics(m, input_hw: tuple[int, int], output_hw: tuple[int, int]):
    """K or P of an image resized from input_hw to output_hw (bottom/right padding changes nothing)."""
    sx, sy = output_hw[1] / input_hw[1], output_hw[0] / input_hw[0]
    return transform_intrinsics(m, resize_transform(sx, sy))


def focal_intrinsics(f: Tensor, hw: tuple[int, int]) -> Tensor:
    """K [B, 3, 3] with fx = fy = f [B] and the principal point at the image centre."""
    import torch

    h, w = hw
    K = torch.zeros(f.shape[0], 3, 3, dtype=torch.float32, device=f.device)
    K[:, 0, 0] = K[:, 1, 1] = f.float()
    K[:, 0, 2], K[:, 1, 2], K[:, 2, 2] = (w - 1) / 2, (h - 1) / 2, 1.0
    return K


def nominal_intrinsics(batch: int, hw: tuple[int, int], device=None, hfov_deg: float = NOMINAL_HFOV_DEG) -> Tensor:
    """The documented default camera when none is given or predicted: 60° horizontal field of view."""
    import torch

    f = 0.5 * hw[1] / math.tan(math.radians(hfov_deg) / 2)
    return focal_intrinsics(torch.full((batch,), f, device=device), hw)


def check_intrinsics(K, batch: int, device=None) -> Tensor | None:
    """None, or K [3, 3] / [B, 3, 3] (numpy or torch) as float32 [B, 3, 3]; a bad K is a ValueError."""
    if K is None:
        return None
    import torch

    K = torch.as_tensor(K, dtype=torch.float32, device=device)
    if K.shape == (3, 3):
        K = K.expand(batch, 3, 3)
    if K.shape != (batch, 3, 3):
        raise ValueError(f"K must be [3, 3] or [B={batch}, 3, 3], got shape {tuple(K.shape)}")
    if not torch.isfinite(K).all():
        raise ValueError("K has non-finite values")
    f = K[:, :2, :2].diagonal(dim1=1, dim2=2)
    if (f <= 0).any() or (f > MAX_FOCAL_PX).any():
        raise ValueError(f"K has focal lengths fx, fy = {f[0].tolist()} px; they must be in (0, {MAX_FOCAL_PX:g}]")
    return K


ASPECT_TOLERANCE = 0.01  # relative: binning an odd size and rounding stay far below it, a crop does not
OFF_CENTRE = 0.1  # a principal point farther than this share of the image size from its centre is suspect


def check_calibration_size(calib_hw: tuple[float, float], image_hw: tuple[int, int], what: str) -> str | None:
    """Whether a calibration made for `calib_hw` images serves an `image_hw` one: None when the sizes match,
    a note saying it is scaled when only the size differs (a resized stream), a ValueError when the
    aspect ratio differs (a crop or another camera: scaling its K would distort the metric depth)."""
    (ch, cw), (h, w) = calib_hw, image_hw
    if (ch, cw) == (h, w):
        return None
    if abs((w / h) / (cw / ch) - 1) > ASPECT_TOLERANCE:
        raise ValueError(f"{what} is for {cw:g}x{ch:g} images but the image is {w}x{h}, another aspect ratio (a crop or "
                         "another camera): its K cannot be scaled to it; use a calibration made at this size")
    return f"{what} for {cw:g}x{ch:g} images scaled to this {w}x{h} image"


def principal_point_note(K: np.ndarray, image_hw: tuple[int, int], what: str) -> str | None:
    """A warning when K's principal point lies far from the image centre (more than OFF_CENTRE of its size):
    K is then most likely for another image size, which changes the metric depth without an error."""
    h, w = image_hw
    cx, cy = float(K[0, 2]), float(K[1, 2])
    if abs(cx - (w - 1) / 2) <= OFF_CENTRE * w and abs(cy - (h - 1) / 2) <= OFF_CENTRE * h:
        return None
    return (f"{what} has its principal point ({cx:g}, {cy:g}) far from the centre of this {w}x{h} image "
            f"(({(w - 1) / 2:g}, {(h - 1) / 2:g})): is it for another image size? A JSON calibration with \"width\" "
            "and \"height\" is scaled or refused instead")


def check_calibration(K, image_hw: tuple[int, int], D=None, R=None, model: str | None = None, rectified_K=None) -> None:
    """ValueError (one line: what is wrong) unless K can be the camera of an image of `image_hw` and, with
    distortion D of `model` and rectification R, rectifying onto `rectified_K` (default K) keeps the image
    mostly inside itself. The one plausibility check of calibrations, for predict and the node."""
    K = np.asarray(K, dtype=np.float64)
    if K.shape != (3, 3) or not np.isfinite(K).all():
        raise ValueError(f"K must be 3x3 and finite, got {K.tolist()}")
    h, w = image_hw
    fx, fy = K[0, 0], K[1, 1]
    if fx <= 0 or fy <= 0:
        raise ValueError(f"focal lengths fx = {fx:g}, fy = {fy:g} px must be positive")
    low, high = FOV_RANGE_DEG
    fov = math.degrees(2 * math.atan2(w / 2, fx))
    if not low <= fov <= high:
        raise ValueError(f"fx = {fx:g} px is impossible for {w} px wide images: a horizontal field of view of {fov:.3g}°, "
                         f"expected {low:g}° to {high:g}° (fx {_focal_for(w, high):.3g} to {_focal_for(w, low):.3g} px)")
    if not 1 / MAX_PIXEL_ASPECT <= fy / fx <= MAX_PIXEL_ASPECT:
        raise ValueError(f"fy / fx = {fy:g} / {fx:g} px is impossible: pixels {fy / fx:.3g} times as tall as wide "
                         f"(expected 1/{MAX_PIXEL_ASPECT:g} to {MAX_PIXEL_ASPECT:g})")
    if D is None:
        return
    D = np.asarray(D, dtype=np.float64).ravel()
    counts = DISTORTION_MODELS.get(model)
    if counts is None:
        raise ValueError(f"distortion_model '{model}' with non-zero D is not supported (supported: {', '.join(DISTORTION_MODELS)})")
    if len(D) not in counts:
        raise ValueError(f"distortion_model '{model}' needs {' or '.join(map(str, counts))} coefficients in D, got {len(D)}")
    if not np.isfinite(D).all():
        raise ValueError("D has non-finite values")
    R = np.eye(3) if R is None else np.asarray(R, dtype=np.float64).reshape(3, 3)
    if not np.isfinite(R).all() or np.abs(R @ R.T - np.eye(3)).max() > ROTATION_TOLERANCE or abs(np.linalg.det(R) - 1) > ROTATION_TOLERANCE:
        raise ValueError(f"R is not a rotation: {np.round(R, 4).tolist()}")
    covered = _rectified_coverage(K, image_hw, D, R, model, K if rectified_K is None else np.asarray(rectified_K, dtype=np.float64))
    if covered < MIN_RECTIFIED_COVERAGE:
        raise ValueError(f"the rectification (D=[{', '.join(f'{d:g}' for d in D)}]) maps {1 - covered:.0%} of the "
                         f"image outside the camera's view (at most {1 - MIN_RECTIFIED_COVERAGE:.0%} may be)")


def fallback_problem(image_hw: tuple[int, int], fov_deg: float) -> str | None:
    """Why a pinhole of horizontal field of view `fov_deg` cannot stand in for the camera of an image of
    `image_hw` (no usable calibration), or None: a degenerate aspect ratio gives the other axis an absurd
    field of view, and the cloud points kilometres out."""
    h, w = image_hw
    aspect = max(h, w) / max(min(h, w), 1)
    if aspect <= MAX_FALLBACK_ASPECT:
        return None
    vertical = math.degrees(2 * math.atan(h / w * math.tan(math.radians(fov_deg) / 2)))
    return (f"a {w}x{h} image (aspect ratio {aspect:.0f}:1, at most {MAX_FALLBACK_ASPECT:g}:1) cannot get the fov_deg "
            f"{fov_deg:g} pinhole (it would see {vertical:.4g}° vertically); publish a calibration for it")


def _focal_for(size: int, fov_deg: float) -> float:
    return size / 2 / math.tan(math.radians(fov_deg) / 2)


def _rectified_coverage(K, image_hw, D, R, model, rectified_K, samples: int = 24) -> float:
    """Share of a samples x samples grid over the rectified image whose source lies inside the raw image
    (what the rectification maps would say, without building them at full size)."""
    h, w = image_hw
    u, v = np.meshgrid(np.linspace(0, w - 1, samples), np.linspace(0, h - 1, samples))
    pixels = np.stack([u.ravel(), v.ravel(), np.ones(u.size)])
    rays = R.T @ np.linalg.solve(rectified_K, pixels)  # rectified pixel -> ray of the raw camera
    ahead = rays[2] > 1e-12
    points = (rays[:, ahead] / rays[2, ahead]).T.reshape(-1, 1, 3)
    with np.errstate(all="ignore"):
        if model == "equidistant":
            raw = cv2.fisheye.distortPoints(np.ascontiguousarray(points[..., :2]), K, D)
        else:
            raw, _ = cv2.projectPoints(points, np.zeros(3), np.zeros(3), K, D)
    raw = raw.reshape(-1, 2)
    inside = np.isfinite(raw).all(axis=1) & (raw[:, 0] >= 0) & (raw[:, 0] <= w - 1) & (raw[:, 1] >= 0) & (raw[:, 1] <= h - 1)
    return float(inside.sum()) / u.size


def _check_focal(fx, fy) -> None:
    import torch

    if bool((fx == 0).any()) or bool((fy == 0).any()) or not bool(torch.isfinite(fx).all() & torch.isfinite(fy).all()):
        raise ValueError("camera intrinsics have a zero or non-finite focal length")


def unproject(depth, K):
    """Organised unprojection: depth [..., H, W] (metres along z) -> xyz [..., H, W, 3].

    X = (u - cx) Z / fx, Y = (v - cy) Z / fy (REP 103 optical frame). Invalid depth (non-finite or
    <= 0) gives NaN xyz, kept in the grid. K is [3, 3] or batched [..., 3, 3] matching depth's
    leading dims. numpy in, numpy out; torch likewise.
    """
    import torch

    as_numpy = not _is_tensor(depth)
    d = torch.as_tensor(depth)
    if not d.is_floating_point():
        d = d.float()
    k = torch.as_tensor(K, dtype=d.dtype, device=d.device)
    fx, fy, cx, cy = k[..., 0, 0], k[..., 1, 1], k[..., 0, 2], k[..., 1, 2]
    _check_focal(fx, fy)
    h, w = d.shape[-2:]
    u = torch.arange(w, dtype=d.dtype, device=d.device)
    v = torch.arange(h, dtype=d.dtype, device=d.device)[:, None]
    ex = (..., None, None)
    z = torch.where(torch.isfinite(d) & (d > 0), d, torch.full_like(d, float("nan")))
    x = (u - cx[ex]) * z / fx[ex]
    y = (v - cy[ex]) * z / fy[ex]
    xyz = torch.stack(torch.broadcast_tensors(x, y, z), dim=-1)
    return xyz.numpy() if as_numpy else xyz


def project(xyz, K):
    """Pinhole projection xyz [..., 3] -> pixel coordinates uv [..., 2] (inverse of `unproject`)."""
    import torch

    as_numpy = not _is_tensor(xyz)
    p = torch.as_tensor(xyz)
    k = torch.as_tensor(K, dtype=p.dtype, device=p.device)
    fx, fy, cx, cy = k[..., 0, 0], k[..., 1, 1], k[..., 0, 2], k[..., 1, 2]
    _check_focal(fx, fy)
    ex = (...,) + (None,) * (p.ndim - 1 - k.ndim + 2)
    u = fx[ex] * p[..., 0] / p[..., 2] + cx[ex]
    v = fy[ex] * p[..., 1] / p[..., 2] + cy[ex]
    uv = torch.stack([u, v], dim=-1)
    return uv.numpy() if as_numpy else uv


def relative_pose(pose_src: np.ndarray, pose_dst: np.ndarray) -> np.ndarray:
    """T_dst_src (4x4): maps points from the source camera's optical frame to the destination's, for
    camera-to-world poses T_w_src and T_w_dst."""
    return np.linalg.inv(np.asarray(pose_dst, dtype=np.float64)) @ np.asarray(pose_src, dtype=np.float64)


def reproject(depth, K_src, K_dst, dst_from_src):
    """Where each pixel of a depth image lands in another camera: (uv [H, W, 2] in the destination's
    pixel coordinates, z [H, W] the point's depth along the destination's optical axis). NaN where
    the source depth is invalid. numpy in (as float64), numpy out; torch likewise, in depth's dtype
    and on its device."""
    if _is_tensor(depth):
        import torch

        K_src, K_dst, T = (torch.as_tensor(m).to(depth) for m in (K_src, K_dst, dst_from_src))
    else:
        depth, K_dst, T = (np.asarray(m, dtype=np.float64) for m in (depth, K_dst, dst_from_src))
    xyz = unproject(depth, K_src)
    moved = xyz @ T[:3, :3].T + T[:3, 3]
    with np.errstate(invalid="ignore", divide="ignore"):
        return project(moved, K_dst), moved[..., 2]


def write_ply(path: str | Path, xyz: np.ndarray, rgb: np.ndarray | None = None) -> int:
    """Write a binary little-endian PLY of the finite points; returns how many were written.

    xyz: [..., 3] float (an organised grid is fine); rgb: matching [..., 3] uint8 or None.
    """
    xyz = np.asarray(xyz, dtype=np.float32).reshape(-1, 3)
    keep = np.isfinite(xyz).all(axis=1)
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    if rgb is not None:
        rgb = np.asarray(rgb, dtype=np.uint8).reshape(-1, 3)
        if len(rgb) != len(xyz):
            raise ValueError(f"rgb has {len(rgb)} points, xyz has {len(xyz)}")
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
    out = np.empty(int(keep.sum()), dtype=fields)
    out["x"], out["y"], out["z"] = xyz[keep].T
    if rgb is not None:
        out["red"], out["green"], out["blue"] = rgb[keep].T
    props = "".join(
        f"property {'float' if t == '<f4' else 'uchar'} {n}\n" for n, t in fields
    )
    header = f"ply\nformat binary_little_endian 1.0\nelement vertex {len(out)}\n{props}end_header\n"
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as f:
        f.write(header.encode("ascii"))
        f.write(out.tobytes())
    return len(out)


def warp_depth(depth_src: Tensor, K_src: Tensor, depth_dst: Tensor, K_dst: Tensor, src_from_dst: Tensor,
               extra: Tensor | None = None) -> tuple[Tensor, Tensor | None, Tensor]:
    """A source camera's depth seen from a destination camera, per destination pixel: (z [H, W], the
    source's depth surface along the destination's optical axis; extra [C, H, W] sampled at the same
    places; seen [H, W] bool). The destination's own depth finds each pixel's place in the source
    (`reproject`'s geometry, run backwards so that every destination pixel gets a value: no holes,
    no splatting); the source depth there (bilinear, all four neighbours valid) is lifted to 3-D and
    moved into the destination. z equals depth_dst where the two agree; torch, on their device."""
    import torch
    import torch.nn.functional as F

    T = src_from_dst.to(depth_dst)
    h, w = depth_src.shape[-2:]
    uv, z_in_src = reproject(depth_dst, K_dst, K_src, T)  # each destination pixel's place in the source
    valid_src = torch.isfinite(depth_src) & (depth_src > 0)
    planes = [torch.where(valid_src, depth_src, 0).to(depth_dst), valid_src.to(depth_dst)]
    if extra is not None:
        planes += list(extra.to(depth_dst))
    grid = torch.stack([uv[..., 0] / max(w - 1, 1), uv[..., 1] / max(h - 1, 1)], -1) * 2 - 1
    grid = torch.nan_to_num(grid, nan=-2.0, posinf=-2.0, neginf=-2.0)  # NaN: an invalid destination pixel, not seen
    sampled = F.grid_sample(torch.stack(planes)[None], grid[None], mode="bilinear", padding_mode="zeros",
                            align_corners=True)[0]
    z_src, full = sampled[0], sampled[1] > 1 - 1e-4
    k = K_src.to(depth_dst)
    ray = torch.stack([(uv[..., 0] - k[0, 2]) / k[0, 0], (uv[..., 1] - k[1, 2]) / k[1, 1], torch.ones_like(z_src)], -1)
    back = torch.linalg.inv(T)
    z = ((z_src[..., None] * ray) @ back[2, :3] + back[2, 3])
    seen = full & (z_in_src > 0) & torch.isfinite(z) & (z > 0)
    return torch.where(seen, z, torch.nan), (sampled[2:] if extra is not None else None), seen
