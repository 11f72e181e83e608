"""Bad input never kills the node: each kind of bad frame is skipped with one clear (throttled) log
line, nothing is published for it, and the next valid frame is processed. Real rclpy, real tiny
models; NaN depth and CUDA out-of-memory are injected by wrapping the real pipeline (no GPU here)."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from ros_helpers import (  # noqa: F401  (fixtures)
    Probe,
    Spinner,
    encode_image,
    header,
    node_parameters,
    pinhole_info,
    ros_context,
    tiny_pipeline_dir,
    wait_for,
)
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from sharpdepth_core.pipeline import SharpDepthPipeline
from sharpdepth_core.synthetic import render_scene
from sharpdepth_ros.node import SharpDepthNode

SCENE = render_scene(11, 40, 30)
DEPTH = "/camera/depth/image"


class FaultInjection(SharpDepthPipeline):
    """The real pipeline; `fault` makes the next call return NaN depth or raise CUDA's OOM error."""

    fault: str | None = None

    def __call__(self, image, K=None, seed=None):
        fault, self.fault = self.fault, None
        if fault == "oom":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        out = super().__call__(image, K=K, seed=seed)
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
    probe = Probe(ros_context, {DEPTH: Image, "/ccam/depth/image": Image})
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


def _zero_focal(image, info):
    image.header.frame_id = info.header.frame_id = "zero_focal_cam"
    info.k = np.zeros(9)
    return image, info


CASES = {
    "unknown encoding": (_bad_encoding, None, "unsupported image encoding 'yuv422'"),
    "zero size": (_zero_size, None, "image has zero size (0x0)"),
    "step smaller than a row": (_short_step, None, "image step 119 is smaller than width x bytes per pixel = 120"),
    "data length mismatch": (_short_data, None, "step x height"),
    "missing camera_info": (_missing_info, None, "no camera_info for frame_id 'uncalibrated_cam'"),
    "zero focal length": (_zero_focal, None, "zero focal length"),
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
        wait_for(lambda: bad_info.header.frame_id in node._infos, 10, "the CameraInfo")
    pubs["image"].publish(bad_image)
    wait_for(lambda: _skips(node) == before + 1, 30, f"the {case} frame to be skipped")
    assert message in node.last_rejection
    good_image, good_info = _frame()
    pubs["info"].publish(good_info)
    pubs["image"].publish(good_image)
    stamp = good_image.header.stamp.sec * 10**9 + good_image.header.stamp.nanosec
    wait_for(lambda: probe.by_stamp(DEPTH, stamp) is not None, 60, "the next valid frame's depth")
    bad_stamp = bad_image.header.stamp.sec * 10**9 + bad_image.header.stamp.nanosec
    assert probe.by_stamp(DEPTH, bad_stamp) is None
    assert node._worker.is_alive()


def test_compressed_input_and_undecodable_bytes(system):
    _, node, _, probe, pubs = system
    ok, jpeg = cv2.imencode(".jpg", np.ascontiguousarray(SCENE.rgb[..., ::-1]))
    for data, expect_depth in [(b"\xff\xd8 not really a jpeg", False), (jpeg.tobytes(), True)]:
        hdr = header(next(STAMP), "cam")
        before = _skips(node)
        pubs["cinfo"].publish(pinhole_info(SCENE.K, (30, 40), hdr))
        wait_for(lambda: "cam" in node._infos, 10, "the CameraInfo")
        pubs["compressed"].publish(CompressedImage(header=hdr, format="jpeg", data=data))
        stamp = hdr.stamp.sec * 10**9 + hdr.stamp.nanosec
        if expect_depth:
            wait_for(lambda: probe.by_stamp("/ccam/depth/image", stamp) is not None, 60, "depth of the JPEG frame")
        else:
            wait_for(lambda: _skips(node) == before + 1, 30, "the undecodable frame to be skipped")
            assert "could not decode compressed image" in node.last_rejection


def test_a_repeated_problem_is_logged_once_per_throttle_period(system, capfd):
    node, _, _, _, pubs = system
    capfd.readouterr()
    for _ in range(3):
        image, info = _bad_encoding(*_frame(encoding="rgb8"))
        image.encoding = "bayer_rggb8"
        before = _skips(node)
        pubs["image"].publish(image)
        wait_for(lambda: _skips(node) == before + 1, 30, "the skip")
    err = capfd.readouterr().err
    assert err.count("frame skipped: unsupported image encoding 'bayer_rggb8'") == 1, err
    assert node.stats.rejected["input"] >= 3
