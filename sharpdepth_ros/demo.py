"""The demo: synthetic camera -> SharpDepth node -> depth, CameraInfo, point cloud; recorded and scored.

One process, no camera, no `ros2 launch`: the replay publisher renders synthetic rooms with exact
metric depth, the node runs the models in its worker, a recorder writes every topic to an MCAP bag
(open it in Foxglove, or `ros2 bag play` it into RViz), and each frame's depth is scored against the
scene's ground truth beside the metric teacher f_D's (AbsRel, δ1, depth-boundary error), with an
overview picture (image, ground truth, f_D, SharpDepth, difference map, point cloud). Then a moving
camera: the replay's sequence mode walks through the first scene's room, its poses go into the bag
with the frames (scrub it in Foxglove), and each pair of consecutive frames is scored with the
temporal alignment error (TAE, ground-truth depth and poses) for f_D and SharpDepth (sequence.png).
With `--cameras N` one node serves N cameras (`/camera/cam0`, ...; its `cameras` parameter): each
frame is N scenes at once, run as one batch, each camera's outputs on its own namespace, scored and
recorded per camera (the walk goes to the first camera).

Models: the embedded weights (sharpdepth_core/weights/nano) when they are there, or the models a
`--config` parameters file names; otherwise tiny random-weight models, announced as such: their
numbers only show that the plumbing works. Scenes are rendered with the camera the models were
trained for when their pipeline.json names one (the embedded models: 128x96, 67.5°).

    python -m sharpdepth_ros.demo --out out/demo [--frames 8] [--sequence-frames 6] [--cameras 1] [--config my_params.yaml]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")  # before rclpy: stay on this machine

import rclpy  # noqa: E402
from rclpy.context import Context  # noqa: E402
from rclpy.exceptions import InvalidParameterValueException  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import QoSProfile  # noqa: E402
from rclpy.serialization import deserialize_message  # noqa: E402
from geometry_msgs.msg import PoseStamped  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image, PointCloud2  # noqa: E402

from sharpdepth_ros.node import DiagnosticArray, SharpDepthNode  # noqa: E402  (DiagnosticArray: None without diagnostic_msgs)

from sharpdepth_core.files import atomic_write, write_text  # noqa: E402
from sharpdepth_core.metrics import boundary_error, depth_metrics, temporal_alignment_error  # noqa: E402
from sharpdepth_core.embedded import EMBEDDED_DIR  # noqa: E402
from sharpdepth_core.synthetic import SEQUENCE_RATE_HZ, STYLES  # noqa: E402
from sharpdepth_core.visualize import colorize_depth, colorize_difference, render_point_cloud, save_png  # noqa: E402
from sharpdepth_ros.conversions import image_to_numpy, point_cloud_to_numpy  # noqa: E402
from sharpdepth_ros.replay import ReplayPublisher, stamp_ns, synthetic_scene, synthetic_sequence  # noqa: E402

NS = "/camera"
CAMERA_TOPICS = {"image_raw": Image, "camera_info": CameraInfo, "depth/image": Image, "depth/camera_info": CameraInfo,
                 "points": PointCloud2, "depth/colored": Image, "depth/difference": Image}


def camera_ns(name: str) -> str:
    """A camera's namespace: the node's own for the one camera (""), else under it (the `cameras` parameter)."""
    return f"{NS}/{name}" if name else NS


def topics_of(cameras: list[str]) -> dict[str, type]:
    return {**{f"{camera_ns(c)}/{t}": kind for c in cameras for t, kind in CAMERA_TOPICS.items()},
            **({"/diagnostics": DiagnosticArray} if DiagnosticArray else {})}


TOPICS = topics_of([""])
# The report of the embedded models on 100 held-out scenes (bench/nano_report.py; the model card's
# table): the headline figures, printed before the demo's own few frames. Absent outside a checkout.
NANO_REPORT = Path(__file__).resolve().parents[1] / "bench" / "nano_report.json"
# The per-frame table: (header over the column group, column header, width, format, row key)
FRAME_TABLE = (
    ("", "frame", 5, "d", "frame"),
    ("", "scene", 6, "d", "scene"),
    ("latency [ms]", "e2e", 6, ".0f", "e2e_ms"),
    ("latency [ms]", "model", 6, ".0f", "model_ms"),
    ("AbsRel", "SharpD.", 8, ".3f", "abs_rel"),
    ("AbsRel", "f_D", 6, ".3f", "f_D_abs_rel"),
    ("DBE compl [px]", "SharpD.", 8, ".2f", "dbe_compl"),
    ("DBE compl [px]", "f_D", 6, ".2f", "f_D_dbe_compl"),
    ("", "valid", 7, ".1%", "valid"),
)
OUTPUTS = ("depth/image", "depth/camera_info", "points", "depth/difference")  # under each camera's namespace
UNTRAINED_BANNER = """
==========================================================================================
  UNTRAINED MODELS. {why}
  The demo runs tiny RANDOM-WEIGHT models: the depth, the AbsRel and the pictures below
  only show that the plumbing works (camera -> node -> depth, cloud, MCAP). They are NOT results.
==========================================================================================
"""


def node_settings(config: Path | None) -> dict:
    """The node's parameters from a ROS parameters file (its `<...>sharpdepth:` section), or none."""
    if config is None:
        return {}
    import yaml

    if not config.is_file():
        raise FileNotFoundError(f"--config {config} does not exist")
    sections = yaml.safe_load(config.read_text()) or {}
    for key, section in sections.items():
        if str(key).rstrip("/").split("/")[-1] == "sharpdepth" and isinstance(section, dict):
            return dict(section.get("ros__parameters", {}))
    raise ValueError(f"--config {config} has no 'sharpdepth' (e.g. '/**/sharpdepth') section with ros__parameters")


def untrained_fallback(settings: dict, workdir: Path) -> tuple[dict, str | None]:
    """Settings that name models unchanged; the embedded default with no weights -> tiny models."""
    if settings.get("model") or settings.get("student"):
        return settings, None
    if (EMBEDDED_DIR / "pipeline.json").is_file():
        return settings, None
    from sharpdepth_core.models import tiny

    folder = tiny.tiny_pipeline(processing_res=64).save_pretrained(workdir / "untrained_tiny_pipeline")
    why = f"No trained weights in {EMBEDDED_DIR} yet (a later issue ships them)."
    return {**settings, "model": str(folder)}, why


class BagRecorder:
    """Writes every message of `topics` to an MCAP bag (rosbags, the bytes as received) and keeps
    the outputs deserialised by stamp for scoring."""

    def __init__(self, node: Node, bag_dir: Path, topics: dict[str, type], keep: tuple[str, ...]) -> None:
        from rosbags.rosbag2 import StoragePlugin, Writer
        from rosbags.typesys import Stores, get_typestore

        typestore = get_typestore(Stores.LATEST)
        self.writer = Writer(bag_dir, version=9, storage_plugin=StoragePlugin.MCAP)
        self.writer.open()
        self._lock = threading.Lock()
        self._node = node
        self.kept: dict[str, dict[int, object]] = {t: {} for t in keep}
        self.arrival: dict[tuple[str, int], float] = {}
        self.counts = {t: 0 for t in topics}
        self.busy_s = 0.0  # time spent in this recorder's callbacks (it shares the process with the node)
        for topic, msg_type in topics.items():
            name = f"{msg_type.__module__.split('.')[0]}/msg/{msg_type.__name__}"
            connection = self.writer.add_connection(topic, name, typestore=typestore)
            node.create_subscription(msg_type, topic, self._callback(topic, msg_type, connection), QoSProfile(depth=10), raw=True)

    def _callback(self, topic: str, msg_type: type, connection):
        def record(data: bytes) -> None:
            t0 = time.perf_counter()
            with self._lock:
                self.writer.write(connection, self._node.get_clock().now().nanoseconds, data)
                self.counts[topic] += 1
            if topic in self.kept:
                msg = deserialize_message(data, msg_type)
                stamp = stamp_ns(msg.header)
                self.arrival[(topic, stamp)] = time.perf_counter()
                self.kept[topic][stamp] = msg
            self.busy_s += time.perf_counter() - t0

        return record

    def close(self) -> None:
        with self._lock:
            self.writer.close()


def _spin(executor: SingleThreadedExecutor, stop: threading.Event) -> None:
    while not stop.is_set():
        executor.spin_once(timeout_sec=0.05)


def _wait(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="sharpdepth_demo_"))
    try:
        return _run(args, out, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _run(args: argparse.Namespace, out: Path, workdir: Path) -> int:
    settings, why_untrained = untrained_fallback(node_settings(args.config), workdir)
    cameras = [""] if args.cameras == 1 else [f"cam{k}" for k in range(args.cameras)]
    settings.update({"publish_difference": True, "publish_colored": True, "publish_points": True, "cameras": cameras})
    if args.processing_res is not None:
        settings["processing_res"] = args.processing_res
    if args.device is not None:
        settings["device"] = args.device
    if why_untrained:
        print(UNTRAINED_BANNER.format(why=why_untrained), flush=True)

    context = Context()
    rclpy.init(context=context, domain_id=1 + os.getpid() % 101)  # a private DDS domain
    stop, spinner, recorder = threading.Event(), None, None
    sent: dict[int, list[int]] = {}  # stamp -> the scene each camera was sent, in camera order
    walk: list[int] = []  # the moving camera's stamps, in order
    walker_ns = camera_ns(cameras[0])
    topics = {**topics_of(cameras), **({f"{walker_ns}/pose": PoseStamped} if args.sequence_frames else {})}
    nodes: list[Node] = []
    bag_tmp = workdir / "sharpdepth_demo"
    try:
        node = SharpDepthNode(context=context, parameter_overrides=[Parameter(k, value=v) for k, v in settings.items()])
        nodes.append(node)
        untrained = bool(getattr(node.pipeline, "untrained", False))
        if untrained and not why_untrained:
            why_untrained = "The configured pipeline is marked untrained."
            print(UNTRAINED_BANNER.format(why=why_untrained), flush=True)
        camera = node.pipeline.camera  # the camera the models were trained for (their pipeline.json), if any
        args.width, args.height = args.width or (camera or {}).get("width", 320), args.height or (camera or {}).get("height", 240)
        args.fov_deg = scene_fov(camera)
        if camera:
            print(f"scenes: {args.width}x{args.height}, {args.fov_deg:g}° horizontal field of view (the models' camera, from their pipeline.json)")
        replay = ReplayPublisher(
            context=context, namespace=NS.strip("/"), timer=False,
            on_frame=lambda header, frame: sent.setdefault(stamp_ns(header), []).append(frame.index),
            parameter_overrides=[Parameter("scenes", value=args.frames * len(cameras)), Parameter("cameras", value=cameras),
                                 Parameter("width", value=args.width),
                                 Parameter("height", value=args.height), Parameter("seed", value=args.seed),
                                 Parameter("style", value=args.style), Parameter("loop", value=False),
                                 Parameter("synthetic_fov_deg", value=args.fov_deg)],
        )
        nodes.append(replay)
        walker = None  # a second replay (its own node name): the moving camera, on the same topics and `pose`
        if args.sequence_frames:
            walker = ReplayPublisher(
                context=context, namespace=NS.strip("/"), timer=False, cli_args=["--ros-args", "-r", "__node:=replay_walk"],
                on_frame=lambda header, frame: walk.append(stamp_ns(header)),
                parameter_overrides=[Parameter("sequence", value=args.sequence_frames), Parameter("width", value=args.width),
                                     Parameter("height", value=args.height), Parameter("seed", value=args.seed),
                                     Parameter("style", value=args.style), Parameter("loop", value=False),
                                     Parameter("rate", value=SEQUENCE_RATE_HZ), Parameter("synthetic_fov_deg", value=args.fov_deg),
                                     Parameter("cameras", value=cameras[:1])],
            )
            nodes.append(walker)
        recorder_node = rclpy.create_node("demo_recorder", context=context)
        nodes.append(recorder_node)
        recorder = BagRecorder(recorder_node, bag_tmp, topics, keep=tuple(f"{camera_ns(c)}/{t}" for c in cameras for t in OUTPUTS))
        executor = SingleThreadedExecutor(context=context)
        for n in nodes:
            executor.add_node(n)
        spinner = threading.Thread(target=_spin, args=(executor, stop), daemon=True)
        spinner.start()
        if not _wait(lambda: all(recorder_node.count_publishers(t) for t in topics)
                     and all(node.count_publishers(f"{camera_ns(c)}/image_raw") for c in cameras), 30):
            print("demo: the nodes did not discover each other within 30 s (is loopback multicast blocked?)", file=sys.stderr)
            return 1

        rows = []
        table = frame_table(cameras)
        print_table_header(table)
        for i in range(args.frames):
            model_s = node.stats.stage_s.get("model", 0.0)
            t0 = time.perf_counter()
            replay.publish_next()
            stamp = max(sent)
            for k, camera_name in enumerate(cameras):
                if not _outputs_arrive(stamp, recorder, node, args.timeout, f"frame {i}", camera_ns(camera_name)):
                    return 1
                row = score_and_draw(i, sent[stamp][k], stamp, recorder, node, args, out, camera_name)
                row["e2e_ms"] = 1e3 * (recorder.arrival[(f"{camera_ns(camera_name)}/depth/image", stamp)] - t0)
                row["model_ms"] = 1e3 * (node.stats.stage_s.get("model", 0.0) - model_s)  # the batch's, for every camera
                rows.append(row)
                print(" ".join(f"{row[key]:>{width}{fmt}}" for _, _, width, fmt, key in table), flush=True)
        for t in range(args.sequence_frames):
            walker.publish_next()
            if not _outputs_arrive(walk[-1], recorder, node, args.timeout, f"moving-camera frame {t}", walker_ns):
                return 1
        node.report()  # the statistics line, and /diagnostics into the bag
        _wait(lambda: recorder.counts[f"{walker_ns}/depth/colored"] >= args.frames + args.sequence_frames
              and all(recorder.counts[t] for t in topics), 5)  # the last messages into the bag
    finally:
        stop.set()
        if spinner is not None:
            spinner.join(timeout=5)
        for n in nodes:
            n.destroy_node()
        rclpy.try_shutdown(context=context)
        if recorder is not None:
            recorder.close()
    bag = out / "sharpdepth_demo"
    shutil.rmtree(bag, ignore_errors=True)
    shutil.move(str(bag_tmp), bag)  # the finished bag appears at once, never half written
    write_overview(rows, out, untrained)
    sequence = score_sequence([recorder.kept[f"{walker_ns}/depth/image"][s] for s in walk], node, args, out, untrained) if walk else None
    embedded = not untrained and not (settings.get("model") or settings.get("student"))
    summarise(rows, node, recorder, bag, out, untrained, embedded, sequence)
    if untrained:
        print(UNTRAINED_BANNER.format(why=why_untrained), flush=True)
    return 0


def _outputs_arrive(stamp: int, recorder: BagRecorder, node: SharpDepthNode, timeout: float, what: str, ns: str) -> bool:
    """Whether the node's outputs on camera namespace `ns` for the frame of `stamp` reach the recorder in
    time (a line if not)."""
    if _wait(lambda: all(stamp in recorder.kept[f"{ns}/{t}"] for t in OUTPUTS), timeout):
        return True
    print(f"demo: no output for {what} on {ns} within {timeout:.0f} s (last problem: {node.last_rejection or 'none'})", file=sys.stderr)
    return False


def frame_table(cameras: list[str]) -> tuple:
    """FRAME_TABLE, with a camera column when there are several."""
    return FRAME_TABLE if cameras == [""] else (("", "camera", 6, "", "camera"), *FRAME_TABLE)


def print_table_header(table: tuple = FRAME_TABLE) -> None:
    """The frame table's two header lines, each group's header centred over its columns."""
    groups, line = [], []
    for group, name, width, _, _ in table:
        if groups and groups[-1][0] == group:
            groups[-1][1] += width + 1
        else:
            groups.append([group, width])
        line.append(f"{name:>{width}}")
    print(" ".join(f"{group:^{width}}" for group, width in groups).rstrip())
    print(" ".join(line))


def scene_fov(camera: dict | None) -> float:
    """The horizontal field of view of the demo's scenes: the models' camera's, or 0 (each scene's own,
    drawn from its seed) when the models name no camera."""
    return float(camera.get("hfov_deg", 0.0)) if camera else 0.0


def score_and_draw(i: int, scene_seed: int, stamp: int, recorder: BagRecorder, node: SharpDepthNode, args, out: Path,
                   camera: str = "") -> dict:
    """AbsRel, δ1 and DBE of SharpDepth and of its metric teacher f_D against the scene's ground truth;
    pictures. f_D's depth comes from the node's own pipeline, computed as a frame computes it."""
    scene = synthetic_scene(scene_seed, args.width, args.height, args.style, args.fov_deg)  # the frame the replay sent
    ns = camera_ns(camera)
    depth = image_to_numpy(recorder.kept[f"{ns}/depth/image"][stamp])
    difference = image_to_numpy(recorder.kept[f"{ns}/depth/difference"][stamp])
    xyz, rgb = point_cloud_to_numpy(recorder.kept[f"{ns}/points"][stamp])
    metric = teacher_depth(node, scene)
    row = {"frame": i, "scene": scene_seed, **({"camera": camera} if camera else {})}
    stem = f"frame_{i:02d}" + (f"_{camera}" if camera else "")
    for name, pred in (("", depth), ("f_D_", metric)):
        valid = np.isfinite(pred) & (pred > 0)
        m = depth_metrics(pred, scene.depth, valid) if valid.any() else {"abs_rel": float("nan"), "delta1": float("nan")}
        acc, compl = boundary_error(np.where(valid, pred, 0.01).clip(0.01), scene.depth)
        row.update({f"{name}abs_rel": m["abs_rel"], f"{name}delta1": m["delta1"], f"{name}dbe_acc": acc, f"{name}dbe_compl": compl})
    row["valid"] = float((np.isfinite(depth) & (depth > 0)).mean())
    save_png(out / f"{stem}_depth.png", colorize_depth(depth))  # its own range: the structure
    save_png(out / f"{stem}_difference.png", colorize_difference(difference))
    cloud = render_point_cloud(xyz, rgb, size=depth.shape)
    save_png(out / f"{stem}_cloud.png", cloud)
    row["pictures"] = {"image": scene.rgb, "ground truth": scene.depth, "f_D": metric, "SharpDepth": depth,
                       "difference map e": difference, "point cloud": cloud}
    return row


def teacher_depth(node: SharpDepthNode, scene) -> np.ndarray:
    """f_D's depth of a scene from the node's own pipeline, as a frame computes it (with the camera's
    K when the node uses it)."""
    use_k = node.get_parameter("use_camera_intrinsics").value
    return node.pipeline.metric_depth(scene.rgb, K=scene.K if use_k else None)[0, 0].cpu().numpy()


def score_sequence(depth_msgs: list, node: SharpDepthNode, args, out: Path, untrained: bool) -> dict:
    """The moving camera's TAE, per pair of consecutive frames and averaged, for f_D and SharpDepth
    (ground-truth depth and poses: the frames the replay sent, rendered again); sequence.png."""
    frames = synthetic_sequence(len(depth_msgs), args.width, args.height, args.seed, args.style, args.fov_deg, SEQUENCE_RATE_HZ)
    gts, poses, K = [f.depth for f in frames], [f.camera_to_world for f in frames], frames[0].K
    depths = {"f_D": [teacher_depth(node, f) for f in frames], "SharpDepth": [image_to_numpy(m) for m in depth_msgs]}
    tae = {name: [temporal_alignment_error(d[t:t + 2], gts[t:t + 2], K, poses[t:t + 2]) for t in range(len(d) - 1)]
           for name, d in depths.items()}
    write_sequence_picture(frames, depths, tae, out, untrained)
    return {"scene": args.seed, "frames": len(frames), "rate_hz": SEQUENCE_RATE_HZ, "tae": tae,
            "mean_tae": {name: float(np.mean(v)) for name, v in tae.items()}}


def write_sequence_picture(frames, depths: dict[str, list[np.ndarray]], tae: dict[str, list[float]], out: Path,
                           untrained: bool) -> None:
    """sequence.png: a column per consecutive frame; rows image | ground truth | f_D | SharpDepth on one
    depth colour scale, each depth labelled with its TAE into the next frame."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = {"image": [f.rgb for f in frames], "ground truth": [f.depth for f in frames], **depths}
    lo, hi = np.percentile(np.stack(rows["ground truth"]), [1, 99])
    h, w = frames[0].rgb.shape[:2]
    fig, axes = plt.subplots(len(rows), len(frames), squeeze=False, layout="constrained",
                             figsize=(1.2 + 1.8 * len(frames) * max(1.0, w / h / 1.33), 0.6 + 1.5 * len(rows)))
    for r, (name, pictures) in enumerate(rows.items()):
        for t, picture in enumerate(pictures):
            ax = axes[r, t]
            shown = ax.imshow(picture, interpolation="nearest", **({} if name == "image" else {"cmap": "turbo", "vmin": lo, "vmax": hi}))
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"t = {t}", fontsize=9)
            if name in tae and t < len(frames) - 1:
                ax.set_xlabel(f"TAE {t}→{t + 1}: {tae[name][t]:.4f}", fontsize=7)
        axes[r, 0].set_ylabel(name, fontsize=8)
    _colour_bar(fig, shown, axes[1:, :].ravel().tolist(), "depth [m]")
    fig.suptitle("moving camera: consecutive frames" + (" (UNTRAINED random-weight models: plumbing check only)" if untrained else ""),
                 color="red" if untrained else "black", fontsize=10)
    with atomic_write(out / "sequence.png") as f:
        fig.savefig(f, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)


def write_overview(rows: list[dict], out: Path, untrained: bool) -> None:
    """One labelled picture, a row per frame: image | ground truth | f_D | SharpDepth (one depth colour
    scale per row, with its colour bar, so scale errors and blur compare directly) | e | point cloud."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = list(rows[0]["pictures"])
    h, w = rows[0]["pictures"]["image"].shape[:2]
    fig, axes = plt.subplots(len(rows), len(columns), squeeze=False, layout="constrained",  # bars and labels never overlap
                             figsize=(1.6 + 2.0 * len(columns) * max(1.0, w / h / 1.33), 0.6 + 1.6 * len(rows)))
    for r, row in enumerate(rows):
        pics = row["pictures"]
        lo, hi = np.percentile(pics["ground truth"], [1, 99])
        for c, name in enumerate(columns):
            ax = axes[r, c]
            if name in ("ground truth", "f_D", "SharpDepth"):
                shown = ax.imshow(pics[name], cmap="turbo", vmin=lo, vmax=hi, interpolation="nearest")
            elif name == "difference map e":
                _colour_bar(fig, ax.imshow(pics[name], cmap="magma", vmin=0, vmax=1, interpolation="nearest"), ax, "e")
            else:
                ax.imshow(pics[name], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=9)
            if name in ("f_D", "SharpDepth") and np.isfinite(row[("f_D_" if name == "f_D" else "") + "abs_rel"]):
                key = "f_D_" if name == "f_D" else ""
                ax.set_xlabel(f"AbsRel {row[key + 'abs_rel']:.3f}, DBE {row[key + 'dbe_acc']:.1f}/{row[key + 'dbe_compl']:.1f}", fontsize=7)
        axes[r, 0].set_ylabel(f"scene {row['scene']}" + (f", {row['camera']}" if "camera" in row else ""), fontsize=8)
        _colour_bar(fig, shown, axes[r, 1:4].tolist(), "depth [m]")
    if untrained:
        fig.suptitle("UNTRAINED random-weight models: plumbing check only", color="red")
    with atomic_write(out / "overview.png") as f:
        fig.savefig(f, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)


def _colour_bar(fig, image, axes, label: str) -> None:
    bar = fig.colorbar(image, ax=axes, fraction=0.05, pad=0.02)
    bar.set_label(label, fontsize=7)
    bar.ax.tick_params(labelsize=7)


def report_figures() -> dict | None:
    """{'f_D': ..., 'SharpDepth': ...} means of the embedded models over the report's scenes, with
    'scenes', from bench/nano_report.json; None where the file is absent."""
    if not NANO_REPORT.is_file():
        return None
    report = json.loads(NANO_REPORT.read_text())
    return {"scenes": report["scenes"], "f_D": report["results"]["f_D"], "SharpDepth": report["results"]["full"]}


def print_means(title: str, figures: dict[str, dict], note: str = "") -> None:
    """AbsRel, δ1 and DBE of f_D and SharpDepth under `title`."""
    print(f"\n{title}\n{'':12}{'AbsRel':>8}{'δ1':>7}{'DBE acc':>9}{'DBE compl':>11}")
    for label, m in figures.items():
        print(f"{label:12}{m['abs_rel']:>8.3f}{m['delta1']:>7.3f}{m['dbe_acc']:>9.2f}{m['dbe_compl']:>11.2f}{note}")


def summarise(rows: list[dict], node: SharpDepthNode, recorder: BagRecorder, bag: Path, out: Path, untrained: bool,
              embedded: bool = False, sequence: dict | None = None) -> None:
    stages = {k: 1e3 * v / max(node.stats.published, 1) for k, v in node.stats.stage_s.items()}

    def mean(key: str) -> float:
        return float(np.nanmean([r[key] for r in rows]))

    keys = ("abs_rel", "delta1", "dbe_acc", "dbe_compl", "f_D_abs_rel", "f_D_delta1", "f_D_dbe_acc", "f_D_dbe_compl", "e2e_ms")
    cameras = sorted({r["camera"] for r in rows if "camera" in r})
    summary = {
        "untrained_models": untrained,
        "frames": [{k: v for k, v in r.items() if k != "pictures"} for r in rows],
        **{f"mean_{k}": mean(k) for k in keys},
        **({"cameras": {c: {f"mean_{k}": float(np.nanmean([r[k] for r in rows if r.get("camera") == c])) for k in keys}
                        for c in cameras}} if cameras else {}),
        "node_ms_per_frame": stages,
        "recorder_ms_per_frame": 1e3 * recorder.busy_s / max(len(rows), 1),
        "messages_recorded": recorder.counts,
        "bag": str(bag),
        "sequence": sequence,
    }
    write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    report = report_figures() if embedded else None
    if report is not None:
        scenes = report.pop("scenes")
        print_means(f"the embedded models on {scenes} held-out scenes (bench/NANO_REPORT.md; the figures to quote):", report)
    note = " (UNTRAINED models: plumbing check only)" if untrained else ""
    print_means(f"this run: {len(rows)} frame{'s' * (len(rows) != 1)}, a small sample (frame-to-frame spread is large; "
                "do not compare the two models on it)" + (": the report above is the measure" if report else ""),
                {label: {m: summary[f"mean_{key}{m}"] for m in ("abs_rel", "delta1", "dbe_acc", "dbe_compl")}
                 for label, key in (("f_D", "f_D_"), ("SharpDepth", ""))}, note)
    for c in cameras:
        m = summary["cameras"][c]
        print(f"{c}: SharpDepth AbsRel {m['mean_abs_rel']:.3f} (f_D {m['mean_f_D_abs_rel']:.3f}), end-to-end {m['mean_e2e_ms']:.0f} ms "
              f"(outputs on {camera_ns(c)}/...)")
    if sequence:
        print(f"moving camera: {sequence['frames']} frames walking through scene {sequence['scene']}'s room; TAE between "
              f"consecutive frames (ground-truth poses), a small sample (bench/temporal.py is the measure): "
              + ", ".join(f"{name} {v:.4f}" for name, v in sequence["mean_tae"].items()) + note)
    print(f"end-to-end {summary['mean_e2e_ms']:.0f} ms/frame; node ms/frame: " + ", ".join(f"{k} {v:.1f}" for k, v in stages.items())
          + f"; the demo's in-process recorder {summary['recorder_ms_per_frame']:.1f} ms/frame (not the node's)")
    mcap = next(bag.glob("*.mcap"))
    print(f"bag: {mcap} ({sum(recorder.counts.values())} messages on {len(recorder.counts)} topics; Foxglove, or `ros2 bag play {bag}`)")
    print(f"pictures: {out}/overview.png{', sequence.png' if sequence else ''} and frame_XX{'_camN' if cameras else ''}"
          "_{depth,difference,cloud}.png; "
          f"numbers: {out}/summary.json")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sharpdepth_ros.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="out/demo", help="output folder (bag, pictures, summary.json)")
    parser.add_argument("--frames", type=int, default=8, help="synthetic frames to run (default 8)")
    parser.add_argument("--sequence-frames", type=int, default=6,
                        help="then this many frames of a camera walking through the first scene's room, scored for flicker "
                        "(TAE) and recorded with their poses (default 6; 0: none)")
    parser.add_argument("--width", type=int, help="image width (default: the models' camera, else 320)")
    parser.add_argument("--height", type=int, help="image height (default: the models' camera, else 240)")
    parser.add_argument("--seed", type=int, default=100_000,
                        help="seed of the first synthetic scene (default: held out from the embedded models' training scenes)")
    parser.add_argument("--style", choices=STYLES, default="indoor")
    parser.add_argument("--config", type=Path, help="ROS parameters YAML naming the models (see config/sharpdepth.yaml)")
    parser.add_argument("--processing-res", type=int, help="override the processing resolution")
    parser.add_argument("--device", help="override the device (auto, cpu, cuda, cuda:N)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for one frame's outputs")
    parser.add_argument("--cameras", type=int, default=1,
                        help="cameras served by the one node (default 1; N > 1: namespaces /camera/cam0 ... cam{N-1}, "
                        "each frame one batch of N scenes, outputs and scores per camera)")
    args = parser.parse_args(argv)
    if args.frames < 1 or not 1 <= args.cameras <= 16 or (args.width is not None and args.width < 8) or (args.height is not None and args.height < 8):
        parser.error("--frames must be >= 1, --cameras from 1 to 16 and --width/--height >= 8")
    if args.sequence_frames < 0 or args.sequence_frames == 1:
        parser.error("--sequence-frames must be 0 (none) or >= 2 (TAE compares consecutive frames)")
    try:
        return run(args)
    except (FileNotFoundError, ValueError, InvalidParameterValueException) as error:  # missing model, bad config
        print(f"demo: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
