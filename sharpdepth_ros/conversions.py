"""ROS messages <-> numpy, without cv_bridge or sensor_msgs_py (absent from the PyPI ROS wheels).

Images: decoding lives in `sharpdepth_core.images` (no ROS needed, the trainer reads bags with it);
here numpy -> Image for publishing. CameraInfo: checked before use (an impossible calibration is a
ValueError, never a cloud a kilometre wide), the intrinsics of the image as published (ROI and
binning applied), rectification of distorted cameras (OpenCV maps, as image_proc does), and the
depth image's CameraInfo with K and P moved to the depth resolution. PointCloud2:
depth_image_proc's organised layout, written into one contiguous buffer, because per-point or
per-field construction costs tens of milliseconds per frame.

Functions read messages by attribute only, so rosbags' deserialised messages work as well.
"""
from __future__ import annotations

import array
import math
import sys
from collections import OrderedDict

import cv2
import numpy as np
from sensor_msgs.msg import CameraInfo, Image, PointCloud2, PointField

from sharpdepth_core.geometry import check_calibration, check_calibration_size, crop_transform, resize_transform, transform_intrinsics
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


def _matrix(values, shape: tuple[int, int], name: str) -> np.ndarray:
    m = np.asarray(values, dtype=np.float64)
    if m.size != shape[0] * shape[1]:
        raise ValueError(f"camera_info {name} has {m.size} values, expected {shape[0] * shape[1]}")
    m = m.reshape(shape)
    if not np.isfinite(m).all():
        raise ValueError(f"camera_info {name} has non-finite values")
    return m


def _checked(name: str, m: np.ndarray, image_hw: tuple[int, int], **rectification) -> None:
    """`geometry.check_calibration` of the image-grid matrix `m`, its message naming the field."""
    if not m[0, 0] and not m[1, 1]:
        raise ValueError(f"camera_info {name} has a zero focal length; is the camera calibrated?")
    try:
        check_calibration(m[:, :3], image_hw, **rectification)
    except ValueError as error:
        raise ValueError(f"camera_info {name}: {error}") from None


def _region(info, image_hw: tuple[int, int]) -> tuple[int, int, int, int, int, int]:
    """(x0, y0, crop_h, crop_w, binning_x, binning_y), checked against the sensor.

    REP 104: an all-zero ROI is the full sensor; binning 0 and 1 both mean none; a zero
    height/width (an uncalibrated camera) is the image's own size.
    """
    roi = info.roi
    full_h, full_w = int(info.height) or image_hw[0], int(info.width) or image_hw[1]
    x0, y0 = int(roi.x_offset), int(roi.y_offset)
    crop_h, crop_w = (int(roi.height) or full_h), (int(roi.width) or full_w)
    if x0 + crop_w > full_w or y0 + crop_h > full_h:
        raise ValueError(f"camera_info ROI {crop_w}x{crop_h} at ({x0}, {y0}) lies outside the {full_w}x{full_h} sensor")
    bx, by = max(int(info.binning_x), 1), max(int(info.binning_y), 1)
    if bx > crop_w or by > crop_h:
        raise ValueError(f"camera_info binning {bx}x{by} is larger than the {crop_w}x{crop_h} region it bins")
    return x0, y0, crop_h, crop_w, bx, by


def _camera_to_image(info, image_hw: tuple[int, int]) -> np.ndarray:
    """Pixel map from the calibrated camera grid to the published image: ROI crop, binning, resize.

    CameraInfo K and P refer to the full sensor; ROI and binning say how the image was cut from it.
    A remaining size mismatch of the same aspect ratio (a driver that resized without updating CameraInfo)
    is a resize; another aspect ratio is a ValueError (`check_calibration_size`, as predict's --intrinsics).
    """
    x0, y0, crop_h, crop_w, bx, by = _region(info, image_hw)
    m = crop_transform(float(x0), float(y0))
    m = resize_transform(1.0 / bx, 1.0 / by) @ m
    binned_h, binned_w = crop_h / by, crop_w / bx
    check_calibration_size((binned_h, binned_w), image_hw, "camera_info")  # another aspect ratio: ValueError
    return resize_transform(image_hw[1] / binned_w, image_hw[0] / binned_h) @ m


def _projection(info, k: np.ndarray) -> np.ndarray:
    """P (3x4); an uncalibrated all-zero P is [K | 0]."""
    p = _matrix(info.p, (3, 4), "P")
    return p if p.any() else np.concatenate([k, np.zeros((3, 1))], axis=1)


def _image_matrices(info, image_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(K 3x3, P 3x4) of the image as published, each checked (`geometry.check_calibration`)."""
    to_image = _camera_to_image(info, image_hw)
    sensor_k = _matrix(info.k, (3, 3), "K")
    k = transform_intrinsics(sensor_k, to_image)
    p = transform_intrinsics(_projection(info, sensor_k), to_image)
    _checked("K", k, image_hw)
    _checked("P", p, image_hw)
    return k, p


def has_distortion(info) -> bool:
    """True when D has a non-zero coefficient (the image must be rectified); non-finite D is a ValueError."""
    d = np.asarray(info.d, dtype=np.float64)
    if not np.isfinite(d).all():
        raise ValueError("camera_info D has non-finite values")
    return bool(d.any())


def image_intrinsics(info, image_hw: tuple[int, int]) -> np.ndarray:
    """K (3x3 float64) of the image as published; ValueError if K, P, ROI or binning cannot describe it."""
    return _image_matrices(info, image_hw)[0]


def depth_camera_info(info, image_hw: tuple[int, int], depth_hw: tuple[int, int], header) -> CameraInfo:
    """CameraInfo of a depth image computed from `image_hw` input: K and P at the depth resolution.

    depth_image_proc reads fx, fy, cx, cy from P, so P is transformed like K (an uncalibrated
    all-zero P becomes [K | 0]). ROI and binning are folded in, so the result has neither.
    """
    to_image = _camera_to_image(info, image_hw)
    to_depth = resize_transform(depth_hw[1] / image_hw[1], depth_hw[0] / image_hw[0]) @ to_image
    k = np.asarray(info.k, dtype=np.float64).reshape(3, 3)
    p = _projection(info, k)
    out = CameraInfo(header=header, height=depth_hw[0], width=depth_hw[1])
    out.distortion_model = info.distortion_model
    out.d = [float(v) for v in info.d]
    out.r = np.asarray(info.r, dtype=np.float64).ravel()
    out.k = transform_intrinsics(k, to_depth).ravel()
    out.p = transform_intrinsics(p, to_depth).ravel()
    return out


def remember(cache: OrderedDict, key, value, capacity: int):
    """Store `value` as the newest entry of the bounded LRU `cache` (the oldest beyond `capacity` go)."""
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > capacity:
        cache.popitem(last=False)
    return value


class Rectifier:
    """Undistorts (and, with R, rectifies) camera images the way image_proc does, with OpenCV maps
    cached per calibration: the depth then lives on an ideal pinhole camera (K = P, D = 0).

    Maps are computed on the image grid directly: ROI, binning and resize are affine pixel maps,
    so the image's K and P are the sensor's moved by that map while D (in normalised coordinates)
    is unchanged. Pixels whose source lies outside the raw image are marked invalid.
    """

    CAPACITY = 2  # calibrations whose maps stay cached: 2 x 18 MB for a 1080p camera

    def __init__(self) -> None:
        self._maps: OrderedDict[tuple, tuple] = OrderedDict()

    def __call__(self, rgb: np.ndarray, info) -> tuple[np.ndarray, CameraInfo, np.ndarray]:
        """(rectified HxWx3 image, pinhole CameraInfo of it, HxW bool mask of pixels seen by the camera)."""
        hw = rgb.shape[:2]
        key = (hw, info.distortion_model, *(np.asarray(getattr(info, n), dtype=np.float64).tobytes() for n in "dkrp"),
               int(info.height), int(info.width), int(info.binning_x), int(info.binning_y),
               int(info.roi.x_offset), int(info.roi.y_offset), int(info.roi.height), int(info.roi.width))
        entry = self._maps.get(key)
        map_x, map_y, rectified, valid = remember(self._maps, key, entry if entry is not None else self._build(info, hw), self.CAPACITY)
        image = cv2.remap(rgb, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        return image, rectified, valid

    @staticmethod
    def _build(info, hw: tuple[int, int]) -> tuple:
        """The maps; ValueError when the calibration cannot be used, or rectifying it would leave
        the image mostly outside the camera's view (`geometry.check_calibration`)."""
        k, p = _image_matrices(info, hw)
        r = _matrix(info.r, (3, 3), "R")
        d = np.asarray(info.d, dtype=np.float64)
        _checked("rectification", k, hw, D=d, R=r, model=info.distortion_model, rectified_K=p[:, :3])
        size = (hw[1], hw[0])
        if info.distortion_model == "equidistant":
            map_x, map_y = cv2.fisheye.initUndistortRectifyMap(k, d, r, p[:, :3], size, cv2.CV_32FC1)
        else:
            map_x, map_y = cv2.initUndistortRectifyMap(k, d, r, p[:, :3], size, cv2.CV_32FC1)
        valid = (map_x >= 0) & (map_x <= hw[1] - 1) & (map_y >= 0) & (map_y <= hw[0] - 1)
        rectified = CameraInfo(height=hw[0], width=hw[1], distortion_model="plumb_bob")
        rectified.d = [0.0] * 5
        rectified.k = p[:, :3].ravel()
        rectified.r = np.eye(3).ravel()
        rectified.p = p.ravel()
        return map_x, map_y, rectified, valid


def pinhole_K(width: int, height: int, fov_deg: float) -> np.ndarray:
    """Square pixels, centred principal point, horizontal field of view `fov_deg`."""
    f = 0.5 * width / math.tan(math.radians(fov_deg) / 2)
    return np.array([[f, 0.0, (width - 1) / 2], [0.0, f, (height - 1) / 2], [0.0, 0.0, 1.0]])


def pose_stamped(camera_to_world: np.ndarray, header):
    """PoseStamped of a camera: its optical frame's pose (4x4 camera-to-world) in `header.frame_id`."""
    from geometry_msgs.msg import PoseStamped
    from scipy.spatial.transform import Rotation

    T = np.asarray(camera_to_world, dtype=np.float64)
    msg = PoseStamped(header=header)
    msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = (float(v) for v in T[:3, 3])
    q = msg.pose.orientation
    q.x, q.y, q.z, q.w = (float(v) for v in Rotation.from_matrix(T[:3, :3]).as_quat())
    return msg


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
    `max_range` along z), kept in the grid. The state is a small cache of pixel rays per (K, size,
    decimation): x/z = (u - cx) / fx depends on the column only and y/z on the row only, so a row
    and a column vector, broadcast in two multiplies written straight into the message's bytes.
    """

    CAPACITY = 4  # cameras whose rays stay cached (a node serves one; a few K changes stay cheap)

    def __init__(self) -> None:
        self._rays: OrderedDict[tuple, tuple[np.ndarray, np.ndarray]] = OrderedDict()

    def _rays_for(self, K: np.ndarray, hw: tuple[int, int], decimation: int) -> tuple[np.ndarray, np.ndarray]:
        K = np.asarray(K, dtype=np.float64)
        key = (K.tobytes(), hw, decimation)
        rays = self._rays.get(key)
        if rays is None:
            fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
            if not (np.isfinite([fx, fy, cx, cy]).all() and fx != 0 and fy != 0):
                raise ValueError("camera intrinsics have a zero or non-finite focal length")
            u = np.arange(0, hw[1], decimation, dtype=np.float64)
            v = np.arange(0, hw[0], decimation, dtype=np.float64)
            rays = (((u - cx) / fx).astype(np.float32)[None, :], ((v - cy) / fy).astype(np.float32)[:, None])
        return remember(self._rays, key, rays, self.CAPACITY)

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
