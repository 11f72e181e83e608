"""The node's pure logic alone (no node, no DDS): the calibration policy (`calibration`), counters,
reports, /diagnostics rows and log throttling (`statistics`), a frame's batch key and published depth
(`frames`)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers_ros import encode_image, header, pinhole_info

from sharpdepth_ros.calibration import CAMERA_INFO_GRACE_S, CalibrationRefused, camera_model, frame_info
from sharpdepth_ros.conversions import Rectifier, pinhole_K
from sharpdepth_ros.frames import BadModelOutput, HostOutputs, batch_key, problem, published_depth
from sharpdepth_ros.statistics import THROTTLE_S, Stats, Throttle, diagnostic_rows, report

K = np.array([[50.0, 0, 19.5], [0, 50.0, 14.5], [0, 0, 1]])
SETTINGS = {"use_camera_intrinsics": True, "fov_deg": 60.0}


def test_a_frame_waits_for_its_camera_info_then_gets_the_fov_pinhole():
    hdr = header(1, "cam")
    info = pinhole_info(K, (30, 40), hdr)
    assert frame_info({"cam": info}, "cam", (30, 40), hdr, SETTINGS, 0.0, "/c/camera_info") == (info, True)
    with pytest.raises(ValueError, match=r"no camera_info for frame_id 'x' yet on /c/camera_info \(camera_info arrives for 'cam'\)"):
        frame_info({"cam": info}, "x", (30, 40), hdr, SETTINGS, 99.0, "/c/camera_info")  # another frame_id has one: wait
    with pytest.raises(ValueError, match="no camera_info for frame_id 'x' yet"):
        frame_info({}, "x", (30, 40), hdr, SETTINGS, CAMERA_INFO_GRACE_S - 0.1, "/c/camera_info")  # within the grace
    assumed, calibrated = frame_info({}, "x", (30, 40), hdr, SETTINGS, CAMERA_INFO_GRACE_S, "/c/camera_info")
    assert not calibrated and np.allclose(np.reshape(assumed.k, (3, 3)), pinhole_K(40, 30, 60.0))
    _, calibrated = frame_info({}, "x", (30, 40), hdr, {**SETTINGS, "use_camera_intrinsics": False}, 0.0, "/c/camera_info")
    assert not calibrated  # no camera_info needed at all


def test_camera_model_refuses_implausible_k_for_the_pinhole_and_skips_what_nothing_describes():
    rgb, hdr = np.zeros((30, 40, 3), np.uint8), header(1, "cam")
    good = camera_model(rgb, pinhole_info(K, (30, 40), hdr), True, hdr, 60.0, Rectifier())
    assert good.calibrated and good.refused is None and good.seen is None and np.allclose(good.K, K)
    bad = pinhole_info(K * [[1e9], [1e9], [1]], (30, 40), hdr)
    fallback = camera_model(rgb, bad, True, hdr, 60.0, Rectifier())
    assert not fallback.calibrated and np.allclose(fallback.K, pinhole_K(40, 30, 60.0))
    assert fallback.refused.startswith("camera_info of frame_id 'cam' refused: camera_info K: fx = 5e+10 px is impossible")
    tall, tall_hdr = np.zeros((5000, 1, 3), np.uint8), header(1, "tall")
    with pytest.raises(CalibrationRefused, match="cannot get the fov_deg 60 pinhole.*its frames are skipped"):
        camera_model(tall, pinhole_info(np.array([[500.0, 0, 0], [0, 500.0, 2499.5], [0, 0, 1]]), (5000, 1), tall_hdr), True,
                     tall_hdr, 60.0, Rectifier())
    distorted = pinhole_info(K, (30, 40), hdr)
    distorted.d = [0.1, 0.0, 0.0, 0.0, 0.0]
    rectified = camera_model(rgb, distorted, True, hdr, 60.0, Rectifier())
    assert rectified.calibrated and rectified.seen is not None and rectified.seen.shape == (30, 40)
    distorted.r = [2.0, 0, 0, 0, 1, 0, 0, 0, 1]
    with pytest.raises(CalibrationRefused, match="R is not a rotation: .*; its frames are skipped"):
        camera_model(rgb, distorted, True, hdr, 60.0, Rectifier())


def test_report_is_the_difference_between_snapshots():
    before = Stats(received=10, published=8, dropped=1, rejected={"input": 1}, stage_s={"model": 1.0})
    now = Stats(received=20, published=13, dropped=3, fallbacks=1, rejected={"input": 2, "model": 1}, stage_s={"model": 1.5})
    done = report(before, now, 2.0)
    assert done.values == {"input_hz": "5.00", "output_hz": "2.50", "dropped": "2", "dropped_total": "3", "skipped": "2",
                           "latency_ms/model": "100.00"}
    assert done.text.startswith("in 5.0 Hz, out 2.5 Hz, dropped 2 (total 3), skipped 2, fit fallbacks 1 {'input': 1, 'model': 1}")
    assert done.warn and done.busy
    idle = report(now, now.copy(), 1.0)
    assert not idle.warn and not idle.busy
    assert report(before, Stats(received=12, published=8, dropped=1, rejected={"input": 1}), 1.0).warn  # in, nothing out


def test_stats_add_up_and_count_frames():
    a = Stats()
    a.add_frame({"model": 0.5, "publish": 0.1}, fallback=True)
    assert a.reject("input") == 1 and a.reject("input") == 2
    total = a + Stats(received=3, rejected={"model": 1}, stage_s={"model": 0.25})
    assert (total.published, total.fallbacks, total.received, total.rejected, total.stage_s) == (
        1, 1, 3, {"input": 2, "model": 1}, {"model": 0.75, "publish": 0.1})


def test_diagnostic_rows_carry_the_lifecycle_state_and_why_a_configure_failed():
    assert diagnostic_rows([], "unconfigured", "") == [("depth", 0, "unconfigured", {"state": "unconfigured"})]
    assert diagnostic_rows([], "unconfigured", "configure failed: no folder x") == [
        ("depth", 2, "configure failed: no folder x", {"state": "unconfigured"})]
    done = report(Stats(), Stats(received=1), 1.0)
    (row,) = diagnostic_rows([("front: depth", done)], "inactive", "")
    assert row[:3] == ("front: depth", 1, f"inactive: {done.text}") and row[3]["state"] == "inactive"
    assert diagnostic_rows([("depth", done)], "active", "")[0][2] == done.text


def test_throttle_says_each_kind_once_per_period_and_stays_bounded():
    throttle = Throttle()
    assert throttle.due("a", 0.0) and not throttle.due("a", THROTTLE_S - 0.1) and throttle.due("a", THROTTLE_S)
    for i in range(1000):
        throttle.due(f"kind {i}", 100.0)
    assert len(throttle) == 64


def test_batch_key_from_the_header_and_the_published_depth():
    msg = encode_image(np.zeros((30, 40, 3), np.uint8), "rgb8")
    assert batch_key(msg, 1200, "front") == (30, 40)
    with pytest.raises(ValueError, match="above the limit"):
        batch_key(msg, 1199, "front")
    depth = torch.tensor([[[[1.0, -1.0], [0.0, 2.0]]]])
    out = published_depth(HostOutputs(depth, None, {}, []), 0, np.array([[True, True], [True, False]]))
    assert np.isnan(out).tolist() == [[False, True], [True, True]] and out[0, 0] == 1.0  # <= 0 and unseen: NaN
    with pytest.raises(BadModelOutput, match="1 non-finite depth values of 4"):
        published_depth(HostOutputs(torch.tensor([[[[1.0, float("nan")], [1.0, 1.0]]]]), None, {}, []), 0, None)
    assert problem(BadModelOutput("x"))[0] == "model" and problem(CalibrationRefused("y"))[0] == "calibration"
    assert problem(ValueError("z")) == ("input", "z") and problem(KeyError("k"))[0] == "error"
