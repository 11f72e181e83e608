"""The SharpDepth ROS 2 node: camera image + CameraInfo in, metric depth, CameraInfo and point cloud out.

A thin adapter around `sharpdepth_core.pipeline.SharpDepthPipeline` (loaded by `loaders`): messages
are converted in `conversions`, depth math stays in `sharpdepth_core`. Inference runs in one worker thread the node
owns (never in executor callbacks, where `torch.compile` and long calls misbehave): the image
callback only stores the newest frame, so a slow model drops frames (counted) instead of queueing
them. Bad input of any kind costs one throttled log line and that frame, never the node.

    ros2 run sharpdepth_ros sharpdepth_node --ros-args --params-file config/sharpdepth.yaml \\
        -r image_raw:=/my_cam/image_raw -r camera_info:=/my_cam/camera_info
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

from sharpdepth_core.engines import DEVICE_NAME
from sharpdepth_core.images import DEFAULT_MAX_INPUT_PIXELS, check_message_size
from sharpdepth_core.models.hub import quiet_loading
from sharpdepth_core.checkpoints import DEPTH_ANYTHING_OUTDOOR_ID
from sharpdepth_core.models.metric import METRIC_BACKENDS
from sharpdepth_core.pipeline import DIFFERENCE_METHODS
from sharpdepth_core.limits import MAX_PROCESSING_RES
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
from sharpdepth_ros.loaders import DTYPES, PIPELINE_LOADERS, describe
from sharpdepth_ros.params import BOOL, FLOAT, INT, STR, descriptor, run

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


# name -> (default, descriptor). Model parameters are read-only: a new model means a restart.
PARAMETERS = {
    "model": ("", descriptor("SharpDepth pipeline folder (student/, metric/, pipeline.json); '' = the embedded models", STR, read_only=True)),
    "student": ("", descriptor("instead of `model`: student diffusers folder or hub id (SharpDepth release, Lotus-G)", STR, read_only=True)),
    "metric_backend": ("", descriptor(f"metric model f_D ({', '.join(METRIC_BACKENDS)}); '' = the pipeline folder's", STR, read_only=True)),
    "metric_model": ("", descriptor("metric model folder or hub id; '' = the pipeline folder's, or the backend's usual hub id "
                                    "(depth-anything-v2: Indoor-Small, capped at 20 m; outdoors use "
                                    f"{DEPTH_ANYTHING_OUTDOOR_ID}, 80 m)", STR, read_only=True)),
    "engine": ("pytorch", descriptor("inference engine: pytorch, onnx, tensorrt or aoti (AOTInductor packages: no compilation at start)", STR, read_only=True)),
    "engine_dir": ("", descriptor("onnx/tensorrt/aoti: the folder written by `sharpdepth export`", STR, read_only=True)),
    "engine_cache": ("", descriptor("tensorrt: engine cache folder; '' = <engine_dir>/tensorrt", STR, read_only=True)),
    "device": ("auto", descriptor("auto, cpu, cuda, cuda:N or mps", STR, read_only=True)),
    "dtype": ("float32", descriptor("float32, float16 or bfloat16", STR, read_only=True)),
    "num_threads": (1, descriptor("PyTorch CPU threads of this process: 1 unless the machine does nothing else (README: "
                                  "ROS 2); 0 = PyTorch's default, one per core", INT, read_only=True, integer=(0, 1024))),
    "image_transport": ("raw", descriptor("'raw' (image_raw) or 'compressed' (image_raw/compressed)", STR, read_only=True)),
    "max_input_pixels": (DEFAULT_MAX_INPUT_PIXELS, descriptor("largest image accepted, width x height, checked from the header "
                                                              "before any copy or decode; larger frames are skipped", INT,
                                                              integer=(1, 2**31 - 1))),
    "processing_res": (0, descriptor("longer edge of the processing grid, pixels (>= 64); 0 = the model's default", INT, integer=(0, MAX_PROCESSING_RES))),
    "seed": (0, descriptor("seed of the two noise draws; -1 = a fresh draw per frame", INT, integer=(-1, 2**31 - 1))),
    "use_camera_intrinsics": (True, descriptor("give camera_info K to the metric model: a departure from the reference code, "
                                               "which passes none (UniDepth V2 and Depth Pro are built to use a calibrated "
                                               "camera); false: reference behaviour, and images need no camera_info", BOOL)),
    "difference_map": ("exact", descriptor("how the difference map is made: exact (VAE decode, the reference), light (the "
                                           "pipeline folder's light_decoder/) or latent (no decode); see bench/RESULTS.md",
                                           STR, read_only=True)),
    "fov_deg": (60.0, descriptor("horizontal field of view of the pinhole K assumed for depth/camera_info and the cloud when "
                                 "no camera_info arrives (use_camera_intrinsics false, or none within 2 s)", FLOAT,
                                 floating=(1.0, 179.0))),
    "publish_points": (True, descriptor("publish the point cloud on 'points'", BOOL)),
    "publish_difference": (False, descriptor("publish the difference map on 'depth/difference'", BOOL)),
    "publish_colored": (True, descriptor("publish a colour-mapped depth image on 'depth/colored'", BOOL)),
    "cloud_rgb": (True, descriptor("xyzrgb cloud (point_step 32) instead of xyz (16)", BOOL)),
    "cloud_decimation": (1, descriptor("keep every n-th pixel in both directions", INT, integer=(1, 16))),
    "cloud_max_range": (0.0, descriptor("NaN for points deeper than this along z, metres; 0 = no limit", FLOAT, floating=(0.0, 1000.0))),
    "stats_period": (5.0, descriptor("seconds between statistics log lines and /diagnostics", FLOAT, read_only=True, floating=(0.5, 3600.0))),
}


def validate(name: str, value) -> str | None:
    """Why `value` is not acceptable for parameter `name` (ranges are checked by the descriptors)."""
    if name == "difference_map" and value not in DIFFERENCE_METHODS:
        return f"difference_map '{value}' is not one of {', '.join(DIFFERENCE_METHODS)}"
    if name == "metric_backend" and value and value not in METRIC_BACKENDS:
        return f"metric_backend '{value}' is not one of {', '.join(METRIC_BACKENDS)}"
    if name == "processing_res" and 0 < value < 64:
        return f"processing_res {value} is below 64 (0 = the model's default)"
    if name == "engine" and value not in PIPELINE_LOADERS:
        return f"engine '{value}' is not available (available: {', '.join(PIPELINE_LOADERS)})"
    if name == "device" and not DEVICE_NAME.match(value):
        return f"device '{value}' is not auto, cpu, cuda, cuda:N or mps"
    if name == "dtype" and value not in DTYPES:
        return f"dtype '{value}' is not one of {', '.join(DTYPES)}"
    if name == "image_transport" and value not in ("raw", "compressed"):
        return f"image_transport '{value}' is not 'raw' or 'compressed'"
    return None


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


class SharpDepthNode(Node):
    """Subscribes `image_raw` (or `image_raw/compressed`) and `camera_info`; publishes `depth/image`,
    `depth/camera_info`, `points`, optionally `depth/colored` and `depth/difference`.

    `pipeline`: an already built pipeline to use instead of loading one from the parameters (the
    demo's and the tests' seam: tiny models, or a model that fails on purpose).
    """

    def __init__(self, pipeline=None, **node_kwargs) -> None:
        node_kwargs.setdefault("namespace", "camera")
        super().__init__("sharpdepth", **node_kwargs)
        # first: destroy_node needs them, also for a node whose start failed (rclpy destroys it at shutdown)
        self._lock = threading.Condition()
        self._publishing = threading.Lock()  # held while outputs go out; shutdown waits for it
        self._declare_parameters()
        self.pipeline = self._load_pipeline(pipeline)
        self._init_state()
        image_topic = self._connect()
        self._worker = threading.Thread(target=self._work, name="sharpdepth-inference", daemon=True)
        self._worker.start()
        self.get_logger().info(f"SharpDepth ready: {image_topic} -> {self.resolve_topic_name('depth/image')}, "
                               f"{self.resolve_topic_name('points')}")

    def _declare_parameters(self) -> None:
        """Declare every parameter (each value checked as it is declared: a bad one stops the start)
        and keep the values as declared; later sets are checked the same way and applied once set."""
        self.add_on_set_parameters_callback(self._check_parameters)
        for name, (default, desc) in PARAMETERS.items():
            self.declare_parameter(name, default, desc)
        self._settings = {name: self.get_parameter(name).value for name in PARAMETERS}
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
            pipeline = PIPELINE_LOADERS[self._settings["engine"]](self._settings)
        line, embedded = describe(self._settings, pipeline, supplied)
        (self.get_logger().warning if embedded else self.get_logger().info)(line)
        if getattr(pipeline, "untrained", False):
            self.get_logger().warning("UNTRAINED random-weight models: the depth means nothing, only the plumbing is real")
        return pipeline

    def _init_state(self) -> None:
        """What the callbacks and the worker share (under `_lock`), and the worker's own helpers."""
        self.stats = Stats()
        self._cloud = PointCloudBuilder()
        self._rectifier = Rectifier()
        self._infos: OrderedDict[str, CameraInfo] = OrderedDict()  # latest CameraInfo of the latest MAX_CAMERAS frame_ids
        self._first_image: float | None = None  # when the first image arrived (the camera_info grace)
        self._said_fallback = False
        self._pending = None  # the newest frame not yet taken by the worker
        self._stop = False
        self._last_log: OrderedDict[str, float] = OrderedDict()
        self.last_rejection = ""
        self._reported = (time.monotonic(), Stats())

    def _connect(self) -> str:
        """Subscriptions, publishers and the statistics timer; returns the image topic subscribed."""
        sensor = qos_profile_sensor_data
        override = QoSOverridingOptions.with_default_policies()
        image_topic = self.resolve_topic_name("image_raw")  # remapped; '/compressed' follows the remap
        if self._settings["image_transport"] == "compressed":
            image_topic += "/compressed"
            self.create_subscription(CompressedImage, image_topic, self._on_compressed, sensor, qos_overriding_options=override)
        else:
            self.create_subscription(Image, "image_raw", self._on_image, sensor, qos_overriding_options=override)
        self.create_subscription(CameraInfo, "camera_info", self._on_camera_info, sensor, qos_overriding_options=override)
        out = QoSProfile(depth=2)  # reliable, small: RViz and best-effort consumers both match
        self._pub_depth = self.create_publisher(Image, "depth/image", out, qos_overriding_options=override)
        self._pub_info = self.create_publisher(CameraInfo, "depth/camera_info", out, qos_overriding_options=override)
        self._pub_points = self.create_publisher(PointCloud2, "points", out, qos_overriding_options=override)
        self._pub_colored = self.create_publisher(Image, "depth/colored", out, qos_overriding_options=override)
        self._pub_difference = self.create_publisher(Image, "depth/difference", out, qos_overriding_options=override)
        self._pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", 10) if DiagnosticArray else None
        self.create_timer(self._settings["stats_period"], self.report)
        return image_topic

    # --- parameters -------------------------------------------------------------------------

    def _check_parameters(self, params) -> SetParametersResult:
        """Reject a bad value with its reason (ranges and read-only are the descriptors' part)."""
        for p in params:
            reason = validate(p.name, p.value)
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

    def _on_camera_info(self, msg: CameraInfo) -> None:
        with self._lock:
            remember(self._infos, msg.header.frame_id, msg, MAX_CAMERAS)

    def _on_image(self, msg: Image) -> None:
        if self._accepts_size(msg):  # from the header: nothing copied yet
            self._offer(msg, image_to_rgb8)

    def _on_compressed(self, msg: CompressedImage) -> None:
        if self._accepts_size(msg):  # the header only (a format whose size it does not give is refused)
            self._offer(msg, compressed_to_rgb8)

    def _accepts_size(self, msg) -> bool:
        """False (the frame counted and skipped) when it is above max_input_pixels."""
        try:
            check_message_size(msg, self._settings["max_input_pixels"])
        except ValueError as error:
            with self._lock:
                self.stats.received += 1
            self._reject("input", str(error))
            return False
        return True

    def _offer(self, msg, decode) -> None:
        """Latest frame wins: a frame still waiting when a newer one arrives is dropped."""
        with self._lock:
            self.stats.received += 1
            if self._first_image is None:
                self._first_image = time.monotonic()
            if self._pending is not None:
                self.stats.dropped += 1
            self._pending = (msg, decode, time.perf_counter())
            self._lock.notify()

    # --- inference worker -------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            with self._lock:
                while self._pending is None and not self._stop:
                    self._lock.wait()
                if self._stop:
                    return
                item, self._pending = self._pending, None
            self._process(*item)

    def _process(self, msg, decode, arrived: float) -> None:
        try:
            self._infer_and_publish(msg, decode, arrived)
        except Exception as error:
            if self._stop or not self.context.ok():
                return  # shutting down (Ctrl-C, SIGTERM): the frame is abandoned quietly
            if isinstance(error, torch.cuda.OutOfMemoryError):  # torch < 2.5 has only this name
                torch.cuda.empty_cache()
                self._reject("out-of-memory", f"out of memory ({str(error).splitlines()[0]}); lower processing_res or use dtype float16/bfloat16")
            elif isinstance(error, BadModelOutput):
                self._reject("model", str(error))
            elif isinstance(error, ValueError):  # bad image, bad calibration
                self._reject("input", str(error))
            else:  # a bug must not take the camera pipeline down: say so loudly
                self._reject("error", f"unexpected {type(error).__name__}: {error}")

    def _calibration(self, frame_id: str, image_hw: tuple[int, int], header, settings: dict) -> tuple[CameraInfo, bool]:
        """(this frame's CameraInfo, whether it is a real calibration rather than the fov_deg pinhole).

        Images need camera_info unless use_camera_intrinsics is false, or no camera_info at all has
        arrived within CAMERA_INFO_GRACE_S of the first image (a camera without calibration).
        """
        with self._lock:
            info = self._infos.get(frame_id)
            known = list(self._infos)
            waited = time.monotonic() - (self._first_image or time.monotonic())
        if info is not None:
            return info, True
        if settings["use_camera_intrinsics"] and (known or waited < CAMERA_INFO_GRACE_S):
            seen = f" (camera_info arrives for {', '.join(repr(k) for k in known)})" if known else ""
            raise ValueError(f"no camera_info for frame_id '{frame_id}' yet on {self.resolve_topic_name('camera_info')}{seen}")
        if not self._said_fallback:
            self._said_fallback = True
            why = ("use_camera_intrinsics is false" if not settings["use_camera_intrinsics"]
                   else f"no camera_info on {self.resolve_topic_name('camera_info')} within {CAMERA_INFO_GRACE_S:g} s")
            self.get_logger().warning(
                f"{why}: frames without camera_info get a pinhole K of fov_deg {settings['fov_deg']:g} degrees (horizontal, "
                "centred) for depth/camera_info and the cloud; the metric model runs without K. Set fov_deg to your lens, "
                "or publish camera_info")
        return self._assumed(image_hw, header, settings), False

    @staticmethod
    def _assumed(image_hw: tuple[int, int], header, settings: dict) -> CameraInfo:
        """The fov_deg pinhole of frames without a usable calibration."""
        h, w = image_hw
        return camera_info(pinhole_K(w, h, settings["fov_deg"]), image_hw, header)

    def _camera(self, rgb: np.ndarray, info: CameraInfo, calibrated: bool, header, settings: dict):
        """(image, its CameraInfo, K, whether K is calibrated, HxW mask of pixels seen or None).

        An implausible K, P, ROI or binning (`geometry.check_calibration`) is refused and the frame
        gets the fov_deg pinhole, the model running without K; a rectification that cannot be used
        (D, R) skips the frame, whose pixels are where the camera model cannot say. Either is one
        throttled line per camera.
        """
        try:
            K = image_intrinsics(info, rgb.shape[:2])
        except ValueError as error:
            if not calibrated:
                raise
            self._refuse_calibration(header.frame_id, f"{error}; its frames get the fov_deg {settings['fov_deg']:g} "
                                     "pinhole K and the metric model runs without K")
            info = self._assumed(rgb.shape[:2], header, settings)
            return rgb, info, np.reshape(info.k, (3, 3)), False, None
        try:
            if not has_distortion(info):  # pinhole cameras (all-zero D) skip rectification entirely
                return rgb, info, K, calibrated, None
            rgb, info, seen = self._rectifier(rgb, info)
        except ValueError as error:
            self._refuse_calibration(header.frame_id, f"{error}; its frames are skipped", skipped=True)
            return None
        return rgb, info, np.reshape(info.k, (3, 3)), calibrated, seen  # the rectified pinhole: on the image grid

    def _refuse_calibration(self, frame_id: str, message: str, skipped: bool = False) -> None:
        """One warning per camera (frame_id) every THROTTLE_S seconds; a skipped frame is counted."""
        now = time.monotonic()
        key = f"calibration:{frame_id}"
        text = f"camera_info of frame_id '{frame_id}' refused: {message}"
        with self._lock:
            if skipped:
                self.stats.rejected["calibration"] = self.stats.rejected.get("calibration", 0) + 1
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

    def _infer_and_publish(self, msg, decode, arrived: float) -> None:
        settings = self._settings  # one snapshot per frame: a parameter set meanwhile applies to the next
        t0 = time.perf_counter()
        rgb = decode(msg)
        info, calibrated = self._calibration(msg.header.frame_id, rgb.shape[:2], msg.header, settings)
        camera = self._camera(rgb, info, calibrated, msg.header, settings)
        if camera is None:
            return
        rgb, info, K, calibrated, seen = camera
        t1 = time.perf_counter()
        out = self.pipeline(rgb, K=K if settings["use_camera_intrinsics"] and calibrated else None,
                            seed=None if settings["seed"] < 0 else settings["seed"],
                            processing_res=settings["processing_res"] or None)  # 0: the pipeline's own
        t2 = time.perf_counter()
        depth = _image_of(out.depth)
        bad = int((~np.isfinite(depth)).sum())
        if bad:
            raise BadModelOutput(f"the model returned {bad} non-finite depth values of {depth.size}")
        depth[depth <= 0] = np.nan  # REP 118: invalid is NaN
        if seen is not None and seen.shape == depth.shape:
            depth[~seen] = np.nan  # rectified pixels the camera did not see
        cpu0 = time.thread_time()
        if not self._publish(msg.header, rgb, info, depth, out, settings):
            return
        t3, own = time.perf_counter(), time.thread_time() - cpu0
        stages = {"decode": t1 - t0, **{f"model/{k}": v for k, v in out.timings.items()}, "model": t2 - t1,
                  "publish": own, "publish_wall": t3 - t2, "total": t3 - arrived}
        with self._lock:
            self.stats.published += 1
            self.stats.fallbacks += int(any(getattr(out, "fallback", [])))
            for k, v in stages.items():
                self.stats.stage_s[k] = self.stats.stage_s.get(k, 0.0) + v

    def _publish(self, header, rgb: np.ndarray, info: CameraInfo, depth: np.ndarray, out, settings: dict) -> bool:
        """Build and publish the outputs; False when the node is shutting down (nothing published).

        The 'publish' stage is this thread's CPU time here: the node's own cost, apart from other
        threads of the process holding the GIL meanwhile (an in-process recorder's callbacks);
        'publish_wall' is the wall-clock time including them.
        """
        with self._publishing:
            if self._stop or not self.context.ok():
                return False
            depth_info = depth_camera_info(info, rgb.shape[:2], depth.shape, header)
            self._pub_depth.publish(numpy_to_image(depth, "32FC1", header))
            self._pub_info.publish(depth_info)
            if settings["publish_points"]:
                color = None
                if settings["cloud_rgb"]:
                    color = rgb if rgb.shape[:2] == depth.shape else cv2.resize(rgb, depth.shape[::-1], interpolation=cv2.INTER_AREA)
                K = np.reshape(depth_info.k, (3, 3))  # a rectified camera has K = P
                self._pub_points.publish(self._cloud(depth, K, header, color, settings["cloud_decimation"], settings["cloud_max_range"]))
            if settings["publish_colored"]:
                self._pub_colored.publish(numpy_to_image(colorize_depth(depth), "rgb8", header))
            if settings["publish_difference"] and getattr(out, "difference", None) is not None:
                self._pub_difference.publish(numpy_to_image(_image_of(out.difference), "32FC1", header))
        return True

    def _reject(self, kind: str, message: str) -> None:
        """Count the skipped frame; log each kind of problem at most once every THROTTLE_S seconds.

        The kind of problem is the message with its variable parts (quoted names such as frame_ids
        and encodings, numbers) blanked: 300 random frame_ids are one problem, not 300.
        """
        key = kind + ":" + re.sub(r"'[^']*'|\d+", "#", message)
        now = time.monotonic()
        with self._lock:
            self.stats.rejected[kind] = self.stats.rejected.get(kind, 0) + 1
            count = self.stats.rejected[kind]
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
        """The statistics since the last report: one log line and /diagnostics (every stats_period)."""
        now = time.monotonic()
        with self._lock:
            current = self.stats.copy()
        then, before = self._reported
        self._reported = (now, current)
        period = max(now - then, 1e-9)
        received, published = current.received - before.received, current.published - before.published
        dropped = current.dropped - before.dropped
        rejected = {k: v - before.rejected.get(k, 0) for k, v in current.rejected.items() if v > before.rejected.get(k, 0)}
        latency = {k: 1e3 * (v - before.stage_s.get(k, 0.0)) / published for k, v in current.stage_s.items()} if published else {}
        text = (
            f"in {received / period:.1f} Hz, out {published / period:.1f} Hz, dropped {dropped} "
            f"(total {current.dropped}), skipped {sum(rejected.values())}, fit fallbacks {current.fallbacks - before.fallbacks}"
            + (f" {rejected}" if rejected else "")
            + ("; ms/frame " + ", ".join(f"{k} {v:.1f}" for k, v in latency.items()) if latency else "")
        )
        if received or published or rejected:
            self.get_logger().info(text)
        if self._pub_diag is not None:
            self._publish_diagnostics(text, received / period, published / period, dropped, current.dropped, rejected, latency)

    def _publish_diagnostics(self, text, in_hz, out_hz, dropped, dropped_total, rejected, latency) -> None:
        status = DiagnosticStatus(name=f"{self.get_fully_qualified_name()}: depth", hardware_id=str(self._settings["device"]))
        status.level = DiagnosticStatus.WARN if rejected or (in_hz > 0 and out_hz == 0) else DiagnosticStatus.OK
        status.message = text
        values = {"input_hz": f"{in_hz:.2f}", "output_hz": f"{out_hz:.2f}", "dropped": str(dropped),
                  "dropped_total": str(dropped_total), "skipped": str(sum(rejected.values()))}
        values.update({f"latency_ms/{k}": f"{v:.2f}" for k, v in latency.items()})
        status.values = [KeyValue(key=k, value=v) for k, v in values.items()]
        array = DiagnosticArray(status=[status])
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
        with self._publishing:  # a publication in progress ends; none starts after `_stop`
            pass
        if self.busy:
            self._worker.join(timeout=SHUTDOWN_GRACE_S)
        super().destroy_node()


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

    code = run("sharpdepth", make_node, rclpy.spin, __doc__, PARAMETERS, args)
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
