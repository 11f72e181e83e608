"""The node as a managed (lifecycle) node, driven over real rclpy through its `~/change_state` and
`~/get_state` services as `ros2 lifecycle set/get` drives it: nothing goes out unless active,
configure fails in one line and can be retried, deactivate answers during a slow frame and drops it,
configure/cleanup cycles give the memory back, several cameras and an exported engine behave alike,
and a transition the state does not allow gets the standard refusal."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from helpers_ros import Probe, Spinner, encode_image, header, node_parameters, pinhole_info, stamp_ns, wait_for
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rclpy.parameter import Parameter
from sensor_msgs.msg import CameraInfo, Image, PointCloud2

from sharpdepth_core.pipeline import SharpDepthPipeline
from sharpdepth_core.synthetic import render_scene
from sharpdepth_ros.node import SharpDepthNode
from sharpdepth_ros.loaders import resident_mb

W, H = 48, 36
SCENE = render_scene(2, W, H)
STAMPS = iter(range(10**9, 10**12, 10**6))


class Lifecycle:
    """`ros2 lifecycle` for one node: its change_state and get_state services, and a camera per namespace."""

    def __init__(self, context, node: SharpDepthNode, cameras: list[str]) -> None:
        self.caller = rclpy.create_node(f"lifecycle_caller_{abs(hash(node.get_fully_qualified_name()))}", context=context)
        fqn = node.get_fully_qualified_name()
        self.change = self.caller.create_client(ChangeState, f"{fqn}/change_state")
        self.get = self.caller.create_client(GetState, f"{fqn}/get_state")
        self.images = {ns: self.caller.create_publisher(Image, f"{ns}/image_raw", 5) for ns in cameras}
        self.infos = {ns: self.caller.create_publisher(CameraInfo, f"{ns}/camera_info", 5) for ns in cameras}

    def _call(self, client, request, timeout: float = 30.0):
        assert client.wait_for_service(timeout_sec=20)
        future = client.call_async(request)
        wait_for(future.done, timeout, f"the {client.srv_name} response")
        return future.result()

    def set(self, transition: int, timeout: float = 30.0) -> bool:
        return self._call(self.change, ChangeState.Request(transition=Transition(id=transition)), timeout).success

    def state(self) -> str:
        return self._call(self.get, GetState.Request()).current_state.label

    def frame(self, ns: str) -> int:
        """One camera frame (with its camera_info) on `ns`; its stamp."""
        stamp = next(STAMPS)
        hdr = header(stamp, "lc_cam")
        self.infos[ns].publish(pinhole_info(SCENE.K, (H, W), hdr))
        self.images[ns].publish(encode_image(SCENE.rgb, "rgb8", hdr=hdr))
        return stamp

    def subscribed(self, ns: str) -> bool:
        return self.images[ns].get_subscription_count() > 0


def _managed(ros_context, namespace: str, pipeline=None, cameras=("",), **params) -> tuple[SharpDepthNode, Lifecycle, Probe]:
    node = SharpDepthNode(pipeline, context=ros_context, namespace=namespace,
                          parameter_overrides=node_parameters(params.pop("model", ""), autostart=False, publish_colored=False,
                                                              cameras=list(cameras), **params))
    spaces = [f"/{namespace}" + (f"/{c}" if c else "") for c in cameras]
    outputs = {f"{ns}/{t}": kind for ns in spaces for t, kind in (("depth/image", Image), ("points", PointCloud2))}
    probe = Probe(ros_context, {**outputs, "/diagnostics": DiagnosticArray}, name=f"probe_{namespace}")
    return node, Lifecycle(ros_context, node, spaces), probe


def _states(probe: Probe, namespace: str) -> list[str]:
    """The lifecycle states /diagnostics reported for the node in `namespace`, in order."""
    return [dict((v.key, v.value) for v in s.values).get("state") for m in probe.messages["/diagnostics"] for s in m.status
            if s.name.startswith(f"/{namespace}/sharpdepth:")]


def _close(node, lifecycle, probe) -> None:
    node.destroy_node()
    lifecycle.caller.destroy_node()
    probe.node.destroy_node()


def test_outputs_only_while_active_and_parameters_set_while_inactive_apply_at_activate(ros_context, tiny_pipeline_dir):
    node, lc, probe = _managed(ros_context, "lc", model=str(tiny_pipeline_dir))
    depth, points = "/lc/depth/image", "/lc/points"
    try:
        with Spinner(ros_context, node, lc.caller, probe.node):
            assert lc.state() == "unconfigured" and node.pipeline is None
            assert not lc.subscribed("/lc") and probe.node.count_publishers(depth) == 0
            assert lc.set(Transition.TRANSITION_CONFIGURE) and lc.state() == "inactive"
            wait_for(lambda: probe.node.count_publishers(depth) == 1, 10, "the lifecycle publishers")
            assert not lc.subscribed("/lc")  # inactive: frames cannot reach the node
            assert node.set_parameters([Parameter("cloud_decimation", value=4)])[0].successful  # a run-time parameter
            refused = node.set_parameters([Parameter("model", value="/elsewhere")])[0]  # one read at configure
            assert not refused.successful and "set it while the node is unconfigured" in refused.reason
            wait_for(lambda: "inactive" in _states(probe, "lc"), 10, "/diagnostics saying inactive")

            assert lc.set(Transition.TRANSITION_ACTIVATE) and lc.state() == "active"
            wait_for(lambda: lc.subscribed("/lc"), 10, "the subscriptions")
            first = lc.frame("/lc")
            wait_for(lambda: probe.has([depth, points], first), 60, "the active node's outputs")
            cloud = probe.by_stamp(points, first)
            assert (cloud.height, cloud.width) == (H // 4, W // 4)  # cloud_decimation set while inactive
            assert [stamp_ns(m.header) for m in probe.messages[depth]] == [first]  # nothing from before

            assert lc.set(Transition.TRANSITION_DEACTIVATE) and lc.state() == "inactive"
            assert not lc.subscribed("/lc")
            published = node.stats.published
            unseen = lc.frame("/lc")
            assert lc.set(Transition.TRANSITION_ACTIVATE)
            wait_for(lambda: lc.subscribed("/lc"), 10, "the subscriptions again")
            again = lc.frame("/lc")
            wait_for(lambda: probe.has([depth], again), 60, "outputs after re-activation")
            assert probe.by_stamp(depth, unseen) is None and node.stats.published == published + 1

            assert lc.set(Transition.TRANSITION_DEACTIVATE) and lc.set(Transition.TRANSITION_CLEANUP)
            assert lc.state() == "unconfigured" and node.pipeline is None and not node.busy
            wait_for(lambda: probe.node.count_publishers(depth) == 0, 10, "the publishers to go")
            assert node.set_parameters([Parameter("model", value=str(tiny_pipeline_dir))])[0].successful  # allowed now
            wait_for(lambda: _states(probe, "lc")[-1:] == ["unconfigured"], 10, "/diagnostics saying unconfigured")
            assert len(probe.messages[depth]) == 2
    finally:
        _close(node, lc, probe)


def test_configure_fails_in_one_line_on_a_missing_model_then_succeeds_once_it_is_fixed(ros_context, tiny_pipeline_dir, tmp_path, capfd):
    node, lc, probe = _managed(ros_context, "lcfail", model=str(tmp_path / "nowhere"))
    try:
        with Spinner(ros_context, node, lc.caller, probe.node):
            capfd.readouterr()
            assert not lc.set(Transition.TRANSITION_CONFIGURE)
            assert lc.state() == "unconfigured" and node.pipeline is None
            err = capfd.readouterr().err
            assert "Traceback" not in err
            (line,) = [x for x in err.splitlines() if "configure failed" in x]
            assert f"SharpDepth pipeline: no folder {tmp_path / 'nowhere'}" in line and "[ERROR]" in line
            assert "configure again (ros2 lifecycle set /lcfail/sharpdepth configure)" in line
            wait_for(lambda: any(s.level == b"\x02" and "no folder" in s.message for m in probe.messages["/diagnostics"]
                                 for s in m.status if s.name.startswith("/lcfail/")), 10, "/diagnostics saying why, as an error")
            assert node.set_parameters([Parameter("model", value=str(tiny_pipeline_dir))])[0].successful
            assert lc.set(Transition.TRANSITION_CONFIGURE) and lc.state() == "inactive"
            assert lc.set(Transition.TRANSITION_ACTIVATE)
            wait_for(lambda: lc.subscribed("/lcfail"), 10, "the subscriptions")
            stamp = lc.frame("/lcfail")
            wait_for(lambda: probe.has(["/lcfail/depth/image"], stamp), 60, "outputs of the fixed node")
    finally:
        _close(node, lc, probe)


@pytest.mark.parametrize("transition, state", [(Transition.TRANSITION_ACTIVATE, "unconfigured"),
                                               (Transition.TRANSITION_CLEANUP, "unconfigured"),
                                               (Transition.TRANSITION_CONFIGURE, "inactive"),
                                               (Transition.TRANSITION_UNCONFIGURED_SHUTDOWN, "inactive")])
def test_a_transition_the_state_does_not_allow_gets_the_standard_refusal(ros_context, tiny_pipeline_dir, transition, state, capfd):
    node, lc, probe = _managed(ros_context, f"lcbad{transition}", model=str(tiny_pipeline_dir))
    try:
        with Spinner(ros_context, node, lc.caller, probe.node):
            if state == "inactive":
                assert lc.set(Transition.TRANSITION_CONFIGURE)
            capfd.readouterr()
            assert not lc.set(transition)
            assert lc.state() == state
            err = capfd.readouterr().err
            assert "Unable to start transition" in err and "Traceback" not in err, err  # rclpy's own refusal
            assert lc.set(Transition.TRANSITION_ACTIVATE if state == "inactive" else Transition.TRANSITION_CONFIGURE)  # still works
    finally:
        _close(node, lc, probe)


class SlowPipeline(SharpDepthPipeline):
    """The tiny pipeline, whose calls wait (GIL released) until `go` is set."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.started, self.go = threading.Event(), threading.Event()

    def __call__(self, *args, **kwargs):
        self.started.set()
        assert self.go.wait(60)
        return super().__call__(*args, **kwargs)


def test_deactivate_during_a_slow_frame_answers_at_once_and_the_frame_is_dropped(ros_context, tiny_pipeline_dir):
    loaded = SharpDepthPipeline.from_pretrained(tiny_pipeline_dir)
    slow = SlowPipeline(loaded.student, loaded.metric_model, processing_res=64)
    node, lc, probe = _managed(ros_context, "lcslow", pipeline=slow)
    depth = "/lcslow/depth/image"
    try:
        with Spinner(ros_context, node, lc.caller, probe.node):
            assert lc.set(Transition.TRANSITION_CONFIGURE) and lc.set(Transition.TRANSITION_ACTIVATE)
            wait_for(lambda: lc.subscribed("/lcslow"), 10, "the subscriptions")
            in_model = lc.frame("/lcslow")
            wait_for(slow.started.is_set, 30, "the model call to start")
            t0 = time.monotonic()
            assert lc.set(Transition.TRANSITION_DEACTIVATE, timeout=10) and lc.state() == "inactive"
            assert time.monotonic() - t0 < 3.0  # the frame is blocked for up to 60 s: the answer did not wait for it
            assert node.busy and not slow.go.is_set()
            dropped = node.stats.dropped
            slow.go.set()
            wait_for(lambda: node.stats.dropped == dropped + 1, 30, "the frame in the model to be dropped")
            assert lc.set(Transition.TRANSITION_ACTIVATE)
            wait_for(lambda: lc.subscribed("/lcslow"), 10, "the subscriptions again")
            after = lc.frame("/lcslow")
            wait_for(lambda: probe.has([depth], after), 60, "the next frame's outputs")
            assert probe.by_stamp(depth, in_model) is None
    finally:
        slow.go.set()
        _close(node, lc, probe)


def test_configure_cleanup_cycles_give_the_memory_back(ros_context, tiny_pipeline_dir, capfd):
    """20 configure/cleanup cycles loading the tiny models from disk (activate/deactivate and a frame every
    fifth cycle): the threads end at each cleanup and resident memory settles. Each cleanup frees 3-4 MB
    here (the tiny models; 8 MB for the embedded ones), and after a warm first cycle RSS stays within
    1 MB over 4 cycles. The bound, 40 MB over the 19 cycles after the first, is broken by a leak of one
    load a cycle (19 x 3-4 MB = 57-76 MB) and leaves room for allocator noise on a loaded machine."""
    node, lc, probe = _managed(ros_context, "lccycle", model=str(tiny_pipeline_dir))
    try:
        with Spinner(ros_context, node, lc.caller, probe.node):
            threads, rss = threading.active_count(), []
            for cycle in range(20):
                assert lc.set(Transition.TRANSITION_CONFIGURE)
                if cycle % 5 == 0:
                    assert lc.set(Transition.TRANSITION_ACTIVATE)
                    wait_for(lambda: lc.subscribed("/lccycle"), 10, "the subscriptions")
                    stamp = lc.frame("/lccycle")
                    wait_for(lambda: probe.has(["/lccycle/depth/image"], stamp), 60, f"cycle {cycle}'s frame")
                    assert lc.set(Transition.TRANSITION_DEACTIVATE)
                assert lc.set(Transition.TRANSITION_CLEANUP) and node.pipeline is None
                wait_for(lambda: threading.active_count() == threads, 10, "the worker and publishing threads to end")
                rss.append(resident_mb())
        err = capfd.readouterr().err
        lines = [x for x in err.splitlines() if "cleanup: models released, resident memory" in x]
        assert len(lines) == 20, err[-2000:]
        assert rss[-1] - rss[0] < 40, f"resident memory after each cleanup (MB): {[round(r) for r in rss]}"
    finally:
        _close(node, lc, probe)


def test_several_cameras_on_an_exported_engine_behave_the_same_under_transitions(ros_context, tiny_pipeline_dir, tmp_path, capfd):
    """An ONNX export of a fixed grid for this camera size: configure warms it up on a frame of that
    size; both cameras publish only while active, and again after cleanup and a fresh configure."""
    from sharpdepth_core.cli import main

    assert main(["export", "--model", str(tiny_pipeline_dir), "--out", str(tmp_path / "fixed"), "--input-size", f"{W}x{H}", "--fixed"]) == 0
    node, lc, probe = _managed(ros_context, "lcmulti", cameras=("front", "rear"), model=str(tiny_pipeline_dir), engine="onnx",
                               engine_dir=str(Path(tmp_path / "fixed")))
    spaces = ["/lcmulti/front", "/lcmulti/rear"]
    try:
        with Spinner(ros_context, node, lc.caller, probe.node):
            for round_ in range(2):
                capfd.readouterr()
                assert lc.set(Transition.TRANSITION_CONFIGURE)
                assert f"warmed up on {W}x{H} images" in capfd.readouterr().err
                assert not any(lc.subscribed(ns) for ns in spaces)
                assert lc.set(Transition.TRANSITION_ACTIVATE)
                wait_for(lambda: all(lc.subscribed(ns) for ns in spaces), 10, "both cameras' subscriptions")
                stamps = {ns: lc.frame(ns) for ns in spaces}
                for ns, stamp in stamps.items():
                    wait_for(lambda: probe.has([f"{ns}/depth/image", f"{ns}/points"], stamp), 60, f"{ns}'s outputs, round {round_}")
                    assert np.isfinite(np.frombuffer(probe.by_stamp(f"{ns}/depth/image", stamp).data, np.float32)).all()
                assert lc.set(Transition.TRANSITION_DEACTIVATE)
                assert not any(lc.subscribed(ns) for ns in spaces)
                assert lc.set(Transition.TRANSITION_CLEANUP) and lc.state() == "unconfigured"
            assert all(len(probe.messages[f"{ns}/depth/image"]) == 2 for ns in spaces)
            assert lc.set(Transition.TRANSITION_UNCONFIGURED_SHUTDOWN) and lc.state() == "finalized"
    finally:
        _close(node, lc, probe)


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU (bench/gpu_check.sh runs it there)")
def test_cleanup_gives_the_cuda_memory_back(ros_context, tiny_pipeline_dir, capfd):
    """On a GPU: configure loads the tiny models onto CUDA and a frame runs; cleanup lets go of them and
    empties the cache, so `torch.cuda.memory_allocated` returns to what it was before configure (within
    1 MB: the CUDA context and cuBLAS workspaces are not counted there), and the log says so."""
    import torch

    node, lc, probe = _managed(ros_context, "lccuda", model=str(tiny_pipeline_dir), device="cuda")
    try:
        with Spinner(ros_context, node, lc.caller, probe.node):
            before = torch.cuda.memory_allocated()
            assert lc.set(Transition.TRANSITION_CONFIGURE) and lc.set(Transition.TRANSITION_ACTIVATE)
            wait_for(lambda: lc.subscribed("/lccuda"), 10, "the subscriptions")
            stamp = lc.frame("/lccuda")
            wait_for(lambda: probe.has(["/lccuda/depth/image"], stamp), 60, "the frame")
            loaded = torch.cuda.memory_allocated()
            assert lc.set(Transition.TRANSITION_DEACTIVATE) and lc.set(Transition.TRANSITION_CLEANUP)
            after = torch.cuda.memory_allocated()
        assert loaded > before + 2**20 and after - before < 2**20, (before, loaded, after)
        assert "CUDA allocated" in capfd.readouterr().err
    finally:
        _close(node, lc, probe)
