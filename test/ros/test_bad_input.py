"""Bad input never kills the node: each kind of bad frame is skipped with one clear (throttled) log
line, nothing is published for it, and the next valid frame is processed. Real rclpy, real tiny
models; NaN depth and CUDA out-of-memory are injected by wrapping the real pipeline (no GPU here)."""
from __future__ import annotations

import struct
import time
import zlib

import cv2
import numpy as np
import pytest
import torch
from helpers_ros import Probe, Spinner, encode_image, header, node_parameters, pinhole_info, stamp_ns, wait_for
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.parameter import Parameter
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from sharpdepth_core.pipeline import SharpDepthPipeline
from sharpdepth_core.synthetic import render_scene
from sharpdepth_ros.conversions import pinhole_K
from sharpdepth_ros.node import MAX_CAMERAS, SharpDepthNode

SCENE = render_scene(11, 40, 30)
DEPTH = "/camera/depth/image"
DEPTH_INFO = "/camera/depth/camera_info"


class FaultInjection(SharpDepthPipeline):
    """The real pipeline; `fault` makes the next call return NaN depth or raise CUDA's OOM error."""

    fault: str | None = None
    last_K = None  # the K of the latest call

    def __call__(self, image, K=None, seed=None, **settings):
        fault, self.fault, self.last_K = self.fault, None, K
        if fault == "oom":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        out = super().__call__(image, K=K, seed=seed, **settings)
        if fault == "nan":
            out.depth[..., ::2, :] = float("nan")
        return out


@pytest.fixture(scope="module")
def system(ros_context, tiny_pipeline_dir):
    loaded = SharpDepthPipeline.from_pretrained(tiny_pipeline_dir)
    pipeline = FaultInjection(loaded.student, loaded.metric_model, processing_res=64)
    node = SharpDepthNode(pipeline, context=ros_context, parameter_overrides=node_parameters(tiny_pipeline_dir, publish_colored=False))
    compressed_node = SharpDepthNode(pipeline, context=ros_context, namespace="ccam",
                                     parameter_overrides=node_parameters(tiny_pipeline_dir, image_transport="compressed", publish_colored=False))
    probe = Probe(ros_context, {DEPTH: Image, DEPTH_INFO: CameraInfo, "/ccam/depth/image": Image, "/diagnostics": DiagnosticArray})
    pubs = {
        "image": probe.node.create_publisher(Image, "/camera/image_raw", 5),
        "info": probe.node.create_publisher(CameraInfo, "/camera/camera_info", 5),
        "compressed": probe.node.create_publisher(CompressedImage, "/ccam/image_raw/compressed", 5),
        "cinfo": probe.node.create_publisher(CameraInfo, "/ccam/camera_info", 5),
    }
    with Spinner(ros_context, node, compressed_node, probe.node):
        wait_for(lambda: probe.connected() and all(p.get_subscription_count() for p in pubs.values()), 20, "discovery")
        yield node, compressed_node, pipeline, probe, pubs
    node.destroy_node()
    compressed_node.destroy_node()
    probe.node.destroy_node()


STAMP = iter(range(10**9, 2 * 10**9, 1000))


def _frame(frame_id: str = "cam", encoding: str = "rgb8"):
    hdr = header(next(STAMP), frame_id)
    return encode_image(SCENE.rgb, encoding, pad=3, hdr=hdr), pinhole_info(SCENE.K, (30, 40), hdr)


def _bad_encoding(image, info):
    image.encoding = "yuv422"
    return image, info


def _zero_size(image, info):
    image.height, image.width, image.step, image.data = 0, 0, 0, b""
    return image, info


def _short_step(image, info):
    image.step = 40 * 3 - 1
    return image, info


def _short_data(image, info):
    image.data = bytes(image.data)[:-7]
    return image, info


def _missing_info(image, info):
    image.header.frame_id = "uncalibrated_cam"
    return image, None


def _calibration(frame_id: str, change):
    def corrupt(image, info):
        image.header.frame_id = info.header.frame_id = frame_id
        change(info)
        return image, info

    return corrupt


def _set(**fields):
    def change(info):
        for name, value in fields.items():
            setattr(info.roi if name == "x_offset" else info, name, value)

    return change


CASES = {
    "unknown encoding": (_bad_encoding, None, "unsupported image encoding 'yuv422'"),
    "zero size": (_zero_size, None, "image has zero size (0x0)"),
    "step smaller than a row": (_short_step, None, "image step 119 is smaller than width x bytes per pixel = 120"),
    "data length mismatch": (_short_data, None, "step x height"),
    "missing camera_info": (_missing_info, None, "no camera_info for frame_id 'uncalibrated_cam'"),
    "unknown distortion model": (_calibration("kb_cam", _set(distortion_model="kannala_brandt", d=[0.1, 0.0, 0.0, 0.0])), None,
                                 "camera_info rectification: distortion_model 'kannala_brandt' with non-zero D is not supported"),
    "a rectification outside the image": (_calibration("d_cam", _set(d=[1e30, 0.0, 0.0, 0.0, 0.0])), None,
                                          "maps 100% of the image outside the camera's view"),
    "a fisheye rectification outside the image": (_calibration("k_cam", _set(distortion_model="equidistant", d=[1e10, 0.0, 0.0, 0.0])),
                                                  None, "maps 100% of the image outside the camera's view"),
    "an all-zero R": (_calibration("r_cam", _set(d=[0.1, 0.0, 0.0, 0.0, 0.0], r=[0.0] * 9)), None,
                      "camera_info rectification: R is not a rotation"),
    "NaN depth from the model": (lambda i, c: (i, c), "nan", "non-finite depth values"),
    "CUDA out of memory": (lambda i, c: (i, c), "oom", "out of memory (CUDA out of memory. Tried to allocate 2.00 GiB)"),
}


def _skips(node) -> int:
    return sum(node.stats.rejected.values())


@pytest.mark.parametrize("case", list(CASES))
def test_bad_frame_is_skipped_and_the_next_valid_frame_is_processed(system, case):
    node, _, pipeline, probe, pubs = system
    corrupt, fault, message = CASES[case]
    bad_image, bad_info = corrupt(*_frame())
    before = _skips(node)
    pipeline.fault = fault
    if bad_info is not None:
        pubs["info"].publish(bad_info)
        wait_for(lambda: bad_info.header.frame_id in node.cameras[0].infos, 10, "the CameraInfo")
    pubs["image"].publish(bad_image)
    wait_for(lambda: _skips(node) == before + 1, 30, f"the {case} frame to be skipped")
    assert message in node.last_rejection
    good_image, good_info = _frame()
    pubs["info"].publish(good_info)
    pubs["image"].publish(good_image)
    stamp = stamp_ns(good_image.header)
    wait_for(lambda: probe.by_stamp(DEPTH, stamp) is not None, 60, "the next valid frame's depth")
    bad_stamp = bad_image.header.stamp.sec * 10**9 + bad_image.header.stamp.nanosec
    assert probe.by_stamp(DEPTH, bad_stamp) is None
    assert node._worker.is_alive()


IMPLAUSIBLE_INTRINSICS = {
    "zero focal length": (_set(k=[0.0] * 9), "camera_info K has a zero focal length; is the camera calibrated?"),
    "ROI beyond the sensor": (_set(x_offset=4_000_000_000), "camera_info ROI 40x30 at (4000000000, 0) lies outside the 40x30 sensor"),
    "binning larger than the sensor": (_set(binning_x=1000), "camera_info binning 1000x1 is larger than the 40x30 region"),
    "non-finite P": (_set(p=[float("nan")] * 12), "camera_info P has non-finite values"),
    "negative focal length": (_set(k=[-50.0, 0, 20, 0, 50, 15, 0, 0, 1]), "camera_info K: focal lengths fx = -50, fy = 50 px must be positive"),
    "huge focal length": (_set(k=[1e9, 0, 20, 0, 1e9, 15, 0, 0, 1]), "camera_info K: fx = 1e+09 px is impossible for 40 px wide images"),
    "a focal length of 1e-6 px": (_set(k=[1e-6, 0, 20, 0, 1e-6, 15, 0, 0, 1], p=[0.0] * 12),  # depth at ~1e-8 m before
                                  "camera_info K: fx = 1e-06 px is impossible for 40 px wide images: a horizontal field of view of 180°"),
}


@pytest.mark.parametrize("case", list(IMPLAUSIBLE_INTRINSICS))
def test_implausible_intrinsics_are_refused_once_per_camera_and_the_frames_run_without_k(system, case, capfd):
    """The frames are processed on the fov_deg pinhole (published in depth/camera_info), the metric
    model gets no K, and one warning names the camera and the reason."""
    node, _, pipeline, probe, pubs = system
    change, message = IMPLAUSIBLE_INTRINSICS[case]
    frame_id = "implausible_" + case.replace(" ", "_")
    capfd.readouterr()
    for _ in range(2):
        image, info = _calibration(frame_id, change)(*_frame())
        pubs["info"].publish(info)
        wait_for(lambda: stamp_ns(node.cameras[0].infos[frame_id].header) == stamp_ns(info.header) if frame_id in node.cameras[0].infos else False,
                 10, "the CameraInfo")
        before = _skips(node)
        pubs["image"].publish(image)
        stamp = stamp_ns(image.header)
        wait_for(lambda: probe.has([DEPTH, DEPTH_INFO], stamp), 60, "the frame's depth")
        assert _skips(node) == before and pipeline.last_K is None
        np.testing.assert_allclose(np.reshape(probe.by_stamp(DEPTH_INFO, stamp).k, (3, 3)), pinhole_K(40, 30, 60.0))
    assert message in node.last_rejection
    err = capfd.readouterr().err
    assert err.count(f"camera_info of frame_id '{frame_id}' refused: {message}") == 1, err
    assert "its frames get the fov_deg 60 pinhole K and the metric model runs without K" in err


def test_calibration_refusals_of_many_frame_ids_are_one_throttled_line(system, capfd):
    """300 camera_info of random frame_ids with fx = 1e-6 gave 82 WARN lines (the throttle was keyed
    by frame_id): one kind of problem is one line per THROTTLE_S, whatever the frame_ids; every
    frame is still published on the fallback pinhole."""
    node, _, _, probe, pubs = system
    node._throttle.clear()  # earlier tests refused calibrations less than THROTTLE_S ago
    capfd.readouterr()
    published = 0
    for i in range(12):
        image, info = _calibration(f"random_{i}_{next(STAMP) % 997}", _set(k=[1e-6, 0, 20, 0, 1e-6, 15, 0, 0, 1], p=[0.0] * 12))(*_frame())
        pubs["info"].publish(info)
        wait_for(lambda: info.header.frame_id in node.cameras[0].infos, 10, "the CameraInfo")
        pubs["image"].publish(image)
        stamp = stamp_ns(image.header)
        wait_for(lambda: probe.has([DEPTH], stamp), 60, f"frame {i}'s depth")
        published += 1
    err = capfd.readouterr().err
    assert published == 12
    assert err.count("refused: camera_info K: fx = 1e-06 px is impossible for 40 px wide images") == 1, err


def test_problem_key_blanks_names_and_numbers_only():
    from sharpdepth_ros.statistics import problem_key

    a = problem_key("calibration", "camera_info of frame_id 'x1' refused: fx = 1e-06 px is impossible for 40 px wide images")
    b = problem_key("calibration", "camera_info of frame_id 'other' refused: fx = 2e-07 px is impossible for 64 px wide images")
    assert a == b == "calibration:camera_info of frame_id # refused: fx = #e-# px is impossible for # px wide images"
    assert problem_key("input", "front: x") != problem_key("input", "rear: x") != problem_key("model", "rear: x")


def test_a_degenerate_aspect_ratio_does_not_get_the_fallback_pinhole(system, capfd):
    """A 1x5000 image with fx = fy = 500 (refused: 0.1° wide) got the 60° fov_deg pinhole, 179.96°
    tall, and published points 2680 m out: such a frame is skipped with one line saying the bound,
    with a refused calibration and with none (use_camera_intrinsics false) alike."""
    node, _, _, probe, pubs = system
    node._throttle.clear()
    capfd.readouterr()
    tall = np.zeros((5000, 1, 3), np.uint8)
    hdr = header(next(STAMP), "tall_cam")
    pubs["info"].publish(pinhole_info(np.array([[500.0, 0, 0], [0, 500.0, 2499.5], [0, 0, 1]]), (5000, 1), hdr))
    wait_for(lambda: "tall_cam" in node.cameras[0].infos, 10, "the CameraInfo")
    before = dict(node.stats.rejected)
    pubs["image"].publish(encode_image(tall, "rgb8", hdr=hdr))
    wait_for(lambda: node.stats.rejected.get("calibration", 0) == before.get("calibration", 0) + 1, 30, "the tall frame to be skipped")
    bound = "a 1x5000 image (aspect ratio 5000:1, at most 10:1) cannot get the fov_deg 60 pinhole (it would see 180° vertically)"
    assert "camera_info K: fx = 500 px is impossible for 1 px wide images" in node.last_rejection and bound in node.last_rejection
    assert node.set_parameters([Parameter("use_camera_intrinsics", value=False)])[0].successful
    try:
        hdr2 = header(next(STAMP), "tall_uncalibrated")
        pubs["image"].publish(encode_image(tall, "rgb8", hdr=hdr2))
        wait_for(lambda: node.stats.rejected.get("input", 0) == before.get("input", 0) + 1, 30, "the uncalibrated tall frame to be skipped")
        assert node.last_rejection.startswith(bound)
    finally:
        assert node.set_parameters([Parameter("use_camera_intrinsics", value=True)])[0].successful
    image, info = _frame()
    pubs["info"].publish(info)
    pubs["image"].publish(image)
    wait_for(lambda: probe.has([DEPTH], stamp_ns(image.header)), 60, "the next valid frame's depth")
    assert probe.by_stamp(DEPTH, stamp_ns(hdr)) is None and probe.by_stamp(DEPTH, stamp_ns(hdr2)) is None
    err = capfd.readouterr().err
    assert err.count(bound) == 2 and "its frames get the fov_deg" not in err, err


def test_fallback_problem_bounds_the_aspect_ratio_both_ways():
    from sharpdepth_core.geometry import fallback_problem

    assert fallback_problem((480, 4800), 60.0) is None and fallback_problem((4800, 480), 60.0) is None  # 10:1
    assert "aspect ratio 11:1, at most 10:1" in fallback_problem((100, 1100), 60.0)
    assert "(it would see 179.8° vertically)" in fallback_problem((1100, 1), 60.0)


def test_compressed_input_and_undecodable_bytes(system):
    _, node, _, probe, pubs = system
    ok, jpeg = cv2.imencode(".jpg", np.ascontiguousarray(SCENE.rgb[..., ::-1]))
    for data, expect_depth in [(b"\xff\xd8 not really a jpeg", False), (jpeg.tobytes(), True)]:
        hdr = header(next(STAMP), "cam")
        before = _skips(node)
        pubs["cinfo"].publish(pinhole_info(SCENE.K, (30, 40), hdr))
        wait_for(lambda: "cam" in node.cameras[0].infos, 10, "the CameraInfo")
        pubs["compressed"].publish(CompressedImage(header=hdr, format="jpeg", data=data))
        stamp = hdr.stamp.sec * 10**9 + hdr.stamp.nanosec
        if expect_depth:
            wait_for(lambda: probe.by_stamp("/ccam/depth/image", stamp) is not None, 60, "depth of the JPEG frame")
        else:
            wait_for(lambda: _skips(node) == before + 1, 30, "the undecodable frame to be skipped")
            assert "could not decode compressed image" in node.last_rejection


def test_a_repeated_problem_is_logged_once_per_throttle_period(system, capfd):
    """One line per kind of problem: the names in it (encodings here, frame_ids below) do not count."""
    node, _, _, _, pubs = system
    node._throttle.clear()  # earlier tests logged problems of this kind less than THROTTLE_S ago
    capfd.readouterr()
    for encoding in ["bayer_rggb8", "yuv422", "bayer_rggb8", "nv21"]:
        image, info = _frame(encoding="rgb8")
        image.encoding = encoding
        before = _skips(node)
        pubs["image"].publish(image)
        wait_for(lambda: _skips(node) == before + 1, 30, "the skip")
    err = capfd.readouterr().err
    assert err.count("frame skipped: unsupported image encoding 'bayer_rggb8'") == 1, err
    assert err.count("frame skipped: unsupported image encoding") == 1, err
    assert node.stats.rejected["input"] >= 4


def _png_bomb(side: int) -> bytes:
    """A valid greyscale PNG of side x side black pixels: ~60 KiB for 8000 x 8000 (64 MB decoded)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = zlib.compressobj(9)
    idat = b"".join(rows.compress(bytes(side + 1)) for _ in range(side)) + rows.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _diagnostics_since(probe, t0: float, namespace: str) -> list:
    return [m for m, t in zip(probe.messages["/diagnostics"], probe.arrivals["/diagnostics"])
            if t > t0 and m.status[0].name.startswith(f"/{namespace}/sharpdepth")]


def test_oversized_frames_are_refused_from_the_header_and_diagnostics_keep_flowing(system):
    """max_input_pixels (default 25 MP) is checked before anything is copied or decoded: a raw frame
    whose header claims 100000 x 100000 (with 3 bytes of data: a copy or a decode would fail
    differently) and an 8000 x 8000 PNG of 60 KiB (4.8 GB and 80 s in the node before this check)."""
    node, compressed_node, _, probe, pubs = system
    raw, _ = _frame()
    raw.height = raw.width = 100_000
    raw.step, raw.data = 300_000, b"abc"
    hdr = header(next(STAMP), "cam")
    bomb = CompressedImage(header=hdr, format="png", data=_png_bomb(8000))
    t0 = time.monotonic()
    before, before_c = _skips(node), _skips(compressed_node)
    pubs["image"].publish(raw)
    pubs["cinfo"].publish(pinhole_info(SCENE.K, (30, 40), hdr))
    pubs["compressed"].publish(bomb)
    wait_for(lambda: _skips(node) == before + 1, 30, "the oversized raw frame to be skipped")
    assert node.last_rejection == ("image of 100000x100000 = 10000.0 MP is above the limit of 25.0 MP (max_input_pixels); "
                                   "refused before decoding")
    wait_for(lambda: _skips(compressed_node) == before_c + 1, 30, "the PNG bomb to be skipped")
    assert compressed_node.last_rejection.startswith("image of 8000x8000 = 64.0 MP is above the limit of 25.0 MP")
    # a format Pillow cannot size (Radiance .hdr, 8000 x 8000 in its header: 1.5 GB through OpenCV) is refused unread
    radiance = b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y 8000 +X 8000\n" + bytes(64)
    pubs["compressed"].publish(CompressedImage(header=header(next(STAMP), "cam"), format="hdr", data=radiance))
    wait_for(lambda: _skips(compressed_node) == before_c + 2, 30, "the Radiance frame to be skipped")
    assert "not a format whose size can be read before decoding" in compressed_node.last_rejection
    for n, ns in [(node, "camera"), (compressed_node, "ccam")]:  # the stats period (1 s) goes on, and says it
        wait_for(lambda: any(int(dict((v.key, v.value) for v in m.status[0].values)["skipped"]) >= 1
                             for m in _diagnostics_since(probe, t0, ns)), 10, f"/diagnostics of /{ns} reporting the skip")
    # the limit is a run-time parameter: a camera of 1200 px passes at 1200 and is refused at 1199
    good_image, good_info = _frame()
    assert node.set_parameters([Parameter("max_input_pixels", value=1199)])[0].successful
    try:
        before = _skips(node)
        pubs["info"].publish(good_info)
        pubs["image"].publish(good_image)
        wait_for(lambda: _skips(node) == before + 1, 30, "the 40x30 frame to be refused at 1199 px")
    finally:
        assert node.set_parameters([Parameter("max_input_pixels", value=1200)])[0].successful
    good_image, good_info = _frame()
    pubs["info"].publish(good_info)
    pubs["image"].publish(good_image)
    stamp = stamp_ns(good_image.header)
    wait_for(lambda: probe.by_stamp(DEPTH, stamp) is not None, 60, "a 40x30 frame at the limit")


def test_camera_info_of_many_frame_ids_stays_bounded_and_is_one_problem(system, capfd):
    """60,000 frame_ids cost 160 MB and 300 gave 300 WARN lines: now the latest MAX_CAMERAS are
    kept and unknown frame_ids are one throttled problem."""
    node, _, _, _, pubs = system
    for batch in range(10):
        for i in range(4):
            pubs["info"].publish(pinhole_info(SCENE.K, (30, 40), header(next(STAMP), f"random_{batch}_{i}")))
        wait_for(lambda: f"random_{batch}_3" in node.cameras[0].infos, 10, f"camera_info batch {batch}")
    assert len(node.cameras[0].infos) == MAX_CAMERAS
    assert list(node.cameras[0].infos)[-1] == "random_9_3"  # the latest are kept
    node._throttle.clear()  # earlier tests logged "no camera_info" less than THROTTLE_S ago
    capfd.readouterr()
    for i in range(12):
        image, _ = _frame(frame_id=f"unknown_{i}")
        before = _skips(node)
        pubs["image"].publish(image)
        wait_for(lambda: _skips(node) == before + 1, 30, f"unknown frame_id {i} to be skipped")
    assert "no camera_info for frame_id 'unknown_11'" in node.last_rejection
    assert "(camera_info arrives for 'random_" in node.last_rejection and "'random_9_3')" in node.last_rejection
    err = capfd.readouterr().err
    assert err.count("frame skipped: no camera_info for frame_id") == 1, err
