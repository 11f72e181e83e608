"""`sharpdepth predict` in-process on real files, with the tiny pipeline folder (CPU)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from helpers_models import scene_image, tiny_dirs  # noqa: F401  (fixture)
from sharpdepth_core.cli import build_parser, depth_to_millimetres, main
from sharpdepth_core.geometry import unproject
from sharpdepth_core.pipeline import SharpDepthPipeline
from sharpdepth_core.visualize import colorize_depth

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
        depth = np.load(out / f"{stem}_depth.npy")
        assert depth.dtype == np.float32 and depth.shape == hw
        mm = np.asarray(Image.open(out / f"{stem}_depth.png"))
        assert mm.dtype == np.uint16 and np.array_equal(mm, depth_to_millimetres(depth))
        for picture in ("depth_color", "difference"):
            assert np.asarray(Image.open(out / f"{stem}_{picture}.png")).shape == (*hw, 3)
        assert any(line.startswith(str(images / f"{stem}.png")) for line in captured.out.splitlines())
    # the files hold the pipeline's output for that image and seed
    rgb = np.asarray(Image.open(images / "scene.png"))
    expected = SharpDepthPipeline.from_pretrained(tiny_dirs["pipeline"])(rgb, seed=0).depth[0, 0].numpy()
    assert np.allclose(np.load(out / "scene_depth.npy"), expected, atol=1e-4)
    assert np.array_equal(np.asarray(Image.open(out / "scene_depth_color.png")), colorize_depth(np.load(out / "scene_depth.npy")))
    assert not list(out.glob(".*.tmp")) and not (out / "notes_depth.npy").exists()


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


def test_unreadable_inputs_are_reported_and_skipped(tiny_dirs, images, tmp_path, capsys):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG but not really")
    out = tmp_path / "out"
    status = main(["predict", str(broken), str(images / "scene.png"), str(tmp_path / "missing.jpg"),
                   "--out", str(out), "--model", str(tiny_dirs["pipeline"])])
    err = capsys.readouterr().err
    assert status == 0 and (out / "scene_depth.npy").exists() and not (out / "broken_depth.npy").exists()
    assert f"{broken}: error: {broken}: not a readable image" in err
    assert f"{tmp_path / 'missing.jpg'}: no such file or folder" in err and "1 of 2 images" in err


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
        (["--student", "x"], "--student and --metric go together"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(tiny_dirs, images, tmp_path, capsys, extra, message):
    model = [] if "--student" in extra else ["--model", str(tiny_dirs["pipeline"])]
    assert main(["predict", str(images), "--out", str(tmp_path / "o"), *model, *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("sharpdepth predict: error:") and message in err[-1]


def test_missing_models_say_what_to_provide(images, tmp_path, capsys):
    assert main(["predict", str(images), "--out", str(tmp_path / "o"), "--model", str(tmp_path / "nope")]) == 2
    assert "no pipeline.json in" in capsys.readouterr().err
    assert main(["predict", str(images), "--out", str(tmp_path / "o"), "--student", "jingheya/lotus-depth-g-v1-0",
                 "--metric", "depth-anything-v2"]) == 2
    err = capsys.readouterr().err
    assert "jingheya/lotus-depth-g-v1-0" in err and "hf download" in err


def test_subcommands_are_registered_in_one_place():
    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args([])  # a subcommand is required
    args = parser.parse_args(["predict", "a.png", "--out", "o"])
    assert args.command == "predict" and args.seed == 0 and args.func.__name__ == "run_predict"


# --- the pictures (sharpdepth_core.visualize) ------------------------------------------------------


def test_depth_colours_near_warm_far_dark_invalid_black():
    from matplotlib import colormaps

    depth = np.array([[1.0, 2.0, 3.0, np.nan, -1.0, np.inf]])
    rgb = colorize_depth(depth, vmin=1.0, vmax=3.0)
    near, mid, far = rgb[0, 0].astype(int), rgb[0, 1].astype(int), rgb[0, 2].astype(int)
    assert np.array_equal(near, (np.array(colormaps["inferno"](1.0)[:3]) * 255 + 0.5).astype(int))  # pale yellow
    assert near.sum() > mid.sum() > far.sum() > 0 and near[0] > near[2]  # warm and bright when near
    assert (rgb[0, 3:] == 0).all()  # NaN, negative, inf: black, darker than any depth
    assert colorize_depth(np.full((2, 2), np.nan)).shape == (2, 2, 3)


def test_difference_colours_follow_viridis():
    from matplotlib import colormaps

    from sharpdepth_core.visualize import colorize_difference

    rgb = colorize_difference(np.array([[0.0, 1.0, 2.0, np.nan]]))
    for i, t in enumerate((0.0, 1.0, 1.0)):  # values above 1 are clipped
        assert np.array_equal(rgb[0, i], (np.array(colormaps["viridis"](t)[:3]) * 255 + 0.5).astype(np.uint8))
    assert (rgb[0, 3] == 0).all()


def test_point_cloud_render_keeps_the_nearest_point():
    from sharpdepth_core.visualize import render_point_cloud

    xyz = np.array([[0.0, 0.0, 2.0], [0.0, 0.0, 4.0], [0.2, 0.1, 3.0], [np.nan, 0, 1]])
    rgb = np.array([[255, 0, 0], [0, 0, 255], [0, 255, 0], [9, 9, 9]], dtype=np.uint8)
    image = render_point_cloud(xyz, rgb, size=(40, 60), yaw_deg=0.0, pitch_deg=0.0, splat=1)
    assert image.shape == (40, 60, 3)
    colours = {tuple(c) for c in image.reshape(-1, 3)}
    assert (255, 0, 0) in colours and (0, 255, 0) in colours  # the far blue point hides behind the red one
    assert (0, 0, 255) not in colours and (9, 9, 9) not in colours
    turned = render_point_cloud(xyz, rgb, size=(40, 60), yaw_deg=60.0, pitch_deg=0.0, splat=1)
    assert {tuple(c) for c in turned.reshape(-1, 3)} >= {(255, 0, 0), (0, 0, 255)}  # seen from the side


def test_save_png_round_trips_and_refuses_what_png_cannot_hold(tmp_path):
    from sharpdepth_core.visualize import save_png

    mm = np.array([[0, 1, 65535], [1234, 40000, 7]], dtype=np.uint16)
    path = save_png(tmp_path / "a" / "mm.png", mm)
    assert np.array_equal(np.asarray(Image.open(path)), mm) and list(tmp_path.rglob("*.tmp")) == []
    with pytest.raises(ValueError, match="uint8 HxW/HxWx3/HxWx4 or uint16 HxW"):
        save_png(tmp_path / "f.png", np.zeros((2, 2), np.float32))
    assert not (tmp_path / "f.png").exists()
