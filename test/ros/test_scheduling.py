"""The multi-camera node's scheduling policy alone (`scheduling.FairShare`, no ROS): least recent worker
time first, cameras of one size batched, and in a simulated node a cheap camera beside an expensive
one waits at most for the expensive camera's call in progress."""
from __future__ import annotations

import math

from sharpdepth_ros.scheduling import FairShare


def test_nothing_ready_is_no_batch():
    assert FairShare(["a", "b"]).next_batch({}, 0.0) == []


def test_ties_go_in_the_cameras_order_and_one_size_is_one_batch():
    fair = FairShare(["front", "rear", "side"])
    ready = {"side": (30, 40), "rear": (36, 48), "front": (36, 48)}
    assert fair.next_batch(ready, 0.0) == ["front", "rear"]  # nothing used yet: the first camera, with its size
    fair.charge(["front", "rear"], 1.0, 0.0)  # 0.5 s each: side has used less
    assert fair.next_batch(ready, 0.1) == ["side"]
    fair.charge(["side"], 0.6, 0.1)
    assert fair.next_batch(ready, 0.2) == ["front", "rear"]


def test_the_camera_that_used_less_worker_time_goes_first():
    fair = FairShare(["big", "small"])
    fair.charge(["big"], 0.4, 0.0)
    fair.charge(["small"], 0.05, 0.5)
    assert fair.next_batch({"big": (3000, 4000), "small": (96, 128)}, 0.6) == ["small"]
    assert fair.next_batch({"big": (3000, 4000)}, 0.6) == ["big"]  # alone, it is served


def test_old_use_fades_with_the_half_life():
    fair = FairShare(["big", "small"], half_life_s=2.0)
    fair.charge(["big"], 10.0, 0.0)  # a burst long ago: 20 half-lives later it weighs ~1e-5 s
    fair.charge(["small"], 0.1, 39.0)
    assert fair.next_batch({"big": 1, "small": 2}, 40.0) == ["big"]
    fair.charge(["big"], 10.0, 40.0)
    assert fair.next_batch({"big": 1, "small": 2}, 41.0) == ["small"]


def _simulate(fair: FairShare, small_period: float, small_cost: float, big_cost: float, seconds: float) -> tuple[list[float], int, dict]:
    """A node's worker, one model call at a time: `big` always has a frame waiting (each costs
    `big_cost`); `small` gets one every `small_period` (costs `small_cost`), the newest replacing a
    waiting one. (small's waits from arrival to its call, small's frames dropped, worker seconds each.)"""
    now, served_up_to, waits, dropped, busy = 0.0, -1, [], 0, {"big": 0.0, "small": 0.0}
    while now < seconds:
        newest = math.floor(now / small_period)  # the index of small's newest frame by now
        ready = {"big": "4000x3000"}
        if newest > served_up_to:
            ready["small"] = "128x96"
        (camera,) = fair.next_batch(ready, now)
        cost = big_cost if camera == "big" else small_cost
        if camera == "small":
            dropped += newest - served_up_to - 1  # older frames replaced while they waited
            waits.append(now - newest * small_period)
            served_up_to = newest
        fair.charge([camera], cost, now)
        busy[camera] += cost
        now += cost
    return waits, dropped, busy


def test_a_cheap_camera_waits_at_most_one_call_of_an_expensive_one():
    """Big (0.15 s a frame) always has a frame waiting; small (0.03 s, every 0.2 s) is served before
    big's next frame: its longest wait is one big call, and none of its frames is dropped."""
    waits, dropped, busy = _simulate(FairShare(["big", "small"]), 0.2, 0.03, 0.15, 30.0)
    assert len(waits) >= 149 and dropped == 0
    assert max(waits) <= 0.15 + 1e-9
    assert busy["big"] > 0.6 * 30  # big still gets the rest of the worker


def test_a_camera_that_would_take_the_whole_worker_leaves_the_other_its_share():
    """Small frames so costly (0.2 s, one every 0.2 s) that small alone would keep the worker busy:
    big and small share the worker about evenly instead of either starving."""
    _, _, busy = _simulate(FairShare(["big", "small"]), 0.2, 0.2, 0.3, 60.0)
    assert 0.7 < busy["small"] / busy["big"] < 1.4
