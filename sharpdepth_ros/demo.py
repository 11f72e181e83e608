"""The demo: synthetic camera -> SharpDepth node -> depth, CameraInfo, point cloud; recorded and scored.

One process, no camera, no `ros2 launch`: the replay publisher renders synthetic rooms with exact
metric depth, the node runs the models in its worker, a recorder writes every topic to an MCAP bag
(open it in Foxglove, or `ros2 bag play` it into RViz), and each frame's depth is scored against the
scene's ground truth (AbsRel, δ1) with pictures of the depth, the difference map and the cloud.

Models: the embedded weights (sharpdepth_core/weights/nano) when they are there, or the models a
`--config` parameters file names; otherwise tiny random-weight models, announced as such: their
numbers only show that the plumbing works.

    python -m sharpdepth_ros.demo --out out/demo [--frames 8] [--config my_params.yaml]
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
from sensor_msgs.msg import CameraInfo, Image, PointCloud2  # noqa: E402

from sharpdepth_core.metrics import depth_metrics  # noqa: E402
from sharpdepth_core.models import EMBEDDED_DIR  # noqa: E402
from sharpdepth_core.synthetic import render_scene  # noqa: E402
from sharpdepth_core.visualize import colorize_depth, colorize_difference, render_point_cloud, save_png  # noqa: E402
from sharpdepth_ros.conversions import image_to_numpy, point_cloud_to_numpy  # noqa: E402
from sharpdepth_ros.node import SharpDepthNode  # noqa: E402
from sharpdepth_ros.replay import ReplayPublisher  # noqa: E402

NS = "/camera"
TOPICS = {
    f"{NS}/image_raw": Image,
    f"{NS}/camera_info": CameraInfo,
    f"{NS}/depth/image": Image,
    f"{NS}/depth/camera_info": CameraInfo,
    f"{NS}/points": PointCloud2,
    f"{NS}/depth/colored": Image,
    f"{NS}/depth/difference": Image,
}
OUTPUTS = (f"{NS}/depth/image", f"{NS}/depth/camera_info", f"{NS}/points", f"{NS}/depth/difference")
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
        for topic, msg_type in topics.items():
            name = f"{msg_type.__module__.split('.')[0]}/msg/{msg_type.__name__}"
            connection = self.writer.add_connection(topic, name, typestore=typestore)
            node.create_subscription(msg_type, topic, self._callback(topic, msg_type, connection), QoSProfile(depth=10), raw=True)

    def _callback(self, topic: str, msg_type: type, connection):
        def record(data: bytes) -> None:
            with self._lock:
                self.writer.write(connection, self._node.get_clock().now().nanoseconds, data)
                self.counts[topic] += 1
            if topic in self.kept:
                msg = deserialize_message(data, msg_type)
                stamp = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
                self.arrival[(topic, stamp)] = time.perf_counter()
                self.kept[topic][stamp] = msg

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
    settings.update({"publish_difference": True, "publish_colored": True, "publish_points": True})
    if args.processing_res is not None:
        settings["processing_res"] = args.processing_res
    if args.device is not None:
        settings["device"] = args.device
    if why_untrained:
        print(UNTRAINED_BANNER.format(why=why_untrained), flush=True)

    context = Context()
    rclpy.init(context=context, domain_id=1 + os.getpid() % 101)  # a private DDS domain
    stop, spinner, recorder = threading.Event(), None, None
    sent: dict[int, int] = {}
    nodes: list[Node] = []
    bag_tmp = workdir / "sharpdepth_demo"
    try:
        node = SharpDepthNode(context=context, parameter_overrides=[Parameter(k, value=v) for k, v in settings.items()])
        nodes.append(node)
        untrained = bool(getattr(node.pipeline, "untrained", False))
        if untrained and not why_untrained:
            why_untrained = "The configured pipeline is marked untrained."
            print(UNTRAINED_BANNER.format(why=why_untrained), flush=True)
        replay = ReplayPublisher(
            context=context, namespace=NS.strip("/"), timer=False,
            on_frame=lambda header, frame: sent.__setitem__(header.stamp.sec * 10**9 + header.stamp.nanosec, frame.index),
            parameter_overrides=[Parameter("scenes", value=args.frames), Parameter("width", value=args.width),
                                 Parameter("height", value=args.height), Parameter("seed", value=args.seed),
                                 Parameter("style", value=args.style), Parameter("loop", value=False)],
        )
        nodes.append(replay)
        recorder_node = rclpy.create_node("demo_recorder", context=context)
        nodes.append(recorder_node)
        recorder = BagRecorder(recorder_node, bag_tmp, TOPICS, keep=OUTPUTS)
        executor = SingleThreadedExecutor(context=context)
        for n in nodes:
            executor.add_node(n)
        spinner = threading.Thread(target=_spin, args=(executor, stop), daemon=True)
        spinner.start()
        if not _wait(lambda: all(recorder_node.count_publishers(t) for t in TOPICS) and node.count_publishers(f"{NS}/image_raw"), 30):
            print("demo: the nodes did not discover each other within 30 s (is loopback multicast blocked?)", file=sys.stderr)
            return 1

        rows = []
        print(f"{'frame':>5} {'scene':>5} {'e2e ms':>8} {'model ms':>9} {'AbsRel':>8} {'δ1':>6} {'valid':>6}")
        for i in range(args.frames):
            model_s = node.stats.stage_s.get("model", 0.0)
            t0 = time.perf_counter()
            replay.publish_next()
            stamp = max(sent)
            if not _wait(lambda: all(stamp in recorder.kept[t] for t in OUTPUTS), args.timeout):
                print(f"demo: no output for frame {i} within {args.timeout:.0f} s (last problem: {node.last_rejection or 'none'})", file=sys.stderr)
                return 1
            row = score_and_draw(i, sent[stamp], stamp, recorder, args, out)
            row["e2e_ms"] = 1e3 * (recorder.arrival[(f"{NS}/depth/image", stamp)] - t0)
            row["model_ms"] = 1e3 * (node.stats.stage_s.get("model", 0.0) - model_s)
            rows.append(row)
            print(f"{i:>5} {row['scene']:>5} {row['e2e_ms']:>8.0f} {row['model_ms']:>9.0f} {row['abs_rel']:>8.3f} "
                  f"{row['delta1']:>6.3f} {row['valid']:>6.1%}", flush=True)
        _wait(lambda: recorder.counts[f"{NS}/depth/colored"] >= args.frames, 5)  # the last colour image into the bag
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
    write_overview(rows, out)
    summarise(rows, node, recorder, bag, out, untrained)
    if untrained:
        print(UNTRAINED_BANNER.format(why=why_untrained), flush=True)
    return 0


def score_and_draw(i: int, scene_seed: int, stamp: int, recorder: BagRecorder, args, out: Path) -> dict:
    """AbsRel and δ1 against the scene's ground truth; depth, difference and cloud pictures."""
    scene = render_scene(scene_seed, args.width, args.height, style=args.style)
    depth = image_to_numpy(recorder.kept[f"{NS}/depth/image"][stamp])
    difference = image_to_numpy(recorder.kept[f"{NS}/depth/difference"][stamp])
    xyz, rgb = point_cloud_to_numpy(recorder.kept[f"{NS}/points"][stamp])
    valid = np.isfinite(depth) & (depth > 0) & (scene.depth > 0)
    scores = depth_metrics(depth, scene.depth, valid) if valid.any() else {"abs_rel": float("nan"), "delta1": float("nan")}
    vmin, vmax = np.percentile(scene.depth, [2, 98])
    pictures = {
        "rgb": scene.rgb,
        "gt_depth": colorize_depth(scene.depth, vmin, vmax),
        "depth": colorize_depth(depth, vmin, vmax),
        "difference": colorize_difference(difference),
        "cloud": render_point_cloud(xyz, rgb, size=depth.shape),
    }
    save_png(out / f"frame_{i:02d}_depth.png", colorize_depth(depth))  # its own range: the structure
    save_png(out / f"frame_{i:02d}_difference.png", pictures["difference"])
    save_png(out / f"frame_{i:02d}_cloud.png", pictures["cloud"])
    return {"frame": i, "scene": scene_seed, "abs_rel": scores["abs_rel"], "delta1": scores["delta1"],
            "valid": float(valid.mean()), "pictures": pictures}


def write_overview(rows: list[dict], out: Path) -> None:
    """One picture: a row per frame of camera | ground truth | SharpDepth (the ground truth's colour
    range, so scale errors show) | difference | cloud."""
    columns = ("rgb", "gt_depth", "depth", "difference", "cloud")
    grid = np.concatenate([np.concatenate([r["pictures"][c] for c in columns], axis=1) for r in rows], axis=0)
    save_png(out / "overview.png", grid)


def summarise(rows: list[dict], node: SharpDepthNode, recorder: BagRecorder, bag: Path, out: Path, untrained: bool) -> None:
    stages = {k: 1e3 * v / max(node.stats.published, 1) for k, v in node.stats.stage_s.items()}
    summary = {
        "untrained_models": untrained,
        "frames": [{k: v for k, v in r.items() if k != "pictures"} for r in rows],
        "mean_abs_rel": float(np.nanmean([r["abs_rel"] for r in rows])),
        "mean_delta1": float(np.nanmean([r["delta1"] for r in rows])),
        "mean_e2e_ms": float(np.mean([r["e2e_ms"] for r in rows])),
        "node_ms_per_frame": stages,
        "messages_recorded": recorder.counts,
        "bag": str(bag),
    }
    tmp = out / "summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2) + "\n")
    tmp.replace(out / "summary.json")
    print(f"mean AbsRel {summary['mean_abs_rel']:.3f}, δ1 {summary['mean_delta1']:.3f}, end-to-end {summary['mean_e2e_ms']:.0f} ms/frame"
          + (" (UNTRAINED models: plumbing check only)" if untrained else ""))
    print("node ms/frame: " + ", ".join(f"{k} {v:.1f}" for k, v in stages.items()))
    mcap = next(bag.glob("*.mcap"))
    print(f"bag: {mcap} ({sum(recorder.counts.values())} messages on {len(recorder.counts)} topics; Foxglove, or `ros2 bag play {bag}`)")
    print(f"pictures: {out}/overview.png and frame_XX_{{depth,difference,cloud}}.png; numbers: {out}/summary.json")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sharpdepth_ros.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="out/demo", help="output folder (bag, pictures, summary.json)")
    parser.add_argument("--frames", type=int, default=8, help="synthetic frames to run (default 8)")
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--seed", type=int, default=100_000,
                        help="seed of the first synthetic scene (default: held out from the embedded models' training scenes)")
    parser.add_argument("--style", choices=("indoor", "toy"), default="indoor")
    parser.add_argument("--config", type=Path, help="ROS parameters YAML naming the models (see config/sharpdepth.yaml)")
    parser.add_argument("--processing-res", type=int, help="override the processing resolution")
    parser.add_argument("--device", help="override the device (auto, cpu, cuda, cuda:N)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for one frame's outputs")
    args = parser.parse_args(argv)
    if args.frames < 1 or args.width < 8 or args.height < 8:
        parser.error("--frames must be >= 1 and --width/--height >= 8")
    try:
        return run(args)
    except (FileNotFoundError, ValueError, InvalidParameterValueException) as error:  # missing model, bad config
        print(f"demo: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
