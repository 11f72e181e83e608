"""The demo: synthetic camera -> SharpDepth node -> depth, CameraInfo, point cloud; recorded and scored.

One process, no camera, no `ros2 launch`: the replay publisher renders synthetic rooms with exact
metric depth, the node runs the models in its worker, a recorder writes every topic to an MCAP bag
(open it in Foxglove, or `ros2 bag play` it into RViz), and each frame's depth is scored against the
scene's ground truth beside the metric teacher f_D's (AbsRel, δ1, depth-boundary error), with an
overview picture (image, ground truth, f_D, SharpDepth, difference map, point cloud). Then a moving
camera: the replay's sequence mode walks through the first scene's room, its poses go into the bag
with the frames (scrub it in Foxglove), and each pair of consecutive frames is scored with the
temporal alignment error (TAE, ground-truth depth and poses) for f_D, SharpDepth and SharpDepth temporal
(the node's `temporal: odometry` with the walk's exact poses, run over its recorded depths; sequence.png).
With `--cameras N` one node serves N cameras (`/camera/cam0`, ...; its `cameras` parameter): each
frame is N scenes at once, run as one batch, each camera's outputs on its own namespace, scored and
recorded per camera (the walk goes to the first camera).

Models: the embedded weights (sharpdepth_core/weights/nano), or the models a `--config` parameters
file names (a pipeline marked untrained, such as the tiny random-weight models, is announced as
such: its numbers only show that the plumbing works). Scenes are rendered with the camera the models were
trained for when their pipeline.json names one (the embedded models: 128x96, 67.5°).

Modules: this one starts the nodes and drives the frames; demo_record (topics, MCAP recorder,
spinning), demo_scoring (metrics, table, summary), demo_figures (pictures), demo_outputs (the output
folder: `out/demo`, `out/demo-Ncams` for N cameras, holding exactly the last run's outputs).

    python -m sharpdepth_ros.demo [--out out/demo] [--frames 8] [--sequence-frames 6] [--cameras 1] [--config my_params.yaml]
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")  # before rclpy: stay on this machine

import rclpy  # noqa: E402
from rclpy.context import Context  # noqa: E402
from rclpy.exceptions import InvalidParameterValueException  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from geometry_msgs.msg import PoseStamped  # noqa: E402

from sharpdepth_core.synthetic import SEQUENCE_RATE_HZ, STYLES  # noqa: E402
from sharpdepth_ros.conversions import image_to_numpy, point_cloud_to_numpy  # noqa: E402
from sharpdepth_ros.demo_figures import PICTURES, frame_stem, write_frame_pictures, write_overview, write_sequence_picture  # noqa: E402
from sharpdepth_ros.demo_outputs import claim, default_out, start_run  # noqa: E402
from sharpdepth_ros.demo_record import NS, OUTPUTS, BagRecorder, Spinner, camera_ns, topics_of, wait_for  # noqa: E402
from sharpdepth_ros.demo_scoring import (BATCH_NOTE, Scenes, frame_table, print_table_header, score_frame,  # noqa: E402
                                         score_sequence, summarise, table_line, teacher_depth)
from sharpdepth_ros.node import SharpDepthNode  # noqa: E402
from sharpdepth_ros.replay import ReplayPublisher, stamp_ns  # noqa: E402

BAG = "sharpdepth_demo"  # the bag's folder in the output folder
UNTRAINED_BANNER = """
==========================================================================================
  UNTRAINED MODELS. The configured pipeline is marked untrained.
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


def demo_settings(args: argparse.Namespace, cameras: list[str]) -> dict:
    """The node's parameters: the config's, every output on, the overrides."""
    settings = node_settings(args.config)
    settings = {**settings, "publish_difference": True, "publish_colored": True, "publish_points": True, "cameras": cameras}
    overrides = {"processing_res": args.processing_res, "device": args.device}
    return {**settings, **{k: v for k, v in overrides.items() if v is not None}}


def scene_fov(camera: dict | None) -> float:
    """The horizontal field of view of the demo's scenes: the models' camera's, or 0 (each scene's own,
    drawn from its seed) when the models name no camera."""
    return float(camera.get("hfov_deg", 0.0)) if camera else 0.0


def scenes_for(camera: dict | None, args: argparse.Namespace) -> Scenes:
    """The scenes' size and field of view: the options', else the models' camera (their pipeline.json), else 320x240."""
    scenes = Scenes(args.width or (camera or {}).get("width", 320), args.height or (camera or {}).get("height", 240),
                    scene_fov(camera), args.seed, args.style)
    if camera:
        print(f"scenes: {scenes.width}x{scenes.height}, {scenes.fov_deg:g}° horizontal field of view "
              "(the models' camera, from their pipeline.json)")
    return scenes


def planned_outputs(frames: int, cameras: list[str], sequence: bool) -> set[str]:
    """The names a run writes in its output folder (the bag's files are added once written)."""
    pictures = {f"{frame_stem(i, c)}_{name}.png" for i in range(frames) for c in cameras for name in PICTURES}
    return {"overview.png", "summary.json", f"{BAG}/", *pictures, *(["sequence.png"] if sequence else [])}


@dataclass
class Rig:
    """The demo's running nodes, and what the replays said they sent."""

    node: SharpDepthNode
    replay: ReplayPublisher
    walker: ReplayPublisher | None  # a second replay (its own node name): the moving camera, on the first camera's topics
    recorder: BagRecorder
    recorder_node: Node
    node_spinner: Spinner  # the SharpDepth node's own: held while a frame goes out on every camera
    scenes: Scenes
    cameras: list[str]
    sent: dict[int, list[int]]  # stamp -> the scene each camera was sent, in camera order
    walk: list[int]  # the moving camera's stamps, in order


def _replay(context: Context, look: Scenes, node_name: str, on_frame, **parameters) -> ReplayPublisher:
    """A replay publisher of synthetic frames rendered as `look` says, driven by the demo (no timer)."""
    common = {"width": look.width, "height": look.height, "seed": look.seed, "style": look.style, "loop": False,
              "synthetic_fov_deg": look.fov_deg}
    return ReplayPublisher(context=context, namespace=NS.strip("/"), timer=False, on_frame=on_frame,
                           cli_args=["--ros-args", "-r", f"__node:={node_name}"],
                           parameter_overrides=[Parameter(k, value=v) for k, v in {**common, **parameters}.items()])


@contextmanager
def demo_nodes(settings: dict, args: argparse.Namespace, cameras: list[str], bag_dir: Path) -> Iterator[Rig]:
    """The SharpDepth node, the replay (and the moving camera's), the recorder, spinning in a private
    DDS domain; all stopped and the bag closed on the way out."""
    context = Context()
    rclpy.init(context=context, domain_id=1 + os.getpid() % 101)
    nodes: list[Node] = []
    spinners: list[Spinner] = []
    recorder = None
    try:
        node = SharpDepthNode(context=context, parameter_overrides=[Parameter(k, value=v) for k, v in settings.items()])
        nodes.append(node)
        scenes = scenes_for(node.pipeline.camera, args)
        sent, walk = {}, []
        replay = _replay(context, scenes, "replay", lambda header, frame: sent.setdefault(stamp_ns(header), []).append(frame.index),
                         scenes=args.frames * len(cameras), cameras=cameras)
        nodes.append(replay)
        walker = None
        if args.sequence_frames:
            walker = _replay(context, scenes, "replay_walk", lambda header, frame: walk.append(stamp_ns(header)),
                             sequence=args.sequence_frames, rate=SEQUENCE_RATE_HZ, cameras=cameras[:1])
            nodes.append(walker)
        recorder_node = rclpy.create_node("demo_recorder", context=context)
        nodes.append(recorder_node)
        topics = {**topics_of(cameras), **({f"{camera_ns(cameras[0])}/pose": PoseStamped} if walker else {})}
        recorder = BagRecorder(recorder_node, bag_dir, topics, keep=tuple(f"{camera_ns(c)}/{t}" for c in cameras for t in OUTPUTS))
        spinners = [Spinner(context, [node]), Spinner(context, nodes[1:])]
        yield Rig(node, replay, walker, recorder, recorder_node, spinners[0], scenes, cameras, sent, walk)
    finally:
        for spinner in spinners:
            spinner.stop()
        for n in nodes:
            n.destroy_node()
        rclpy.try_shutdown(context=context)
        if recorder is not None:
            recorder.close()


def run(args: argparse.Namespace) -> int:
    """The demo in `args.out` (default: by camera count), whose earlier outputs it replaces."""
    cameras = [""] if args.cameras == 1 else [f"cam{k}" for k in range(args.cameras)]
    out = Path(args.out) if args.out else default_out(args.cameras)
    start_run(out, planned_outputs(args.frames, cameras, args.sequence_frames > 0))
    workdir = Path(tempfile.mkdtemp(prefix="sharpdepth_demo_"))
    try:
        return _run(args, cameras, out, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _run(args: argparse.Namespace, cameras: list[str], out: Path, workdir: Path) -> int:
    settings = demo_settings(args, cameras)
    with demo_nodes(settings, args, cameras, workdir / BAG) as rig:
        untrained = bool(getattr(rig.node.pipeline, "untrained", False))
        if untrained:
            print(UNTRAINED_BANNER, flush=True)
        if not wait_for(lambda: all(rig.recorder_node.count_publishers(t) for t in rig.recorder.counts)
                        and all(rig.node.count_publishers(f"{camera_ns(c)}/image_raw") for c in cameras), 30):
            print("demo: the nodes did not discover each other within 30 s (is loopback multicast blocked?)", file=sys.stderr)
            return 1
        frames = drive_frames(rig, args.frames, args.timeout, out)
        if frames is None or not drive_walk(rig, args.sequence_frames, args.timeout):
            return 1
        rig.node.report()  # the statistics line, and /diagnostics into the bag
        wait_for(lambda: rig.recorder.counts[f"{camera_ns(cameras[0])}/depth/colored"] >= args.frames + args.sequence_frames
                 and all(rig.recorder.counts.values()), 5)  # the last messages into the bag
        stats = rig.node.stats
        walked = [image_to_numpy(rig.recorder.kept[f"{camera_ns(cameras[0])}/depth/image"][s]) for s in rig.walk]
    rows, panels = frames
    bag = out / BAG
    claim(out, [f"{BAG}/{p.name}" for p in (workdir / BAG).iterdir()])
    shutil.move(workdir / BAG, bag)  # only a closed bag comes here
    write_overview(rows, panels, out, untrained)
    sequence = None
    if walked:
        sequence, walk_frames, depths = score_sequence(walked, rig.node, rig.scenes)
        write_sequence_picture(walk_frames, depths, sequence["tae"], out, untrained)
    stages = {k: 1e3 * v / max(stats.published, 1) for k, v in stats.stage_s.items()}
    embedded = not untrained and not (settings.get("model") or settings.get("student"))
    summarise(rows, stages, rig.recorder, bag, out, untrained, embedded, sequence)
    if untrained:
        print(UNTRAINED_BANNER, flush=True)
    return 0


def drive_frames(rig: Rig, frames: int, timeout: float, out: Path) -> tuple[list[dict], list[dict]] | None:
    """Each frame on every camera, each camera's outputs scored and drawn as they arrive, a table line
    each: (rows, overview panels), or None when a frame's outputs did not come."""
    rows, panels, table = [], [], frame_table(rig.cameras)
    if len(rig.cameras) > 1:
        print(BATCH_NOTE)
    print_table_header(table)
    for i in range(frames):
        before = [(c.stats.published, c.stats.stage_s.get("model", 0.0)) for c in rig.node.cameras]
        stamp, t0 = publish_frame(rig)
        for k, camera in enumerate(rig.cameras):
            ns, stats = camera_ns(camera), rig.node.cameras[k].stats
            if not outputs_arrive(rig, stamp, ns, timeout, f"frame {i}") or not wait_for(lambda: stats.published > before[k][0], timeout):
                return None
            row, panel = frame_result(rig, stamp, camera, rig.sent[stamp][k], out, i)
            row["e2e_ms"] = 1e3 * (rig.recorder.arrival[(f"{ns}/depth/image", stamp)] - t0)
            row["model_ms"] = 1e3 * (stats.stage_s["model"] - before[k][1])  # the model call of the batch this image ran in
            rows.append(row)
            panels.append(panel)
            print(table_line(row, table), flush=True)
    return rows, panels


def publish_frame(rig: Rig) -> tuple[int, float]:
    """The replay's next frame on every camera, given to the node at once (it runs them as one batch):
    (its stamp, when it went out)."""
    images = [f"{camera_ns(c)}/image_raw" for c in rig.cameras]
    counts = [rig.recorder.counts[t] for t in images]
    with rig.node_spinner.held():
        t0 = time.perf_counter()
        rig.replay.publish_next()
        wait_for(lambda: all(rig.recorder.counts[t] > n for t, n in zip(images, counts)), 5)  # every camera's image is out
    return max(rig.sent), t0


def frame_result(rig: Rig, stamp: int, camera: str, scene_seed: int, out: Path, i: int) -> tuple[dict, dict]:
    """One camera's frame scored against its scene (beside f_D's depth, from the node's own pipeline)
    and its pictures written: (its table row, its overview panels)."""
    scene = rig.scenes.scene(scene_seed)  # the frame the replay sent
    kept = {t: rig.recorder.kept[f"{camera_ns(camera)}/{t}"][stamp] for t in ("depth/image", "depth/difference", "points")}
    depth, difference = image_to_numpy(kept["depth/image"]), image_to_numpy(kept["depth/difference"])
    metric = teacher_depth(rig.node, scene)
    row = {"frame": i, "scene": scene_seed, **({"camera": camera} if camera else {}), **score_frame(depth, metric, scene.depth)}
    cloud = write_frame_pictures(out, frame_stem(i, camera), depth, difference, *point_cloud_to_numpy(kept["points"]))
    return row, {"image": scene.rgb, "ground truth": scene.depth, "f_D": metric, "SharpDepth": depth,
                 "difference map e": difference, "point cloud": cloud}


def drive_walk(rig: Rig, frames: int, timeout: float) -> bool:
    """The moving camera's frames, each awaited; False when one's outputs did not come."""
    for t in range(frames):
        rig.walker.publish_next()
        if not outputs_arrive(rig, rig.walk[-1], camera_ns(rig.cameras[0]), timeout, f"moving-camera frame {t}"):
            return False
    return True


def outputs_arrive(rig: Rig, stamp: int, ns: str, timeout: float, what: str) -> bool:
    """Whether the node's outputs on camera namespace `ns` for the frame of `stamp` reach the recorder in
    time (a line if not)."""
    if wait_for(lambda: all(stamp in rig.recorder.kept[f"{ns}/{t}"] for t in OUTPUTS), timeout):
        return True
    print(f"demo: no output for {what} on {ns} within {timeout:.0f} s (last problem: {rig.node.last_rejection or 'none'})",
          file=sys.stderr)
    return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sharpdepth_ros.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="output folder (bag, pictures, summary.json; what an earlier demo wrote there is "
                        "replaced); default out/demo, out/demo-Ncams with --cameras N")
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
