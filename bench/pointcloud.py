"""Build time of a 640x480 xyzrgb PointCloud2 from a depth map, on one core, against two baselines.

- `PointCloudBuilder`: the node's (cached row/column rays, one buffer that is the message's own
  byte array);
- depth_image_proc's algorithm in numpy: x = (u - cx) * z * (1 / fx) over the whole grid each
  frame (its `convertDepth`), the colour bytes in a second pass (`convertRgb`), then the buffer
  copied into the message;
- the `sensor_msgs_py.point_cloud2.create_cloud` call pattern: xyz and packed rgb into a
  structured array whose dtype follows the PointFields, its bytes copied into the message
  (a reimplementation of the pattern, not its code).

All three must give the same bytes (xyz to float rounding). The methods are timed alternately,
one call each per round in a rotating order, so a change in machine load hits all of them alike.
Prints a table and one JSON line; target <= 5 ms per message (median; on a shared machine compare
`min`, the cost without contention).

    .venv/bin/python bench/pointcloud.py [--repeats 50] [--width 640 --height 480]    # ~5 s; --quick: 10 rounds
"""
from __future__ import annotations

import argparse
import array
import json
import os
import statistics
import sys

import cv2
import numpy as np
from sensor_msgs.msg import PointCloud2
from std_msgs.msg import Header

from sharpdepth_ros.conversions import PointCloudBuilder, point_cloud_to_numpy, point_fields
from timing import add_quick, announce, quick_defaults, time_alternately  # bench/timing.py

TARGET_MS = 5.0
QUICK = {"repeats": 10}
# The estimate: a round (the three builds, 640x480) and the start, measured 2026-12-07 on the reference machine.
SECONDS_ROUND_VGA, SECONDS_START = 0.06, 2.0


def depth_image_proc_numpy(depth: np.ndarray, K: np.ndarray, rgb: np.ndarray, header) -> PointCloud2:
    """depth_image_proc's point_cloud_xyzrgb: per-pixel unprojection with constant_x = 1 / fx,
    NaN for invalid depth, then the colour bytes (b, g, r at 16..18), in numpy."""
    h, w = depth.shape
    center_x, center_y, constant_x, constant_y = K[0, 2], K[1, 2], 1.0 / K[0, 0], 1.0 / K[1, 1]
    u = np.arange(w, dtype=np.float32)[None, :]
    v = np.arange(h, dtype=np.float32)[:, None]
    z = np.where(np.isfinite(depth) & (depth > 0), depth, np.float32(np.nan))
    buffer = np.zeros((h, w, 8), dtype=np.float32)
    buffer[..., 0] = (u - center_x) * z * constant_x
    buffer[..., 1] = (v - center_y) * z * constant_y
    buffer[..., 2] = z
    colour = buffer.view(np.uint8).reshape(h, w, 32)
    colour[..., 16], colour[..., 17], colour[..., 18] = rgb[..., 2], rgb[..., 1], rgb[..., 0]
    msg = PointCloud2(header=header, height=h, width=w, is_bigendian=sys.byteorder == "big", is_dense=False, point_step=32, row_step=32 * w)
    msg.fields = point_fields(color=True)
    data = array.array("B")
    data.frombytes(buffer.tobytes())
    msg.data = data
    return msg


def create_cloud_pattern(depth: np.ndarray, K: np.ndarray, rgb: np.ndarray, header) -> PointCloud2:
    """What users of sensor_msgs_py write: compute xyz, pack rgb as one uint32, hand a structured
    array typed by the fields to create_cloud, which copies its bytes into the message."""
    h, w = depth.shape
    fields = point_fields(color=True)
    u, v = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    z = np.where(np.isfinite(depth) & (depth > 0), depth, np.float32(np.nan))
    packed = (rgb[..., 0].astype(np.uint32) << 16) | (rgb[..., 1].astype(np.uint32) << 8) | rgb[..., 2].astype(np.uint32)
    dtype = np.dtype({"names": [f.name for f in fields], "formats": ["<f4", "<f4", "<f4", "<u4"],
                      "offsets": [f.offset for f in fields], "itemsize": 32})
    points = np.zeros((h, w), dtype=dtype)
    points["x"] = (u - K[0, 2]) * z / K[0, 0]
    points["y"] = (v - K[1, 2]) * z / K[1, 1]
    points["z"] = z
    points["rgb"] = packed
    data = array.array("B")
    data.frombytes(memoryview(points).cast("B"))
    return PointCloud2(header=header, height=h, width=w, is_dense=False, is_bigendian=sys.byteorder == "big",
                       fields=fields, point_step=dtype.itemsize, row_step=dtype.itemsize * w, data=data)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--repeats", type=int, default=50, help="rounds timed (each: one build of each method)")
    add_quick(parser, f"{QUICK['repeats']} rounds")
    args = quick_defaults(parser, argv, QUICK)
    announce("pointcloud", SECONDS_START + (args.repeats + 2) * SECONDS_ROUND_VGA * args.width * args.height / (640 * 480),
             f"{args.repeats} rounds of 3 builds", args.quick)

    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    cv2.setNumThreads(1)

    rng = np.random.default_rng(0)
    h, w = args.height, args.width
    depth = rng.uniform(0.3, 10.0, (h, w)).astype(np.float32)
    depth[rng.random((h, w)) < 0.05] = np.nan
    rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    K = np.array([[525.0, 0, w / 2 - 0.5], [0, 525.0, h / 2 - 0.5], [0, 0, 1]])
    header = Header(frame_id="camera_optical_frame")

    builder = PointCloudBuilder()
    builds = {
        "PointCloudBuilder": lambda: builder(depth, K, header, rgb=rgb),
        "depth_image_proc numpy": lambda: depth_image_proc_numpy(depth, K, rgb, header),
        "create_cloud pattern": lambda: create_cloud_pattern(depth, K, rgb, header),
    }
    reference_xyz, reference_rgb = point_cloud_to_numpy(builds["PointCloudBuilder"]())
    for name in list(builds)[1:]:  # same cloud: xyz to float rounding, identical colour bytes
        xyz, colour = point_cloud_to_numpy(builds[name]())
        np.testing.assert_allclose(xyz, reference_xyz, rtol=1e-5, equal_nan=True)
        np.testing.assert_array_equal(colour, reference_rgb)

    times = time_alternately(builds, args.repeats)
    load = os.getloadavg()[0]
    print(f"{w}x{h} xyzrgb PointCloud2 (point_step 32), one core, {args.repeats} rounds timed alternately; load average {load:.2f}")
    print(f"{'build':<24}{'median ms':>10}{'min ms':>9}{'p90 ms':>9}{'x median':>10}{'x min':>8}")
    result = {"width": w, "height": h, "repeats": args.repeats, "load_average": round(load, 2), "target_ms": TARGET_MS}
    ours = times["PointCloudBuilder"]
    for name, t in times.items():
        median, p90 = statistics.median(t), float(np.percentile(t, 90))
        ratio_median, ratio_min = median / statistics.median(ours), min(t) / min(ours)
        print(f"{name:<24}{median:>10.2f}{min(t):>9.2f}{p90:>9.2f}{ratio_median:>10.2f}{ratio_min:>8.2f}")
        result[name] = {"median_ms": round(median, 3), "min_ms": round(min(t), 3), "p90_ms": round(p90, 3),
                        "ratio_median": round(ratio_median, 2), "ratio_min": round(ratio_min, 2)}
    result["meets_target"] = result["PointCloudBuilder"]["median_ms"] <= TARGET_MS
    print(f"ratios are to PointCloudBuilder; target <= {TARGET_MS} ms: {'met' if result['meets_target'] else 'NOT met'}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
