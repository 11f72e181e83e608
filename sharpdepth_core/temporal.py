"""The causal temporal mode (issue 29): one camera's past output carried into its present frame.

Each frame is still predicted alone (the pipeline is unchanged); this object then fuses the result
with the camera's previous output, moved into the present frame by the camera's motion: from
odometry (`odometry`: camera-to-world poses) or estimated from the two images and the previous depth
(`image`: direct photometric alignment, no poses). Where the flicker enters decides the fusion, in
log depth, as two parts:

- the frame-wide scale (f_D's scale, which the final fit of step 8 passes on: most of the flicker):
  the median log ratio δ of past to present over the pixels both see; the output keeps k·δ of it,
  k = n / (n + 1) with n the frames since the last cut, at most `scale_memory` (a running mean of
  the per-frame scales, then an exponential one);
- the per-pixel shape (the gate, the fit's pixel set, the noise): each pixel's remaining difference
  d is averaged with its past estimate weighted w·a, w the pixel's own count of frames (at most
  `pixel_memory`, warped along with the depth) and a = exp(-½ (d / tolerance)²): a pixel whose past
  disagrees (an occlusion, an edge, a moving object) keeps its present value. The tolerance is narrower
  where the present is nearer than the past (5 % against 12 %): an approaching obstacle is not held back.

The motion's alignment is cheap (2 pyramid levels from the first guess, 2 steps, 300 points: about
2.5 % of a frame on CPU at the embedded size). Where it fails, the frame is a cut: a second, thorough
alignment from standing still rescued none of the 696 frame pairs of 24 validation walks, and turned
one scene change of 24 into a match.

A cut (the camera jumped, frames were dropped, the scene changed: fewer than `min_agreement` of the
pixels seen in both frames agree within `agreement_band`, or less than `min_overlap` of the frame is seen
at all, or the depth histogram's scale-free shape changed by more than `max_histogram_change` (a
scene change the alignment may explain away: the second check of the image-only mode), or a gap of
more than `max_gap_s` between stamps, or a new image size or K) restarts the state: that frame's
output is the per-frame result itself. Only past frames are used; one frame in,
one out. Per camera: one object each (`TemporalCameras` keys them).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch import Tensor

from .choices import TEMPORAL_MODES
from .geometry import warp_depth

MODES = TEMPORAL_MODES


@dataclass(frozen=True)
class TemporalSettings:
    """The mode's constants (chosen on the validation walks of bench/temporal.py, --first-seed 110000)."""

    scale_memory: int = 4  # frames of past the frame-wide scale averages (f_D's scale flicker is the largest part)
    pixel_memory: float = 4.0  # a pixel's past counts at most this many times its present
    # log-depth difference at which a pixel's past weight falls to e^-1/2, by the sign of the change. Where the
    # present is nearer than the past (a surface coming closer) it is small, so the past cannot hold back an
    # approaching obstacle: at 5 % nearer a frame (1.5 m/s at 3 m, 10 Hz) the output lags by 2.5 % of its depth
    # (0.08 lagged 4.7 %; test_temporal's approaching object). Where it is farther, about 4 sigma of SharpDepth's own
    # frame-to-frame residual (robust sigma 0.027 on the validation walks, exact poses). On 24 validation walks:
    # worst walk 0.61x -> 0.55x f_D's TAE, mean 0.43x -> 0.39x, against 0.05 for both
    nearer_tolerance: float = 0.05
    farther_tolerance: float = 0.12
    agreement_band: float = 0.10  # log-depth difference within which a pixel of both frames agrees (the cut test)
    min_agreement: float = 0.5  # fewer of the pixels seen in both frames within agreement_band: a cut
    min_overlap: float = 0.2  # less of the frame seen in the previous one: a cut
    max_gap_s: float = 0.5  # a longer gap between two frames' stamps: a cut
    # a larger change of the depth histogram's shape (log depth's 5-95 % quantiles about their median, mean
    # absolute change, last frame to this one, per-frame depth; scale-free, so f_D's scale flicker does not move it): a
    # scene change, even one the alignment explains away. Validation walks (--first-seed 110000): at most
    # 0.13 from frame to frame within a walk (a dropped second included), 0.19-0.29 at the scene changes
    max_histogram_change: float = 0.16
    align_size: int = 64  # the longer edge (px) the photometric alignment runs at (its cost is fixed)
    # the alignment's cost (issue 29: <= 5 % of a frame on CPU): 800 points x 5 steps x 3 levels cost 6-7 %
    # of a frame; these cost about 2.5 % for the same validation TAE (within 0.03 of f_D's per walk)
    align_points: int = 300  # the alignment's pixels per pyramid level (the most textured)
    align_iterations: int = 2  # Gauss-Newton steps per level at most
    align_step: float = 1e-3  # a level stops once no component of a step is larger (metres at the depth's scale, radians)
    skip_coarsest: bool = True  # with a first guess (odometry, the last motion) the alignment starts one level finer


@dataclass
class TemporalResult:
    depth: Tensor  # [H, W] metres: the fused depth (the input itself on a cut)
    cut: bool  # this frame restarted the state: its output is the per-frame result
    reason: str  # why it restarted ("" when it did not)
    agreement: float  # share of the pixels seen in both frames whose past agrees (NaN on a restart)
    motion: Tensor | None  # [4, 4] the previous camera from the present one (prev_from_cur), as used


class TemporalDepth:
    """One camera's temporal state. `update` takes each frame's per-frame depth in order and returns
    the fused depth; `reset` forgets the past (a lifecycle deactivate, a new recording)."""

    def __init__(self, mode: str, settings: TemporalSettings | None = None):
        self.mode = _checked(mode)
        self.settings = settings or TemporalSettings()
        self.reset()

    def reset(self) -> None:
        self._past: Tensor | None = None  # [H, W] the last output, metres (NaN invalid)
        self._weight: Tensor | None = None  # [H, W] each pixel's count of fused frames
        self._frames = 0  # frames since the last restart
        self._K: Tensor | None = None
        self._gray: Tensor | None = None  # image mode: the last image, grey, at the alignment size
        self._pose: Tensor | None = None  # odometry mode: the last camera-to-world pose
        self._stamp: float | None = None
        self._velocity: Tensor | None = None  # image mode: the last motion, the next one's first guess
        self._shape: np.ndarray | None = None  # the last output's depth histogram shape (`_histogram_shape`)

    def update(self, depth: Tensor, K, image=None, pose=None, stamp: float | None = None) -> TemporalResult:
        """depth: [H, W] (or [1, 1, H, W]) metres, this frame's per-frame output; K: 3x3; image: the
        frame's RGB (uint8 HxWx3 or float [3, H, W] in [0, 1]; image mode); pose: the camera's
        camera-to-world 4x4 in its optical frame (odometry mode); stamp: seconds, for the gap check."""
        depth = torch.as_tensor(depth).reshape(torch.as_tensor(depth).shape[-2:]).float()
        K = torch.as_tensor(np.asarray(K, dtype=np.float64) if not isinstance(K, Tensor) else K).double().reshape(3, 3)
        if image is None:
            raise ValueError("the temporal mode needs each frame's image")
        if self.mode == "odometry" and pose is None:
            raise ValueError("temporal mode 'odometry' needs each frame's camera pose")
        gray = _gray(image, self.settings.align_size)
        pose = None if pose is None else torch.as_tensor(np.asarray(pose, dtype=np.float64) if not isinstance(pose, Tensor) else pose).double()
        reason = self._restart_reason(depth, K, stamp)
        shape = _histogram_shape(depth)
        if not reason and shape is not None and self._shape is not None:
            change = float(np.abs(shape - self._shape).mean())
            if change > self.settings.max_histogram_change:
                reason = f"the depth histogram changed by {change:.2f} (a scene change)"
        motion, agreement = None, math.nan
        if not reason:
            motion = self._motion(K, gray, pose, self._velocity)  # from the odometry, else the last motion
            reason = "" if motion is not None else "the images do not match"
            if not reason:
                fused, weight, agreement, reason = self._fuse(depth, K, motion)
        if reason:
            fused, weight, self._frames = torch.log(depth.clamp_min(1e-6)).where(_valid(depth), torch.nan), torch.ones_like(depth), 0
            self._velocity = None
        else:
            self._velocity = motion
        self._weight, self._K, self._gray, self._pose, self._stamp = weight, K, gray, pose, stamp
        self._shape = shape
        self._frames += 1
        self._past = torch.exp(fused)  # once a frame: the output, and the next frame's alignment and warp
        out = depth if reason else torch.where(torch.isfinite(self._past), self._past, depth)
        return TemporalResult(out, bool(reason), reason, agreement, motion)

    def _restart_reason(self, depth: Tensor, K: Tensor, stamp: float | None) -> str:
        if self._past is None:
            return "first frame"
        if self._past.shape != depth.shape or not torch.allclose(self._K, K):
            return "the image size or K changed"
        if stamp is not None and self._stamp is not None and not 0 < stamp - self._stamp <= self.settings.max_gap_s:
            return f"a gap of {stamp - self._stamp:.3f} s between frames"
        return ""

    def _motion(self, K: Tensor, gray: np.ndarray, pose: Tensor | None, last: Tensor | None) -> Tensor | None:
        """prev_from_cur: the previous camera's pose in the present one's frame, aligned on the images from
        a first guess: the odometry's motion, else `last` (the last frame's, prev_from_cur; None: still).
        Odometry alone is not used as it is: its translation is metric while the depth carries f_D's
        scale error (0.6-0.9 on the walks), and warping depth of the wrong scale by a metric translation
        makes the filtered scale drift frame after frame (AbsRel +3.6 % on the validation walks); the
        alignment finds the translation at the depth's own scale. Where it fails the odometry stands."""
        odometry = self.mode == "odometry"
        if odometry:
            guess = np.linalg.solve(pose.numpy(), self._pose.numpy())  # cur_from_prev
        else:
            guess = np.eye(4) if last is None else np.linalg.inv(last.numpy())
        past = self._past.cpu().numpy()
        s = self.settings
        informed = odometry or last is not None
        aligned = align_images(self._gray, gray, past, K.numpy(), guess, iterations=s.align_iterations, points=s.align_points,
                               step=s.align_step, start_level=1 if informed and s.skip_coarsest else None)
        if aligned is not None and aligned[1] < self.settings.min_agreement:
            return None  # the images disagree however they are aligned: a cut
        cur_from_prev = aligned[0] if aligned is not None else guess if odometry else None
        return None if cur_from_prev is None else torch.from_numpy(np.linalg.inv(cur_from_prev))

    def _fuse(self, depth: Tensor, K: Tensor, prev_from_cur: Tensor) -> tuple[Tensor | None, Tensor | None, float, str]:
        """(log depth out, weights, agreement, "") or, on a cut, (None, None, agreement, its reason)."""
        s = self.settings
        past, weight, seen = warp_depth(self._past, K, depth, K, prev_from_cur, extra=self._weight[None])
        seen &= _valid(depth)
        overlap = float(seen.float().mean())
        if overlap < s.min_overlap:
            return None, None, math.nan, f"only {100 * overlap:.0f} % of the frame seen before"
        now = torch.log(depth.clamp_min(1e-6))
        r = torch.where(seen, torch.log(past) - now, 0.0)
        delta = torch.median(r[seen])
        d = r - delta
        agreement = float((d[seen].abs() < s.agreement_band).float().mean())
        if agreement < s.min_agreement:
            return None, None, agreement, f"only {100 * agreement:.0f} % of the pixels agree with the past"
        n = min(self._frames, s.scale_memory)
        tol = torch.where(d > 0, s.nearer_tolerance, s.farther_tolerance)  # d > 0: the past was farther
        wa = torch.where(seen, weight[0].clamp(0, s.pixel_memory) * torch.exp(-0.5 * (d / tol) ** 2), 0.0)
        fused = now + n / (n + 1) * delta + wa / (wa + 1) * d
        fused = torch.where(_valid(depth), fused, torch.nan)
        return fused, torch.clamp(wa + 1, max=s.pixel_memory), agreement, ""


class TemporalCameras:
    """A `TemporalDepth` per camera, keyed by the caller (a camera's namespace or frame id): state
    never crosses cameras; `reset` forgets one camera or all."""

    def __init__(self, mode: str, settings: TemporalSettings | None = None):
        self.mode, self.settings = _checked(mode), settings  # checked now, not at the first frame
        self._cameras: dict[str, TemporalDepth] = {}

    def update(self, camera: str, depth: Tensor, K, image=None, pose=None, stamp: float | None = None) -> TemporalResult:
        if camera not in self._cameras:
            self._cameras[camera] = TemporalDepth(self.mode, self.settings)
        return self._cameras[camera].update(depth, K, image=image, pose=pose, stamp=stamp)

    def reset(self, camera: str | None = None) -> None:
        if camera is None:
            self._cameras.clear()
        else:
            self._cameras.pop(camera, None)


def _checked(mode: str) -> str:
    if mode not in MODES[1:]:
        raise ValueError(f"temporal mode must be one of {MODES[1:]}, got {mode!r}")
    return mode


def _valid(depth: Tensor) -> Tensor:
    return torch.isfinite(depth) & (depth > 0)


_QUANTILES = np.linspace(0.05, 0.95, 19)


def _histogram_shape(depth: Tensor) -> np.ndarray | None:
    """The shape of a depth map's histogram, scale removed: log depth's 5-95 % quantiles minus their
    median (on every 4th pixel of every 2nd row: it is a histogram). None without enough valid depth."""
    d = depth[::2, ::4].numpy().ravel()
    d = d[np.isfinite(d) & (d > 0)]
    if d.size < 64:
        return None
    q = np.quantile(np.log(d), _QUANTILES)
    return q - q[len(q) // 2]


def _gray(image, size: int) -> np.ndarray:
    """An RGB image (uint8 HxWx3, or float [3, H, W] in [0, 1]) as grey float32 [h, w] in [0, 1], its
    longer edge resized (area) to `size`, never up."""
    if isinstance(image, Tensor):
        image = image.detach().float().cpu().permute(1, 2, 0).numpy()
    x = np.asarray(image, dtype=np.float32) / (255.0 if np.asarray(image).dtype == np.uint8 else 1.0)
    g = x @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    scale = min(1.0, size / max(g.shape))
    hw = (max(1, round(g.shape[0] * scale)), max(1, round(g.shape[1] * scale)))
    return cv2.resize(g, hw[::-1], interpolation=cv2.INTER_AREA) if hw != g.shape else g


def _exp_se3(xi: np.ndarray) -> np.ndarray:
    """A small motion [v, ω] as a 4x4 (Rodrigues' rotation; the translation taken as v, exact to first order)."""
    v, w = xi[:3], xi[3:]
    theta = float(np.linalg.norm(w))
    W = np.array([[0, -w[2], w[1]], [w[2], 0, -w[0]], [-w[1], w[0], 0]])
    a, b = (1.0, 0.5) if theta < 1e-8 else (math.sin(theta) / theta, (1 - math.cos(theta)) / theta ** 2)
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = np.eye(3) + a * W + b * W @ W, v
    return T


def _bilinear(planes: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """planes [C, h, w] sampled at pixel coordinates (u, v), all inside [0, w-1] x [0, h-1]. Not cv2.remap:
    it rounds positions to 1/32 pixel, which the Gauss-Newton steps of the alignment would feel."""
    h, w = planes.shape[-2:]
    u0 = np.clip(np.floor(u).astype(np.intp), 0, w - 2)
    v0 = np.clip(np.floor(v).astype(np.intp), 0, h - 2)
    fu, fv = u - u0, v - v0
    p = planes[:, v0, u0] * ((1 - fu) * (1 - fv)) + planes[:, v0, u0 + 1] * (fu * (1 - fv))
    return p + planes[:, v0 + 1, u0] * ((1 - fu) * fv) + planes[:, v0 + 1, u0 + 1] * (fu * fv)


def align_images(gray_prev: np.ndarray, gray_cur: np.ndarray, depth_prev: np.ndarray, K: np.ndarray,
                 guess: np.ndarray, levels: int = 3, iterations: int = 5, points: int = 800,
                 match: float = 0.05, step: float = 1e-5, start_level: int | None = None) -> tuple[np.ndarray, float] | None:
    """cur_from_prev by direct photometric alignment (Gauss-Newton on SE(3), Huber-weighted, coarse to
    fine): the previous frame's most textured pixels, lifted with its depth, moved and projected into
    the present image until their grey values match. Why: the image-only mode needs the camera's
    motion, and two images plus the previous output's depth are all it has. The images are at the
    alignment size, depth_prev and K at the depth's size. None when it does not converge to
    something finite or too few pixels stay in view. Also returns the share of the pixels used whose
    grey values then match within `match`: low when the images show different things (a cut)."""
    T = np.array(guess, dtype=np.float64)
    full_h, full_w = depth_prev.shape
    for level in reversed(range(min(levels - 1, levels - 1 if start_level is None else start_level) + 1)):
        prev, cur = gray_prev, gray_cur
        for _ in range(level):
            prev, cur = cv2.pyrDown(prev), cv2.pyrDown(cur)
        h, w = prev.shape
        if min(h, w) < 8:
            continue
        sx, sy = w / full_w, h / full_h
        fx, fy = K[0, 0] * sx, K[1, 1] * sy
        cx, cy = (K[0, 2] + 0.5) * sx - 0.5, (K[1, 2] + 0.5) * sy - 0.5
        d = cv2.resize(np.nan_to_num(depth_prev, nan=0.0).astype(np.float32), (w, h), interpolation=cv2.INTER_NEAREST)
        gy, gx = np.gradient(cur.astype(np.float64))
        py, px = np.gradient(prev.astype(np.float64))
        mag = np.hypot(px, py)
        mag[d <= 0] = -1
        mag[[0, -1]] = mag[:, [0, -1]] = -1
        flat = mag.ravel()
        idx = np.argpartition(flat, flat.size - points)[flat.size - points:] if flat.size > points else np.arange(flat.size)
        idx = idx[mag.ravel()[idx] > 0]
        if idx.size < 32:
            return None
        v, u = np.divmod(idx, w)
        z = d.ravel()[idx].astype(np.float64)
        X = np.stack([(u - cx) / fx * z, (v - cy) / fy * z, z], -1)
        ref = prev.ravel()[idx].astype(np.float64)
        planes = np.stack([cur.astype(np.float64), gx, gy])
        for _ in range(iterations):
            Xc = X @ T[:3, :3].T + T[:3, 3]
            zc = Xc[:, 2]
            with np.errstate(divide="ignore", invalid="ignore"):
                uc, vc = fx * Xc[:, 0] / zc + cx, fy * Xc[:, 1] / zc + cy
            inside = (zc > 1e-3) & (uc >= 0) & (uc <= w - 1) & (vc >= 0) & (vc <= h - 1)
            if inside.sum() < 32:
                return None
            X1, z1 = Xc[inside], zc[inside]
            s = _bilinear(planes, uc[inside], vc[inside])
            r = s[0] - ref[inside]
            gu, gv = s[1] * fx / z1, s[2] * fy / z1
            gz = -(gu * X1[:, 0] + gv * X1[:, 1]) / z1
            x, y = X1[:, 0], X1[:, 1]  # the rotation's columns: X × (gu, gv, gz)
            J = np.stack([gu, gv, gz, y * gz - z1 * gv, z1 * gu - x * gz, x * gv - y * gu], -1)
            ar = np.abs(r)
            k = 1.345 * 1.4826 * max(float(np.partition(ar, ar.size // 2)[ar.size // 2]), 1e-4)  # about the median
            wt = np.minimum(1.0, k / np.maximum(ar, 1e-12))
            H = J.T @ (wt[:, None] * J)
            xi = -np.linalg.solve(H + 1e-6 * np.trace(H) / 6 * np.eye(6), J.T @ (wt * r))
            if not np.isfinite(xi).all():
                return None
            T = _exp_se3(xi) @ T
            if np.abs(xi).max() < step:
                break
        matched = float(np.sum(np.abs(r) < match)) / idx.size
    return (T, matched) if np.isfinite(T).all() else None
