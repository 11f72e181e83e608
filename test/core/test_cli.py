"""`sharpdepth predict` in-process on real files, with the tiny pipeline folder (CPU); a subprocess where
a hang is the failure."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import zlib
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers_models import scene_image
from sharpdepth_core.cli import OUTPUT_SUFFIXES, PREDICT_RECORD, build_parser, default_threads, depth_to_millimetres, main
from sharpdepth_core.geometry import unproject
from sharpdepth_core.pipeline import SharpDepthPipeline
from sharpdepth_core.visualize import colorize_depth, depth_colour_bar

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.filterwarnings("ignore:SharpDepth. degenerate final fit:RuntimeWarning")


@pytest.fixture
def images(tmp_path):
    """A folder with an RGB scene, a grayscale image, an RGBA one of another size and a 16-bit grayscale one."""
    folder = tmp_path / "in"
    folder.mkdir()
    rgb, _ = scene_image(0)
    Image.fromarray(rgb).save(folder / "scene.png")
    Image.fromarray(scene_image(1)[0][..., 1]).save(folder / "gray.png")
    rgba = np.dstack([scene_image(2, width=50, height=30)[0], np.full((30, 50), 128, np.uint8)])
    Image.fromarray(rgba).save(folder / "rgba.png")
    Image.fromarray((scene_image(3, width=40, height=24)[0][..., 0].astype(np.uint16) * 257)).save(folder / "ir16.png")
    (folder / "notes.txt").write_text("not an image, not picked up from a folder")
    return folder


def read_ply(path):
    header, _, body = path.read_bytes().partition(b"end_header\n")
    count = int(next(l for l in header.decode().splitlines() if l.startswith("element vertex")).split()[-1])
    rows = np.frombuffer(body, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("r", "u1"), ("g", "u1"), ("b", "u1")])
    return count, rows


def test_predict_writes_every_output_at_the_input_size(tiny_dirs, images, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["predict", str(images), "--out", str(out), "--model", str(tiny_dirs["pipeline"])]) == 0
    captured = capsys.readouterr()
    assert "UNTRAINED" in captured.err and "4 of 4 images" in captured.err
    sizes = {"scene": (48, 64), "gray": (48, 64), "rgba": (30, 50), "ir16": (24, 40)}
    for stem, hw in sizes.items():
        depth, metric = np.load(out / f"{stem}_depth.npy"), np.load(out / f"{stem}_metric_depth.npy")
        assert depth.dtype == metric.dtype == np.float32 and depth.shape == metric.shape == hw
        confidence = np.load(out / f"{stem}_confidence.npy")
        assert confidence.dtype == np.float32 and confidence.shape == hw and ((confidence >= 0) & (confidence <= 1)).all()
        mm = np.asarray(Image.open(out / f"{stem}_depth.png"))
        assert mm.dtype == np.uint16 and np.array_equal(mm, depth_to_millimetres(depth))
        for picture in ("depth_color", "metric_depth_color", "difference"):  # the picture, then its colour bar, as
            image = np.asarray(Image.open(out / f"{stem}_{picture}.png"))  # wide as its labels need (depth: 157+ px)
            assert image.shape[0] > hw[0] and image.shape[2] == 3
            assert image.shape[1] == hw[1] if picture == "difference" else image.shape[1] >= max(hw[1], 157)
        assert any(line.startswith(str(images / f"{stem}.png")) for line in captured.out.splitlines())
    # the files hold the pipeline's output for that image and seed, f_D's depth included
    rgb = np.asarray(Image.open(images / "scene.png"))
    expected = SharpDepthPipeline.from_pretrained(tiny_dirs["pipeline"])(rgb, seed=0)
    depth, metric = np.load(out / "scene_depth.npy"), np.load(out / "scene_metric_depth.npy")
    assert np.allclose(depth, expected.depth[0, 0].numpy(), atol=1e-4)
    assert np.allclose(metric, expected.metric_depth[0, 0].numpy(), atol=1e-4) and not np.allclose(depth, metric, atol=1e-3)
    assert np.allclose(np.load(out / "scene_confidence.npy"), expected.confidence[0, 0].numpy(), atol=1e-5)
    # one colour scale for the pair: the 2nd-98th percentile of both maps' valid depth
    both = np.concatenate([depth[np.isfinite(depth) & (depth > 0)], metric[np.isfinite(metric) & (metric > 0)]])
    lo, hi = np.percentile(both, [2, 98])
    depth_png = np.asarray(Image.open(out / "scene_depth_color.png"))
    metric_png = np.asarray(Image.open(out / "scene_metric_depth_color.png"))
    assert np.array_equal(depth_png[:48, :64], colorize_depth(depth, lo, hi)) and (depth_png[:48, 64:] == 24).all()
    assert np.array_equal(metric_png[:48, :64], colorize_depth(metric, lo, hi)) and (metric_png[:48, 64:] == 24).all()
    near, far = colorize_depth(np.array([[lo, hi]]), lo, hi)[0]
    for png in (depth_png, metric_png):  # the bar runs from the near colour (lo) to the far one (hi)
        assert np.array_equal(png[48, 0], near) and np.array_equal(png[48, -1], far)
    # its labels: those ends, what they are, and each map's full range (the depth's as stdout gives it)
    line = next(line for line in captured.out.splitlines() if line.startswith(str(images / "scene.png")))
    full = re.search(r"depth (\d+\.\d\d-\d+\.\d\d m)", line).group(1)
    scale = "scale: 2-98th percentile of depth and f_D"
    assert np.array_equal(depth_png[48:], depth_colour_bar(64, lo, hi, (scale, f"full range {full}")))
    valid = metric[np.isfinite(metric) & (metric > 0)]
    assert np.array_equal(metric_png[48:], depth_colour_bar(64, lo, hi, (scale, f"full range {valid.min():.2f}-{valid.max():.2f} m")))
    assert not list(out.glob(".*.tmp")) and not (out / "notes_depth.npy").exists()
    assert json.loads((out / PREDICT_RECORD).read_text())["files"] == sorted(p.name for p in out.iterdir() if p.name != PREDICT_RECORD)


def test_point_cloud_uses_the_given_intrinsics(tiny_dirs, images, tmp_path):
    out = tmp_path / "out"
    args = ["predict", str(images / "scene.png"), "--out", str(out), "--model", str(tiny_dirs["pipeline"]), "--ply"]
    assert main(args + ["--intrinsics", "50,52,31.5,23.5"]) == 0
    depth = np.load(out / "scene_depth.npy")
    count, rows = read_ply(out / "scene.ply")
    K = np.array([[50.0, 0, 31.5], [0, 52, 23.5], [0, 0, 1]])
    xyz = unproject(depth, K)
    valid = np.isfinite(xyz).all(axis=-1)
    assert count == int(valid.sum()) == len(rows)
    assert np.allclose(np.stack([rows["x"], rows["y"], rows["z"]], -1), xyz[valid], atol=1e-5)
    rgb = np.asarray(Image.open(images / "scene.png"))
    assert np.array_equal(np.stack([rows["r"], rows["g"], rows["b"]], -1), rgb[valid])
    # a JSON calibration for another resolution is scaled to the image
    calib = tmp_path / "camera.json"
    calib.write_text(json.dumps({"K": [[100, 0, 63.5], [0, 104, 47.5], [0, 0, 1]], "width": 128, "height": 96}))
    assert main(args + ["--intrinsics", str(calib)]) == 0
    _, scaled = read_ply(out / "scene.ply")
    assert np.allclose(np.stack([scaled["x"], scaled["y"], scaled["z"]], -1), xyz[valid], atol=1e-5)


def test_intrinsics_that_do_not_fit_the_image_are_scaled_refused_or_warned_about(tiny_dirs, images, tmp_path, capsys):
    """A JSON calibration of the image's aspect ratio is scaled (said), of another one refused (the image is
    not written: exit 1); a bare fx,fy,cx,cy for 640x480 on a 64x48 image is used with a warning."""
    scene = images / "scene.png"  # 64x48
    args = ["predict", str(scene), "--model", str(tiny_dirs["pipeline"])]
    calib = tmp_path / "camera.json"
    calib.write_text(json.dumps({"K": [[100, 0, 63.5], [0, 104, 47.5], [0, 0, 1]], "width": 128, "height": 96}))
    assert main([*args, "--out", str(tmp_path / "a"), "--intrinsics", str(calib)]) == 0
    assert f"warning: {scene}: --intrinsics for 128x96 images scaled to this 64x48 image" in capsys.readouterr().err
    calib.write_text(json.dumps({"K": [[100, 0, 63.5], [0, 104, 63.5], [0, 0, 1]], "width": 128, "height": 128}))
    assert main([*args, "--out", str(tmp_path / "b"), "--intrinsics", str(calib)]) == 1
    err = capsys.readouterr().err
    assert (f"{scene}: error: --intrinsics is for 128x128 images but the image is 64x48, another aspect ratio" in err
            and not (tmp_path / "b" / "scene_depth.npy").exists())
    assert main([*args, "--out", str(tmp_path / "c"), "--intrinsics", "525,525,319.5,239.5"]) == 0
    assert "--intrinsics has its principal point (319.5, 239.5) far from the centre of this 64x48 image" in capsys.readouterr().err
    assert main([*args, "--out", str(tmp_path / "d"), "--intrinsics", "50,52,31.5,23.5"]) == 0
    assert "warning" not in capsys.readouterr().err


def test_unreadable_inputs_are_reported_and_skipped(tiny_dirs, images, tmp_path, capsys):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG but not really")
    out = tmp_path / "out"
    status = main(["predict", str(broken), str(images / "scene.png"), str(tmp_path / "missing.jpg"),
                   "--out", str(out), "--model", str(tiny_dirs["pipeline"])])
    err = capsys.readouterr().err
    assert status == 3 and (out / "scene_depth.npy").exists() and not (out / "broken_depth.npy").exists()
    line = next(line for line in err.splitlines() if "not a readable image" in line)
    assert line.startswith(f"{broken}: not a readable image") and line.count(str(broken)) == 1  # the path once
    assert f"{tmp_path / 'missing.jpg'}: no such file or folder" in err and "1 of 2 images" in err
    assert err.strip().splitlines()[-1] == ("sharpdepth predict: error: 2 input(s) not written (1 image(s) failed, "
                                            "1 input(s) gave no image, each said above); exit status 3")


def test_an_input_name_too_long_for_its_outputs_fails_that_image_only(tiny_dirs, images, tmp_path, capsys):
    """A 240-character name (its _metric_depth_color.png: 263 bytes) stopped the run with an ENAMETOOLONG
    traceback before any image: now that image fails in one line, the others are written (exit 3)."""
    long = tmp_path / ("x" * 240 + ".png")
    shutil.copy(images / "scene.png", long)
    out = tmp_path / "out"
    status = main(["predict", str(long), str(images / "gray.png"), "--out", str(out), "--model", str(tiny_dirs["pipeline"])])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 3 and "Traceback" not in "\n".join(err)
    line = next(line for line in err if line.startswith(f"{long}: error:"))
    assert f"its output {'x' * 240}_metric_depth_color.png (written under a temporary name of" in line
    assert line.endswith(f"is longer than the 255 bytes a file name may have in {out}; rename the input to a shorter name")
    assert sorted(p.name for p in out.iterdir()) == sorted(["gray" + s for s in OUTPUT_SUFFIXES[:-1]] + [PREDICT_RECORD])
    assert err[-1].startswith("sharpdepth predict: error: 1 input(s) not written (1 image(s) failed")


@pytest.fixture
def full_disk(tmp_path):
    """A 96 KiB tmpfs: a disk that fills up for real, the only way to get a full disk's errors from every
    writer (numpy's short write, Pillow, ONNX's protobuf); unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs (a real full disk) needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(disk)], capture_output=True, text=True, timeout=30)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], check=True, timeout=30)


def test_predict_on_a_full_disk_keeps_what_it_wrote_and_stops_in_one_line(tiny_dirs, images, full_disk, capsys):
    """The disk fills during the 2nd image (a traceback before, the run aborted): that image's files are
    removed, the 1st image's are whole, the 3rd is not tried; one line says the space needed; exit 3."""
    out = full_disk / "out"
    names = ("scene", "gray", "rgba")
    status = main(["predict", *(str(images / f"{n}.png") for n in names), "--out", str(out), "--model", str(tiny_dirs["pipeline"])])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 3 and "Traceback" not in "\n".join(err)
    line = next(line for line in err if line.startswith(f"{images / 'gray.png'}: error:"))
    assert line.startswith(f"{images / 'gray.png'}: error: cannot write to {out}: No space left on device; its outputs need up to ")
    assert line.endswith(f"MB free there; its files in {out} removed; 1 later image(s) not processed")
    assert err[-1] == ("sharpdepth predict: error: 2 input(s) not written (1 image(s) failed, 1 image(s) not processed after "
                       "a write error, each said above); exit status 3")
    assert sorted(p.name for p in out.iterdir()) == sorted([PREDICT_RECORD, *("scene" + s for s in OUTPUT_SUFFIXES[:-1])])
    assert np.load(out / "scene_depth.npy").shape == (48, 64)
    assert np.array_equal(np.asarray(Image.open(out / "scene_depth.png")), depth_to_millimetres(np.load(out / "scene_depth.npy")))


def test_export_on_a_full_disk_is_one_line_and_leaves_nothing(tiny_dirs, full_disk, capsys):
    out = full_disk / "export"
    assert main(["export", "--student", str(tiny_dirs["student"]), "--out", str(out)]) == 2
    loading, err = capsys.readouterr().err.split("\n", 1)  # export's own one line on what it loads, then the error
    assert loading.startswith("sharpdepth export: loading the student ")
    assert err.count("\n") == 1 and err.startswith(f"sharpdepth export: error: cannot write the export in {out}: "
                                                     "No space left on device; it needs about ")
    assert err.endswith("MB free there; nothing of it was left\n") and list(full_disk.iterdir()) == []


def test_exit_status_says_whether_every_input_was_written(tiny_dirs, images, tmp_path, capsys, monkeypatch):
    """0: all written; 3: some not (an unreadable broken.jpg, an empty folder); 1: none; documented in --help."""
    model = ["--model", str(tiny_dirs["pipeline"])]
    assert main(["predict", str(images / "scene.png"), "--out", str(tmp_path / "a"), *model]) == 0
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a JPEG")
    assert main(["predict", str(images / "scene.png"), str(broken), "--out", str(tmp_path / "b"), *model]) == 3
    assert "1 input(s) not written (1 image(s) failed" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["predict", str(images / "scene.png"), str(tmp_path / "empty"), "--out", str(tmp_path / "c"), *model]) == 3
    assert main(["predict", str(broken), "--out", str(tmp_path / "d"), *model]) == 1
    monkeypatch.setenv("COLUMNS", "1000")
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "exit status: 0 every input written; 1 nothing written" in text and "3 some inputs written, others not" in text


def test_nothing_processed_is_a_failure_with_a_message(tiny_dirs, tmp_path, capsys):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"garbage")
    assert main(["predict", str(broken), "--out", str(tmp_path / "out"), "--model", str(tiny_dirs["pipeline"])]) == 1
    assert "none of the 1 images could be processed" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["predict", str(empty), "--out", str(tmp_path / "out"), "--model", str(tiny_dirs["pipeline"])]) == 1
    err = capsys.readouterr().err
    assert f"{empty}: no images in this folder" in err and "no images to process" in err


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--intrinsics", "1,2,3"], "expected fx,fy,cx,cy"),
        (["--intrinsics", "0,1,2,3"], "fx and fy must be finite and positive"),
        (["--intrinsics", "-1,1,2,3"], "fx and fy must be finite and positive"),  # read as the value, no '=' needed
        (["--intrinsics", "missing.json"], "missing.json: no such file"),
        (["--metric", "depth-pro"], "--metric and --metric-path go with --student"),
        (["--difference", "light"], "needs a light depth decoder"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(tiny_dirs, images, tmp_path, capsys, extra, message):
    model = [] if "--metric" in extra else ["--model", str(tiny_dirs["pipeline"])]
    assert main(["predict", str(images), "--out", str(tmp_path / "o"), *model, *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("sharpdepth predict: error:") and message in err[-1]


def test_json_files_are_read_bounded_and_regular_only(tiny_dirs, images, tmp_path, capsys):
    """--intrinsics linked to /dev/zero (a MemoryError) is one line; predict's own record nested 200,000
    deep (a RecursionError) counts as no record: nothing in the folder is taken for predict's."""
    calib = tmp_path / "camera.json"
    calib.symlink_to("/dev/zero")
    args = ["predict", str(images / "scene.png"), "--model", str(tiny_dirs["pipeline"])]
    assert main([*args, "--out", str(tmp_path / "a"), "--intrinsics", str(calib)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"sharpdepth predict: error: --intrinsics {calib}: not a regular file (a FIFO, device or folder); not read"]
    out = tmp_path / "b"
    out.mkdir()
    (out / PREDICT_RECORD).write_text("[" * 200_000 + "]" * 200_000)
    (out / "scene_depth.png").write_text("a user's file")
    assert main([*args, "--out", str(out)]) == 1
    assert "scene_depth.png exists and was not written by sharpdepth predict" in capsys.readouterr().err
    assert (out / "scene_depth.png").read_text() == "a user's file"


def test_intrinsics_impossible_for_the_image_refuse_it_in_one_line(tiny_dirs, images, tmp_path, capsys):
    """fx = 1e-9 px on a 64 px image (a 180° view) wrote depth with a median of 2.7e-11 m: now the image is
    refused, saying why (`geometry.check_calibration`, as the node)."""
    out = tmp_path / "o"
    status = main(["predict", str(images / "scene.png"), "--out", str(out), "--model", str(tiny_dirs["pipeline"]),
                   "--intrinsics", "1e-9,1e-9,64,48"])
    err = capsys.readouterr().err
    assert status != 0 and not (out / "scene_depth.npy").exists()
    assert f"{images / 'scene.png'}: error: fx = 1e-09 px is impossible for 64 px wide images: a horizontal field of view of 180°" in err


def test_calibration_json_with_zero_size_is_one_line(tiny_dirs, images, tmp_path, capsys):
    calib = tmp_path / "camera.json"
    calib.write_text(json.dumps({"K": [[100, 0, 63.5], [0, 104, 47.5], [0, 0, 1]], "width": 0, "height": 0}))
    assert main(["predict", str(images), "--out", str(tmp_path / "o"), "--model", str(tiny_dirs["pipeline"]), "--intrinsics", str(calib)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "width and height must be positive integers" in err[0]


def test_missing_models_say_what_to_provide(images, tmp_path, capsys):
    assert main(["predict", str(images), "--out", str(tmp_path / "o"), "--model", str(tmp_path / "nope")]) == 2
    assert f"--model {tmp_path / 'nope'}: no such folder" in capsys.readouterr().err
    assert main(["predict", str(images), "--out", str(tmp_path / "o"), "--student", "jingheya/lotus-depth-g-v1-0",
                 "--metric", "depth-anything-v2"]) == 2
    err = capsys.readouterr().err
    assert "jingheya/lotus-depth-g-v1-0" in err and "hf download" in err


def test_malformed_pipeline_json_and_short_schedule_are_one_line(tiny_dirs, images, tmp_path, capsys):
    listed = Path(shutil.copytree(tiny_dirs["pipeline"], tmp_path / "listed"))
    (listed / "pipeline.json").write_text("[1, 2]")
    short = Path(shutil.copytree(tiny_dirs["pipeline"], tmp_path / "short"))
    config = short / "student" / "scheduler" / "scheduler_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "num_train_timesteps": 500}))
    for folder, message in ((listed, "expected a JSON object"), (short, "num_train_timesteps 500")):
        assert main(["predict", str(images), "--out", str(tmp_path / "o"), "--model", str(folder)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("sharpdepth predict: error:") and message in err[0]


def test_processing_res_is_bounded_wherever_it_enters(tiny_dirs, images, tmp_path, capsys, monkeypatch):
    """A pipeline.json with 10^9, predict --processing-res 100000 and export --processing-res 100000 are one
    line each before any model is built (they died allocating, or ran for minutes)."""
    from sharpdepth_core.models.student import DiffusionDepthModel

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(DiffusionDepthModel, "from_pretrained", no_model)
    huge = Path(shutil.copytree(tiny_dirs["pipeline"], tmp_path / "huge"))
    (huge / "pipeline.json").write_text(json.dumps({**json.loads((huge / "pipeline.json").read_text()), "processing_res": 10**9}))
    runs = [(["predict", str(images), "--out", str(tmp_path / "o"), "--model", str(huge)], f"{huge / 'pipeline.json'}: processing_res"),
            (["predict", str(images), "--out", str(tmp_path / "o"), "--processing-res", "100000"], "--processing-res"),
            (["export", "--out", str(tmp_path / "x"), "--processing-res", "100000"], "--processing-res"),
            (["export", "--out", str(tmp_path / "x"), "--model", str(huge)], f"{huge / 'pipeline.json'}: processing_res")]
    for argv, name in runs:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"{name} must be an integer from 8 to 2048" in err[0], err
        assert ("100000" if "100000" in argv else "1000000000") in err[0]
    assert not (tmp_path / "o").exists() and not (tmp_path / "x").exists()


def test_student_with_a_pipeline_json_beside_it_needs_no_metric_and_runs_at_its_resolution(tiny_dirs, images, tmp_path, capsys):
    """What the trainer writes: student/ with a pipeline.json beside it naming the metric backend and the
    processing resolution (64 here; 768 when none is known) -> the same output as the pipeline folder."""
    checkpoint = tmp_path / "checkpoint"
    shutil.copytree(tiny_dirs["student"], checkpoint / "student")
    (checkpoint / "pipeline.json").write_text(json.dumps({"metric_backend": "depth-anything-v2", "untrained": True,
                                                          "metric_path": str(tiny_dirs["depth-anything-v2"]), "processing_res": 64}))
    scene = str(images / "scene.png")
    assert main(["predict", scene, "--out", str(tmp_path / "a"), "--student", str(checkpoint / "student")]) == 0
    assert main(["predict", scene, "--out", str(tmp_path / "b"), "--model", str(tiny_dirs["pipeline"])]) == 0
    assert np.allclose(np.load(tmp_path / "a" / "scene_depth.npy"), np.load(tmp_path / "b" / "scene_depth.npy"), atol=1e-5)
    capsys.readouterr()
    assert main(["predict", scene, "--out", str(tmp_path / "c"), "--student", str(tiny_dirs["student"])]) == 2
    assert "--metric" in capsys.readouterr().err.strip().splitlines()[-1]


@pytest.fixture
def models_must_not_load(monkeypatch):
    """Checks that must happen before the models load: loading them fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("the models were loaded before the check")

    monkeypatch.setattr(SharpDepthPipeline, "from_pretrained", refuse)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here: a missing CUDA cannot be shown")
@pytest.mark.parametrize("device,message", [("cuda", "CUDA is not available here"), ("cuda:3", "CUDA is not available here"),
                                            ("mps", "MPS is not available here"), ("gpu", "expected auto, cpu, cuda, cuda:N or mps")])
def test_unavailable_device_is_one_line_before_loading(images, tmp_path, capsys, models_must_not_load, device, message):
    assert main(["predict", str(images), "--out", str(tmp_path / "o"), "--device", device]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sharpdepth predict: error:") and message in err[0]
    assert not (tmp_path / "o").exists()


def _read_only_system_folder() -> Path:
    try:
        tempfile.TemporaryFile(dir="/sys").close()
    except OSError:
        return Path("/sys")
    pytest.skip("/sys is writable here: no read-only folder to write into")


@pytest.mark.parametrize("where", ["file", "under_a_file", "read_only_fs", "read_only_dir"])
def test_unusable_output_folder_is_one_line_before_loading(images, tmp_path, capsys, models_must_not_load, where):
    target = tmp_path / "file.txt"
    target.write_text("a file")
    if where == "under_a_file":
        target = target / "out"
    elif where == "read_only_fs":
        target = _read_only_system_folder() / "sharpdepth-out"
    elif where == "read_only_dir":
        if os.geteuid() == 0:
            pytest.skip("running as root, which ignores permission bits")
        target = tmp_path / "locked"
        target.mkdir()
        target.chmod(0o500)
    assert main(["predict", str(images), "--out", str(target)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"sharpdepth predict: error: --out {target}")
    assert (tmp_path / "file.txt").read_text() == "a file"


def test_a_fifo_in_the_input_folder_is_skipped_not_read(tiny_dirs, images, tmp_path):
    """A FIFO named like an image would block the reader forever: only regular files are read, and a FIFO
    in a folder is said in one line as every reader says it (`images.list_images`)."""
    os.mkfifo(images / "camera.png")
    os.mkfifo(tmp_path / "named.png")
    command = [sys.executable, "-m", "sharpdepth_core.cli", "predict", str(images), str(tmp_path / "named.png"),
               "--out", str(tmp_path / "out"), "--model", str(tiny_dirs["pipeline"]), "--threads", "1"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 3 and "4 of 5 images" in done.stderr, done.stderr  # neither FIFO was written
    assert f"{tmp_path / 'named.png'}: not a regular file" in done.stderr and "Traceback" not in done.stderr
    assert f"{images / 'camera.png'}: not a regular file (a FIFO, device or folder); not read" in done.stderr


@contextmanager
def fifo_writer_after(fifo: Path | None, seconds: float):
    """After `seconds`, open `fifo` for writing and close it: a reader blocked opening it then reads an
    empty file, so a reader that would hang forever makes the test fail instead."""
    def unblock():
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:  # no reader: nothing to unblock
            pass

    timer = threading.Timer(seconds, unblock)
    if fifo is not None:
        timer.start()
    try:
        yield
    finally:
        timer.cancel()


# `sharpdepth` with a hook that says when it has reached a slow step (the model load, an AOTInductor compile,
# which has begun writing its package) and blocks there: the signal lands at that point, every time.
BLOCKING_HOOK = """
import sys, time
import torch._inductor
from sharpdepth_core import cli
from sharpdepth_core.pipeline import SharpDepthPipeline

def block(*args, package_path=None, **kwargs):
    if package_path:
        open(package_path, "wb").write(b"half a package")
    print("HOOK: blocked", file=sys.stderr, flush=True)
    time.sleep(60)

SharpDepthPipeline.from_pretrained = block
torch._inductor.aoti_compile_and_package = block
sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.mark.parametrize("command,signum", [
    ("predict", signal.SIGINT),  # during the model load: a KeyboardInterrupt traceback before
    ("export", signal.SIGINT),  # during an AOTI compile: the same
    ("export", signal.SIGTERM),  # during an AOTI compile: killed, its .sharpdepth-partial-* folder left beside --out
])
def test_a_signal_during_a_slow_step_is_one_line_and_leaves_nothing(tiny_dirs, images, tmp_path, command, signum):
    work = tmp_path / "work"
    work.mkdir()
    out = work / "out"
    args = ([str(images / "scene.png"), "--model", str(tiny_dirs["pipeline"])] if command == "predict"
            else ["--engine", "aoti", "--input-size", "64x48", "--student", str(tiny_dirs["student"]), "--device", "cpu"])
    proc = subprocess.Popen([sys.executable, "-c", BLOCKING_HOOK, command, *args, "--out", str(out)], cwd=ROOT,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    watchdog = threading.Timer(120, proc.kill)
    watchdog.start()
    try:
        lines = []
        while not lines or lines[-1] != "HOOK: blocked":
            line = proc.stderr.readline()
            assert line, f"exited before the hook: {''.join(lines)}"
            lines.append(line.strip())
        if command == "export":  # the compile is writing into a scratch folder beside --out
            assert [p.name[:20] for p in work.iterdir()] == [".sharpdepth-partial-"]
        proc.send_signal(signum)
        rest = proc.stderr.read().strip().splitlines()
        status = proc.wait(timeout=60)
    finally:
        watchdog.cancel()
        proc.kill()
    name = signal.Signals(signum).name
    assert status == 128 + signum and rest == [f"sharpdepth {command}: stopped by {name}; nothing partly written was left"]
    assert list(work.iterdir()) == []  # no --out, no scratch folder


def test_an_interrupt_while_an_image_is_written_removes_that_image_only(tiny_dirs, images, tmp_path, capsys, monkeypatch):
    """SIGINT (as its handler raises it) after two of the 2nd image's files: the 1st image stays whole, none
    of the 2nd's is left."""
    import sharpdepth_core.visualize as visualize
    from sharpdepth_core.cli import Stopped

    save_png = visualize.save_png

    def interrupted(path, image):
        if path.name == "scene_depth_color.png":
            raise Stopped(signal.SIGINT)
        return save_png(path, image)

    monkeypatch.setattr(visualize, "save_png", interrupted)
    out = tmp_path / "out"
    assert main(["predict", str(images / "gray.png"), str(images / "scene.png"), "--out", str(out),
                 "--model", str(tiny_dirs["pipeline"])]) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == "sharpdepth predict: stopped by SIGINT; nothing partly written was left"
    assert sorted(p.name for p in out.iterdir()) == sorted([PREDICT_RECORD, *("gray" + s for s in OUTPUT_SUFFIXES[:-1])])


def png_header(path: Path, width: int, height: int) -> Path:
    """A PNG whose header announces width x height, with no pixel data: what a size check must stop."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + chunk(b"IEND", b""))
    return path


def test_oversized_images_are_refused_from_the_header_and_the_batch_goes_on(tiny_dirs, images, tmp_path, capsys):
    big = png_header(images / "big.png", 6000, 5000)  # 30 MP, over the 25 MP default
    bomb = png_header(tmp_path / "bomb.png", 20000, 20000)  # over Pillow's own decompression-bomb limit
    model = ["--model", str(tiny_dirs["pipeline"])]
    assert main(["predict", str(images), "--out", str(tmp_path / "o"), *model]) == 3
    err = capsys.readouterr().err
    assert f"\n{big} of 6000x5000 = 30.0 MP is above the limit of 25.0 MP" in err and "4 of 5 images" in err
    assert main(["predict", str(bomb), str(images / "scene.png"), "--out", str(tmp_path / "o"), *model, "--max-input-pixels", "0"]) == 3
    err = capsys.readouterr().err
    assert f"{bomb}: image too large to decode safely" in err and "1 of 2 images" in err
    assert main(["predict", str(big), "--out", str(tmp_path / "o"), *model, "--max-input-pixels", "40000000"]) == 1  # read, then undecodable
    assert "not a readable image" in capsys.readouterr().err


def test_predict_never_overwrites_files_it_did_not_write(tiny_dirs, images, tmp_path, capsys):
    """Outputs into the input folder: a user's <name>_depth.png stays as it is (that image is skipped with
    one line), files named like outputs are not read as inputs, and a rerun replaces predict's own files."""
    user_depth = images / "gray_depth.png"
    Image.fromarray(np.arange(48 * 64, dtype=np.uint16).reshape(48, 64)).save(user_depth)
    before = user_depth.read_bytes()
    model = ["--model", str(tiny_dirs["pipeline"])]
    assert main(["predict", str(images), "--out", str(images), *model]) == 3  # gray.png was not written
    err = capsys.readouterr().err
    assert user_depth.read_bytes() == before and not (images / "gray_depth.npy").exists()
    assert f"{images / 'gray_depth.png'} exists and was not written by sharpdepth predict" in err and "3 of 4 images" in err
    stamp = (images / "scene_depth.npy").stat().st_mtime_ns
    assert main(["predict", str(images), "--out", str(images), *model, "--seed", "3"]) == 3
    err = capsys.readouterr().err
    assert "skipped 13 file(s) named like sharpdepth outputs" in err and "3 of 4 images" in err  # 3 x 4 outputs + the user's
    assert (images / "scene_depth.npy").stat().st_mtime_ns != stamp and user_depth.read_bytes() == before


def test_predict_never_writes_through_links_or_users_files_at_temporary_names(tiny_dirs, images, tmp_path):
    """Links planted in --out at every temporary name predict used to use, pointing outside, and a user's
    plain file with such a name: nothing outside --out is written and the user's file stays."""
    out, outside = tmp_path / "out", tmp_path / "outside.txt"
    out.mkdir()
    outside.write_text("precious")
    planted = [f".{PREDICT_RECORD}.tmp", f"{PREDICT_RECORD}.tmp", "scene.ply.tmp"]
    planted += [f".scene{suffix}.tmp" for suffix in ("_depth.npy", "_depth.png", "_depth_color.png", "_confidence.npy",
                                                     "_metric_depth.npy", "_metric_depth_color.png", "_difference.png")]
    for name in planted:
        (out / name).symlink_to(outside)
    (out / ".gray_depth.npy.tmp").write_text("a user's file")
    assert main(["predict", str(images), "--out", str(out), "--ply", "--model", str(tiny_dirs["pipeline"])]) == 0
    assert outside.read_text() == "precious" and (out / ".gray_depth.npy.tmp").read_text() == "a user's file"
    assert all((out / name).is_symlink() and os.readlink(out / name) == str(outside) for name in planted)
    assert np.load(out / "scene_depth.npy").shape == (48, 64) and (out / "scene.ply").stat().st_size > 0
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp") and p.name not in planted and p.name != ".gray_depth.npy.tmp"]


def test_a_preset_part_the_folder_lacks_is_one_plain_warning_line(tiny_dirs, images, tmp_path, capsys, recwarn):
    """--speed fast on a folder without light_encoder/ let a RuntimeWarning escape, shown as `cli.py:NNN:
    RuntimeWarning:` and the source line; now one line like every other message, and no warning escapes."""
    assert main(["predict", str(images / "scene.png"), "--out", str(tmp_path / "o"), "--model", str(tiny_dirs["pipeline"]),
                 "--speed", "fast"]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if "light_encoder" in line]
    assert lines == ["sharpdepth predict: warning: speed fast: the pipeline folder has no light_encoder/, so that part of "
                     "the preset runs as vae"]
    assert [str(w.message) for w in recwarn if "light_encoder" in str(w.message)] == []


def test_degenerate_fit_warning_is_one_plain_line(tiny_dirs, images, tmp_path, capsys, monkeypatch):
    import sharpdepth_core.pipeline as pipeline_module

    real_fit = pipeline_module.fit_to_metric
    monkeypatch.setattr(pipeline_module, "fit_to_metric", lambda d, m, e: real_fit(d, m, e, threshold=-1.0))  # no pixel qualifies
    assert main(["predict", str(images / "scene.png"), "--out", str(tmp_path / "o"), "--model", str(tiny_dirs["pipeline"])]) == 0
    captured = capsys.readouterr()
    warned = [line for line in captured.err.splitlines() if "degenerate final fit" in line]
    assert len(warned) == 1 and warned[0].startswith(f"sharpdepth predict: warning: {images / 'scene.png'}: SharpDepth: degenerate")
    assert "RuntimeWarning" not in captured.err and ".py:" not in captured.err and "FALLBACK" in captured.out


def test_synthetic_scene_models_are_announced_once_and_the_note_follows_the_teachers(tiny_dirs, images, tmp_path, capsys):
    """The embedded models, and a student distilled from them (pipeline.json's distilled_from, as the
    trainer writes it), are announced once; models distilled from other teachers are not."""
    assert main(["predict", str(images / "scene.png"), "--out", str(tmp_path / "a")]) == 0  # the embedded models
    assert capsys.readouterr().err.count("trained on synthetic rooms only, not for real cameras") == 1
    mine = Path(shutil.copytree(tiny_dirs["pipeline"], tmp_path / "mine"))
    config = json.loads((mine / "pipeline.json").read_text())
    (mine / "pipeline.json").write_text(json.dumps({**config, "distilled_from": {"teacher": "/x/teacher", "embedded": True}}))
    assert main(["predict", str(images), "--out", str(tmp_path / "b"), "--model", str(mine)]) == 0
    assert capsys.readouterr().err.count("(or were distilled from) the embedded small models") == 1
    (mine / "pipeline.json").write_text(json.dumps({**config, "distilled_from": {"teacher": "/x/teacher", "embedded": False}}))
    assert main(["predict", str(images / "scene.png"), "--out", str(tmp_path / "c"), "--model", str(mine)]) == 0
    assert "synthetic rooms" not in capsys.readouterr().err


def test_pipeline_options_reach_the_pipeline(tiny_dirs, images, tmp_path):
    """--difference, --metric-at-input-resolution and --threads, checked against the pipeline itself (on
    the 50x30 image: its processing grid differs from the input, so where f_D runs matters)."""
    rgb = np.asarray(Image.open(images / "rgba.png").convert("RGB"))
    reference = SharpDepthPipeline.from_pretrained(tiny_dirs["pipeline"])(rgb, seed=0).depth[0, 0].numpy()
    threads = torch.get_num_threads()
    try:
        for i, (option, setting) in enumerate(((["--difference", "latent"], {"difference": "latent"}),
                                               (["--metric-at-input-resolution"], {"metric_at_input_res": True}))):
            expected = SharpDepthPipeline.from_pretrained(tiny_dirs["pipeline"], **setting)(rgb, seed=0).depth[0, 0].numpy()
            out = tmp_path / str(i)
            assert main(["predict", str(images / "rgba.png"), "--out", str(out), "--model", str(tiny_dirs["pipeline"]),
                         "--threads", "2", *option]) == 0
            depth = np.load(out / "rgba_depth.npy")
            assert np.allclose(depth, expected, atol=1e-5) and not np.allclose(depth, reference, atol=1e-4)
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)


def test_help_documents_the_model_choices_and_the_reference_departures(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")  # no line breaks inside hub ids
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for needle in ("60 degree horizontal one is assumed", "Indoor-Small metric model, depth capped at 20 m",
                   "depth-anything/Depth-Anything-V2-Metric-Outdoor-Small-hf", "--metric-at-input-resolution",
                   "Without it the run is reference-exact", "with it K goes to the metric backend",
                   "use all cores only on an otherwise idle machine", f"here {default_threads()}"):
        assert needle in text, needle


def test_one_outdoor_depth_anything_checkpoint_is_named_everywhere(capsys, monkeypatch):
    """predict --help, the node's parameter help, the README, METHOD.md and the node's config all give the
    same outdoor Depth Anything checkpoint (they disagreed: -Outdoor-Small-hf against -Outdoor-Large-hf)."""
    import re

    from sharpdepth_core.hub_ids import DEFAULT_METRIC_IDS, DEPTH_ANYTHING_OUTDOOR_ID

    monkeypatch.setenv("COLUMNS", "1000")
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    texts = {"predict --help": capsys.readouterr().out}
    texts.update({name: (ROOT / name).read_text() for name in ("README.md", "docs/METHOD.md", "config/sharpdepth.yaml")})
    texts["sharpdepth_node --help"] = subprocess.run(
        [sys.executable, "-m", "sharpdepth_ros.node", "--help"], capture_output=True, text=True, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)}).stdout
    # the outdoor counterpart of the default (Indoor-Small) checkpoint
    assert DEPTH_ANYTHING_OUTDOOR_ID == DEFAULT_METRIC_IDS["depth-anything-v2"].replace("Indoor", "Outdoor")
    for where, text in texts.items():
        named = set(re.findall(r"depth-anything/Depth-Anything-V2-Metric-Outdoor-[\w-]+", text))
        assert named == {DEPTH_ANYTHING_OUTDOOR_ID}, (where, named)


def test_subcommands_are_registered_in_one_place():
    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args([])  # a subcommand is required
    args = parser.parse_args(["predict", "a.png", "--out", "o"])
    assert args.command == "predict" and args.seed == 0 and args.func.__name__ == "run_predict"
    assert args.processing_res is None and args.difference is None and args.speed == "exact" and args.metric_at_input_resolution is False
    assert args.threads == default_threads() == max(1, len(os.sched_getaffinity(0)) // 2)


@pytest.fixture
def walk(tmp_path):
    """Three frames of a synthetic camera walk named so that name order is not frame order (f8, f9, f10),
    their poses as --poses reads them, and K as --intrinsics."""
    from sharpdepth_core.synthetic import render_sequence

    frames = render_sequence(3, 3, 64, 48, style="indoor")
    folder = tmp_path / "walk"
    folder.mkdir()
    for name, frame in zip(("f8", "f9", "f10"), frames):
        Image.fromarray(frame.rgb).save(folder / f"{name}.png")
    poses = tmp_path / "poses.json"
    poses.write_text(json.dumps({"camera_to_world": [f.camera_to_world.tolist() for f in frames]}))
    K = frames[0].K
    return folder, poses, f"{K[0, 0]},{K[1, 1]},{K[0, 2]},{K[1, 2]}", frames


def test_sequence_scores_consecutive_frames_with_their_poses(tiny_dirs, walk, tmp_path, capsys):
    from sharpdepth_core.metrics import temporal_alignment_error

    folder, poses, intrinsics, frames = walk
    out = tmp_path / "out"
    args = ["predict", str(folder), "--out", str(out), "--model", str(tiny_dirs["pipeline"]), "--sequence",
            "--poses", str(poses), "--intrinsics", intrinsics]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert [line.split(":")[0] for line in printed.splitlines()[:3]] == [str(folder / f"f{n}.png") for n in (8, 9, 10)]
    scores = json.loads((out / "sequence.json").read_text())
    assert scores["frames"] == [str(folder / f"f{n}.png") for n in (8, 9, 10)] and scores["pairs_scored"] == 2
    K, cams = frames[0].K, [f.camera_to_world for f in frames]
    for model, suffix in (("SharpDepth", "_depth.npy"), ("f_D", "_metric_depth.npy")):
        depths = [np.load(out / f"f{n}{suffix}").astype(np.float64) for n in (8, 9, 10)]
        pairs = [temporal_alignment_error(depths[t:t + 2], None, K, cams[t:t + 2]) for t in range(2)]
        assert [p[model] for p in scores["pairs"]] == pytest.approx(pairs, rel=1e-5)
        assert np.isfinite(pairs).all() and scores["mean_tae"][model] == pytest.approx(np.mean(pairs), rel=1e-5)
        # the poses matter: the frames swapped around the walk's pose score differently
        assert temporal_alignment_error(depths[:2], None, K, cams[1::-1]) != pytest.approx(pairs[0], rel=1e-3)
    assert f"SharpDepth {scores['mean_tae']['SharpDepth']:.4f}, f_D {scores['mean_tae']['f_D']:.4f}" in printed
    assert main(args) == 0  # a rerun replaces its own sequence.json
    (out / "sequence.json").unlink()
    (out / "sequence.json").write_text("a user's file")
    (out / PREDICT_RECORD).write_text(json.dumps({"files": []}))
    assert main(args) == 2 and (out / "sequence.json").read_text() == "a user's file"


def test_sequence_scores_on_a_full_disk_are_one_line_and_exit_3(tiny_dirs, walk, tmp_path, capsys, monkeypatch):
    import errno

    import sharpdepth_core.cli as cli

    def full(*args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(cli, "write_sequence_scores", full)
    folder, poses, intrinsics, _ = walk
    out = tmp_path / "out"
    assert main(["predict", str(folder), "--out", str(out), "--model", str(tiny_dirs["pipeline"]), "--sequence",
                 "--poses", str(poses), "--intrinsics", intrinsics]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert f"sharpdepth predict: error: cannot write {out / 'sequence.json'}: No space left on device" in err
    assert err[-1] == f"sharpdepth predict: 3 of 3 images written to {out}" and not (out / "sequence.json").exists()


def test_sequence_without_poses_runs_in_order_and_says_what_tae_needs(tiny_dirs, walk, tmp_path, capsys):
    folder, _, _, _ = walk
    out = tmp_path / "out"
    assert main(["predict", str(folder), "--out", str(out), "--model", str(tiny_dirs["pipeline"]), "--sequence"]) == 0
    captured = capsys.readouterr()
    assert [line.split(":")[0] for line in captured.out.splitlines()] == [str(folder / f"f{n}.png") for n in (8, 9, 10)]
    assert sum("temporal alignment error needs --poses" in line for line in captured.err.splitlines()) == 1
    assert not (out / "sequence.json").exists()


def test_sequence_temporal_modes_fuse_causally_and_start_from_the_frames_own_result(tiny_dirs, walk, tmp_path, capsys):
    """--temporal image|odometry (issue 29): the first frame is the per-frame result itself, every frame is
    written, and a frame's output depends on no later frame (the run on the first two frames writes the
    same two depths)."""
    folder, poses, intrinsics, _ = walk
    base = ["--model", str(tiny_dirs["pipeline"]), "--sequence", "--poses", str(poses), "--intrinsics", intrinsics]
    assert main(["predict", str(folder), "--out", str(tmp_path / "off"), *base]) == 0
    for mode in ("image", "odometry"):
        out = tmp_path / mode
        assert main(["predict", str(folder), "--out", str(out), *base, "--temporal", mode]) == 0
        assert np.array_equal(np.load(out / "f8_depth.npy"), np.load(tmp_path / "off" / "f8_depth.npy"))
        assert all(np.isfinite(np.load(out / f"f{n}_depth.npy")).any() for n in (8, 9, 10))
        assert json.loads((out / "sequence.json").read_text())["pairs_scored"] == 2
        two = tmp_path / f"{mode}_two"
        two_poses = tmp_path / "two_poses.json"
        two_poses.write_text(json.dumps({"camera_to_world": json.loads(poses.read_text())["camera_to_world"][:2]}))
        assert main(["predict", str(folder / "f8.png"), str(folder / "f9.png"), "--out", str(two), *base[:3], "--poses",
                     str(two_poses), "--intrinsics", intrinsics, "--temporal", mode]) == 0
        for n in (8, 9):
            assert np.array_equal(np.load(two / f"f{n}_depth.npy"), np.load(out / f"f{n}_depth.npy"))
    capsys.readouterr()


@pytest.mark.parametrize("extra,message", [
    (["--temporal", "image"], "--temporal image goes with --sequence"),
    (["--sequence", "--temporal", "odometry"], "--temporal odometry needs --poses"),
])
def test_temporal_without_what_it_needs_is_one_line_before_loading(walk, tmp_path, capsys, models_must_not_load, extra, message):
    folder, _, _, _ = walk
    assert main(["predict", str(folder), "--out", str(tmp_path / "o"), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sharpdepth predict: error:") and message in err[0]
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("case,message", [
    ("two poses", "2 poses for 3 frames"),
    ("scaled", "pose 1 is not a rigid transform"),
    ("mirrored", "pose 2 is not a rigid transform"),
    ("not json", "not valid JSON"),
    ("no --sequence", "--poses goes with --sequence and --intrinsics"),
    ("no --intrinsics", "--poses goes with --sequence and --intrinsics"),
    ("fifo", "poses.json: not a regular file"),  # hung forever waiting for a writer
    ("/dev/zero", "poses.json: not a regular file"),  # MemoryError
    ("huge", "poses.json: larger than 67,108,864 bytes; not read"),  # a 267 MB file: MemoryError
    ("deep", "poses.json: JSON nested too deep"),  # RecursionError
    ("not an object", "expected a JSON object"),
])
def test_bad_poses_are_one_line_before_loading(walk, tmp_path, capsys, models_must_not_load, case, message):
    folder, poses, intrinsics, frames = walk
    cams = [f.camera_to_world.copy() for f in frames]
    if case == "two poses":
        cams = cams[:2]
    elif case == "scaled":
        cams[1][:3, :3] *= 1.1
    elif case == "mirrored":
        cams[2][:3, 0] *= -1
    poses.write_text("{" if case == "not json" else json.dumps({"camera_to_world": [c.tolist() for c in cams]}))
    if case in ("fifo", "/dev/zero"):
        poses.unlink()
        os.mkfifo(poses) if case == "fifo" else poses.symlink_to("/dev/zero")
    elif case == "huge":
        with open(poses, "r+b") as f:  # sparse: 64 MiB + 1 byte of zeros, no disk used
            f.truncate(64 * 2**20 + 1)
    elif case == "deep":
        poses.write_text('{"camera_to_world": ' + "[" * 200_000 + "]" * 200_000 + "}")
    elif case == "not an object":
        poses.write_text("[1, 2]")
    args = ["predict", str(folder), "--out", str(tmp_path / "o"), "--poses", str(poses)]
    args += [] if case == "no --sequence" else ["--sequence"]
    args += [] if case == "no --intrinsics" else ["--intrinsics", intrinsics]
    with fifo_writer_after(poses if case == "fifo" else None, seconds=10):  # a reader blocked on it fails, not hangs
        assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sharpdepth predict: error:") and message in err[0]
    assert not (tmp_path / "o").exists()


def test_tiny_images_get_pictures_with_whole_labels(tiny_dirs, tmp_path):
    """A 1x1 and a 7x5 image (their bars' labels were cut off): each picture is its image (top left, padded
    with the bar's grey) above `depth_colour_bar`, as wide as its labels need (test_visualize: whole labels)."""
    for w, h in ((1, 1), (7, 5)):
        Image.fromarray(scene_image(0, width=w, height=h)[0]).save(tmp_path / f"{w}x{h}.png")
    out = tmp_path / "out"
    assert main(["predict", str(tmp_path / "1x1.png"), str(tmp_path / "7x5.png"), "--out", str(out),
                 "--model", str(tiny_dirs["pipeline"])]) == 0
    for w, h in ((1, 1), (7, 5)):
        depth, metric = np.load(out / f"{w}x{h}_depth.npy"), np.load(out / f"{w}x{h}_metric_depth.npy")
        picture = np.asarray(Image.open(out / f"{w}x{h}_depth_color.png"))
        assert picture.shape[1] >= 157 and (picture[:h, w:] == 24).all()
        lo, hi = np.percentile(np.concatenate([depth.ravel(), metric.ravel()]), [2, 98])
        notes = ("scale: 2-98th percentile of depth and f_D", f"full range {depth.min():.2f}-{depth.max():.2f} m")
        assert np.array_equal(picture[h:], depth_colour_bar(w, lo, hi, notes))


def sharded_copy(folder: Path, to: Path) -> Path:
    """A copy of a student folder whose UNet is saved in several shards (each loads with a progress bar)."""
    from diffusers import UNet2DConditionModel

    shutil.copytree(folder, to)
    shutil.rmtree(to / "unet")
    UNet2DConditionModel.from_pretrained(folder / "unet").save_pretrained(to / "unet", max_shard_size="1MB")
    assert (to / "unet" / "diffusion_pytorch_model.safetensors.index.json").is_file()
    return to


def test_export_of_a_sharded_model_says_what_loads_in_one_line_without_loading_bars(tiny_dirs, tmp_path):
    """export drew a "Loading checkpoint shards" bar per sharded model, which predict hides (in a fresh
    process: hiding is process-wide, and an earlier test in this one may have done it)."""
    student = sharded_copy(tiny_dirs["student"], tmp_path / "student")
    done = subprocess.run([sys.executable, "-m", "sharpdepth_core.cli", "export", "--student", str(student), "--out",
                           str(tmp_path / "export"), "--device", "cpu", "--processing-res", "64"], capture_output=True,
                          text=True, timeout=300, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Loading checkpoint shards" not in done.stderr and "Loading weights" not in done.stderr
    assert f"sharpdepth export: loading the student {student} on cpu\n" in done.stderr
