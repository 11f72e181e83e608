"""The pictures (`sharpdepth_core.visualize`): colour tables against matplotlib, colour bars, the
point-cloud render and atomic PNG writing."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from matplotlib import colormaps
from PIL import Image

from sharpdepth_core.visualize import (
    DEPTH_CMAP,
    DIFFERENCE_CMAP,
    TABLES,
    colorize_depth,
    colour_bar,
    colorize_difference,
    depth_colour_bar,
    depth_range,
    difference_colour_bar,
    with_bar,
)


def matplotlib_colours(name: str, t) -> np.ndarray:
    return (colormaps[name](np.asarray(t))[..., :3] * 255 + 0.5).astype(np.uint8)


@pytest.mark.parametrize("name", [DEPTH_CMAP, DIFFERENCE_CMAP])
def test_colour_tables_are_matplotlibs_colormaps(name):
    """The hard-coded tables are the colormaps sampled at 256 points, and colouring any value through
    them stays within 5/255 of matplotlib's own colour for that value (the table's quantisation)."""
    assert np.array_equal(TABLES[name][:256], matplotlib_colours(name, np.linspace(0, 1, 256)))
    assert (TABLES[name][256] == 0).all()  # invalid pixels
    t = np.random.default_rng(0).random((40, 50))
    ours = colorize_difference(t) if name == DIFFERENCE_CMAP else colorize_depth(3.0 - 2.0 * t, 1.0, 3.0)
    position = t if name == DIFFERENCE_CMAP else 0.15 + 0.85 * t
    assert np.abs(ours.astype(int) - matplotlib_colours(name, position).astype(int)).max() <= 5


def test_colouring_does_not_import_matplotlib():
    """The colour tables are built in: the node's first frame pays no matplotlib import (~170 ms)."""
    import subprocess
    import sys

    code = ("import sys, numpy as np; from sharpdepth_core.visualize import colorize_depth, colorize_difference; "
            "colorize_depth(np.ones((4, 4))); colorize_difference(np.zeros((4, 4))); print('matplotlib' in sys.modules)")
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True, cwd=root)
    assert out.stdout.strip() == "False"


def test_depth_range_spans_both_maps_and_ignores_invalid_values():
    a = np.array([[1.0, 2.0, np.nan, -1.0]])
    b = np.array([[3.0, np.inf, 0.0, 2.0]])
    lo, hi = depth_range(a, b)
    assert (lo, hi) == pytest.approx(tuple(np.percentile([1.0, 2.0, 3.0, 2.0], [2, 98])))
    assert depth_range(np.full((2, 2), np.nan)) is None


def test_colour_bars_show_the_scale_and_its_ends():
    bar = depth_colour_bar(300, 0.5, 4.0)
    assert bar.shape[1] == 300 and bar.dtype == np.uint8 and 10 < bar.shape[0] < 60
    near, far = colorize_depth(np.array([[0.5, 4.0]]), 0.5, 4.0)[0]
    assert np.array_equal(bar[0, 0], near) and np.array_equal(bar[0, -1], far)  # near on the left, far on the right
    bright = bar[bar.shape[0] // 2:].max(axis=2) > 200  # the labels, white on dark grey
    assert bright[:, :60].any() and bright[:, -60:].any() and not bright[:, 120:180].any()
    e_bar = difference_colour_bar(200)
    assert np.array_equal(e_bar[0, 0], colorize_difference(np.zeros((1, 1)))[0, 0])
    assert np.array_equal(e_bar[0, -1], colorize_difference(np.ones((1, 1)))[0, 0])


def below_the_colours(bar: np.ndarray) -> np.ndarray:
    """The label rows: from the first all-grey row (the colour rows end there)."""
    return bar[int(np.argmax((bar == 24).all(axis=(1, 2)))):]


def label_ink(bar: np.ndarray) -> int:
    """The brightness the labels add to the grey."""
    return int((below_the_colours(bar).astype(int) - 24).clip(0).sum())


def text_lines(bar: np.ndarray) -> int:
    inked = (below_the_colours(bar) > 24).any(axis=(1, 2))
    return int((inked[1:] & ~inked[:-1]).sum() + inked[0])


def test_depth_bar_notes_go_on_one_line_where_they_fit_else_one_a_line():
    notes = ("scale: 2-98th percentile of depth and f_D", "full range 0.30-5.10 m")
    bar = depth_colour_bar(400, 0.5, 4.0, notes)
    assert np.array_equal(bar, colour_bar(400, DEPTH_CMAP, 1.0, 0.15, "0.50 m", "4.00 m", ("; ".join(notes),)))
    assert text_lines(depth_colour_bar(400, 0.5, 4.0)) == 1 and text_lines(bar) == 2
    narrow = depth_colour_bar(200, 0.5, 4.0, notes)
    assert narrow.shape[1] == 200 and text_lines(narrow) == 3


@pytest.mark.parametrize("width", [1, 7])
def test_a_tiny_images_bar_is_wide_enough_for_whole_labels(width):
    """A 1- or 7-pixel-wide image's bar cut its labels off: now it is as wide as its widest label (the ends
    one above the other where they do not fit side by side); every label is whole (as much ink as on a 200-pixel bar, same font size)
    and clear of the edges."""
    notes = ("scale: 2-98th percentile of depth and f_D", "full range 0.30-15.10 m")
    for make in (lambda w: depth_colour_bar(w, 0.5, 14.0, notes), difference_colour_bar):
        bar, roomy = make(width), make(200)
        assert bar.shape[1] > width and label_ink(bar) == label_ink(roomy) > 0
        ink = below_the_colours(bar).max(axis=2) > 24
        assert not ink[:, :1].any() and not ink[:, -1:].any() and not ink[-1].any()
    picture = with_bar(colorize_depth(np.full((5, width), 2.0), 0.5, 14.0), bar := depth_colour_bar(width, 0.5, 14.0))
    assert picture.shape == (5 + bar.shape[0], bar.shape[1], 3)  # the image padded with the bar's grey
    assert np.array_equal(picture[:5, :width], colorize_depth(np.full((5, width), 2.0), 0.5, 14.0))
    assert (picture[:5, width:] == 24).all() and np.array_equal(picture[5:], bar)
    assert text_lines(difference_colour_bar(width)) == 2 == text_lines(difference_colour_bar(200)) + 1


def test_depth_colours_near_warm_far_dark_invalid_black():
    depth = np.array([[1.0, 2.0, 3.0, np.nan, -1.0, np.inf]])
    rgb = colorize_depth(depth, vmin=1.0, vmax=3.0)
    near, mid, far = rgb[0, 0].astype(int), rgb[0, 1].astype(int), rgb[0, 2].astype(int)
    assert np.array_equal(near, (np.array(colormaps["inferno"](1.0)[:3]) * 255 + 0.5).astype(int))  # pale yellow
    assert near.sum() > mid.sum() > far.sum() > 0 and near[0] > near[2]  # warm and bright when near
    assert (rgb[0, 3:] == 0).all()  # NaN, negative, inf: black, darker than any depth
    assert colorize_depth(np.full((2, 2), np.nan)).shape == (2, 2, 3)


def test_difference_colours_follow_viridis():
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
