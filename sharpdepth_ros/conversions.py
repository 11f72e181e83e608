"""ROS messages <-> numpy, without cv_bridge or sensor_msgs_py (absent from the PyPI ROS wheels).

Images: decoding lives in `sharpdepth_core.images` (no ROS needed, the trainer reads bags with it);
here numpy -> Image for publishing. CameraInfo: the intrinsics of the
image as published (ROI and binning applied) and the depth image's CameraInfo with K and P moved
to the depth resolution. PointCloud2: depth_image_proc's organised layout, written into one
contiguous buffer, because per-point or per-field construction costs tens of milliseconds per frame.

Functions read messages by attribute only, so rosbags' deserialised messages work as well.
"""
from __future__ import annotations

import array
import sys

import cv2
import numpy as np
from sensor_msgs.msg import CameraInfo, Image, PointCloud2, PointField

from sharpdepth_core.geometry import crop_transform, resize_transform, transform_intrinsics, unproject
from sharpdepth_core.images import (  # noqa: F401 - re-exported: the node's conversions in one place
    COLOR_ENCODINGS,
    ENCODINGS,
    compressed_to_rgb8,
    image_to_numpy,
    image_to_rgb8,
    to_rgb8,
)

def _as_bytes(buffer: np.ndarray) -> array.array:
    """One copy of a contiguous array into the array('B') that ROS message byte fields hold.

    Assigning bytes or a numpy array instead makes the generated setter validate (or convert) every
    element in Python, which takes seconds for an image.
    """
    out = array.array("B")
    out.frombytes(memoryview(np.ascontiguousarray(buffer)).cast("B"))
    return out


def numpy_to_image(pixels: np.ndarray, encoding: str, header) -> Image:
    """HxW or HxWxC array -> Image with a tight step, in native byte order."""
    channels, dtype = ENCODINGS[encoding]
    pixels = np.ascontiguousarray(pixels, dtype=dtype)
    if pixels.ndim != (3 if channels > 1 else 2) or (channels > 1 and pixels.shape[2] != channels):
        raise ValueError(f"array of shape {pixels.shape} does not fit encoding '{encoding}'")
    msg = Image(header=header, height=pixels.shape[0], width=pixels.shape[1], encoding=encoding)
    msg.is_bigendian = int(sys.byteorder == "big")
    msg.step = pixels.shape[1] * channels * dtype.itemsize
    msg.data = _as_bytes(pixels)
    return msg


def _camera_to_image(info, image_hw: tuple[int, int]) -> np.ndarray:
    """Pixel map from the calibrated camera grid to the published image: ROI crop, binning, resize.

    CameraInfo K and P refer to the full sensor; ROI and binning say how the image was cut from it.
    A remaining size mismatch (a driver that resized without updating CameraInfo) is a resize.
    """
    roi = info.roi
    full_h, full_w = int(info.height) or image_hw[0], int(info.width) or image_hw[1]
    crop_h, crop_w = (int(roi.height) or full_h), (int(roi.width) or full_w)
    bx, by = max(int(info.binning_x), 1), max(int(info.binning_y), 1)
    m = crop_transform(float(roi.x_offset), float(roi.y_offset))
    m = resize_transform(1.0 / bx, 1.0 / by) @ m
    binned_h, binned_w = crop_h / by, crop_w / bx
    return resize_transform(image_hw[1] / binned_w, image_hw[0] / binned_h) @ m


def image_intrinsics(info, image_hw: tuple[int, int]) -> np.ndarray:
    """K (3x3 float64) of the image as published; ValueError if the calibration is unusable."""
    k = np.asarray(info.k, dtype=np.float64).reshape(3, 3)
    if not np.isfinite(k).all():
        raise ValueError("camera_info K has non-finite values")
    if k[0, 0] == 0 or k[1, 1] == 0:
        raise ValueError(f"camera_info K has a zero focal length (fx={k[0, 0]:g}, fy={k[1, 1]:g}); is the camera calibrated?")
    return transform_intrinsics(k, _camera_to_image(info, image_hw))


def depth_camera_info(info, image_hw: tuple[int, int], depth_hw: tuple[int, int], header) -> CameraInfo:
    """CameraInfo of a depth image computed from `image_hw` input: K and P at the depth resolution.

    depth_image_proc reads fx, fy, cx, cy from P, so P is transformed like K (an uncalibrated
    all-zero P becomes [K | 0]). ROI and binning are folded in, so the result has neither.
    """
    to_image = _camera_to_image(info, image_hw)
    to_depth = resize_transform(depth_hw[1] / image_hw[1], depth_hw[0] / image_hw[0]) @ to_image
    k = np.asarray(info.k, dtype=np.float64).reshape(3, 3)
    p = np.asarray(info.p, dtype=np.float64).reshape(3, 4)
    if not p.any():
        p = np.concatenate([k, np.zeros((3, 1))], axis=1)
    out = CameraInfo(header=header, height=depth_hw[0], width=depth_hw[1])
    out.distortion_model = info.distortion_model
    out.d = [float(v) for v in info.d]
    out.r = np.asarray(info.r, dtype=np.float64).ravel()
    out.k = transform_intrinsics(k, to_depth).ravel()
    out.p = transform_intrinsics(p, to_depth).ravel()
    return out


def camera_info(K: np.ndarray, hw: tuple[int, int], header) -> CameraInfo:
    """CameraInfo of an undistorted pinhole camera (replay sources that only know K)."""
    K = np.asarray(K, dtype=np.float64)
    out = CameraInfo(header=header, height=int(hw[0]), width=int(hw[1]), distortion_model="plumb_bob")
    out.d = [0.0] * 5
    out.k = K.ravel()
    out.r = np.eye(3).ravel()
    out.p = np.concatenate([K, np.zeros((3, 1))], axis=1).ravel()
    return out


def point_fields(color: bool) -> list[PointField]:
    names = ("x", "y", "z", "rgb") if color else ("x", "y", "z")
    offsets = (0, 4, 8, 16)
    return [PointField(name=n, offset=o, datatype=PointField.FLOAT32, count=1) for n, o in zip(names, offsets)]


class PointCloudBuilder:
    """Organised PointCloud2 in depth_image_proc's layout from a depth map, in a few milliseconds.

    xyz float32 at 0/4/8, point_step 16; with colour, `rgb` at 16 (uint32 0x00RRGGBB read as
    float32, bytes b,g,r,0), point_step 32; NaN xyz for invalid depth (non-finite, <= 0, or beyond
    `max_range` along z), kept in the grid. The state is a cache of the pixel rays
    `unproject(1, K)` for the last K and size: xyz = ray * z then is two multiplies written
    straight into the message's own byte array.
    """

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._rays: tuple[np.ndarray, np.ndarray] | None = None

    def _rays_for(self, K: np.ndarray, hw: tuple[int, int], decimation: int) -> tuple[np.ndarray, np.ndarray]:
        key = (np.asarray(K, dtype=np.float64).tobytes(), hw, decimation)
        if key != self._key:
            rays = unproject(np.ones(hw, dtype=np.float32), K)[::decimation, ::decimation]
            self._rays = (np.ascontiguousarray(rays[..., 0]), np.ascontiguousarray(rays[..., 1]))
            self._key = key
        return self._rays

    def __call__(
        self,
        depth: np.ndarray,
        K: np.ndarray,
        header,
        rgb: np.ndarray | None = None,
        decimation: int = 1,
        max_range: float = 0.0,
    ) -> PointCloud2:
        """depth HxW metres, K of that grid, rgb HxWx3 uint8 or None; every `decimation`-th pixel."""
        depth = np.asarray(depth, dtype=np.float32)
        if depth.ndim != 2:
            raise ValueError(f"depth must be HxW, got shape {depth.shape}")
        if rgb is not None and rgb.shape != (*depth.shape, 3):
            raise ValueError(f"rgb of shape {rgb.shape} does not match depth of shape {depth.shape}")
        rx, ry = self._rays_for(K, depth.shape, decimation)
        z = depth[::decimation, ::decimation]
        valid = np.isfinite(z) & (z > 0)  # geometry.unproject's rule
        if max_range > 0:
            valid &= z <= max_range
        z = np.where(valid, z, np.float32(np.nan))
        h, w = z.shape
        step = 32 if rgb is not None else 16
        data = array.array("B", [0]) * (h * w * step)  # zero padding, memset speed
        words = np.frombuffer(data, dtype=np.float32).reshape(h, w, step // 4)
        np.multiply(rx, z, out=words[..., 0])
        np.multiply(ry, z, out=words[..., 1])
        words[..., 2] = z
        if rgb is not None:
            bgra = cv2.cvtColor(np.ascontiguousarray(rgb[::decimation, ::decimation]), cv2.COLOR_RGB2BGRA)
            bgra[..., 3] = 0
            words.view(np.uint32)[..., 4] = bgra.view(np.uint32)[..., 0]
        msg = PointCloud2(header=header, height=h, width=w, is_bigendian=sys.byteorder == "big", is_dense=False)
        msg.fields = point_fields(rgb is not None)
        msg.point_step = step
        msg.row_step = step * w
        msg.data = data
        return msg


def point_cloud_to_numpy(msg) -> tuple[np.ndarray, np.ndarray | None]:
    """PointCloud2 of this layout -> (xyz HxWx3 float32, rgb HxWx3 uint8 or None); for consumers."""
    names = [f.name for f in msg.fields]
    if names[:3] != ["x", "y", "z"] or msg.point_step not in (16, 32):
        raise ValueError(f"not an xyz/xyzrgb cloud in depth_image_proc layout (fields {names}, point_step {msg.point_step})")
    words = np.frombuffer(msg.data, dtype=np.float32).reshape(msg.height, msg.width, msg.point_step // 4)
    rgb = None
    if "rgb" in names:
        bgr0 = words[..., 4].copy().view(np.uint8).reshape(msg.height, msg.width, 4)
        rgb = np.ascontiguousarray(bgr0[..., 2::-1])
    return np.ascontiguousarray(words[..., :3]), rgb
