"""A 100 Hz camera for 10 s into a model that manages a fraction of that: the node drops (and
counts) what it cannot process instead of queueing it, memory stays flat, output keeps flowing,
nothing crashes. The suite's only long test (~15 s)."""
from __future__ import annotations

import time

import numpy as np
from rclpy.parameter import Parameter
from helpers_ros import Probe, Spinner, node_parameters, wait_for
from sensor_msgs.msg import Image, PointCloud2

from sharpdepth_ros.node import SharpDepthNode
from sharpdepth_ros.replay import ReplayPublisher

RATE_HZ, SECONDS = 100.0, 10.0
W, H = 320, 240  # 230 kB per frame: a queue of 10 s of frames would add ~230 MB


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def test_flood_is_dropped_counted_and_bounded(ros_context, tiny_pipeline_dir):
    node = SharpDepthNode(context=ros_context, namespace="flood", parameter_overrides=node_parameters(tiny_pipeline_dir))
    replay = ReplayPublisher(
        context=ros_context, namespace="flood", timer=True,
        parameter_overrides=[Parameter("rate", value=RATE_HZ), Parameter("scenes", value=4), Parameter("width", value=W),
                             Parameter("height", value=H), Parameter("frame_id", value="flood_cam")],
    )
    probe = Probe(ros_context, {"/flood/depth/image": Image, "/flood/points": PointCloud2}, name="flood_probe", keep=False)
    try:
        with Spinner(ros_context, node, probe.node), Spinner(ros_context, replay):
            wait_for(lambda: len(probe.arrivals["/flood/depth/image"]) >= 3, 60, "the first outputs")  # models warm
            rss_start, received_start, start = _rss_mb(), node.stats.received, time.monotonic()
            rss_peak = rss_start
            while time.monotonic() - start < SECONDS:
                time.sleep(0.25)
                rss_peak = max(rss_peak, _rss_mb())
                assert node._worker.is_alive()
            replay._timer.cancel()
            flood_end = time.monotonic()
            # Once the last frame is through, every received frame is accounted for: no hidden queue.
            wait_for(lambda: (s := node.stats).received == s.published + s.dropped + sum(s.rejected.values()), 30,
                     "the worker to go idle")  # node.stats: a snapshot of all cameras' counters
    finally:
        node.destroy_node()
        replay.destroy_node()
        probe.node.destroy_node()

    received = node.stats.received - received_start
    assert received >= 0.3 * RATE_HZ * SECONDS, f"the flood did not happen: only {received} frames arrived"
    assert node.stats.dropped > 0.5 * received, "a model slower than the camera must drop frames"
    assert not node.stats.rejected
    # output kept flowing: something in every 2.5 s of the flood
    arrivals = np.array(probe.arrivals["/flood/depth/image"])
    edges = np.arange(start, flood_end - 1e-9, 2.5)
    per_window = [int(((arrivals >= a) & (arrivals < a + 2.5)).sum()) for a in edges]
    assert min(per_window) >= 1, per_window
    assert len(probe.arrivals["/flood/points"]) >= len(edges)
    assert rss_peak - rss_start < 100, f"memory grew by {rss_peak - rss_start:.0f} MB during the flood"
