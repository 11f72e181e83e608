"""The SharpDepth ROS 2 node: camera image + CameraInfo in, metric depth, CameraInfo and point cloud out.

A managed (lifecycle) node and a thin adapter around `SharpDepthPipeline` (loaded by `loaders`):
configure loads the models or exported engines and makes the lifecycle publishers, activate
subscribes and starts the worker, deactivate unsubscribes (the frame in the model is dropped, not
published), cleanup releases the models; `autostart` (default) configures and activates at start.
Calibration policy: `calibration`; counters and reports: `statistics`; messages: `frames`; temporal mode: `temporal`.

Inference runs in one worker thread the node owns (not an executor callback: `torch.compile` and long
calls misbehave there, and the lifecycle services would wait behind it); the image callback keeps only
the newest frame per camera, so a slow model drops frames (counted) instead of queueing them. Each
camera has a publishing thread, so the model and the host's conversions overlap. Several cameras
(`cameras`) share the model one batch at a time (`scheduling.FairShare`); a camera whose outputs are
still going out is not served, so a slow or big camera never holds the others back. Bad input costs
one throttled log line and that frame, never the node.
"""
from __future__ import annotations

import sys
import threading
import time

import numpy as np
import torch
from rcl_interfaces.msg import SetParametersResult
from rclpy.lifecycle import LifecycleNode, TransitionCallbackReturn
from rclpy.qos import QoSProfile, qos_profile_sensor_data
from rclpy.qos_overriding_options import QoSOverridingOptions
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from sharpdepth_core.models.hub import quiet_loading
from sharpdepth_ros.calibration import camera_model, fallback_notice, frame_info
from sharpdepth_ros.conversions import compressed_to_rgb8, image_to_rgb8, remember
from sharpdepth_ros.frames import OUTPUTS, Camera, HostOutputs, ReadyFrame, batch_key, frame_messages, image_batch, on_host, problem
from sharpdepth_ros.loaders import MemoryFreed, load_pipeline, ready
from sharpdepth_ros.node_parameters import PARAMETERS, main, set_problem  # main: the entry point (--help, then this node)
from sharpdepth_ros.params import declare_checked, fatal_text
from sharpdepth_ros.scheduling import FairShare
from sharpdepth_ros.statistics import Stats, Throttle, diagnostic_rows, farewell, problem_key, report
from sharpdepth_ros.temporal import TemporalStep

try:  # diagnostic_msgs is optional: the periodic log line carries the same numbers
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
except ImportError:  # pragma: no cover - depends on the installation
    DiagnosticArray = None

SUCCESS, FAILURE, ERROR = TransitionCallbackReturn.SUCCESS, TransitionCallbackReturn.FAILURE, TransitionCallbackReturn.ERROR
MAX_CAMERAS = 8  # camera_info kept for this many frame_ids (the latest ones): memory stays bounded
SHUTDOWN_GRACE_S = 2.0  # how long cleanup and shutdown wait for a frame in progress to finish


class SharpDepthNode(LifecycleNode):
    """Subscribes `image_raw` (or `image_raw/compressed`) and `camera_info`; publishes `depth/image`, `depth/camera_info`,
    `points`, optionally `depth/confidence`, `depth/colored`, `depth/difference`; each under every camera namespace of `cameras`.
    `pipeline`: one to use instead of loading one from the parameters (the demo's and the tests' seam); the
    caller's, so cleanup only lets go of it."""

    def __init__(self, pipeline=None, **node_kwargs) -> None:
        node_kwargs.setdefault("namespace", "camera")
        super().__init__("sharpdepth", **node_kwargs)
        self._lock, self._reporting = threading.Condition(), threading.Lock()  # _lock: the cameras' frames, activation, run
        self._supplied, self.pipeline, self.cameras, self._fair, self._temporal = pipeline, None, [], None, None
        self._subscriptions_made, self._worker, self._senders = [], None, []
        self._run: object | None = None  # the worker's and senders' token: they end when it changes
        self._activations, self._activation, self._autostarting = 0, 0, False  # _activation: its number, 0 while inactive
        self._state, self._why, self._failure = "unconfigured", "", None
        self._throttle, self.last_rejection, self._reported_at = Throttle(), "", time.monotonic()
        self._settings = declare_checked(self, PARAMETERS, self._check_parameters, self._apply_parameters)
        self._pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", 10) if DiagnosticArray else None
        self.create_timer(self._settings["stats_period"], self.report)
        if self._settings["autostart"]:  # a configure failure is the start's failure: one FATAL line (params.run)
            self._autostarting = True
            configured, self._autostarting = self.trigger_configure(), False
            if configured != SUCCESS:
                raise self._failure
            self.trigger_activate()

    # --- lifecycle ----------------------------------------------------------------------------

    def on_configure(self, state) -> TransitionCallbackReturn:
        """Load the models (checked: a bad path, device or export is one line naming the fix and the
        node stays unconfigured), warm up where the grid is known, make the cameras' publishers."""
        try:
            if self._settings["num_threads"]:
                torch.set_num_threads(self._settings["num_threads"])  # before the models load and warm up
            quiet_loading()  # the start-up line says what loaded
            pipeline = self._supplied if self._supplied is not None else load_pipeline(self._settings)
            ready(self._settings, pipeline, self._supplied is not None, self.get_logger())
            self.pipeline = pipeline
        except Exception as error:  # whatever it is, the node stays up, unconfigured
            self._release()
            self._failure = error
            self._why = f"configure failed: {fatal_text(error)}"
            if not self._autostarting:
                self.get_logger().error(f"{self._why}; fix it and configure again (ros2 lifecycle set {self.get_fully_qualified_name()} configure)")
            return FAILURE
        self.cameras = [Camera(name) for name in self._settings["cameras"]]
        self._fair, self._temporal = FairShare(self.cameras), TemporalStep.from_settings(self._settings, self.get_logger().warning, self)
        out = QoSProfile(depth=2)  # reliable, small: RViz and best-effort consumers both match
        override = QoSOverridingOptions.with_default_policies()
        for camera in self.cameras:
            camera.info_topic = self.resolve_topic_name(camera.topic("camera_info"))  # once: the frames' lines name it
            camera.publishers = {key: self.create_lifecycle_publisher(kind, camera.topic(topic), out, qos_overriding_options=override)
                                 for key, (kind, topic) in OUTPUTS.items()}
        self._state, self._why = "inactive", ""
        return SUCCESS

    def on_activate(self, state) -> TransitionCallbackReturn:
        """Subscribe every camera and start the worker; the lifecycle publishers publish from here on.
        Parameters set while inactive are in the settings the first frame reads."""
        try:
            self._subscribe()
        except Exception as error:  # on_error then releases everything
            self._why = f"activate failed: {fatal_text(error)}"
            self.get_logger().error(self._why)
            return ERROR
        with self._lock:
            self._activations += 1
            self._activation = self._activations
            if self._run is None:
                self._start_threads()
        self._state = "active"
        return super().on_activate(state)

    def on_deactivate(self, state) -> TransitionCallbackReturn:
        """Unsubscribe; a frame in the model is dropped when it ends (a model call cannot be
        interrupted, and this answers at once); a publication in progress ends first, none follows."""
        for subscription in self._subscriptions_made:
            self.destroy_subscription(subscription)
        self._subscriptions_made = []
        with self._lock:
            self._activation = 0
            for camera in self.cameras:
                camera.pending = camera.outbox = None
            if self._temporal is not None:  # the first frame after activate is its own per-frame result
                self._temporal.reset()
            self._lock.notify_all()
        for camera in self.cameras:
            with camera.publishing:
                pass
        self._state = "inactive"
        return super().on_deactivate(state)

    def on_cleanup(self, state) -> TransitionCallbackReturn:
        """Release the models, the worker and the engines; say what memory that freed."""
        self._release(say=True)
        self._state = "unconfigured"
        return SUCCESS

    def on_shutdown(self, state) -> TransitionCallbackReturn:
        """From any state: as deactivate and cleanup."""
        self.on_deactivate(state)
        self._release()
        self._state = "finalized"
        return SUCCESS

    def on_error(self, state) -> TransitionCallbackReturn:
        """A transition raised or failed hard: everything is released, the node is unconfigured (and says why)."""
        self.on_shutdown(state)
        self._why = self._why or f"error in a transition from {state.label}"
        self.get_logger().error(f"{self._why}: released everything; the node is unconfigured")
        self._state = "unconfigured"
        return SUCCESS

    def _subscribe(self) -> None:
        sensor, override = qos_profile_sensor_data, QoSOverridingOptions.with_default_policies()
        compressed, topics = self._settings["image_transport"] == "compressed", []
        kind, decode = (CompressedImage, compressed_to_rgb8) if compressed else (Image, image_to_rgb8)
        for camera in self.cameras:
            image_topic = self.resolve_topic_name(camera.topic("image_raw")) + ("/compressed" if compressed else "")  # remapped
            made = self.create_subscription(kind, image_topic, lambda msg, c=camera: self._on_frame(c, msg, decode), sensor,
                                            qos_overriding_options=override)
            info = self.create_subscription(CameraInfo, camera.topic("camera_info"), lambda msg, c=camera: self._on_camera_info(c, msg),
                                            sensor, qos_overriding_options=override)
            self._subscriptions_made += [made, info]
            for pose_kind, pose_topic, on_pose in self._temporal.pose_inputs(camera.name) if self._temporal else []:  # its poses
                self._subscriptions_made.append(self.create_subscription(pose_kind, pose_topic, on_pose, sensor))
            topics.append(f"{image_topic} -> {self.resolve_topic_name(camera.topic('depth/image'))}, "
                          f"{self.resolve_topic_name(camera.topic('points'))}")
        self.get_logger().info("SharpDepth active: " + "; ".join(topics))

    def _start_threads(self) -> None:
        """The worker and publishing threads of this configuration (under `_lock`); the new worker waits for one
        still in a model call of an earlier configuration: model calls stay one at a time."""
        run, previous = object(), self._worker
        self._run = run
        self._worker = threading.Thread(target=self._work, args=(run, previous), name="sharpdepth-inference", daemon=True)
        self._senders = [threading.Thread(target=self._publish_outputs, args=(camera, run), daemon=True,
                                          name="sharpdepth-publish" + (f"-{camera.name}" if camera.name else ""))
                         for camera in self.cameras]
        for thread in (self._worker, *self._senders):
            thread.start()

    def _release(self, say: bool = False) -> None:
        """Stop the threads, let go of the models (of a supplied pipeline, this node's reference only) and the
        publishers; with `say`, log the memory freed."""
        memory = MemoryFreed()
        self._stop_threads()
        for camera in self.cameras:
            for publisher in camera.publishers.values():
                self.destroy_lifecycle_publisher(publisher)
        with self._lock:
            self.cameras, self._fair, self.pipeline, self._temporal = [], None, None, None
        freed = memory.collect()
        if say:
            running = "; a model call still runs: its memory goes when it ends" if self.busy else ""
            self.get_logger().info(f"cleanup: models released, {freed}{running}")

    def _stop_threads(self) -> None:
        """End the worker and publishing threads; a frame in progress gets SHUTDOWN_GRACE_S (a model
        call cannot be interrupted; whoever ends the process deals with one that runs on)."""
        with self._lock:
            self._run = None
            self._lock.notify_all()
        for camera in self.cameras:
            with camera.publishing:  # a publication in progress ends; none starts after this
                pass
        for thread in self._senders:
            thread.join(timeout=SHUTDOWN_GRACE_S)
        if self.busy:
            self._worker.join(timeout=SHUTDOWN_GRACE_S)

    busy = property(lambda self: self._worker is not None and self._worker.is_alive(), doc="The worker runs (in a model call, after a stop).")

    def destroy_node(self) -> None:
        """Stop the threads: no output is published after this starts (the models stay: the process ends)."""
        self._stop_threads()
        super().destroy_node()

    # --- parameters -------------------------------------------------------------------------

    def _check_parameters(self, params) -> SetParametersResult:
        """Refuse a value with its reason (`set_problem`; ranges and read-only are the descriptors' part)."""
        for p in params:
            reason = set_problem(p.name, p.value, getattr(self, "_settings", {}), self.pipeline, self.get_fully_qualified_name())
            if reason:
                return SetParametersResult(successful=False, reason=reason)
        return SetParametersResult(successful=True)

    def _apply_parameters(self, params) -> None:
        """Take all new values of the node's parameters at once (rclpy's own, such as qos_overrides.*,
        are not settings). The worker reads the settings once per frame; configure reads its own."""
        settings = dict(self._settings)
        settings.update({p.name: p.value for p in params if p.name in PARAMETERS})
        self._settings = settings  # one assignment: the worker sees old or new settings, never a mix

    # --- input ------------------------------------------------------------------------------

    def _on_camera_info(self, camera: Camera, msg: CameraInfo) -> None:
        with self._lock:  # the latest of each frame_id, MAX_CAMERAS frame_ids at most
            remember(camera.infos, msg.header.frame_id, msg, MAX_CAMERAS)

    def _on_frame(self, camera: Camera, msg, decode) -> None:
        """Latest frame wins, per camera: a frame still waiting when a newer one of its camera arrives is
        dropped. Its size comes from the header (nothing copied yet); above max_input_pixels it is
        counted and skipped; a size the header does not give runs in a batch of its own."""
        try:
            size = batch_key(msg, self._settings["max_input_pixels"], camera.name)
        except ValueError as error:
            with self._lock:
                camera.stats.received += 1
            return self._reject(camera, "input", str(error))
        with self._lock:
            if not self._activation:  # a callback already under way when deactivate came
                return
            camera.stats.received += 1
            camera.first_image = camera.first_image or time.monotonic()
            if camera.pending is not None:
                camera.stats.dropped += 1
            camera.pending = (msg, decode, time.perf_counter(), size)
            self._lock.notify_all()

    # --- inference worker -------------------------------------------------------------------

    def _work(self, run: object, previous: threading.Thread | None) -> None:
        """Serve the cameras' newest frames until `run` ends, chosen by FairShare among those with no outputs still
        waiting for their publishing thread (a camera slower to publish than to compute is paced by its own)."""
        if previous is not None:
            previous.join()
        while True:
            with self._lock:
                while self._run is run and not (ready := {c: c.pending[3] for c in self.cameras if c.pending and c.outbox is None}):
                    self._lock.wait()
                if self._run is not run:
                    return
                chosen = self._fair.next_batch(ready, time.monotonic())
                taken = [(c, *c.pending[:3]) for c in chosen]
                for camera in chosen:
                    camera.pending = None
                activation, fair = self._activation, self._fair
            t0 = time.perf_counter()
            self._process(taken, activation)
            del taken  # the messages: a big camera's are large
            fair.charge(chosen, time.perf_counter() - t0, time.monotonic())  # the worker's own

    def _process(self, taken: list, activation: int) -> None:
        """The frames chosen for this step: each decoded and calibrated on its own, then one model call
        per group that can share a batch (all with K or all without). A frame's problem costs that
        frame; a group's, the group's frames."""
        settings = self._settings  # one snapshot per step: a parameter set meanwhile applies to the next
        groups: dict[tuple, list[ReadyFrame]] = {}
        for camera, msg, decode, arrived in taken:
            frame = self._guarded([camera], self._prepare, camera, msg, decode, arrived, settings, activation)
            if frame is not None:
                groups.setdefault((frame.rgb.shape, frame.K is None), []).append(frame)
        for group in groups.values():
            self._guarded([f.camera for f in group], self._infer, group, settings)

    def _guarded(self, cameras: list[Camera], step, *args):
        """`step(*args)`, or None when it raised: the frames of `cameras` are skipped with the reason."""
        try:
            return step(*args)
        except Exception as error:
            if self._run is None or not self.context.ok():
                return None  # stopping (Ctrl-C, SIGTERM, cleanup): the frames are abandoned quietly
            kind, message = problem(error)
            if kind == "out-of-memory":
                torch.cuda.empty_cache()
            for camera in cameras:
                self._reject(camera, kind, message)
            return None

    def _prepare(self, camera: Camera, msg, decode, arrived: float, settings: dict, activation: int) -> ReadyFrame | None:
        """The frame decoded, with its calibration (`calibration`: rectified where needed)."""
        t0 = time.perf_counter()
        rgb = decode(msg)
        with self._lock:
            infos, waited = dict(camera.infos), time.monotonic() - (camera.first_image or time.monotonic())
        info, calibrated = frame_info(infos, msg.header.frame_id, rgb.shape[:2], msg.header, settings, waited, camera.info_topic)
        if not calibrated and not camera.said_fallback:
            camera.said_fallback = True
            self.get_logger().warning(camera.said(fallback_notice(settings, camera.info_topic)))
        model = camera_model(rgb, info, calibrated, msg.header, settings["fov_deg"], camera.rectifier)
        if model.refused:
            self._say(camera, "calibration", model.refused)
        K = model.K if settings["use_camera_intrinsics"] and model.calibrated else None
        return ReadyFrame(camera, msg.header, model.rgb, model.info, K, model.seen, arrived, time.perf_counter() - t0, activation)

    def _infer(self, group: list[ReadyFrame], settings: dict) -> None:
        """One model call for frames of one size (a batch: the seeded noise is the same for every image,
        so each camera's depth is what it would be alone); each camera's outputs to its outbox, unless
        the node was deactivated meanwhile (the frame is dropped, counted)."""
        t1 = time.perf_counter()
        images = image_batch([f.rgb for f in group])
        K = None if group[0].K is None else np.stack([f.K for f in group])
        out = self.pipeline(images, K=K, seed=None if settings["seed"] < 0 else settings["seed"],
                            processing_res=settings["processing_res"] or None)  # 0: the pipeline's own
        # on the host before the hand-over: the publisher's copies would otherwise queue behind the next batch on the device
        host = HostOutputs(on_host(out.depth), on_host(getattr(out, "difference", None)), out.timings,
                           list(getattr(out, "fallback", None) or []), on_host(getattr(out, "confidence", None)))
        model_s = time.perf_counter() - t1
        with self._lock:  # empty: a camera with outputs waiting is not served
            for i, frame in enumerate(group):
                if frame.activation == self._activation:
                    frame.camera.outbox = (frame, host, i, model_s, settings)
                else:
                    frame.camera.stats.dropped += 1
            self._lock.notify_all()

    def _publish_outputs(self, camera: Camera, run: object) -> None:
        """A camera's publishing thread: its outputs as the worker hands them over, while it computes the next."""
        while True:
            with self._lock:
                while self._run is run and camera.outbox is None:
                    self._lock.wait()
                if self._run is not run:
                    return
                outputs, camera.outbox = camera.outbox, None
                self._lock.notify_all()  # the camera can be served again
            self._guarded([camera], self._publish_frame, *outputs)
            del outputs  # the frame and its batch's outputs: a big camera's are large

    def _publish_frame(self, frame: ReadyFrame, out: HostOutputs, i: int, model_s: float, settings: dict) -> None:
        """Image `i` of the batch's outputs on its camera's topics, unless the node was deactivated since
        the frame was taken, or is stopping; its counters. The 'publish' stage is this thread's CPU time
        (the node's own cost, apart from other threads holding the GIL); 'publish_wall' includes them."""
        t2, cpu0 = time.perf_counter(), time.thread_time()
        messages = frame_messages(frame, out, i, settings, self._temporal)  # BadModelOutput for a non-finite depth
        with frame.camera.publishing:
            if frame.activation != self._activation or self._run is None or not self.context.ok():
                return
            for key, message in messages.items():
                frame.camera.publishers[key].publish(message)
        t3, own = time.perf_counter(), time.thread_time() - cpu0
        stages = {"decode": frame.decode_s, **{f"model/{k}": v for k, v in out.timings.items()}, "model": model_s,
                  "publish": own, "publish_wall": t3 - t2, "total": t3 - frame.arrived}
        with self._lock:
            frame.camera.stats.add_frame(stages, bool(out.fallback) and out.fallback[i])

    def _say(self, camera: Camera, kind: str, message: str, count: int | None = None) -> None:
        """A line about `camera`, at most once every THROTTLE_S seconds per kind of problem (`problem_key`:
        300 random frame_ids are one problem, not 300); with `count`, about a skipped frame."""
        message = camera.said(message)
        with self._lock:
            self.last_rejection = message
            due = self._throttle.due(problem_key(kind, message), time.monotonic())
        text = message if count is None else f"frame skipped: {message} ({count} '{kind}' skips since start)"
        if due and kind in ("error", "out-of-memory"):  # separate call sites: rclpy fixes a site's severity
            self.get_logger().error(text)
        elif due:
            self.get_logger().warning(text)

    def _reject(self, camera: Camera, kind: str, message: str) -> None:
        """Count the camera's skipped frame and say why (throttled)."""
        with self._lock:
            count = camera.stats.reject(kind)
        self._say(camera, kind, message, count)

    # --- statistics -------------------------------------------------------------------------

    def farewell(self) -> list[str]:
        """What the node did, said when the process ends."""
        return farewell(self.stats, self.busy)

    @property
    def stats(self) -> Stats:
        """The node's counters: all cameras' together (a snapshot)."""
        with self._lock:
            return sum((c.stats for c in self.cameras), Stats())

    def report(self) -> None:
        """The statistics since the last report, per camera: a log line each, and /diagnostics with the
        lifecycle state (every stats_period). One report at a time: two interleaved would count twice."""
        with self._reporting:
            now = time.monotonic()
            period, self._reported_at = now - self._reported_at, now
            with self._lock:
                cameras = [(c, c.stats.copy()) for c in self.cameras]
            reports = []
            for camera, current in cameras:
                reports.append((camera.said("depth"), report(camera.reported, current, period)))
                camera.reported = current
                if reports[-1][1].busy:
                    self.get_logger().info(camera.said(reports[-1][1].text))
            if self._pub_diag is not None:
                array = DiagnosticArray(status=[
                    DiagnosticStatus(name=f"{self.get_fully_qualified_name()}: {name}", hardware_id=str(self._settings["device"]),
                                     level=(DiagnosticStatus.OK, DiagnosticStatus.WARN, DiagnosticStatus.ERROR)[level], message=text,
                                     values=[KeyValue(key=k, value=v) for k, v in values.items()])
                    for name, level, text, values in diagnostic_rows(reports, self._state, self._why)])
                array.header.stamp = self.get_clock().now().to_msg()
                self._pub_diag.publish(array)


if __name__ == "__main__":
    sys.exit(main())
