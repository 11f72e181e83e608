"""Image/CompressedImage/CameraInfo/PointCloud2 conversions: values, layouts and clear errors."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from helpers_ros import encode_image, header, pinhole_info
from sensor_msgs.msg import CompressedImage, PointField

from sharpdepth_core.geometry import unproject
from sharpdepth_ros.conversions import (
    PointCloudBuilder,
    Rectifier,
    compressed_to_rgb8,
    depth_camera_info,
    has_distortion,
    image_intrinsics,
    image_to_numpy,
    image_to_rgb8,
    numpy_to_image,
    point_cloud_to_numpy,
)

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (5, 7, 3), dtype=np.uint8)  # odd sizes: rows and columns cannot be swapped
K = np.array([[50.0, 0.0, 3.2], [0.0, 40.0, 2.1], [0.0, 0.0, 1.0]])


@pytest.mark.parametrize("pad", [0, 3])
@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8"])
def test_colour_encodings_decode_to_the_same_rgb(encoding, pad):
    np.testing.assert_array_equal(image_to_rgb8(encode_image(RGB, encoding, pad=pad)), RGB)


@pytest.mark.parametrize("bigendian", [False, True])
@pytest.mark.parametrize("pad", [0, 5])
def test_mono_encodings(pad, bigendian):
    red = RGB[..., 0]
    mono8 = image_to_rgb8(encode_image(RGB, "mono8", pad=pad))
    np.testing.assert_array_equal(mono8, np.repeat(red[..., None], 3, axis=-1))
    msg16 = encode_image(RGB, "mono16", pad=pad, bigendian=bigendian)
    mono16 = red.astype(np.uint16) * 256 + 17
    np.testing.assert_array_equal(image_to_numpy(msg16), mono16)
    # per-image scaling to 8 bits: the brightest pixel becomes 255
    expected = np.round(mono16.astype(np.float32) * (255.0 / int(mono16.max()))).astype(np.uint8)
    np.testing.assert_array_equal(image_to_rgb8(msg16)[..., 1], expected)


def test_numpy_to_image_round_trip_32fc1():
    depth = RNG.uniform(0.1, 9.0, (5, 7)).astype(np.float32)
    depth[1, 2] = np.nan
    msg = numpy_to_image(depth, "32FC1", header(5))
    assert (msg.encoding, msg.height, msg.width, msg.step) == ("32FC1", 5, 7, 28)
    np.testing.assert_array_equal(image_to_numpy(msg), depth)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda m: setattr(m, "encoding", "yuv422"), "unsupported image encoding 'yuv422'"),
        (lambda m: setattr(m, "encoding", "32FC1"), "unsupported image encoding '32FC1'"),
        (lambda m: (setattr(m, "height", 0), setattr(m, "data", b"")), "zero size"),
        (lambda m: setattr(m, "step", 20), "step 20 is smaller"),
        (lambda m: setattr(m, "data", bytes(m.data)[:-1]), "step x height"),
        (lambda m: setattr(m, "data", bytes(m.data) + b"\0"), "step x height"),
    ],
)
def test_bad_images_raise_a_clear_error(mutate, message):
    msg = encode_image(RGB, "rgb8")
    mutate(msg)
    with pytest.raises(ValueError, match=message):
        image_to_rgb8(msg)


@pytest.mark.parametrize("ext", [".png", ".jpg"])
def test_compressed_images(ext):
    ok, buf = cv2.imencode(ext, np.ascontiguousarray(RGB[..., ::-1]))
    rgb = compressed_to_rgb8(CompressedImage(format=ext[1:], data=buf.tobytes()))
    if ext == ".png":
        np.testing.assert_array_equal(rgb, RGB)
    else:  # lossy, but the channel order must be right: compare to OpenCV's own decode
        np.testing.assert_array_equal(rgb, cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1])
    with pytest.raises(ValueError, match="could not decode compressed image"):
        compressed_to_rgb8(CompressedImage(format="jpeg", data=b"not a jpeg"))


def test_intrinsics_with_binning_and_roi():
    info = pinhole_info(K, (5, 7))
    np.testing.assert_allclose(image_intrinsics(info, (5, 7)), K)
    # A 2x-binned 40x60 window at (10, 4) of a 100x80 sensor: crop, then half-pixel-centre binning.
    sensor = np.array([[100.0, 0, 40.0], [0, 90.0, 30.0], [0, 0, 1]])
    info = pinhole_info(sensor, (80, 100))
    info.binning_x = info.binning_y = 2
    info.roi.x_offset, info.roi.y_offset, info.roi.width, info.roi.height = 10, 4, 60, 40
    expected = np.array([[50.0, 0, (40 - 10 + 0.5) / 2 - 0.5], [0, 45.0, (30 - 4 + 0.5) / 2 - 0.5], [0, 0, 1]])
    np.testing.assert_allclose(image_intrinsics(info, (20, 30)), expected)
    out = depth_camera_info(info, (20, 30), (10, 15), header(7, "cam"))
    assert (out.height, out.width, out.header.frame_id, out.binning_x, out.roi.width) == (10, 15, "cam", 0, 0)
    halved = np.array([[25.0, 0, (expected[0, 2] + 0.5) / 2 - 0.5], [0, 22.5, (expected[1, 2] + 0.5) / 2 - 0.5], [0, 0, 1]])
    np.testing.assert_allclose(np.reshape(out.k, (3, 3)), halved)
    np.testing.assert_allclose(np.reshape(out.p, (3, 4))[:, :3], halved)


def test_uncalibrated_p_becomes_k_and_zero_focal_is_rejected():
    info = pinhole_info(K, (5, 7))
    info.p = np.zeros(12)
    out = depth_camera_info(info, (5, 7), (5, 7), header(1))
    np.testing.assert_allclose(np.reshape(out.p, (3, 4)), np.concatenate([K, np.zeros((3, 1))], axis=1))
    info.k = np.zeros(9)
    with pytest.raises(ValueError, match="zero focal length"):
        image_intrinsics(info, (5, 7))


def _depth_with_invalid(h: int, w: int) -> np.ndarray:
    depth = RNG.uniform(0.5, 8.0, (h, w)).astype(np.float32)
    depth[0, 0], depth[1, 1], depth[2, 2], depth[3, 3] = np.nan, 0.0, -1.0, np.inf
    return depth


def test_cloud_xyz_is_the_unprojection_in_an_organised_grid():
    depth = _depth_with_invalid(5, 7)
    msg = PointCloudBuilder()(depth, K, header(42, "cam"))
    assert (msg.height, msg.width, msg.point_step, msg.row_step, msg.is_dense, msg.is_bigendian) == (5, 7, 16, 112, False, False)
    assert [(f.name, f.offset, f.datatype, f.count) for f in msg.fields] == [
        ("x", 0, PointField.FLOAT32, 1), ("y", 4, PointField.FLOAT32, 1), ("z", 8, PointField.FLOAT32, 1)
    ]
    assert (msg.header.frame_id, msg.header.stamp.nanosec) == ("cam", 42)
    xyz, rgb = point_cloud_to_numpy(msg)
    assert rgb is None
    np.testing.assert_allclose(xyz, unproject(depth, K), rtol=1e-6, equal_nan=True)
    assert np.isnan(xyz[[0, 1, 2, 3], [0, 1, 2, 3]]).all()
    # bytes 12..15 of each point are zero padding
    assert not np.frombuffer(msg.data, np.uint32).reshape(5, 7, 4)[..., 3].any()


def test_cloud_rgb_packing_decimation_and_max_range():
    depth = _depth_with_invalid(6, 8)
    rgb = RNG.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    rgb[0, 2] = (1, 2, 3)
    builder = PointCloudBuilder()
    msg = builder(depth, K, header(1), rgb=rgb, decimation=2, max_range=5.0)
    assert (msg.height, msg.width, msg.point_step, [f.offset for f in msg.fields]) == (3, 4, 32, [0, 4, 8, 16])
    words = np.frombuffer(msg.data, np.uint32).reshape(3, 4, 8)
    assert words[0, 1, 4] == 0x00010203  # 0x00RRGGBB
    assert bytes(np.frombuffer(msg.data, np.uint8).reshape(3, 4, 32)[0, 1, 16:20]) == b"\x03\x02\x01\x00"  # b, g, r, 0
    xyz, colours = point_cloud_to_numpy(msg)
    np.testing.assert_array_equal(colours, rgb[::2, ::2])
    expected = unproject(np.where(depth <= 5.0, depth, np.nan), K)[::2, ::2]
    np.testing.assert_allclose(xyz, expected, rtol=1e-6, equal_nan=True)
    # the ray cache follows K: a second camera gives its own unprojection
    K2 = K * np.array([[2.0], [2.0], [1.0]])
    xyz2, _ = point_cloud_to_numpy(builder(depth, K2, header(2)))
    np.testing.assert_allclose(xyz2, unproject(depth, K2), rtol=1e-6, equal_nan=True)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda i: setattr(i.roi, "x_offset", 4_000_000_000), r"camera_info ROI 7x5 at \(4000000000, 0\) lies outside the 7x5 sensor"),
        (lambda i: (setattr(i.roi, "y_offset", 2), setattr(i.roi, "height", 4)), r"camera_info ROI 7x4 at \(0, 2\) lies outside the 7x5 sensor"),
        (lambda i: setattr(i, "binning_y", 6), "camera_info binning 1x6 is larger than the 7x5 region it bins"),
        (lambda i: setattr(i, "p", [float("nan")] * 12), "camera_info P has non-finite values"),
        (lambda i: setattr(i, "p", [-3.0, 0, 3, 0, 0, 40, 2, 0, 0, 0, 1, 0]), "camera_info P: focal lengths fx = -3, fy = 40 px must be positive"),
        (lambda i: setattr(i, "k", [50.0, 0, 3, 0, -40, 2, 0, 0, 1]), "camera_info K: focal lengths fx = 50, fy = -40 px must be positive"),
        (lambda i: setattr(i, "k", [2e6, 0, 3, 0, 2e6, 2, 0, 0, 1]),
         r"camera_info K: fx = 2e\+06 px is impossible for 7 px wide images: a horizontal field of view of 0.000201°, expected 1° to 179° "
         r"\(fx 0.0305 to 401 px\)"),
        (lambda i: setattr(i, "k", [1e-6, 0, 3, 0, 1e-6, 2, 0, 0, 1]),  # depth would come out at ~1e-8 m
         r"camera_info K: fx = 1e-06 px is impossible for 7 px wide images: a horizontal field of view of 180°"),
        (lambda i: setattr(i, "k", [50.0, 0, 3, 0, 1e-3, 2, 0, 0, 1]), r"camera_info K: fy / fx = 0.001 / 50 px is impossible"),
    ],
)
def test_impossible_intrinsics_are_refused_in_one_line(change, message):
    info = pinhole_info(K, (5, 7))
    change(info)
    with pytest.raises(ValueError, match=message):
        image_intrinsics(info, (5, 7))


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda i: setattr(i, "d", [0.1, float("inf"), 0, 0, 0]), "camera_info rectification: D has non-finite values"),
        (lambda i: (setattr(i, "distortion_model", "equidistant"), setattr(i, "d", [0.1] * 5)),
         "distortion_model 'equidistant' needs 4 coefficients in D, got 5"),
        (lambda i: setattr(i, "d", [1e30, 0, 0, 0, 0]),  # all-NaN depth before
         r"camera_info rectification: the rectification \(D=\[1e\+30, 0, 0, 0, 0\]\) maps 100% of the image outside"),
        (lambda i: (setattr(i, "distortion_model", "equidistant"), setattr(i, "d", [1e10, 0, 0, 0])),
         r"maps 100% of the image outside the camera's view \(at most 50% may be\)"),
        (lambda i: setattr(i, "r", np.zeros(9)), r"camera_info rectification: R is not a rotation"),
        (lambda i: setattr(i, "r", 2 * np.eye(3).ravel()), r"R is not a rotation"),
    ],
)
def test_unusable_rectifications_are_refused_in_one_line(change, message):
    """K is fine (image_intrinsics passes); the rectification maps are never built."""
    info = pinhole_info(K, (5, 7))
    info.d = [0.05, 0, 0, 0, 0]
    change(info)
    image_intrinsics(info, (5, 7))
    rectifier = Rectifier()
    with pytest.raises(ValueError, match=message):
        rectifier(np.zeros((5, 7, 3), np.uint8), info)
    assert not rectifier._maps


def test_a_valid_roi_and_uncalibrated_sizes_pass():
    info = pinhole_info(K, (5, 7))
    info.roi.x_offset, info.roi.width = 2, 5  # the right 5 columns
    np.testing.assert_allclose(image_intrinsics(info, (5, 5)), K - np.array([[0, 0, 2], [0, 0, 0], [0, 0, 0]]))
    info = pinhole_info(K, (0, 0))  # height/width 0: the image's own size
    np.testing.assert_allclose(image_intrinsics(info, (5, 7)), K)


def test_camera_info_of_another_aspect_ratio_is_refused_as_predict_refuses_it():
    """A resized stream (same aspect) keeps its scaled K; another aspect ratio is the core's one-line refusal
    (the node skips such frames), where it was silently scaled anisotropically (fx 420, fy 560)."""
    from sharpdepth_core.geometry import check_calibration_size

    vga = np.array([[525.0, 0, 319.5], [0, 525, 239.5], [0, 0, 1]])
    info = pinhole_info(vga, (480, 640))
    np.testing.assert_allclose(image_intrinsics(info, (240, 320)), [[262.5, 0, 159.5], [0, 262.5, 119.5], [0, 0, 1]])
    with pytest.raises(ValueError) as refused:
        image_intrinsics(info, (512, 512))
    with pytest.raises(ValueError) as core:
        check_calibration_size((480, 640), (512, 512), "camera_info")
    assert str(refused.value) == str(core.value) and "camera_info is for 640x480 images but the image is 512x512" in str(core.value)


def test_rectifying_a_binned_camera_matches_binning_the_rectified_full_frame():
    """Maps are made on the image grid with K and P moved by ROI/binning; D is unchanged."""
    h, w = 96, 128
    sensor_K = np.array([[100.0, 0, 63.5], [0, 100.0, 47.5], [0, 0, 1]])
    u, v = np.meshgrid(np.arange(w), np.arange(h))
    wave = (127 + 120 * np.sin(2 * np.pi * u / 23) * np.sin(2 * np.pi * v / 19)).astype(np.uint8)
    full = np.stack([wave, 255 - wave, wave // 2], axis=-1)
    info = pinhole_info(sensor_K, (h, w))
    info.d = [-0.3, 0.1, 0.0, 0.0, 0.0]
    P = np.array([[80.0, 0, 60.0, 0], [0, 80.0, 45.0, 0], [0, 0, 1, 0]])  # a new camera matrix of its own
    info.p = P.ravel()
    assert has_distortion(info) and not has_distortion(pinhole_info(K, (5, 7)))
    rectified_full, full_info, _ = Rectifier()(full, info)
    np.testing.assert_allclose(np.reshape(full_info.k, (3, 3)), P[:, :3])
    assert (full_info.distortion_model, list(full_info.d)) == ("plumb_bob", [0.0] * 5)

    binned = cv2.resize(full, (w // 2, h // 2), interpolation=cv2.INTER_AREA)
    info.binning_x = info.binning_y = 2
    rectifier = Rectifier()
    rectified, binned_info, seen = rectifier(binned, info)
    np.testing.assert_allclose(np.reshape(binned_info.p, (3, 4)), [[40.0, 0, 29.75, 0], [0, 40.0, 22.25, 0], [0, 0, 1, 0]])
    expected = cv2.resize(rectified_full, (w // 2, h // 2), interpolation=cv2.INTER_AREA).astype(float)
    inner = seen.copy()
    inner[:3], inner[-3:], inner[:, :3], inner[:, -3:] = False, False, False, False
    assert np.abs(rectified - expected)[inner].mean() < 0.25 * np.abs(binned - expected)[inner].mean()
    again, _, _ = rectifier(binned, info)
    np.testing.assert_array_equal(again, rectified)
    assert len(rectifier._maps) == 1


def test_cloud_rays_are_cached_per_camera_size_and_decimation():
    """Switching between cameras (or decimations) reuses each one's rays instead of recomputing."""
    depth = _depth_with_invalid(6, 8)
    builder = PointCloudBuilder()
    K2 = K * np.array([[2.0], [2.0], [1.0]])
    for k, decimation in [(K, 1), (K2, 1), (K, 2), (K, 1)]:
        xyz, _ = point_cloud_to_numpy(builder(depth, k, header(1), decimation=decimation))
        np.testing.assert_allclose(xyz, unproject(depth, k)[::decimation, ::decimation], rtol=1e-6, equal_nan=True)
    assert len(builder._rays) == 3
    first = builder._rays[(K.tobytes(), (6, 8), 1)]
    builder(depth, K2, header(1))
    builder(depth, K, header(1))
    assert builder._rays[(K.tobytes(), (6, 8), 1)] is first
