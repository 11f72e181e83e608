"""Pinhole geometry: intrinsics under resize/pad/crop, organised unprojection, coloured PLY export.

Pixel convention: pixel centres at integer coordinates, as in OpenCV and ROS CameraInfo. Every image
operation is an affine map of pixel coordinates `A`, and intrinsics (K 3x3 or P 3x4) transform as
`A @ K`, which keeps K and P consistent with each other by construction.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .files import atomic_write

MAX_FOCAL_PX = 1e6  # a 0.1° field of view at 4k: anything larger is a unit or calibration error
NOMINAL_HFOV_DEG = 60.0  # the camera assumed when none is given or predicted


def resize_transform(sx: float, sy: float) -> np.ndarray:
    """Pixel map of a resize by (sx, sy) with half-pixel centres: u' = (u + 0.5) sx - 0.5."""
    return np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5], [0.0, 0.0, 1.0]])


def crop_transform(x0: float, y0: float) -> np.ndarray:
    """Pixel map of a crop whose top-left corner is (x0, y0); padding top/left by p is x0 = -p."""
    return np.array([[1.0, 0.0, -x0], [0.0, 1.0, -y0], [0.0, 0.0, 1.0]])


def transform_intrinsics(m, transform: np.ndarray):
    """Apply a pixel map to K ([..., 3, 3]) or P ([..., 3, 4]); numpy in, numpy out; torch likewise."""
    if isinstance(m, Tensor):
        return torch.as_tensor(transform, dtype=m.dtype, device=m.device) @ m
    return transform @ np.asarray(m, dtype=np.float64)


def scale_intrinsics(m, input_hw: tuple[int, int], output_hw: tuple[int, int]):
    """K or P of an image resized from input_hw to output_hw (bottom/right padding changes nothing)."""
    sx, sy = output_hw[1] / input_hw[1], output_hw[0] / input_hw[0]
    return transform_intrinsics(m, resize_transform(sx, sy))


def focal_intrinsics(f: Tensor, hw: tuple[int, int]) -> Tensor:
    """K [B, 3, 3] with fx = fy = f [B] and the principal point at the image centre."""
    h, w = hw
    K = torch.zeros(f.shape[0], 3, 3, dtype=torch.float32, device=f.device)
    K[:, 0, 0] = K[:, 1, 1] = f.float()
    K[:, 0, 2], K[:, 1, 2], K[:, 2, 2] = (w - 1) / 2, (h - 1) / 2, 1.0
    return K


def nominal_intrinsics(batch: int, hw: tuple[int, int], device=None, hfov_deg: float = NOMINAL_HFOV_DEG) -> Tensor:
    """The documented default camera when none is given or predicted: 60° horizontal field of view."""
    f = 0.5 * hw[1] / math.tan(math.radians(hfov_deg) / 2)
    return focal_intrinsics(torch.full((batch,), f, device=device), hw)


def check_intrinsics(K, batch: int, device=None) -> Tensor | None:
    """None, or K [3, 3] / [B, 3, 3] (numpy or torch) as float32 [B, 3, 3]; a bad K is a ValueError."""
    if K is None:
        return None
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


def _check_focal(fx, fy) -> None:
    if bool((fx == 0).any()) or bool((fy == 0).any()) or not bool(torch.isfinite(fx).all() & torch.isfinite(fy).all()):
        raise ValueError("camera intrinsics have a zero or non-finite focal length")


def unproject(depth, K):
    """Organised unprojection: depth [..., H, W] (metres along z) -> xyz [..., H, W, 3].

    X = (u - cx) Z / fx, Y = (v - cy) Z / fy (REP 103 optical frame). Invalid depth (non-finite or
    <= 0) gives NaN xyz, kept in the grid. K is [3, 3] or batched [..., 3, 3] matching depth's
    leading dims. numpy in, numpy out; torch likewise.
    """
    as_numpy = not isinstance(depth, Tensor)
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
    as_numpy = not isinstance(xyz, Tensor)
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


def reproject(depth: np.ndarray, K_src: np.ndarray, K_dst: np.ndarray, dst_from_src: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where each pixel of a depth image lands in another camera: (uv [H, W, 2] in the destination's
    pixel coordinates, z [H, W] the point's depth along the destination's optical axis). NaN where
    the source depth is invalid."""
    xyz = unproject(np.asarray(depth, dtype=np.float64), K_src)
    T = np.asarray(dst_from_src, dtype=np.float64)
    moved = xyz @ T[:3, :3].T + T[:3, 3]
    with np.errstate(invalid="ignore", divide="ignore"):
        return project(moved, np.asarray(K_dst, dtype=np.float64)), moved[..., 2]


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
