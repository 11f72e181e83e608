"""End to end over real rclpy (loopback, private domain): replay -> SharpDepth node with tiny real
models loaded from a pipeline folder -> a probe node. The depth must be exactly the pipeline's on
that image and K, the CameraInfo the image's K moved to the depth grid, and the cloud the
unprojection of the published depth with the published K."""
from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from rclpy.parameter import Parameter
from helpers_ros import Probe, Spinner, encode_image, header, node_parameters, pinhole_info, stamp_ns, wait_for
from sensor_msgs.msg import CameraInfo, Image, PointCloud2

from sharpdepth_core.geometry import unproject
from sharpdepth_core import tiny
from sharpdepth_core.pipeline import SharpDepthPipeline
from sharpdepth_core.synthetic import render_scene
from sharpdepth_ros.conversions import image_intrinsics, image_to_numpy, point_cloud_to_numpy
from sharpdepth_ros import loaders
from sharpdepth_ros import node as node_module
from sharpdepth_ros.node import SharpDepthNode
from sharpdepth_ros.replay import ReplayPublisher

OUTPUTS = {
    "/camera/depth/image": Image,
    "/camera/depth/camera_info": CameraInfo,
    "/camera/points": PointCloud2,
    "/camera/depth/difference": Image,
    "/camera/depth/colored": Image,
}
W, H = 48, 36


@pytest.fixture(scope="module")
def system(ros_context, tiny_pipeline_dir):
    node = SharpDepthNode(context=ros_context, parameter_overrides=node_parameters(tiny_pipeline_dir, publish_difference=True))
    sent = []
    replay = ReplayPublisher(
        context=ros_context, namespace="camera", timer=False, on_frame=lambda h, f: sent.append((stamp_ns(h), f.index)),
        parameter_overrides=[Parameter("scenes", value=2), Parameter("width", value=W), Parameter("height", value=H),
                             Parameter("seed", value=3), Parameter("frame_id", value="cam_optical")],
    )
    probe = Probe(ros_context, OUTPUTS)
    injector = probe.node.create_publisher(Image, "/camera/image_raw", 5)
    info_injector = probe.node.create_publisher(CameraInfo, "/camera/camera_info", 5)
    with Spinner(ros_context, node, replay, probe.node):
        wait_for(lambda: probe.connected() and replay.count_subscribers("/camera/image_raw") >= 1
                 and injector.get_subscription_count() >= 1 and node.cameras[0].publishers["points"].get_subscription_count() >= 1, 20, "discovery")
        yield node, replay, probe, sent, (injector, info_injector)
    node.destroy_node()
    replay.destroy_node()
    probe.node.destroy_node()


def _reference(model_dir, rgb, K):
    return SharpDepthPipeline.from_pretrained(model_dir)(rgb, K=K, seed=0)


def test_replayed_frames_give_depth_camera_info_and_cloud(system, tiny_pipeline_dir):
    node, replay, probe, sent, _ = system
    for _ in range(2):
        assert replay.publish_next()
        stamp, index = sent[-1]
        wait_for(lambda: probe.has(OUTPUTS, stamp), 60, f"all outputs of frame {stamp}")
        scene = render_scene(index, W, H)

        depth_msg = probe.by_stamp("/camera/depth/image", stamp)
        assert (depth_msg.encoding, depth_msg.height, depth_msg.width, depth_msg.header.frame_id) == ("32FC1", H, W, "cam_optical")
        depth = image_to_numpy(depth_msg)
        assert np.isfinite(depth).all() and (depth > 0).all()
        expected = _reference(tiny_pipeline_dir, scene.rgb, scene.K)
        np.testing.assert_allclose(depth, expected.depth[0, 0].numpy(), rtol=1e-5)

        info = probe.by_stamp("/camera/depth/camera_info", stamp)
        assert (info.height, info.width, info.header.frame_id) == (H, W, "cam_optical")
        np.testing.assert_allclose(np.reshape(info.k, (3, 3)), scene.K)
        np.testing.assert_allclose(np.reshape(info.p, (3, 4))[:, :3], scene.K)

        cloud = probe.by_stamp("/camera/points", stamp)
        assert (cloud.height, cloud.width, cloud.point_step, cloud.header.frame_id) == (H, W, 32, "cam_optical")
        xyz, rgb = point_cloud_to_numpy(cloud)
        np.testing.assert_allclose(xyz, unproject(depth, np.reshape(info.k, (3, 3))), rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(rgb, scene.rgb)

        difference = image_to_numpy(probe.by_stamp("/camera/depth/difference", stamp))
        np.testing.assert_allclose(difference, expected.difference[0, 0].numpy(), atol=1e-6)
        colored = probe.by_stamp("/camera/depth/colored", stamp)
        assert (colored.encoding, colored.height, colored.width) == ("rgb8", H, W)


def test_binned_camera_info_is_moved_to_the_depth_grid(system, tiny_pipeline_dir):
    """A 2x-binned camera: CameraInfo holds the full-sensor K; the depth CameraInfo holds the image's."""
    node, _, probe, _, (injector, info_injector) = system
    scene = render_scene(7, W, H)
    sensor_K = np.array([[80.0, 0, 47.0], [0, 78.0, 35.5], [0, 0, 1]])
    info = pinhole_info(sensor_K, (2 * H, 2 * W), header(10**9 + 5, "binned_cam"))
    info.binning_x = info.binning_y = 2
    image_K = image_intrinsics(info, (H, W))
    np.testing.assert_allclose(image_K, [[40.0, 0, 23.25], [0, 39.0, 17.5], [0, 0, 1]])  # (c + 0.5) / 2 - 0.5
    info_injector.publish(info)
    wait_for(lambda: "binned_cam" in node.cameras[0].infos, 10, "the binned CameraInfo")
    injector.publish(encode_image(scene.rgb, "bgr8", pad=2, hdr=header(10**9 + 5, "binned_cam")))
    wait_for(lambda: probe.has(["/camera/depth/camera_info", "/camera/points"], 10**9 + 5), 60, "the binned frame's outputs")
    out = probe.by_stamp("/camera/depth/camera_info", 10**9 + 5)
    assert (out.height, out.width, out.binning_x, out.binning_y) == (H, W, 0, 0)
    np.testing.assert_allclose(np.reshape(out.k, (3, 3)), image_K)
    np.testing.assert_allclose(np.reshape(out.p, (3, 4))[:, :3], image_K)
    depth = image_to_numpy(probe.by_stamp("/camera/depth/image", 10**9 + 5))
    np.testing.assert_allclose(depth, _reference(tiny_pipeline_dir, scene.rgb, image_K).depth[0, 0].numpy(), rtol=1e-5)


def test_cloud_options_and_publish_toggles_apply_at_run_time(system):
    node, replay, probe, sent, _ = system
    results = node.set_parameters([Parameter("cloud_rgb", value=False), Parameter("cloud_decimation", value=4),
                                   Parameter("cloud_max_range", value=8.5), Parameter("publish_difference", value=False)])
    assert all(r.successful for r in results)
    assert replay.publish_next()
    stamp, _ = sent[-1]
    wait_for(lambda: probe.has(["/camera/points", "/camera/depth/image", "/camera/depth/camera_info"], stamp), 60, "outputs")
    depth = image_to_numpy(probe.by_stamp("/camera/depth/image", stamp))
    K = np.reshape(probe.by_stamp("/camera/depth/camera_info", stamp).k, (3, 3))
    cloud = probe.by_stamp("/camera/points", stamp)
    assert (cloud.height, cloud.width, cloud.point_step) == (H // 4, W // 4, 16)
    xyz, rgb = point_cloud_to_numpy(cloud)
    assert rgb is None
    expected = unproject(np.where(depth <= 8.5, depth, np.nan), K)[::4, ::4]
    np.testing.assert_allclose(xyz, expected, rtol=1e-5, atol=1e-6, equal_nan=True)
    assert probe.by_stamp("/camera/depth/difference", stamp) is None


def test_camera_K_reaches_the_metric_model_only_when_enabled(ros_context, tmp_path):
    """Depth Pro uses a known focal length (f = K[0, 0]) for metric scale, so K visibly matters."""
    from sharpdepth_core import tiny

    model_dir = tiny.tiny_pipeline(processing_res=64, metric="depth-pro").save_pretrained(tmp_path / "depth_pro_pipeline")
    node = SharpDepthNode(context=ros_context, namespace="dpcam", parameter_overrides=node_parameters(model_dir, publish_colored=False))
    probe = Probe(ros_context, {"/dpcam/depth/image": Image}, name="dp_probe")
    image_pub = probe.node.create_publisher(Image, "/dpcam/image_raw", 5)
    info_pub = probe.node.create_publisher(CameraInfo, "/dpcam/camera_info", 5)
    scene = render_scene(2, W, H)
    K = scene.K * np.array([[3.0], [3.0], [1.0]])  # a long lens: 3x the scene's focal length
    reference = SharpDepthPipeline.from_pretrained(model_dir)
    with_K, without_K = (reference(scene.rgb, K=k, seed=0).depth[0, 0].numpy() for k in (K, None))
    assert not np.allclose(with_K, without_K, rtol=1e-3)
    try:
        with Spinner(ros_context, node, probe.node):
            wait_for(lambda: probe.connected() and image_pub.get_subscription_count() and info_pub.get_subscription_count(), 20, "discovery")
            for stamp, use_K, expected in [(101, True, with_K), (102, False, without_K)]:
                assert node.set_parameters([Parameter("use_camera_intrinsics", value=use_K)])[0].successful
                hdr = header(stamp, "dp_cam")
                info_pub.publish(pinhole_info(K, (H, W), hdr))
                wait_for(lambda: "dp_cam" in node.cameras[0].infos, 10, "the CameraInfo")
                image_pub.publish(encode_image(scene.rgb, "rgba8", hdr=hdr))
                wait_for(lambda: probe.by_stamp("/dpcam/depth/image", stamp) is not None, 60, f"depth of frame {stamp}")
                np.testing.assert_allclose(image_to_numpy(probe.by_stamp("/dpcam/depth/image", stamp)), expected, rtol=1e-5)
    finally:
        node.destroy_node()
        probe.node.destroy_node()


def test_publish_is_reported_as_the_nodes_own_time_and_wall_time(system):
    """'publish' is the worker thread's own CPU time for building and sending the outputs (what an
    in-process recorder's callbacks cost the process does not count); 'publish_wall' includes them."""
    node = system[0]
    stages = node.stats.stage_s
    assert {"decode", "model", "publish", "publish_wall", "total"} <= set(stages)
    assert 0 < stages["publish"] <= stages["publish_wall"] < stages["total"]


class Paused(SharpDepthPipeline):
    """The real pipeline; each call notes the processing_res it is given, then waits for the test."""

    def __call__(self, image, K=None, seed=None, processing_res=None, difference=None):
        self.started_with.append(processing_res or self.processing_res)
        self.entered.set()
        assert self.release.wait(30)
        self.release.clear()
        return super().__call__(image, K=K, seed=seed, processing_res=processing_res, difference=difference)


def test_a_parameter_set_during_a_frame_applies_from_the_next_frame(ros_context, tiny_pipeline_dir):
    """processing_res set from another thread while a frame runs: that frame finishes at the old
    grid (its depth is exactly the old grid's), the next frame uses the new one."""
    loaded = SharpDepthPipeline.from_pretrained(tiny_pipeline_dir)
    pipeline = Paused(loaded.student, loaded.metric_model, processing_res=64)
    pipeline.started_with, pipeline.entered, pipeline.release = [], threading.Event(), threading.Event()
    node = SharpDepthNode(pipeline, context=ros_context, namespace="snap",
                          parameter_overrides=node_parameters(tiny_pipeline_dir, publish_colored=False))
    probe = Probe(ros_context, {"/snap/depth/image": Image}, name="snap_probe")
    image_pub = probe.node.create_publisher(Image, "/snap/image_raw", 5)
    info_pub = probe.node.create_publisher(CameraInfo, "/snap/camera_info", 5)
    scene = render_scene(4, W, H)
    reference = SharpDepthPipeline.from_pretrained(tiny_pipeline_dir)
    expected = {}
    for res in (64, 96):
        expected[res] = reference(scene.rgb, K=scene.K, seed=0, processing_res=res).depth[0, 0].numpy()
    assert not np.allclose(expected[64], expected[96], rtol=1e-3)
    try:
        with Spinner(ros_context, node, probe.node):
            wait_for(lambda: probe.connected() and image_pub.get_subscription_count() and info_pub.get_subscription_count(), 20, "discovery")
            for stamp, res in [(31, 64), (32, 96)]:
                hdr = header(stamp, "snap_cam")
                info_pub.publish(pinhole_info(scene.K, (H, W), hdr))
                wait_for(lambda: "snap_cam" in node.cameras[0].infos, 10, "the CameraInfo")
                image_pub.publish(encode_image(scene.rgb, "rgb8", hdr=hdr))
                assert pipeline.entered.wait(30)
                pipeline.entered.clear()
                if stamp == 31:  # mid-frame, from another thread (as the parameter service would)
                    setter = threading.Thread(target=lambda: node.set_parameters([Parameter("processing_res", value=96)]))
                    setter.start()
                    setter.join(10)
                    assert node._settings["processing_res"] == 96
                pipeline.release.set()
                wait_for(lambda: probe.by_stamp("/snap/depth/image", stamp) is not None, 60, f"depth of frame {stamp}")
                np.testing.assert_allclose(image_to_numpy(probe.by_stamp("/snap/depth/image", stamp)), expected[res], rtol=1e-5)
        assert pipeline.started_with == [64, 96]
    finally:
        pipeline.release.set()
        node.destroy_node()
        probe.node.destroy_node()


def test_startup_line_names_model_backend_device_dtype_grid_engine_and_threads(ros_context, tiny_pipeline_dir, tmp_path, capfd):
    previous = torch.get_num_threads()
    capfd.readouterr()
    try:
        overrides = node_parameters(tiny_pipeline_dir, num_threads=2, processing_res=96)
        node = SharpDepthNode(context=ros_context, namespace="start", parameter_overrides=overrides)
        node.destroy_node()
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(previous)
    (line,) = [line for line in capfd.readouterr().err.splitlines() if "SharpDepth: " in line]
    assert line.startswith("[INFO]")
    assert line.endswith(f"SharpDepth: model {tiny_pipeline_dir}; metric backend depth-anything-v2, device cpu, dtype float32, "
                         "processing grid 96 px (longer edge), speed exact, engine pytorch, 2 CPU thread(s)")  # the grid frames will use
    assert node_module.PARAMETERS["num_threads"][0] == 1  # the default: measured not to collapse on a shared CPU

    # model '' is the embedded synthetic-scene models, and a model distilled from them is no better on real
    # cameras (pipeline.json's distilled_from): both said at WARN level
    node = SharpDepthNode(context=ros_context, namespace="start2", parameter_overrides=node_parameters("", publish_colored=False))
    node.destroy_node()
    (line,) = [line for line in capfd.readouterr().err.splitlines() if "SharpDepth: " in line]
    assert line.startswith("[WARN]")
    assert f"SharpDepth: the EMBEDDED synthetic-scene models ({loaders.EMBEDDED_DIR}): not for real cameras" in line
    mine = Path(shutil.copytree(tiny_pipeline_dir, tmp_path / "mine"))
    config = json.loads((mine / "pipeline.json").read_text())
    (mine / "pipeline.json").write_text(json.dumps({**config, "distilled_from": {"teacher": "/x", "embedded": True}}))
    node = SharpDepthNode(context=ros_context, namespace="start3", parameter_overrides=node_parameters(mine, publish_colored=False))
    node.destroy_node()
    (line,) = [line for line in capfd.readouterr().err.splitlines() if "SharpDepth: " in line]
    assert line.startswith("[WARN]") and "(distilled from the embedded synthetic-scene models): not for real cameras" in line


def test_node_refuses_an_export_for_another_grid_or_model_at_start_up(tmp_path, capfd, ros_context):
    """export.json records the fixed grid's processing_res and the student's weight hash; the node's
    exported-engine loader checks both before the first frame (which would otherwise be dropped as
    bad input, like every frame after it), and the running node refuses a processing_res the fixed
    grid cannot run (it passed validation, then failed every frame)."""
    from sharpdepth_core.cli import main
    from sharpdepth_core.engines import OnnxEngine
    from helpers_models import scene_image
    from sharpdepth_ros.loaders import load_pipeline

    pipeline = tiny.tiny_pipeline(processing_res=64).save_pretrained(tmp_path / "pipeline")
    fixed = tmp_path / "fixed96"
    assert main(["export", "--model", str(pipeline), "--out", str(fixed), "--input-size", "64x48", "--fixed", "--processing-res", "96"]) == 0
    settings = {name: default for name, (default, _) in node_module.PARAMETERS.items()}
    settings.update(device="cpu", model=str(pipeline), engine="onnx", engine_dir=str(fixed))
    with pytest.raises(ValueError, match="made with processing_res 96 for 64x48 camera images, but the pipeline runs at "
                                         "processing_res 64: set processing_res to 96"):
        load_pipeline(settings)
    pipe = load_pipeline({**settings, "processing_res": 96})
    assert isinstance(pipe.engine, OnnxEngine) and pipe.processing_res == 96
    rgb, _ = scene_image(0)
    assert torch.isfinite(pipe(rgb, seed=0).depth).all()  # and it runs frames of that camera

    other = tiny.tiny_student(seed=1).save_pretrained(tmp_path / "other_student")
    assert main(["export", "--student", str(other), "--out", str(tmp_path / "other")]) == 0
    with pytest.raises(ValueError, match=r"export .*other is of another student model \(weights SHA-256"):
        load_pipeline({**settings, "engine_dir": str(tmp_path / "other")})
    capfd.readouterr()
    argv = ["sharpdepth_node", "--ros-args", "-p", f"model:={pipeline}", "-p", "engine:=onnx", "-p", f"engine_dir:={fixed}", "-p", "device:=cpu"]
    assert node_module.main(argv) == 1
    err = capfd.readouterr().err
    assert "set processing_res to 96" in err and "Traceback" not in err

    from rclpy.parameter import Parameter

    node = SharpDepthNode(context=ros_context, namespace="fixed", parameter_overrides=[
        Parameter(k, value=v) for k, v in {"model": str(pipeline), "device": "cpu", "engine": "onnx", "engine_dir": str(fixed),
                                           "processing_res": 96}.items()])
    try:
        refused = node.set_parameters([Parameter("processing_res", value=64)])[0]
        assert not refused.successful and node._settings["processing_res"] == 96
        assert refused.reason == ("processing_res 64: the onnx engine's export has a fixed 72x96 (HxW) grid for processing_res 96, "
                                  "the only value it runs (or 0); export again with --processing-res 64 for another")
        assert all(node.set_parameters([Parameter("processing_res", value=v)])[0].successful for v in (0, 96))
    finally:
        node.destroy_node()


def test_processing_res_problem_only_for_fixed_grid_exports():
    from types import SimpleNamespace

    from sharpdepth_ros.node_parameters import processing_res_problem

    def pipe(image_hw):
        return SimpleNamespace(processing_res=56, engine=SimpleNamespace(name="tensorrt", manifest=SimpleNamespace(image_hw=image_hw)))

    assert processing_res_problem(96, pipe(None)) is None  # a dynamic export runs any grid
    assert processing_res_problem(96, SimpleNamespace(processing_res=56, engine=object())) is None  # pytorch
    assert processing_res_problem(0, pipe((48, 64))) is None and processing_res_problem(56, pipe((48, 64))) is None
    assert processing_res_problem(96, pipe((48, 64))).startswith("processing_res 96: the tensorrt engine's export has a fixed 48x64")


class Timed(SharpDepthPipeline):
    """The real pipeline; records when each call starts and ends."""

    def __call__(self, *args, **kwargs):
        start = time.monotonic()
        out = super().__call__(*args, **kwargs)
        self.calls.append((start, time.monotonic()))
        return out


def test_a_batch_is_published_while_the_next_is_computed(ros_context, tiny_pipeline_dir, monkeypatch):
    """The worker hands each batch's outputs (on the host) to the publishing thread and takes the next
    frame at once: with a slow publication (0.3 s, standing for clouds of large images), the next model
    call runs during it, and every frame still goes out, in order."""
    loaded = SharpDepthPipeline.from_pretrained(tiny_pipeline_dir)
    pipeline = Timed(loaded.student, loaded.metric_model, processing_res=64)
    pipeline.calls = []
    node = SharpDepthNode(pipeline, context=ros_context, namespace="overlap",
                          parameter_overrides=node_parameters(tiny_pipeline_dir, publish_colored=False))
    publications = []
    real_messages = node_module.frame_messages

    def slow_messages(frame, depth, difference, settings):
        start = time.monotonic()
        time.sleep(0.3)
        messages = real_messages(frame, depth, difference, settings)
        publications.append((threading.current_thread().name, stamp_ns(frame.header), start, time.monotonic()))
        return messages

    monkeypatch.setattr(node_module, "frame_messages", slow_messages)
    probe = Probe(ros_context, {"/overlap/depth/image": Image}, name="overlap_probe")
    image_pub = probe.node.create_publisher(Image, "/overlap/image_raw", 5)
    info_pub = probe.node.create_publisher(CameraInfo, "/overlap/camera_info", 5)
    scene = render_scene(6, W, H)
    try:
        with Spinner(ros_context, node, probe.node):
            wait_for(lambda: probe.connected() and image_pub.get_subscription_count() and info_pub.get_subscription_count(), 20, "discovery")
            for stamp in (41, 42, 43):
                hdr = header(stamp, "overlap_cam")
                info_pub.publish(pinhole_info(scene.K, (H, W), hdr))
                wait_for(lambda: "overlap_cam" in node.cameras[0].infos, 10, "the CameraInfo")
                calls = len(pipeline.calls)
                image_pub.publish(encode_image(scene.rgb, "rgb8", hdr=hdr))
                wait_for(lambda: len(pipeline.calls) > calls, 30, f"the model call of frame {stamp}")
            wait_for(lambda: len(probe.messages["/overlap/depth/image"]) == 3, 30, "three depth images")
    finally:
        node.destroy_node()
        probe.node.destroy_node()
    assert [stamp_ns(m.header) for m in probe.messages["/overlap/depth/image"]] == [41, 42, 43]
    assert {name for name, *_ in publications} == {"sharpdepth-publish"}
    # frames 42 and 43 were computed while 41 and 42 went out
    assert all(pipeline.calls[i + 1][1] < publications[i][3] for i in range(2)), (pipeline.calls, publications)
