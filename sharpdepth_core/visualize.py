"""Pictures of depth for the CLI, demo, ROS node and trainer: coloured depth, difference map, colour
bars, a point-cloud render, and atomic PNG writing. numpy, OpenCV (text) and Pillow (PNG) only.

Colours: depth uses "inferno" with near = warm/bright and far = dark purple, stopping short of
black so that invalid pixels (NaN, inf, <= 0), drawn black, stay distinguishable; the difference
map uses "viridis" (0 = agreement, dark; 1 = disagreement, yellow). Both are 256-entry tables
applied with one `take`: the node colours every frame, and matplotlib's colormap call cost 14.5 ms
per 320x240 frame plus ~170 ms to import. The tables are matplotlib's colormaps sampled at 256
points, `(colormaps[name](np.linspace(0, 1, 256))[:, :3] * 255 + 0.5).astype(np.uint8)` (matplotlib
3.11), written out here; test_visualize.py checks them against matplotlib.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .files import atomic_write

# One depth colour map everywhere (node, predict, demo, trainer, figures): inferno, not turbo, because its
# lightness rises monotonically (depth reads in greyscale and to colour-blind eyes, and no false edges
# appear where turbo's lightness turns), and its end short of black leaves black to invalid pixels.
DEPTH_CMAP, DIFFERENCE_CMAP = "inferno", "viridis"
_FAR = 0.15  # colormap position of the far end

_INFERNO = (
    "00000401000501010601010802010a02020c02020e03021004031204031405041706041907051b08051d09061f0a0722"
    "0b07240c08260d08290e092b10092d110a30120a32140b34150b37160b39180c3c190c3e1b0c411c0c431e0c451f0c48"
    "210c4a230c4c240c4f260c51280b53290b552b0b572d0b592f0a5b310a5c320a5e340a5f3609613809623909633b0964"
    "3d09653e0966400a67420a68440a68450a69470b6a490b6a4a0c6b4c0c6b4d0d6c4f0d6c510e6c520e6d540f6d550f6d"
    "57106e59106e5a116e5c126e5d126e5f136e61136e62146e64156e65156e67166e69166e6a176e6c186e6d186e6f196e"
    "71196e721a6e741a6e751b6e771c6d781c6d7a1d6d7c1d6d7d1e6d7f1e6c801f6c82206c84206b85216b87216b88226a"
    "8a226a8c23698d23698f24699025689225689326679526679727669827669a28659b29649d29649f2a63a02a63a22b62"
    "a32c61a52c60a62d60a82e5fa92e5eab2f5ead305dae305cb0315bb1325ab3325ab43359b63458b73557b93556ba3655"
    "bc3754bd3853bf3952c03a51c13a50c33b4fc43c4ec63d4dc73e4cc83f4bca404acb4149cc4248ce4347cf4446d04545"
    "d24644d34743d44842d54a41d74b3fd84c3ed94d3dda4e3cdb503bdd513ade5238df5337e05536e15635e25734e35933"
    "e45a31e55c30e65d2fe75e2ee8602de9612bea632aeb6429eb6628ec6726ed6925ee6a24ef6c23ef6e21f06f20f1711f"
    "f1731df2741cf3761bf37819f47918f57b17f57d15f67e14f68013f78212f78410f8850ff8870ef8890cf98b0bf98c0a"
    "f98e09fa9008fa9207fa9407fb9606fb9706fb9906fb9b06fb9d07fc9f07fca108fca309fca50afca60cfca80dfcaa0f"
    "fcac11fcae12fcb014fcb216fcb418fbb61afbb81dfbba1ffbbc21fbbe23fac026fac228fac42afac62df9c72ff9c932"
    "f9cb35f8cd37f8cf3af7d13df7d340f6d543f6d746f5d949f5db4cf4dd4ff4df53f4e156f3e35af3e55df2e661f2e865"
    "f2ea69f1ec6df1ed71f1ef75f1f179f2f27df2f482f3f586f3f68af4f88ef5f992f6fa96f8fb9af9fc9dfafda1fcffa4"
)
_VIRIDIS = (
    "44015444025645045745055946075a46085c460a5d460b5e470d60470e61471063471164471365481467481668481769"
    "48186a481a6c481b6d481c6e481d6f481f70482071482173482374482475482576482677482878482979472a7a472c7a"
    "472d7b472e7c472f7d46307e46327e46337f463480453581453781453882443983443a83443b84433d84433e85423f85"
    "4240864241864142874144874045884046883f47883f48893e49893e4a893e4c8a3d4d8a3d4e8a3c4f8a3c508b3b518b"
    "3b528b3a538b3a548c39558c39568c38588c38598c375a8c375b8d365c8d365d8d355e8d355f8d34608d34618d33628d"
    "33638d32648e32658e31668e31678e31688e30698e306a8e2f6b8e2f6c8e2e6d8e2e6e8e2e6f8e2d708e2d718e2c718e"
    "2c728e2c738e2b748e2b758e2a768e2a778e2a788e29798e297a8e297b8e287c8e287d8e277e8e277f8e27808e26818e"
    "26828e26828e25838e25848e25858e24868e24878e23888e23898e238a8d228b8d228c8d228d8d218e8d218f8d21908d"
    "21918c20928c20928c20938c1f948c1f958b1f968b1f978b1f988b1f998a1f9a8a1e9b8a1e9c891e9d891f9e891f9f88"
    "1fa0881fa1881fa1871fa28720a38620a48621a58521a68522a78522a88423a98324aa8325ab8225ac8226ad8127ad81"
    "28ae8029af7f2ab07f2cb17e2db27d2eb37c2fb47c31b57b32b67a34b67935b77937b87838b9773aba763bbb753dbc74"
    "3fbc7340bd7242be7144bf7046c06f48c16e4ac16d4cc26c4ec36b50c46a52c56954c56856c66758c7655ac8645cc863"
    "5ec96260ca6063cb5f65cb5e67cc5c69cd5b6ccd5a6ece5870cf5773d05675d05477d1537ad1517cd2507fd34e81d34d"
    "84d44b86d54989d5488bd6468ed64590d74393d74195d84098d83e9bd93c9dd93ba0da39a2da37a5db36a8db34aadc32"
    "addc30b0dd2fb2dd2db5de2bb8de29bade28bddf26c0df25c2df23c5e021c8e020cae11fcde11dd0e11cd2e21bd5e21a"
    "d8e219dae319dde318dfe318e2e418e5e419e7e419eae51aece51befe51cf1e51df4e61ef6e620f8e621fbe723fde725"
)


def _table(rows: tuple[str, ...]) -> np.ndarray:
    """uint8 [257, 3]: the colormap's 256 colours, then black (index 256) for invalid pixels."""
    colours = np.frombuffer(bytes.fromhex("".join(rows)), dtype=np.uint8).reshape(256, 3)
    return np.vstack([colours, np.zeros((1, 3), np.uint8)])


TABLES = {DEPTH_CMAP: _table(_INFERNO), DIFFERENCE_CMAP: _table(_VIRIDIS)}


def _as_2d(a, name: str) -> np.ndarray:
    a = np.asarray(a.detach().cpu() if hasattr(a, "detach") else a, dtype=np.float64)
    a = a.reshape(a.shape[-2:]) if a.ndim > 2 and int(np.prod(a.shape[:-2])) == 1 else a
    if a.ndim != 2:
        raise ValueError(f"{name} must be HxW (or 1x1xHxW), got shape {a.shape}")
    return a


def _colour(cmap: str, position: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Colormap positions in [0, 1] -> uint8 RGB; black where not valid. `position` is overwritten."""
    np.clip(position, 0, 1, out=position)
    position *= 255
    position += 0.5
    position[~valid] = 256  # also removes NaN before the cast
    return TABLES[cmap].take(position.astype(np.intp), axis=0)


PERCENTILES = (2, 98)  # the colour scale's ends: `depth_range`


def depth_range(*depths) -> tuple[float, float] | None:
    """The PERCENTILES (2nd-98th) of the valid values (finite, > 0) of all the given depth maps together,
    so a few outliers do not wash the picture out; None when no value is valid."""
    values = [d[np.isfinite(d) & (d > 0)] for d in (_as_2d(x, "depth") for x in depths)]
    values = np.concatenate(values) if values else np.empty(0)
    if not values.size:
        return None
    lo, hi = np.percentile(values, PERCENTILES)
    return float(lo), float(hi)


def colorize_depth(depth, vmin: float | None = None, vmax: float | None = None) -> np.ndarray:
    """Metric depth HxW -> uint8 HxWx3 RGB, near = warm, invalid = black. The range defaults to
    `depth_range(depth)`."""
    d = _as_2d(depth, "depth")
    with np.errstate(invalid="ignore"):
        valid = np.isfinite(d) & (d > 0)
    if not valid.any():
        return np.zeros((*d.shape, 3), dtype=np.uint8)
    if vmin is None or vmax is None:
        lo, hi = depth_range(d)
        vmin, vmax = (lo if vmin is None else vmin), (hi if vmax is None else vmax)
    with np.errstate(invalid="ignore", over="ignore"):
        position = (vmax - d) * ((1 - _FAR) / max(vmax - vmin, 1e-12))  # 0 = far, 1 - _FAR = near
        np.clip(position, 0, 1 - _FAR, out=position)
        position += _FAR
    return _colour(DEPTH_CMAP, position, valid)


def depth_colormap():
    """`colorize_depth`'s colours as a matplotlib colormap for figures drawn with imshow (vmin = near =
    bright, vmax = far = dark, NaN black): the same picture as the node's and predict's."""
    from matplotlib.colors import ListedColormap

    position = 1 - np.linspace(0, 1, 256) * (1 - _FAR)
    colours = TABLES[DEPTH_CMAP][(position * 255 + 0.5).astype(np.intp)] / 255
    return ListedColormap(colours, name="sharpdepth_depth").with_extremes(bad="black")


def colorize_difference(e) -> np.ndarray:
    """Difference map e HxW in [0, 1] -> uint8 HxWx3 (non-finite -> black)."""
    e = _as_2d(e, "difference map")
    return _colour(DIFFERENCE_CMAP, e.copy(), np.isfinite(e))


_BACKGROUND = 24  # the strip's grey, also the padding `with_bar` adds


def colour_bar(width: int, cmap: str, left: float, right: float, left_label: str, right_label: str,
               notes: tuple[str, ...] = ()) -> np.ndarray:
    """A strip to put under a coloured image: the colormap from position `left` to `right`, with the
    values at both ends written below it (one above the other when they do not fit side by side), then
    the `notes` ("; "-joined where they fit, else one a line). uint8 [h, w, 3] with w = `width`, or
    wider when the widest label needs more: labels of a 1-pixel-wide image's bar stay whole and
    readable (`with_bar` pads the image to the bar)."""
    import cv2

    font, scale, margin = cv2.FONT_HERSHEY_SIMPLEX, float(np.clip(width / 900, 0.3, 0.8)), 2

    def text_w(text: str) -> int:
        return cv2.getTextSize(text, font, scale, 1)[0][0]

    (_, text_h), baseline = cv2.getTextSize("0.0 m", font, scale, 1)
    width = max(width, *(text_w(t) + 2 * margin for t in (left_label, right_label, *notes)))
    right_x = width - text_w(right_label) - margin
    if text_w(left_label) + 3 * margin <= right_x:
        rows = [[(left_label, margin), (right_label, right_x)]]
    else:
        rows = [[(left_label, margin)], [(right_label, right_x)]]
    lines: list[str] = []
    for note in notes:
        if lines and text_w(f"{lines[-1]}; {note}") + 2 * margin <= width:
            lines[-1] = f"{lines[-1]}; {note}"
        else:
            lines.append(note)
    rows += [[(line, (width - text_w(line)) // 2)] for line in lines]
    bar_h, row_h = max(4, text_h), text_h + baseline + 3
    strip = np.full((bar_h + len(rows) * row_h + 3, width, 3), _BACKGROUND, np.uint8)
    strip[:bar_h] = _colour(cmap, np.linspace(left, right, width), np.ones(width, bool))[None]
    for i, row in enumerate(rows):
        for text, x in row:
            cv2.putText(strip, text, (x, bar_h + 3 + text_h + i * row_h), font, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return strip


def depth_colour_bar(width: int, vmin: float, vmax: float, notes: tuple[str, ...] = ()) -> np.ndarray:
    """`colour_bar` for `colorize_depth(..., vmin, vmax)`: near (vmin) on the left, far (vmax) on the right,
    then the `notes` (predict's: what the ends are, the map's full range)."""
    return colour_bar(width, DEPTH_CMAP, 1.0, _FAR, f"{vmin:.2f} m", f"{vmax:.2f} m", notes)


def difference_colour_bar(width: int) -> np.ndarray:
    """`colour_bar` for `colorize_difference`: e = 0 (agreement) on the left, 1 on the right."""
    return colour_bar(width, DIFFERENCE_CMAP, 0.0, 1.0, "e = 0", "1")


def with_bar(picture: np.ndarray, bar: np.ndarray) -> np.ndarray:
    """`picture` above `bar`, the narrower of the two padded on the right with the bar's grey (a tiny
    image's bar is wider than the image)."""
    width = max(picture.shape[1], bar.shape[1])
    padded = [np.pad(a, ((0, 0), (0, width - a.shape[1]), (0, 0)), constant_values=_BACKGROUND) for a in (picture, bar)]
    return np.vstack(padded)


def _rotation(yaw_deg: float, pitch_deg: float) -> np.ndarray:
    y, p = np.radians(yaw_deg), np.radians(pitch_deg)
    ry = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    rx = np.array([[1, 0, 0], [0, np.cos(p), -np.sin(p)], [0, np.sin(p), np.cos(p)]])
    return rx @ ry


def render_point_cloud(
    xyz,
    rgb=None,
    size: tuple[int, int] = (240, 320),
    yaw_deg: float = 25.0,
    pitch_deg: float = -15.0,
    splat: int = 2,
    background: tuple[int, int, int] = (24, 24, 24),
) -> np.ndarray:
    """A z-buffered splat render of a point cloud (camera optical frame: x right, y down, z forward)
    seen from a viewpoint orbited by (yaw, pitch) about the cloud's median point.

    xyz: HxWx3 (organised, NaN = no point) or Nx3; rgb: matching uint8 colours, or None to colour
    by depth. Returns uint8 size[0] x size[1] x 3. The nearest point wins each pixel.
    """
    h, w = size
    pts = np.asarray(xyz, dtype=np.float64).reshape(-1, 3)
    if rgb is None:
        colours = colorize_depth(pts[:, 2][None]).reshape(-1, 3)
    else:
        colours = np.asarray(rgb, dtype=np.uint8).reshape(-1, 3)
        if len(colours) != len(pts):
            raise ValueError(f"rgb has {len(colours)} points, xyz has {len(pts)}")
    image = np.empty((h, w, 3), dtype=np.uint8)
    image[:] = background
    keep = np.isfinite(pts).all(axis=1) & (pts[:, 2] > 0)
    if not keep.any():
        return image
    pts, colours = pts[keep], colours[keep]
    centre = np.median(pts, axis=0)
    view = (pts - centre) @ _rotation(yaw_deg, pitch_deg).T
    view[:, 2] += np.linalg.norm(centre)  # orbit at the original viewing distance
    front = view[:, 2] > 1e-3 * max(np.linalg.norm(centre), 1e-6)
    view, colours = view[front], colours[front]
    if not len(view):
        return image
    x, y = view[:, 0] / view[:, 2], view[:, 1] / view[:, 2]
    half_x, half_y = np.percentile(np.abs(x), 99) + 1e-9, np.percentile(np.abs(y), 99) + 1e-9
    f = 0.9 * min((w / 2) / half_x, (h / 2) / half_y)
    u = np.round(f * x + (w - 1) / 2).astype(np.int64)
    v = np.round(f * y + (h - 1) / 2).astype(np.int64)
    offsets = [(du, dv) for dv in range(splat) for du in range(splat)]
    u = np.concatenate([u + du for du, _ in offsets])
    v = np.concatenate([v + dv for _, dv in offsets])
    z = np.tile(view[:, 2], len(offsets))
    colours = np.tile(colours, (len(offsets), 1))
    inside = (u >= 0) & (u < w) & (v >= 0) & (v < h)
    pixel, z, colours = (v * w + u)[inside], z[inside], colours[inside]
    order = np.lexsort((z, pixel))  # by pixel, nearest first
    first = np.unique(pixel[order], return_index=True)[1]
    winners = order[first]
    image.reshape(-1, 3)[pixel[winners]] = colours[winners]
    return image


def save_png(path: str | Path, image) -> Path:
    """Write uint8 HxW / HxWx3 / HxWx4 or uint16 HxW (e.g. depth in millimetres) as PNG, atomically."""
    from PIL import Image

    a = np.asarray(image)
    ok = (a.dtype == np.uint8 and (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (3, 4)))) or (
        a.dtype == np.uint16 and a.ndim == 2
    )
    if not ok:
        raise ValueError(f"save_png takes uint8 HxW/HxWx3/HxWx4 or uint16 HxW, got {a.dtype} of shape {a.shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as f:
        Image.fromarray(np.ascontiguousarray(a)).save(f, format="PNG")
    return path
