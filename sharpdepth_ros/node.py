"""The SharpDepth ROS 2 node: camera image + CameraInfo in, metric depth, CameraInfo and point cloud out.

A thin adapter around `sharpdepth_core.pipeline.SharpDepthPipeline` (loaded by `loaders`): messages
are converted in `conversions`, depth math stays in `sharpdepth_core`. Inference runs in one worker thread the node
owns (never in executor callbacks, where `torch.compile` and long calls misbehave): the image
callback only stores the newest frame, so a slow model drops frames (counted) instead of queueing
them. Each camera has a thread of its own that publishes its outputs while the worker computes the
next frame, so the model and the host's conversions and clouds overlap. Bad input of any kind costs
one throttled log line and that frame, never the node.

Several cameras (`cameras`: namespaces relative to the node's) share one node and one model. Model
calls stay one at a time; each step runs one batch: the camera that used the least worker time
recently (`scheduling.FairShare`) with every other camera whose waiting frame has its size. A camera
waits for the model call in progress (one frame of a big camera), never for another camera's
clouds and publishing (its own thread), and a camera whose previous outputs are still waiting to go
out is not served (each camera holds at most one message, one frame in the model and two outputs),
so a silent, slow or big camera never holds the others back; each camera's outputs go out on its
own namespace (`front/depth/image`, ...).

Its parameters and their checks are `node_parameters` (the `sharpdepth_node` entry point, which loads
this module only to start the node).
"""
from __future__ import annotations

import os
import re
import sys
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import cv2
import numpy as np
import rclpy
import torch
from rcl_interfaces.msg import SetParametersResult
from rclpy.node import Node
from rclpy.qos import QoSProfile, qos_profile_sensor_data
from rclpy.qos_overriding_options import QoSOverridingOptions
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2

from sharpdepth_core.geometry import fallback_problem
from sharpdepth_core.images import check_size, message_size
from sharpdepth_core.models.hub import quiet_loading
from sharpdepth_core.visualize import colorize_depth
from sharpdepth_ros.conversions import (
    PointCloudBuilder,
    Rectifier,
    camera_info,
    compressed_to_rgb8,
    depth_camera_info,
    has_distortion,
    image_intrinsics,
    image_to_rgb8,
    numpy_to_image,
    pinhole_K,
    remember,
)
from sharpdepth_ros.loaders import describe, load_pipeline
from sharpdepth_ros.scheduling import FairShare
from sharpdepth_ros.node_parameters import DESCRIPTION, PARAMETERS, processing_res_problem, validate
from sharpdepth_ros.params import declare_parameters, run

try:  # diagnostic_msgs is optional: the periodic log line carries the same numbers
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
except ImportError:  # pragma: no cover - depends on the installation
    DiagnosticArray = None

THROTTLE_S = 5.0
MAX_CAMERAS = 8  # camera_info kept for this many frame_ids (the latest ones): memory stays bounded
MAX_PROBLEMS = 64  # kinds of problem whose last log time is remembered
CAMERA_INFO_GRACE_S = 2.0  # images wait this long for a first camera_info before the fov_deg fallback
SHUTDOWN_GRACE_S = 2.0  # how long shutdown waits for a frame in progress to finish


class BadModelOutput(ValueError):
    """The model produced something unpublishable (NaN depth: fp16 overflow, broken weights)."""


@dataclass
class Stats:
    """Counters and per-stage seconds since start; the reporter logs differences between snapshots."""

    received: int = 0
    published: int = 0
    dropped: int = 0
    fallbacks: int = 0  # frames whose final fit was degenerate: the metric model's depth was published
    rejected: dict[str, int] = field(default_factory=dict)
    stage_s: dict[str, float] = field(default_factory=dict)

    def copy(self) -> "Stats":
        return Stats(self.received, self.published, self.dropped, self.fallbacks, dict(self.rejected), dict(self.stage_s))

    def __add__(self, other: "Stats") -> "Stats":
        return Stats(self.received + other.received, self.published + other.published, self.dropped + other.dropped,
                     self.fallbacks + other.fallbacks, _summed(self.rejected, other.rejected), _summed(self.stage_s, other.stage_s))


def _summed(a: dict, b: dict) -> dict:
    return {k: a.get(k, 0) + b.get(k, 0) for k in {**a, **b}}


@dataclass(eq=False)
class Camera:
    """One camera of the node: its topics under `name` ('' = the node's own namespace), the newest frame
    not yet taken by the worker, the outputs its publishing thread has yet to take, its calibrations,
    counters and publishers. Shared under the node's lock."""

    name: str
    stats: Stats = field(default_factory=Stats)
    infos: OrderedDict = field(default_factory=OrderedDict)  # latest CameraInfo of the latest MAX_CAMERAS frame_ids
    pending: tuple | None = None  # (message, decoder, arrival time, batch key)
    outbox: tuple | None = None  # (frame, its batch's outputs, index in the batch, model seconds, settings)
    publishing: threading.Lock = field(default_factory=threading.Lock)  # held while outputs go out; shutdown waits for it
    first_image: float | None = None  # when the first image arrived (the camera_info grace)
    said_fallback: bool = False
    rectifier: Rectifier = field(default_factory=Rectifier)
    cloud: PointCloudBuilder = field(default_factory=PointCloudBuilder)
    publishers: dict = field(default_factory=dict)
    reported: Stats = field(default_factory=Stats)  # the counters at the last report

    def topic(self, name: str) -> str:
        return f"{self.name}/{name}" if self.name else name

    def said(self, message: str) -> str:
        """A line about this camera: named when the node has several."""
        return f"{self.name}: {message}" if self.name else message


@dataclass
class ReadyFrame:
    """A camera's frame ready for the model: decoded, its calibration found, rectified where needed."""

    camera: Camera
    header: object
    rgb: np.ndarray
    info: CameraInfo
    K: np.ndarray | None  # for the metric model; None: it runs without K
    seen: np.ndarray | None  # pixels the camera saw (rectified frames)
    arrived: float
    decode_s: float


class SharpDepthNode(Node):
    """Subscribes `image_raw` (or `image_raw/compressed`) and `camera_info`; publishes `depth/image`,
    `depth/camera_info`, `points`, optionally `depth/colored` and `depth/difference`; each under every
    camera namespace of `cameras`.

    `pipeline`: an already built pipeline to use instead of loading one from the parameters (the
    demo's and the tests' seam: tiny models, or a model that fails on purpose).
    """

    def __init__(self, pipeline=None, **node_kwargs) -> None:
        node_kwargs.setdefault("namespace", "camera")
        super().__init__("sharpdepth", **node_kwargs)
        # first: destroy_node needs them, also for a node whose start failed (rclpy destroys it at shutdown)
        self._lock = threading.Condition()
        self._reporting = threading.Lock()
        self.cameras: list[Camera] = []  # replaced once the parameters are known
        self._declare_parameters()
        self.pipeline = self._load_pipeline(pipeline)
        self._init_state()
        image_topics = self._connect()
        self._worker = threading.Thread(target=self._work, name="sharpdepth-inference", daemon=True)
        self._senders = [threading.Thread(target=self._publish_outputs, args=(camera,), daemon=True,
                                          name="sharpdepth-publish" + (f"-{camera.name}" if camera.name else ""))
                         for camera in self.cameras]
        for thread in (self._worker, *self._senders):
            thread.start()
        self.get_logger().info("SharpDepth ready: " + "; ".join(
            f"{topic} -> {self.resolve_topic_name(c.topic('depth/image'))}, {self.resolve_topic_name(c.topic('points'))}"
            for c, topic in zip(self.cameras, image_topics)))

    def _declare_parameters(self) -> None:
        """Declare every parameter (each value checked as it is declared: a bad one stops the start)
        and keep the values as declared; later sets are checked the same way and applied once set."""
        self.add_on_set_parameters_callback(self._check_parameters)
        self._settings = declare_parameters(self, PARAMETERS)
        if hasattr(self, "add_post_set_parameters_callback"):
            self.add_post_set_parameters_callback(self._apply_parameters)
        else:  # Humble's rclpy (the floor) has no post-set callback: apply where a set is accepted
            self.remove_on_set_parameters_callback(self._check_parameters)
            self.add_on_set_parameters_callback(self._check_and_apply_parameters)

    def _load_pipeline(self, pipeline):
        """The supplied pipeline, else the one the parameters name, loaded on num_threads CPU threads;
        the start-up lines say what runs."""
        if self._settings["num_threads"]:
            torch.set_num_threads(self._settings["num_threads"])  # before the models load and warm up
        supplied = pipeline is not None
        quiet_loading()  # the start-up line below says what loaded
        if not supplied:
            pipeline = load_pipeline(self._settings)
        line, embedded = describe(self._settings, pipeline, supplied)
        (self.get_logger().warning if embedded else self.get_logger().info)(line)
        if getattr(pipeline, "untrained", False):
            self.get_logger().warning("UNTRAINED random-weight models: the depth means nothing, only the plumbing is real")
        return pipeline

    def _init_state(self) -> None:
        """What the callbacks and the worker share (under `_lock`), and the worker's own helpers."""
        self.cameras = [Camera(name) for name in self._settings["cameras"]]
        self._fair = FairShare(self.cameras)
        self._stop = False
        self._last_log: OrderedDict[str, float] = OrderedDict()
        self.last_rejection = ""
        self._reported_at = time.monotonic()

    @property
    def stats(self) -> Stats:
        """The node's counters: all cameras' together (a snapshot)."""
        with self._lock:
            return sum((c.stats for c in self.cameras), Stats())

    def _connect(self) -> list[str]:
        """Subscriptions and publishers of every camera, and the statistics timer; returns the image
        topics subscribed."""
        sensor = qos_profile_sensor_data
        override = QoSOverridingOptions.with_default_policies()
        out = QoSProfile(depth=2)  # reliable, small: RViz and best-effort consumers both match
        outputs = {"depth": (Image, "depth/image"), "info": (CameraInfo, "depth/camera_info"), "points": (PointCloud2, "points"),
                   "colored": (Image, "depth/colored"), "difference": (Image, "depth/difference")}
        image_topics = []
        for camera in self.cameras:
            image_topic = self.resolve_topic_name(camera.topic("image_raw"))  # remapped; '/compressed' follows the remap
            if self._settings["image_transport"] == "compressed":
                image_topic += "/compressed"
                self.create_subscription(CompressedImage, image_topic, lambda msg, c=camera: self._on_compressed(c, msg),
                                         sensor, qos_overriding_options=override)
            else:
                self.create_subscription(Image, camera.topic("image_raw"), lambda msg, c=camera: self._on_image(c, msg),
                                         sensor, qos_overriding_options=override)
            self.create_subscription(CameraInfo, camera.topic("camera_info"), lambda msg, c=camera: self._on_camera_info(c, msg),
                                     sensor, qos_overriding_options=override)
            camera.publishers = {key: self.create_publisher(kind, camera.topic(topic), out, qos_overriding_options=override)
                                 for key, (kind, topic) in outputs.items()}
            image_topics.append(image_topic)
        self._pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", 10) if DiagnosticArray else None
        self.create_timer(self._settings["stats_period"], self.report)
        return image_topics

    # --- parameters -------------------------------------------------------------------------

    def _check_parameters(self, params) -> SetParametersResult:
        """Reject a bad value with its reason (ranges and read-only are the descriptors' part), and a
        processing_res the loaded engine cannot run (none is loaded while the parameters are declared)."""
        for p in params:
            reason = validate(p.name, p.value)
            if not reason and p.name == "processing_res" and getattr(self, "pipeline", None) is not None:
                reason = processing_res_problem(p.value, self.pipeline)
            if reason:
                return SetParametersResult(successful=False, reason=reason)
        return SetParametersResult(successful=True)

    def _apply_parameters(self, params) -> None:
        """Take all new values of the node's parameters at once (rclpy's own, such as qos_overrides.*,
        are not settings). Nothing else changes here: the worker reads the settings once per frame and
        applies them itself."""
        settings = dict(self._settings)
        settings.update({p.name: p.value for p in params if p.name in PARAMETERS})
        self._settings = settings  # one assignment: the worker sees old or new settings, never a mix

    def _check_and_apply_parameters(self, params) -> SetParametersResult:
        result = self._check_parameters(params)
        if result.successful:
            self._apply_parameters(params)
        return result

    # --- input ------------------------------------------------------------------------------

    def _on_camera_info(self, camera: Camera, msg: CameraInfo) -> None:
        with self._lock:
            remember(camera.infos, msg.header.frame_id, msg, MAX_CAMERAS)

    def _on_image(self, camera: Camera, msg: Image) -> None:
        size = self._accepted_size(camera, msg)  # from the header: nothing copied yet
        if size is not None:
            self._offer(camera, msg, image_to_rgb8, size)

    def _on_compressed(self, camera: Camera, msg: CompressedImage) -> None:
        size = self._accepted_size(camera, msg)  # the header only (a format whose size it does not give is refused)
        if size is not None:
            self._offer(camera, msg, compressed_to_rgb8, size)

    def _accepted_size(self, camera: Camera, msg) -> tuple | None:
        """The frame's (height, width) from its header, its batch key (frames of one size can share a
        model call); None (the frame counted and skipped) when it is above max_input_pixels."""
        max_pixels = self._settings["max_input_pixels"]
        try:
            size = message_size(msg)
            if max_pixels:
                check_size(*size, max_pixels, "image")
        except ValueError as error:
            if not max_pixels:  # no limit: any format OpenCV decodes, in a batch of its own
                return ("unsized", camera.name)
            with self._lock:
                camera.stats.received += 1
            self._reject(camera, "input", str(error))
            return None
        return size

    def _offer(self, camera: Camera, msg, decode, size: tuple) -> None:
        """Latest frame wins, per camera: a frame still waiting when a newer one of its camera arrives is dropped."""
        with self._lock:
            camera.stats.received += 1
            if camera.first_image is None:
                camera.first_image = time.monotonic()
            if camera.pending is not None:
                camera.stats.dropped += 1
            camera.pending = (msg, decode, time.perf_counter(), size)
            self._lock.notify_all()

    # --- inference worker -------------------------------------------------------------------

    def _ready(self) -> dict[Camera, tuple]:
        """camera -> batch key of the cameras the worker may serve now (under `_lock`): a frame waiting,
        and no outputs still waiting for its publishing thread (a camera slower to publish than to
        compute is paced by its own publishing, not the others')."""
        return {c: c.pending[3] for c in self.cameras if c.pending is not None and c.outbox is None}

    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._stop and not (ready := self._ready()):
                    self._lock.wait()
                if self._stop:
                    return
                chosen = self._fair.next_batch(ready, time.monotonic())
                taken = [(c, *c.pending[:3]) for c in chosen]
                for camera in chosen:
                    camera.pending = None
            t0 = time.perf_counter()
            self._process(taken)
            del taken  # the messages: a big camera's are large
            self._fair.charge(chosen, time.perf_counter() - t0, time.monotonic())  # the worker's own

    def _process(self, taken: list) -> None:
        """The newest frames of the cameras chosen for this step (one size): each decoded and calibrated
        on its own, then one model call per group that can share a batch (all with K or all without),
        each camera's outputs handed to its publishing thread. A frame's problem costs that frame; a
        group's, the group's frames."""
        settings = self._settings  # one snapshot per step: a parameter set meanwhile applies to the next
        groups: dict[tuple, list[ReadyFrame]] = {}
        for camera, msg, decode, arrived in taken:
            frame = self._guarded([camera], self._prepare, camera, msg, decode, arrived, settings)
            if frame is not None:
                groups.setdefault((frame.rgb.shape, frame.K is None), []).append(frame)
        for group in groups.values():
            self._guarded([f.camera for f in group], self._infer, group, settings)

    def _guarded(self, cameras: list[Camera], step, *args):
        """`step(*args)`, or None when it raised: the frames of `cameras` are rejected with the reason."""
        try:
            return step(*args)
        except Exception as error:
            if self._stop or not self.context.ok():
                return None  # shutting down (Ctrl-C, SIGTERM): the frames are abandoned quietly
            if isinstance(error, torch.cuda.OutOfMemoryError):  # torch < 2.5 has only this name
                torch.cuda.empty_cache()
                kind, message = "out-of-memory", f"out of memory ({str(error).splitlines()[0]}); lower processing_res or use dtype float16/bfloat16"
            elif isinstance(error, BadModelOutput):
                kind, message = "model", str(error)
            elif isinstance(error, ValueError):  # bad image, bad calibration
                kind, message = "input", str(error)
            else:  # a bug must not take the camera pipeline down: say so loudly
                kind, message = "error", f"unexpected {type(error).__name__}: {error}"
            for camera in cameras:
                self._reject(camera, kind, message)
            return None

    def _calibration(self, camera: Camera, frame_id: str, image_hw: tuple[int, int], header, settings: dict) -> tuple[CameraInfo, bool]:
        """(this frame's CameraInfo, whether it is a real calibration rather than the fov_deg pinhole).

        Images need camera_info unless use_camera_intrinsics is false, or no camera_info at all has
        arrived on their camera's topic within CAMERA_INFO_GRACE_S of its first image (a camera without calibration).
        """
        with self._lock:
            info = camera.infos.get(frame_id)
            known = list(camera.infos)
            waited = time.monotonic() - (camera.first_image or time.monotonic())
        if info is not None:
            return info, True
        info_topic = self.resolve_topic_name(camera.topic("camera_info"))
        if settings["use_camera_intrinsics"] and (known or waited < CAMERA_INFO_GRACE_S):
            seen = f" (camera_info arrives for {', '.join(repr(k) for k in known)})" if known else ""
            raise ValueError(f"no camera_info for frame_id '{frame_id}' yet on {info_topic}{seen}")
        if not camera.said_fallback:
            camera.said_fallback = True
            why = ("use_camera_intrinsics is false" if not settings["use_camera_intrinsics"]
                   else f"no camera_info on {info_topic} within {CAMERA_INFO_GRACE_S:g} s")
            self.get_logger().warning(camera.said(
                f"{why}: frames without camera_info get a pinhole K of fov_deg {settings['fov_deg']:g} degrees (horizontal, "
                "centred) for depth/camera_info and the cloud; the metric model runs without K. Set fov_deg to your lens, "
                "or publish camera_info"))
        return self._assumed(image_hw, header, settings), False

    @staticmethod
    def _assumed(image_hw: tuple[int, int], header, settings: dict) -> CameraInfo:
        """The fov_deg pinhole of frames without a usable calibration; ValueError for an image of a
        degenerate aspect ratio (`geometry.fallback_problem`)."""
        problem = fallback_problem(image_hw, settings["fov_deg"])
        if problem:
            raise ValueError(problem)
        h, w = image_hw
        return camera_info(pinhole_K(w, h, settings["fov_deg"]), image_hw, header)

    def _camera_model(self, camera: Camera, rgb: np.ndarray, info: CameraInfo, calibrated: bool, header, settings: dict):
        """(image, its CameraInfo, K, whether K is calibrated, HxW mask of pixels seen or None).

        An implausible K, P, ROI or binning (`geometry.check_calibration`) is refused and the frame
        gets the fov_deg pinhole, the model running without K (skipped where that pinhole cannot
        describe the image: `geometry.fallback_problem`); a rectification that cannot be used
        (D, R) skips the frame, whose pixels are where the camera model cannot say. Either is one
        throttled line per camera.
        """
        try:
            K = image_intrinsics(info, rgb.shape[:2])
        except ValueError as error:
            if not calibrated:
                raise
            problem = fallback_problem(rgb.shape[:2], settings["fov_deg"])
            if problem:
                self._refuse_calibration(camera, header.frame_id, f"{error}; {problem}; its frames are skipped", skipped=True)
                return None
            self._refuse_calibration(camera, header.frame_id, f"{error}; its frames get the fov_deg {settings['fov_deg']:g} "
                                     "pinhole K and the metric model runs without K")
            info = self._assumed(rgb.shape[:2], header, settings)
            return rgb, info, np.reshape(info.k, (3, 3)), False, None
        try:
            if not has_distortion(info):  # pinhole cameras (all-zero D) skip rectification entirely
                return rgb, info, K, calibrated, None
            rgb, info, seen = camera.rectifier(rgb, info)
        except ValueError as error:
            self._refuse_calibration(camera, header.frame_id, f"{error}; its frames are skipped", skipped=True)
            return None
        return rgb, info, np.reshape(info.k, (3, 3)), calibrated, seen  # the rectified pinhole: on the image grid

    def _refuse_calibration(self, camera: Camera, frame_id: str, message: str, skipped: bool = False) -> None:
        """One warning per kind of problem every THROTTLE_S seconds (not per frame_id: 300 random frame_ids
        with the same bad K are one problem); a skipped frame is counted."""
        now = time.monotonic()
        text = camera.said(f"camera_info of frame_id '{frame_id}' refused: {message}")
        key = problem_key("calibration", text)
        with self._lock:
            if skipped:
                camera.stats.rejected["calibration"] = camera.stats.rejected.get("calibration", 0) + 1
            self.last_rejection = text
            due = self._due(key, now)
        if due:
            self.get_logger().warning(text)

    def _due(self, key: str, now: float) -> bool:
        """Whether a line about `key` is due (none in the last THROTTLE_S seconds); under `_lock`."""
        due = now - self._last_log.get(key, -THROTTLE_S) >= THROTTLE_S
        if due:
            remember(self._last_log, key, now, MAX_PROBLEMS)
        return due

    def _prepare(self, camera: Camera, msg, decode, arrived: float, settings: dict) -> ReadyFrame | None:
        """The frame decoded, with its calibration (rectified where needed); None when it is skipped."""
        t0 = time.perf_counter()
        rgb = decode(msg)
        info, calibrated = self._calibration(camera, msg.header.frame_id, rgb.shape[:2], msg.header, settings)
        model = self._camera_model(camera, rgb, info, calibrated, msg.header, settings)
        if model is None:
            return None
        rgb, info, K, calibrated, seen = model
        K = K if settings["use_camera_intrinsics"] and calibrated else None
        return ReadyFrame(camera, msg.header, rgb, info, K, seen, arrived, time.perf_counter() - t0)

    def _infer(self, group: list[ReadyFrame], settings: dict) -> None:
        """One model call for frames of one size (a batch: the seeded noise is the same for every image,
        so each camera's depth is what it would be alone); each camera's outputs to its outbox."""
        t1 = time.perf_counter()
        images = image_batch([f.rgb for f in group])
        K = None if group[0].K is None else np.stack([f.K for f in group])
        out = self.pipeline(images, K=K, seed=None if settings["seed"] < 0 else settings["seed"],
                            processing_res=settings["processing_res"] or None)  # 0: the pipeline's own
        # on the host before the hand-over: the publisher's copies would otherwise queue behind the next
        # batch's work on the device
        host = HostOutputs(_on_host(out.depth), _on_host(getattr(out, "difference", None)), out.timings,
                           list(getattr(out, "fallback", None) or []))
        model_s = time.perf_counter() - t1
        with self._lock:  # empty: a camera with outputs waiting is not served (`_ready`)
            for i, frame in enumerate(group):
                frame.camera.outbox = (frame, host, i, model_s, settings)
            self._lock.notify_all()

    def _publish_outputs(self, camera: Camera) -> None:
        """A camera's publishing thread: its outputs as the worker hands them over, while the worker
        computes the next frame, its own or another camera's (the model and the host's conversions and
        clouds overlap, and a big camera's clouds never hold a small camera's frames back)."""
        while True:
            with self._lock:
                while not self._stop and camera.outbox is None:
                    self._lock.wait()
                if self._stop:
                    return
                outputs, camera.outbox = camera.outbox, None
                self._lock.notify_all()  # the camera can be served again
            self._guarded([camera], self._publish_frame, *outputs)
            del outputs  # the frame and its batch's outputs: a big camera's are large

    def _publish_frame(self, frame: ReadyFrame, out, i: int, model_s: float, settings: dict) -> None:
        """Image `i` of the batch's outputs on its camera's topics, and its counters."""
        t2 = time.perf_counter()
        depth = _image_of(out.depth[i])
        bad = int((~np.isfinite(depth)).sum())
        if bad:
            raise BadModelOutput(f"the model returned {bad} non-finite depth values of {depth.size}")
        depth[depth <= 0] = np.nan  # REP 118: invalid is NaN
        if frame.seen is not None and frame.seen.shape == depth.shape:
            depth[~frame.seen] = np.nan  # rectified pixels the camera did not see
        difference = out.difference
        cpu0 = time.thread_time()
        if not self._publish(frame, depth, None if difference is None else difference[i], settings):
            return
        t3, own = time.perf_counter(), time.thread_time() - cpu0
        stages = {"decode": frame.decode_s, **{f"model/{k}": v for k, v in out.timings.items()}, "model": model_s,
                  "publish": own, "publish_wall": t3 - t2, "total": t3 - frame.arrived}
        stats = frame.camera.stats
        with self._lock:
            stats.published += 1
            stats.fallbacks += int(bool(out.fallback) and out.fallback[i])
            for k, v in stages.items():
                stats.stage_s[k] = stats.stage_s.get(k, 0.0) + v

    def _publish(self, frame: ReadyFrame, depth: np.ndarray, difference, settings: dict) -> bool:
        """Build and publish the outputs of one camera's frame; False when the node is shutting down
        (nothing published).

        The 'publish' stage is this thread's CPU time here: the node's own cost, apart from other
        threads of the process holding the GIL meanwhile (an in-process recorder's callbacks);
        'publish_wall' is the wall-clock time including them.
        """
        header, rgb, pub = frame.header, frame.rgb, frame.camera.publishers
        with frame.camera.publishing:
            if self._stop or not self.context.ok():
                return False
            depth_info = depth_camera_info(frame.info, rgb.shape[:2], depth.shape, header)
            pub["depth"].publish(numpy_to_image(depth, "32FC1", header))
            pub["info"].publish(depth_info)
            if settings["publish_points"]:
                color = None
                if settings["cloud_rgb"]:
                    color = rgb if rgb.shape[:2] == depth.shape else cv2.resize(rgb, depth.shape[::-1], interpolation=cv2.INTER_AREA)
                K = np.reshape(depth_info.k, (3, 3))  # a rectified camera has K = P
                pub["points"].publish(frame.camera.cloud(depth, K, header, color, settings["cloud_decimation"], settings["cloud_max_range"]))
            if settings["publish_colored"]:
                pub["colored"].publish(numpy_to_image(colorize_depth(depth), "rgb8", header))
            if settings["publish_difference"] and difference is not None:
                pub["difference"].publish(numpy_to_image(_image_of(difference), "32FC1", header))
        return True

    def _reject(self, camera: Camera, kind: str, message: str) -> None:
        """Count the camera's skipped frame; log each kind of problem at most once every THROTTLE_S seconds.

        The kind of problem is `problem_key`'s: 300 random frame_ids are one problem, not 300.
        """
        message = camera.said(message)
        key = problem_key(kind, message)
        now = time.monotonic()
        with self._lock:
            camera.stats.rejected[kind] = camera.stats.rejected.get(kind, 0) + 1
            count = camera.stats.rejected[kind]
            self.last_rejection = message
            due = self._due(key, now)
        if due:
            text = f"frame skipped: {message} ({count} '{kind}' skips since start)"
            if kind in ("error", "out-of-memory"):  # separate call sites: rclpy fixes a site's severity
                self.get_logger().error(text)
            else:
                self.get_logger().warning(text)

    # --- statistics -------------------------------------------------------------------------

    def report(self) -> None:
        """The statistics since the last report, per camera: a log line each and /diagnostics (every stats_period).
        One report at a time: two interleaved (the timer's and a caller's) would count frames twice or not at all."""
        with self._reporting:
            self._report()

    def _report(self) -> None:
        now = time.monotonic()
        with self._lock:
            current = [c.stats.copy() for c in self.cameras]
        period, self._reported_at = max(now - self._reported_at, 1e-9), now
        statuses = []
        for camera, stats in zip(self.cameras, current):
            before, camera.reported = camera.reported, stats
            received, published = stats.received - before.received, stats.published - before.published
            dropped = stats.dropped - before.dropped
            rejected = {k: v - before.rejected.get(k, 0) for k, v in stats.rejected.items() if v > before.rejected.get(k, 0)}
            latency = {k: 1e3 * (v - before.stage_s.get(k, 0.0)) / published for k, v in stats.stage_s.items()} if published else {}
            text = (
                f"in {received / period:.1f} Hz, out {published / period:.1f} Hz, dropped {dropped} "
                f"(total {stats.dropped}), skipped {sum(rejected.values())}, fit fallbacks {stats.fallbacks - before.fallbacks}"
                + (f" {rejected}" if rejected else "")
                + ("; ms/frame " + ", ".join(f"{k} {v:.1f}" for k, v in latency.items()) if latency else "")
            )
            if received or published or rejected:
                self.get_logger().info(camera.said(text))
            values = {"input_hz": f"{received / period:.2f}", "output_hz": f"{published / period:.2f}", "dropped": str(dropped),
                      "dropped_total": str(stats.dropped), "skipped": str(sum(rejected.values()))}
            values.update({f"latency_ms/{k}": f"{v:.2f}" for k, v in latency.items()})
            warn = rejected or (received and not published)
            statuses.append((camera, text, values, warn))
        if self._pub_diag is not None:
            self._publish_diagnostics(statuses)

    def _publish_diagnostics(self, statuses: list) -> None:
        array = DiagnosticArray()
        for camera, text, values, warn in statuses:
            status = DiagnosticStatus(name=f"{self.get_fully_qualified_name()}: {camera.said('depth')}", hardware_id=str(self._settings["device"]))
            status.level = DiagnosticStatus.WARN if warn else DiagnosticStatus.OK
            status.message = text
            status.values = [KeyValue(key=k, value=v) for k, v in values.items()]
            array.status.append(status)
        array.header.stamp = self.get_clock().now().to_msg()
        self._pub_diag.publish(array)

    @property
    def busy(self) -> bool:
        """The worker thread is still running (inside a model call, after shutdown)."""
        return getattr(self, "_worker", None) is not None and self._worker.is_alive()

    def destroy_node(self) -> None:
        """Stop the worker: no output is published after this starts; a frame in progress gets
        SHUTDOWN_GRACE_S to end (a model call cannot be interrupted; `main` deals with one that runs on)."""
        with self._lock:
            self._stop = True
            self._lock.notify_all()
        for camera in self.cameras:
            with camera.publishing:  # a publication in progress ends; none starts after `_stop`
                pass
        for thread in getattr(self, "_senders", ()):
            thread.join(timeout=SHUTDOWN_GRACE_S)
        if self.busy:
            self._worker.join(timeout=SHUTDOWN_GRACE_S)
        super().destroy_node()


def problem_key(kind: str, message: str) -> str:
    """The kind of problem a log line is about, for throttling: the message with its variable parts
    (quoted names such as frame_ids and encodings, numbers) blanked."""
    return kind + ":" + re.sub(r"'[^']*'|\d+", "#", message)


def image_batch(rgbs: list[np.ndarray]) -> torch.Tensor:
    """HxWx3 uint8 images -> uint8 [B, 3, H, W], contiguous: a camera alone then gets exactly the depth
    `pipeline(rgb)` gives (measured; the permuted view's layout rounds differently in the convolutions)."""
    return torch.from_numpy(np.stack(rgbs)).permute(0, 3, 1, 2).contiguous()


@dataclass
class HostOutputs:
    """A batch's outputs as the publisher reads them: depth and difference on the host."""

    depth: object  # [B, 1, H, W]
    difference: object | None
    timings: dict[str, float]
    fallback: list[bool]


def _on_host(x):
    return x.detach().cpu() if isinstance(x, torch.Tensor) else x


def _image_of(x) -> np.ndarray:
    """[B,1,H,W] or [H,W] tensor/array -> a writable float32 HxW numpy array (first image)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    x = np.asarray(x, dtype=np.float32)
    while x.ndim > 2:
        x = x[0]
    return np.array(x, dtype=np.float32)


def main(args: list[str] | None = None) -> int:
    nodes: list[SharpDepthNode] = []

    def make_node() -> SharpDepthNode:
        nodes.append(SharpDepthNode())
        return nodes[-1]

    code = run("sharpdepth", make_node, rclpy.spin, DESCRIPTION, PARAMETERS, args)
    if not nodes:  # --help, or a start that failed (said in one line): nothing ran
        return code
    node = nodes[0]
    logger = rclpy.logging.get_logger("sharpdepth")
    with node._lock:
        stats = node.stats.copy()
    logger.info(f"shutdown: {stats.received} frames received, {stats.published} published, {stats.dropped} dropped "
                f"(a newer frame arrived first), {sum(stats.rejected.values())} skipped")
    if node.busy:
        logger.info("shutdown: a model call was still running; exiting without waiting for it")
    # ROS is shut down and the node destroyed: nothing is left to do. Interpreter exit would tear down
    # torch and the models for seconds (1-4 s measured), and with the worker still inside a model call
    # it would kill that thread inside torch's C++ frames (`terminate called without an active
    # exception`, exit 134) or wait minutes: end the process here, promptly and cleanly.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
