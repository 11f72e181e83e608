#!/usr/bin/env python3
"""Several cameras on one node: aggregate depth frames/s, latency and GPU memory for 1, 2, 4 cameras.

Each run starts a SharpDepth node with N camera namespaces and a driver node in the same process
that publishes every camera's image + camera_info at `--rate` Hz (default 1.5 times the rate the
pipeline alone keeps up with: the node always has a new frame of every camera, so it runs the N
newest frames as one batch per step, and the in-process publisher does not crowd the CPU). The node
runs with its defaults (cloud and coloured depth published, as a robot would). After
a warm-up it counts the depth images published over `--seconds`: aggregate frames/s (all cameras)
and per camera, and the latency from each image's stamp to its depth image reaching a subscriber in
the driver (median and p95; the stamp is the publish time, so queueing in the node counts), and on
CUDA the peak GPU memory allocated. Over real rclpy on loopback, on a private DDS domain. Beside each
run, in the same process, the pipeline alone on the same N frames as one batch (uint8 in, depth on the
host, as the node calls it): the node's frames/s as a share of the pipeline's is what the node itself
costs (issue 20's target: within 15 %). Prints a table and one JSON line.

The target (issue 20, part 5): 4 cameras batched give at least one camera's aggregate frames/s; it is
meant for a GPU (a batch fills it); on a CPU a batch costs about N times one frame.

    .venv/bin/python bench/cameras.py                         # tiny random models, CPU, 1 thread
    .venv/bin/python bench/cameras.py --model PIPELINE_DIR --device cuda --size 640x480 --processing-res 768
    .venv/bin/python bench/cameras.py --config full --device cuda --size 640x480 --processing-res 768   # random weights
    .venv/bin/python bench/cameras.py --config full --device cuda --size 640x480 --processing-res 768 --speed fast
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import threading
import time
import warnings
from pathlib import Path

os.environ.setdefault("ROS_DOMAIN_ID", str(1 + os.getpid() % 101))
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")

import rclpy  # noqa: E402  (after the environment above)
import numpy as np  # noqa: E402
import torch  # noqa: E402
from rclpy.context import Context  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import QoSProfile  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from sharpdepth_core.pipeline import DEFAULT_PROCESSING_RES, SharpDepthPipeline  # noqa: E402
from sharpdepth_core.speed import FAST, SPEEDS, fast_path  # noqa: E402
from sharpdepth_core.synthetic import render_scene  # noqa: E402
from sharpdepth_ros.conversions import camera_info, numpy_to_image  # noqa: E402
from sharpdepth_ros.node import SharpDepthNode, image_batch  # noqa: E402


def pipeline_alone(pipeline, scenes: list, seconds: float, device: str) -> float:
    """Frames/s of the pipeline on these scenes as one batch, called as the node calls it, after one warm-up call."""
    images = image_batch([sc.rgb for sc in scenes])
    K = np.stack([sc.K for sc in scenes])
    pipeline(images, K=K, seed=0).depth.cpu()
    calls, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds or calls < 2:
        pipeline(images, K=K, seed=0).depth.cpu()  # the depth on the host, as the node publishes it
        calls += 1
    return calls * len(scenes) / (time.perf_counter() - t0)


def run(pipeline, cameras: int, width: int, height: int, rate: float, warmup: float, seconds: float, device: str,
        threads: int) -> dict:
    """Aggregate and per-camera depth frames/s of one node serving `cameras` cameras, beside the pipeline alone."""
    scenes = [render_scene(i, width, height) for i in range(cameras)]
    alone = pipeline_alone(pipeline, scenes, min(seconds, 5.0), device)
    rate = rate or 1.5 * alone / cameras  # batches/s the pipeline keeps up with, and half again
    context = Context()
    rclpy.init(context=context)
    names = [f"cam{i}" for i in range(cameras)]
    node = SharpDepthNode(pipeline, context=context, namespace="bench", parameter_overrides=[
        Parameter("cameras", value=names), Parameter("device", value=device), Parameter("num_threads", value=threads),
        Parameter("stats_period", value=3600.0)])
    driver = rclpy.create_node("bench_driver", namespace="bench", context=context)
    qos = QoSProfile(depth=1)
    pubs = [(driver.create_publisher(Image, f"{n}/image_raw", qos), driver.create_publisher(CameraInfo, f"{n}/camera_info", qos))
            for n in names]

    def publish() -> None:
        header = Header(stamp=driver.get_clock().now().to_msg(), frame_id="bench_optical")
        for (image_pub, info_pub), scene in zip(pubs, scenes):
            info_pub.publish(camera_info(scene.K, scene.rgb.shape[:2], header))
            image_pub.publish(numpy_to_image(scene.rgb, "rgb8", header))

    latencies: list[float] = []

    def received(msg: Image) -> None:
        if counting.is_set():
            stamp = msg.header.stamp
            latencies.append(driver.get_clock().now().nanoseconds * 1e-9 - (stamp.sec + stamp.nanosec * 1e-9))

    counting = threading.Event()
    for n in names:
        driver.create_subscription(Image, f"{n}/depth/image", received, qos)
    driver.create_timer(1.0 / rate, publish)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    executor.add_node(driver)
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            executor.spin_once(timeout_sec=0.05)

    spinner = threading.Thread(target=spin, daemon=True)
    spinner.start()
    try:
        time.sleep(warmup)
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats(device)
        before, t0 = [c.stats.copy() for c in node.cameras], time.monotonic()
        counting.set()
        time.sleep(seconds)
        counting.clear()
        after, t1 = [c.stats.copy() for c in node.cameras], time.monotonic()
    finally:
        stop.set()
        spinner.join(5)
        executor.shutdown(timeout_sec=1)
        node.destroy_node()
        driver.destroy_node()
        rclpy.shutdown(context=context)
    per_camera = [(a.published - b.published) / (t1 - t0) for a, b in zip(after, before)]
    latency = sorted(latencies)
    return {"cameras": cameras, "rate_hz": round(rate, 2), "aggregate_fps": round(sum(per_camera), 3), "per_camera_fps": [round(f, 3) for f in per_camera],
            "pipeline_fps": round(alone, 3), "node_share_of_pipeline": round(sum(per_camera) / alone, 3),
            "skipped": sum(sum(a.rejected.values()) - sum(b.rejected.values()) for a, b in zip(after, before)),
            "latency_s": {"median": statistics.median(latency), "p95": latency[int(0.95 * (len(latency) - 1))], "frames": len(latency)}
            if latency else None,
            "gpu_peak_mib": torch.cuda.max_memory_allocated(device) / 2**20 if device.startswith("cuda") else None}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--model", default=None, help="pipeline folder; default: random models of --config")
    p.add_argument("--config", choices=("small", "full"), default="small",
                   help="without --model: small (tiny models, processing_res 64) or full (SD-2 UNet/VAE + ViT-L metric "
                        "model, bench/pipeline.py's, random weights)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--processing-res", type=int, default=None, help="the pipeline's grid (default: its own)")
    p.add_argument("--speed", choices=SPEEDS, default="exact", help="the speed preset (random light networks with --config)")
    p.add_argument("--size", default="320x240", help="camera image WIDTHxHEIGHT")
    p.add_argument("--cameras", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--rate", type=float, default=0.0,
                   help="frames/s each camera publishes (default 0: 1.5 times what the pipeline alone keeps up with)")
    p.add_argument("--warmup", type=float, default=5.0, help="seconds before counting")
    p.add_argument("--seconds", type=float, default=15.0, help="seconds counted per run")
    p.add_argument("--threads", type=int, default=1, help="PyTorch CPU threads")
    p.add_argument("--json", type=Path, help="also write the JSON result to this file")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    width, height = (int(v) for v in args.size.split("x"))
    warnings.filterwarnings("ignore", message="SharpDepth: degenerate final fit")  # random tiny weights
    if args.model:
        pipeline = SharpDepthPipeline.from_pretrained(args.model, device=args.device, processing_res=args.processing_res,
                                                      speed=args.speed)
    else:
        from random_models import build_models, fast_preset_options  # bench/random_models.py

        student, metric = build_models(args.config, torch.device(args.device))
        speed = {} if args.speed == "exact" else {"fast": fast_path(FAST, args.device), **fast_preset_options(student, args.device)}
        pipeline = SharpDepthPipeline(student, metric, untrained=True,
                                      processing_res=args.processing_res or (DEFAULT_PROCESSING_RES if args.config == "full" else 64), **speed)
    results = [run(pipeline, n, width, height, args.rate, args.warmup, args.seconds, args.device, args.threads) for n in args.cameras]
    label = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else f"CPU, {args.threads} thread(s)"
    model = args.model or f"{args.config} random models"
    print(f"{'cameras':>8} {'aggregate frames/s':>19} {'per camera':>11} {'pipeline alone':>15} {'node/pipeline':>14} "
          f"{'latency ms median':>18} {'p95':>8} {'GPU MiB':>8}  ({label}, {model}, speed {args.speed}, {args.size})")
    for r in results:
        lat = r["latency_s"] or {"median": float("nan"), "p95": float("nan")}
        mem = f"{r['gpu_peak_mib']:.0f}" if r["gpu_peak_mib"] is not None else "-"
        print(f"{r['cameras']:>8} {r['aggregate_fps']:>19.2f} {r['aggregate_fps'] / r['cameras']:>11.2f} "
              f"{r['pipeline_fps']:>15.2f} {r['node_share_of_pipeline']:>14.2f} {1e3 * lat['median']:>18.1f} {1e3 * lat['p95']:>8.1f} {mem:>8}")
    line = json.dumps({"bench": "cameras", "device": label, "model": model, "speed": args.speed, "size": args.size,
                       "processing_res": pipeline.processing_res, "load_average": os.getloadavg()[0], "results": results})
    if args.json:
        args.json.write_text(line + "\n")
    print(line)


if __name__ == "__main__":
    main()
