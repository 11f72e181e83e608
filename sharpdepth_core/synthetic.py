"""Procedural synthetic scenes with exact metric depth: a pinhole camera in a closed, textured room.

Serves the tests, the demo and the small-scale reproduction (a metric depth net trained on it), so
metric scale is learnable from one image as in the real world: camera height, room and object sizes
and texture periods (tiles, planks, checkers) all come from fixed physical distributions, and
nothing rescales the world afterwards. A `style` is a domain, one entry of `ROOM_STYLES` (room
sizes, materials, objects, decorations, light): "indoor" (the target: muted rooms, wood and tiles,
a ceiling lamp), "office" (the same lamp light and muted contrast, but larger rooms, concrete and
carpet tiles, tall cabinets, columns and bins: other layouts, similar edges) or "toy" (saturated
primitives, checkerboards, hard sunlight, many spheres). Everything is vectorised numpy ray casting: one ray per pixel centre, analytic hits with
planes, boxes (slab method), spheres and vertical cylinders, nearest hit wins.

World frame: metres, z up, floor at z = 0, the room spans [0, X] x [0, Y] x [0, Z]. Camera frame:
OpenCV / REP 103 optical (x right, y down, z forward); depth is the hit distance along z.
"""
from __future__ import annotations

import colorsys
import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np


@dataclass(frozen=True)
class Plane:
    """A room face: the points x with `normal · x = offset`; the normal points into the room."""

    name: str
    normal: tuple[float, float, float]
    offset: float


@dataclass(frozen=True)
class Box:
    """A box with vertical sides, turned by `yaw` (radians) about the world z axis."""

    center: tuple[float, float, float]
    half_size: tuple[float, float, float]
    yaw: float


@dataclass(frozen=True)
class Sphere:
    center: tuple[float, float, float]
    radius: float


@dataclass(frozen=True)
class Cylinder:
    """A closed vertical cylinder standing on `base` (the centre of its bottom disc)."""

    base: tuple[float, float, float]
    radius: float
    height: float


Primitive = Plane | Box | Sphere | Cylinder


@dataclass(frozen=True)
class Scene:
    """One rendered frame. `labels[v, u]` indexes `primitives` (the surface seen at that pixel)."""

    rgb: np.ndarray  # uint8 [H, W, 3]
    depth: np.ndarray  # float32 [H, W], metres along the optical z axis, finite and > 0
    K: np.ndarray  # float64 [3, 3]
    camera_to_world: np.ndarray  # float64 [4, 4], optical frame -> world frame (z up, floor z = 0)
    labels: np.ndarray  # int16 [H, W]
    primitives: tuple[Primitive, ...]
    style: str
    seed: int


@dataclass(frozen=True)
class _Material:
    pattern: str  # flat | checker | stripes | tiles | planks | noise
    colors: np.ndarray  # float32 [2, 3] in [0, 1]
    scale: float  # metres: the pattern's physical period
    angle: float  # stripe / noise orientation
    phases: tuple[float, float, float]  # noise phases
    salt: int  # decorrelates per-tile / per-plank tones between surfaces


@dataclass(frozen=True)
class _Light:
    ambient: float
    diffuse: float
    color: np.ndarray  # float32 [3]
    position: np.ndarray | None  # world point light (indoor lamp) ...
    direction: np.ndarray | None  # ... or unit vector towards a distant light (toy sun)


@dataclass(frozen=True)
class _Layout:
    """Everything about a scene that does not depend on the image size."""

    hfov: float
    camera_to_world: np.ndarray
    primitives: tuple[Primitive, ...]
    materials: tuple[_Material, ...]
    light: _Light


def render_scene(
    seed: int, width: int = 256, height: int = 192, K: np.ndarray | None = None, style: str = "indoor"
) -> Scene:
    """Render the scene drawn from (seed, style) with a pinhole camera of the given size and K.

    K: 3x3 intrinsics (pixel centres at integer coordinates); default: square pixels, centred
    principal point, and a horizontal field of view drawn from the seed (55°-80°). The scene itself
    does not depend on the size or K: the same seed seen through another camera is the same room.
    """
    rng, layout = _room(seed, width, height, style)
    K = _default_K(layout.hfov, width, height) if K is None else _checked_K(K)
    return _photograph(layout, K, width, height, rng, style, int(seed))


def _room(seed: int, width: int, height: int, style: str) -> tuple[np.random.Generator, _Layout]:
    """The checked arguments' layout, and the generator that drew it (it goes on to the sensor noise)."""
    if style not in ROOM_STYLES:
        raise ValueError(f"unknown style {style!r}; expected one of {STYLES}")
    for name, v in (("width", width), ("height", height)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v <= 0:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    rng = np.random.default_rng([int(seed), STYLES.index(style)])
    return rng, _draw_layout(rng, ROOM_STYLES[style])


def _photograph(layout: _Layout, K: np.ndarray, width: int, height: int, rng, style: str, seed: int) -> Scene:
    """Ray-cast and shade the layout from its camera, with sensor noise drawn from `rng`."""
    depth, labels, dirs = _cast(layout, K, width, height)
    rgb = _shade(layout, K, depth, labels, dirs)
    img = rng.random(rgb.shape, dtype=np.float32)  # sensor noise: uniform, sigma = 1 % of full scale
    img *= np.float32(0.0346 * 255)
    img += rgb * np.float32(255)
    img += np.float32(0.5 - 0.0173 * 255)
    rgb = np.clip(img, 0, 255, out=img).astype(np.uint8)
    return Scene(rgb, depth, K, layout.camera_to_world, labels, layout.primitives, style, seed)


# --- sequences: a camera walking through the room ---------------------------------------------
SEQUENCE_RATE_HZ = 10.0  # the replay's default frame rate: the robot camera the sequences stand for
CLEARANCE_M = 0.4  # the closest the camera centre comes to a wall or an object's footprint
_SUBSTEPS = 8  # integration steps of the walk per frame


def render_sequence(seed: int, frames: int = 30, width: int | None = None, height: int | None = None,
                    K: np.ndarray | None = None, style: str | None = None, rate: float = SEQUENCE_RATE_HZ) -> tuple[Scene, ...]:
    """`frames` frames, `rate` per second, of a camera walking through the room of (seed, style): it
    walks ahead at a steady pace, turns smoothly and passes close to an object, staying in the room's
    free space (CLEARANCE_M from walls and objects). Frame 0 is `render_scene`'s camera; each frame's
    pose is its `camera_to_world`, frame t is at time t / rate. Every frame has its own sensor noise.

    Defaults: the embedded models' camera (its size, style and field of view; K square and centred at
    any other size). Deterministic in its arguments.
    """
    if width is None or height is None or style is None:
        from .small_scale import camera as embedded_camera  # the camera the embedded models were trained for

        camera = embedded_camera()
        width, height, style = width or camera["width"], height or camera["height"], style or camera["style"]
        K = _default_K(math.radians(camera["hfov_deg"]), width, height) if K is None else K
    if not isinstance(frames, (int, np.integer)) or isinstance(frames, bool) or frames < 2:
        raise ValueError(f"frames must be an integer >= 2, got {frames!r}")
    if not (isinstance(rate, (int, float)) and math.isfinite(rate) and rate > 0):
        raise ValueError(f"rate must be a positive number of frames per second, got {rate!r}")
    _, layout = _room(seed, width, height, style)
    K = _default_K(layout.hfov, width, height) if K is None else _checked_K(K)
    rng = np.random.default_rng([int(seed), STYLES.index(style), 1])  # the walk and the noise, apart from the room
    poses = _walk(rng, layout, int(frames), float(rate))
    return tuple(_photograph(replace(layout, camera_to_world=p), K, width, height, rng, style, int(seed)) for p in poses)


def _walk(rng, layout: _Layout, frames: int, rate: float) -> list[np.ndarray]:
    """Camera-to-world poses of a smooth walk from the layout's camera: of 48 drawn walks (pace, turn,
    when it turns) the one that passes closest to an object while keeping CLEARANCE_M; turning on the
    spot when none does. The camera keeps its height, pitch and roll; it turns about the world z axis."""
    planes = {p.name: p for p in layout.primitives if isinstance(p, Plane)}
    room = np.array([-planes["wall_x1"].offset, -planes["wall_y1"].offset])
    boxes = [(lo, hi) for lo, hi in filter(None, map(_aabb, layout.primitives))
             if hi[2] > 0.05 and (hi - lo)[:2].min() > 0.05]  # objects: not the rug, not the pictures
    objects = [(lo[:2] + hi[:2]) / 2 for lo, hi in boxes]
    radii = np.array([0.5 * math.hypot(*(hi[:2] - lo[:2])) for lo, hi in boxes])
    start, R0 = layout.camera_to_world[:2, 3], layout.camera_to_world[:3, :3]
    heading = math.atan2(R0[1, 2], R0[0, 2])  # the optical axis, seen from above
    t = np.arange((frames - 1) * _SUBSTEPS + 1) / (rate * _SUBSTEPS)
    centres = np.array(objects).reshape(-1, 2)

    def gaps(xy: np.ndarray) -> tuple[float, float]:  # (to the walls, to the objects' footprints)
        to_objects = np.linalg.norm(xy[:, None] - centres[None], axis=-1) - radii
        return min(xy.min(), (room - xy).min()), float(to_objects.min()) if len(radii) else math.inf

    keep = min(CLEARANCE_M, *gaps(start[None]))  # a start closer than that may stay as close, no closer
    best = None
    for _ in range(48):
        pace, turn = rng.uniform(0.15, 0.6), rng.choice([-1.0, 1.0]) * rng.uniform(math.radians(20), math.radians(90))
        t0, span = rng.uniform(0.0, 0.5) * t[-1], rng.uniform(0.3, 0.7) * t[-1]
        s = np.clip((t - t0) / span, 0.0, 1.0)
        yaw = turn * s * s * (3 - 2 * s)  # smoothstep: the turn starts and ends gently
        step = pace * np.diff(t)[:, None] * np.stack([np.cos(heading + yaw[:-1]), np.sin(heading + yaw[:-1])], -1)
        xy = start + np.concatenate([np.zeros((1, 2)), np.cumsum(step, 0)])
        to_walls, to_objects = gaps(xy)
        if to_walls >= keep and to_objects >= keep and (best is None or to_objects < best[0]):
            best = (to_objects, xy, yaw)
    if best is None:  # no walk kept clear: turn on the spot
        xy, yaw = np.repeat(start[None], len(t), 0), rng.choice([-1.0, 1.0]) * math.radians(45) * (t / t[-1])
    else:
        xy, yaw = best[1:]
    poses = []
    for k in range(0, len(t), _SUBSTEPS):
        c, s = math.cos(yaw[k]), math.sin(yaw[k])
        pose = layout.camera_to_world.copy()
        pose[:3, :3] = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ R0
        pose[:2, 3] = xy[k]
        poses.append(pose)
    return poses


def _default_K(hfov: float, width: int, height: int) -> np.ndarray:
    f = 0.5 * width / math.tan(0.5 * hfov)
    return np.array([[f, 0.0, 0.5 * (width - 1)], [0.0, f, 0.5 * (height - 1)], [0.0, 0.0, 1.0]])


def _checked_K(K) -> np.ndarray:
    k = np.array(K, dtype=np.float64)
    if k.shape != (3, 3) or not np.isfinite(k).all():
        raise ValueError(f"K must be a finite 3x3 matrix, got shape {k.shape}")
    if not (k[0, 0] > 0 and k[1, 1] > 0):
        raise ValueError(f"K has a zero or negative focal length (fx={k[0, 0]}, fy={k[1, 1]})")
    if k[1, 0] != 0 or not np.array_equal(k[2], [0.0, 0.0, 1.0]):
        raise ValueError("K must be upper triangular with last row [0, 0, 1]")
    return k


# --- scene drawing: physical distributions only -------------------------------------------------
def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), dtype=np.float32)


def _material(rng, pattern: str, colors, scale: float) -> _Material:
    return _Material(
        pattern,
        np.asarray(colors, dtype=np.float32),
        float(scale),
        float(rng.uniform(0, math.pi)),
        tuple(float(x) for x in rng.uniform(0, 2 * math.pi, 3)),
        int(rng.integers(1 << 20)),
    )


def _muted(rng, s=(0.05, 0.3), v=(0.45, 0.85)) -> np.ndarray:
    return _hsv(rng.uniform(0.0, 0.17) if rng.random() < 0.6 else rng.random(), rng.uniform(*s), rng.uniform(*v))


def _saturated(rng) -> np.ndarray:
    if rng.random() < 0.15:  # toys come in white and black too
        return _hsv(0.0, 0.0, rng.choice([0.95, 0.12]))
    return _hsv(rng.choice([0.0, 0.08, 0.15, 0.33, 0.58, 0.66, 0.8]) + rng.normal(0, 0.015), rng.uniform(0.75, 1.0), rng.uniform(0.75, 1.0))


def _wood(rng) -> np.ndarray:
    base = _hsv(rng.uniform(0.05, 0.1), rng.uniform(0.35, 0.65), rng.uniform(0.3, 0.75))
    return np.stack([base, base * rng.uniform(0.7, 0.9)])


def _indoor_material(rng, surface: str) -> _Material:
    if surface == "floor":
        kind = rng.choice(["planks", "tiles", "noise"], p=[0.5, 0.35, 0.15])
        if kind == "planks":
            return _material(rng, "planks", _wood(rng), rng.choice([0.12, 0.15, 0.2]))
        if kind == "tiles":
            tile = _muted(rng, v=(0.4, 0.9))
            return _material(rng, "tiles", [tile, tile * 0.55], rng.choice([0.3, 0.45, 0.6]))
        carpet = _muted(rng, s=(0.1, 0.4), v=(0.25, 0.6))
        return _material(rng, "noise", [carpet * 0.8, carpet * 1.15], 0.05)
    if surface == "ceiling":
        return _material(rng, "flat", [_hsv(0.1, rng.uniform(0, 0.05), rng.uniform(0.85, 0.95))] * 2, 1.0)
    if surface == "wall":
        paint = _muted(rng, s=(0.03, 0.25), v=(0.65, 0.9))
        kind = rng.choice(["flat", "noise", "stripes"], p=[0.4, 0.35, 0.25])
        scale = {"flat": 1.0, "noise": 0.8, "stripes": rng.choice([0.08, 0.12])}[kind]
        return replace(_material(rng, kind, [paint, paint * rng.uniform(0.8, 0.92)], scale), angle=0.0)  # upright wallpaper
    if surface == "picture":  # texture edges with (almost) no depth edge: a trap for sharpening
        a, b = _muted(rng, s=(0.3, 0.8), v=(0.2, 0.9)), _muted(rng, s=(0.3, 0.8), v=(0.2, 0.9))
        return _material(rng, rng.choice(["noise", "stripes"]), [a, b], rng.uniform(0.08, 0.3))
    if surface == "rug":
        a = _muted(rng, s=(0.2, 0.6), v=(0.25, 0.7))
        return _material(rng, rng.choice(["stripes", "checker", "noise"]), [a, _muted(rng, v=(0.3, 0.8))], 0.15)
    kind = rng.choice(["planks", "flat", "noise", "stripes"], p=[0.35, 0.35, 0.2, 0.1])  # furniture
    if kind == "planks":
        return _material(rng, "planks", _wood(rng), rng.choice([0.1, 0.15]))
    c = _muted(rng, s=(0.05, 0.5), v=(0.2, 0.85))
    return _material(rng, kind, [c, c * rng.uniform(0.6, 0.85)], {"flat": 1.0, "noise": 0.1, "stripes": 0.06}[kind])


def _toy_material(rng, surface: str) -> _Material:
    if surface == "floor":
        return _material(rng, "checker", [_saturated(rng), _hsv(0, 0, rng.choice([0.95, 0.1]))], rng.choice([0.25, 0.5]))
    if surface == "ceiling":
        return _material(rng, "flat", [_saturated(rng)] * 2, 1.0)
    if surface == "wall":
        kind = rng.choice(["flat", "stripes", "checker"])
        return _material(rng, kind, [_saturated(rng), _saturated(rng)], {"flat": 1.0, "stripes": 0.25, "checker": 0.5}[kind])
    kind = rng.choice(["flat", "checker", "stripes"], p=[0.6, 0.2, 0.2])
    return _material(rng, kind, [_saturated(rng), _saturated(rng)], {"flat": 1.0, "checker": 0.1, "stripes": 0.08}[kind])


def _office_material(rng, surface: str) -> _Material:
    grey = _hsv(rng.uniform(0.5, 0.65), rng.uniform(0.0, 0.12), rng.uniform(0.35, 0.7))
    if surface == "floor":
        if rng.random() < 0.5:  # concrete
            return _material(rng, "noise", [grey * 0.85, grey * 1.1], rng.choice([0.3, 0.5]))
        carpet = _muted(rng, s=(0.1, 0.35), v=(0.25, 0.55))
        return _material(rng, "tiles", [carpet, carpet * 0.7], 0.5)
    if surface == "ceiling":
        return _material(rng, "tiles", [_hsv(0.1, 0.02, 0.92), _hsv(0.1, 0.02, 0.7)], 0.6)
    if surface == "wall":
        paint = _muted(rng, s=(0.02, 0.2), v=(0.6, 0.9))
        kind = rng.choice(["flat", "checker"], p=[0.6, 0.4])  # plain or large panels
        return replace(_material(rng, kind, [paint, paint * rng.uniform(0.85, 0.95)], 1.2 if kind == "checker" else 1.0), angle=0.0)
    kind = rng.choice(["flat", "stripes", "noise"], p=[0.5, 0.25, 0.25])  # cabinets, columns, bins
    c = _muted(rng, s=(0.05, 0.45), v=(0.25, 0.9))
    return _material(rng, kind, [c, c * rng.uniform(0.65, 0.85)], {"flat": 1.0, "stripes": 0.1, "noise": 0.2}[kind])


def _rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """Optical-frame -> world rotation: level camera looking along +y, then pitch up, roll, yaw left."""
    cy, sy, cp, sp, cr, sr = (f(a) for a in (yaw, pitch, roll) for f in (math.cos, math.sin))
    yaw_m = np.array([[cy, -sy, 0], [sy, cy, 0], [0, 0, 1]])
    level = np.array([[1, 0, 0], [0, 0, 1], [0, -1, 0]], dtype=np.float64)  # x_c, y_c, z_c as columns
    pitch_m = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    roll_m = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    return yaw_m @ level @ pitch_m @ roll_m


def _draw_object(rng, style: RoomStyle, boxes: list[Box]) -> tuple[Primitive, float, Box | None]:
    """A primitive at the room origin, its horizontal footprint radius, and the box it stands on
    (taken from `boxes`, the free box tops)."""
    kind = rng.choice(["box", "cylinder", "sphere"], p=style.object_probs)
    sizes = style.object_sizes
    if kind == "box":
        half = tuple(float(rng.uniform(*r)) for r in sizes["box"])
        yaw = 0.0 if style.square_boxes and rng.random() < 0.5 else float(rng.uniform(-math.pi / 4, math.pi / 4))
        return Box((0.0, 0.0, half[2]), half, yaw), math.hypot(half[0], half[1]), None
    host = boxes.pop(int(rng.integers(len(boxes)))) if boxes and rng.random() < 0.3 else None  # one per box top
    support = host.center[2] + host.half_size[2] if host else 0.0
    if kind == "cylinder":
        r, h = rng.uniform(*sizes["cylinder"][0]), rng.uniform(*sizes["cylinder"][1])
        return Cylinder((0.0, 0.0, support), float(r), float(h)), float(r), host
    r = float(rng.uniform(*sizes["sphere"]))
    return Sphere((0.0, 0.0, support + r), r), r, host


def _place(rng, cam: np.ndarray, yaw: float, hfov: float, room: np.ndarray, radius: float, taken: list):
    """A floor position (x, y) in front of the camera, inside the room, clear of the camera and of
    the footprints (x, y, r) in `taken`, or None after 20 tries."""
    for _ in range(20):
        bearing = yaw + math.pi / 2 + rng.uniform(-0.6, 0.6) * hfov
        dist = rng.uniform(1.2, 5.5)
        x = float(np.clip(cam[0] + dist * math.cos(bearing), radius + 0.05, room[0] - radius - 0.05))
        y = float(np.clip(cam[1] + dist * math.sin(bearing), radius + 0.05, room[1] - radius - 0.05))
        clear = all(math.hypot(x - tx, y - ty) > radius + tr for tx, ty, tr in taken)
        if clear and math.hypot(x - cam[0], y - cam[1]) > radius + 0.6:
            return x, y
    return None


def _moved(prim, x: float, y: float):
    if isinstance(prim, Box):
        return Box((x, y, prim.center[2]), prim.half_size, prim.yaw)
    if isinstance(prim, Cylinder):
        return Cylinder((x, y, prim.base[2]), prim.radius, prim.height)
    return Sphere((x, y, prim.center[2]), prim.radius)


def _draw_layout(rng, style: RoomStyle) -> _Layout:
    material = style.material
    room = np.array([rng.uniform(*r) for r in style.room])
    hfov = math.radians(rng.uniform(55.0, 80.0))
    cam = np.array([rng.uniform(0.6, room[0] - 0.6), rng.uniform(0.6, 0.35 * room[1]), 0.0])
    cam[2] = min(rng.uniform(1.0, 1.8), room[2] - 0.4)
    yaw = math.radians(rng.uniform(-35.0, 35.0))
    pose = np.eye(4)
    pose[:3, :3] = _rotation(yaw, math.radians(rng.uniform(-25.0, 5.0)), math.radians(rng.uniform(-4.0, 4.0)))
    pose[:3, 3] = cam

    prims: list[Primitive] = [
        Plane("floor", (0.0, 0.0, 1.0), 0.0),
        Plane("ceiling", (0.0, 0.0, -1.0), float(-room[2])),
        Plane("wall_x0", (1.0, 0.0, 0.0), 0.0),
        Plane("wall_x1", (-1.0, 0.0, 0.0), float(-room[0])),
        Plane("wall_y0", (0.0, 1.0, 0.0), 0.0),
        Plane("wall_y1", (0.0, -1.0, 0.0), float(-room[1])),
    ]
    wall = material(rng, "wall")
    mats = [material(rng, "floor"), material(rng, "ceiling")] + [wall] * 4
    if style.decorations:
        for _ in range(int(rng.integers(0, 3))):  # pictures on the far or side walls
            w, h, z = (float(x) for x in (rng.uniform(0.3, 0.6), rng.uniform(0.15, 0.45), rng.uniform(1.2, min(1.8, room[2] - 0.6))))
            side = int(rng.integers(3))
            if side == 0:
                prims.append(Box((float(rng.uniform(w + 0.1, room[0] - w - 0.1)), float(room[1] - 0.015), z), (w, 0.015, h), 0.0))
            else:
                x = 0.015 if side == 1 else float(room[0] - 0.015)
                prims.append(Box((x, float(rng.uniform(w + 0.1, room[1] - w - 0.1)), z), (0.015, w, h), 0.0))
            mats.append(material(rng, "picture"))
        if rng.random() < 0.5:
            half = (float(rng.uniform(0.5, 1.2)), float(rng.uniform(0.4, 1.0)), 0.005)
            center = (float(rng.uniform(half[0], room[0] - half[0])), float(rng.uniform(half[1] + cam[1], room[1] - half[1])), 0.005)
            prims.append(Box(center, half, 0.0))
            mats.append(material(rng, "rug"))

    boxes: list[Box] = []
    footprints: list[tuple[float, float, float]] = []  # objects stand on the floor side by side
    for _ in range(int(rng.integers(*style.object_count))):
        prim, radius, host = _draw_object(rng, style, boxes)
        xy = (host.center[0], host.center[1]) if host else _place(rng, cam, yaw, hfov, room, radius, footprints)
        if xy is None or math.hypot(xy[0] - cam[0], xy[1] - cam[1]) <= radius + 0.3:
            continue
        if host is None:
            footprints.append((*xy, radius))
        prim = _moved(prim, *xy)
        prims.append(prim)
        mats.append(material(rng, "object"))
        if isinstance(prim, Box):
            boxes.append(prim)

    if style.lamp_tint is not None:  # one ceiling lamp
        lamp = np.array([rng.uniform(0.2, 0.8) * room[0], rng.uniform(0.3, 0.8) * room[1], room[2] - 0.2])
        tint = style.lamp_tint
        warm = np.array([1.0, rng.uniform(*tint[:2]), rng.uniform(*tint[2:])], dtype=np.float32)
        light = _Light(float(rng.uniform(0.3, 0.45)), float(rng.uniform(0.8, 1.1)), warm, lamp, None)
    else:  # the sun
        el, az = math.radians(rng.uniform(35.0, 70.0)), rng.uniform(0, 2 * math.pi)
        sun = np.array([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)])
        light = _Light(float(rng.uniform(0.25, 0.4)), float(rng.uniform(0.75, 0.95)), np.ones(3, dtype=np.float32), None, sun)
    return _Layout(hfov, pose, tuple(prims), tuple(mats), light)


@dataclass(frozen=True)
class RoomStyle:
    """A domain of rooms: everything that differs between styles (adding a style is one entry of
    `ROOM_STYLES`; its position there seeds its scenes, so new styles go last)."""

    room: tuple[tuple[float, float], ...]  # (x, y, z) ranges of the room size, metres
    material: Callable[..., _Material]  # (rng, surface) -> the surface's material
    object_count: tuple[int, int]  # objects drawn: rng.integers(lo, hi)
    object_probs: tuple[float, float, float]  # box, cylinder, sphere
    object_sizes: dict[str, tuple]  # box half sizes, cylinder (radius, height), sphere radius ranges, metres
    square_boxes: bool  # half the boxes stand square to the walls (furniture)
    decorations: bool  # pictures on the walls and a rug: texture edges without depth edges
    lamp_tint: tuple[float, float, float, float] | None  # (g lo, g hi, b lo, b hi) of a ceiling lamp; None: the sun


ROOM_STYLES: dict[str, RoomStyle] = {
    # the target: muted rooms, wood and tiles, furniture, pictures, a warm ceiling lamp
    "indoor": RoomStyle(
        room=((3.0, 7.0), (3.5, 9.0), (2.4, 3.2)), material=_indoor_material, object_count=(3, 8),
        object_probs=(0.6, 0.25, 0.15),
        object_sizes={"box": ((0.2, 0.8), (0.2, 0.5), (0.15, 0.6)), "cylinder": ((0.1, 0.3), (0.3, 1.1)), "sphere": (0.1, 0.3)},
        square_boxes=True, decorations=True, lamp_tint=(0.9, 1.0, 0.75, 0.95),
    ),
    # saturated primitives, checkerboards, hard sunlight, many spheres
    "toy": RoomStyle(
        room=((3.0, 7.0), (3.5, 9.0), (2.4, 3.2)), material=_toy_material, object_count=(4, 10),
        object_probs=(0.3, 0.2, 0.5),
        object_sizes={"box": ((0.12, 0.35), (0.12, 0.35), (0.12, 0.35)), "cylinder": ((0.1, 0.3), (0.2, 0.9)),
                      "sphere": (0.12, 0.45)},
        square_boxes=False, decorations=False, lamp_tint=None,
    ),
    # larger rooms, concrete and carpet tiles, tall cabinets, columns and bins, a cool white lamp
    "office": RoomStyle(
        room=((4.0, 9.0), (4.5, 11.0), (2.6, 3.6)), material=_office_material, object_count=(3, 8),
        object_probs=(0.45, 0.45, 0.1),
        object_sizes={"box": ((0.25, 0.6), (0.2, 0.4), (0.4, 1.0)), "cylinder": ((0.15, 0.45), (0.4, 1.6)), "sphere": (0.15, 0.35)},
        square_boxes=False, decorations=False, lamp_tint=(0.97, 1.0, 0.95, 1.0),
    ),
}
STYLES = tuple(ROOM_STYLES)


# --- ray casting ------------------------------------------------------------------------------
def _cast(layout: _Layout, K: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nearest hit per pixel: depth [H, W], labels [H, W], world ray directions [3, H, W].

    Rays are d = R K⁻¹ [u, v, 1] from the camera centre (the origin here: the scene is shifted so
    float32 keeps millimetres), so a hit at ray parameter t has optical depth exactly t.
    """
    Ki = np.linalg.inv(K).astype(np.float32)
    u = np.arange(width, dtype=np.float32)
    v = np.arange(height, dtype=np.float32)[:, None]
    x_c = Ki[0, 0] * u + Ki[0, 1] * v + Ki[0, 2]
    y_c = np.broadcast_to(Ki[1, 1] * v + Ki[1, 2], (height, width))
    R = layout.camera_to_world[:3, :3].astype(np.float32)
    dirs = np.stack([R[i, 0] * x_c + R[i, 1] * y_c + R[i, 2] for i in range(3)])
    cam = layout.camera_to_world[:3, 3]
    depth = np.full((height, width), np.inf, dtype=np.float32)
    labels = np.zeros((height, width), dtype=np.int16)
    for k, prim in enumerate(layout.primitives):
        window = _window(prim, cam, R, K, width, height)
        if window is None:
            continue
        t = _intersect(prim, dirs[(slice(None),) + window], cam)
        closer = t < depth[window]
        np.copyto(depth[window], t, where=closer)
        np.copyto(labels[window], k, where=closer)
    return depth, labels, dirs


def _aabb(prim: Primitive) -> tuple[np.ndarray, np.ndarray] | None:
    if isinstance(prim, Box):
        c, s = abs(math.cos(prim.yaw)), abs(math.sin(prim.yaw))
        hx, hy, hz = prim.half_size
        ext = np.array([c * hx + s * hy, s * hx + c * hy, hz])
        return np.array(prim.center) - ext, np.array(prim.center) + ext
    if isinstance(prim, Sphere):
        return np.array(prim.center) - prim.radius, np.array(prim.center) + prim.radius
    if isinstance(prim, Cylinder):
        r = prim.radius
        return np.array(prim.base) - (r, r, 0), np.array(prim.base) + (r, r, prim.height)
    return None


_CORNERS = np.array([[(i >> k) & 1 for k in range(3)] for i in range(8)], dtype=bool)  # hi/lo per axis


def _window(prim: Primitive, cam, R, K, width: int, height: int) -> tuple[slice, slice] | None:
    """The pixel rectangle that can see `prim` (its projected bounding box), None if it is off-screen.

    Only rays in that rectangle are intersected: most objects cover a small part of the image.
    """
    box = _aabb(prim)
    if box is None:
        return slice(None), slice(None)
    lo, hi = box
    corners = np.where(_CORNERS, hi, lo) - cam
    p = corners @ R.astype(np.float64)  # optical frame
    if p[:, 2].min() < 1e-3:  # reaches behind the camera: no finite projection, test every ray
        return slice(None), slice(None)
    uvw = p @ K.T
    uv = uvw[:, :2] / uvw[:, 2:]
    u0, v0 = np.maximum(np.floor(uv.min(0)).astype(int), 0)
    u1, v1 = np.ceil(uv.max(0)).astype(int) + 1
    u1, v1 = min(u1, width), min(v1, height)
    if u0 >= u1 or v0 >= v1:
        return None
    return slice(v0, v1), slice(u0, u1)


def _intersect(prim: Primitive, d: np.ndarray, cam: np.ndarray) -> np.ndarray:
    """Ray parameter of the first hit in front of the camera (inf on a miss); d: [3, ...] float32."""
    with np.errstate(divide="ignore", invalid="ignore"):
        if isinstance(prim, Plane):
            nd = sum(np.float32(c) * d[i] for i, c in enumerate(prim.normal) if c != 0)
            off = np.float32(prim.offset - float(np.dot(prim.normal, cam)))  # < 0: camera is inside
            return np.where(nd < 0, off / nd, np.float32(np.inf))
        if isinstance(prim, Box):
            c, s = np.float32(math.cos(prim.yaw)), np.float32(math.sin(prim.yaw))
            o = np.asarray(cam - prim.center, dtype=np.float32)  # ray origin relative to the box
            o = np.array([c * o[0] + s * o[1], -s * o[0] + c * o[1], o[2]], dtype=np.float32)
            dl = (c * d[0] + s * d[1], -s * d[0] + c * d[1], d[2])
            near = np.full(d.shape[1:], -np.inf, dtype=np.float32)
            far = np.full(d.shape[1:], np.inf, dtype=np.float32)
            for axis in range(3):
                inv = 1.0 / dl[axis]
                t1 = (-prim.half_size[axis] - o[axis]) * inv
                t2 = (prim.half_size[axis] - o[axis]) * inv
                np.maximum(near, np.minimum(t1, t2), out=near)
                np.minimum(far, np.maximum(t1, t2), out=far)
            return np.where((near <= far) & (near > 0), near, np.float32(np.inf))
        if isinstance(prim, Sphere):
            o = np.asarray(cam - prim.center, dtype=np.float32)
            a = d[0] * d[0] + d[1] * d[1] + d[2] * d[2]
            b = o[0] * d[0] + o[1] * d[1] + o[2] * d[2]
            disc = b * b - a * np.float32(o @ o - prim.radius**2)
            t = (-b - np.sqrt(disc)) / a
            return np.where((disc >= 0) & (t > 0), t, np.float32(np.inf))
        o = np.asarray(cam - prim.base, dtype=np.float32)  # Cylinder
        a = d[0] * d[0] + d[1] * d[1]
        b = o[0] * d[0] + o[1] * d[1]
        disc = b * b - a * np.float32(o[0] ** 2 + o[1] ** 2 - prim.radius**2)
        t = (-b - np.sqrt(disc)) / a
        z = o[2] + t * d[2]
        t = np.where((disc >= 0) & (t > 0) & (z >= 0) & (z <= prim.height), t, np.float32(np.inf))
        for cap in (0.0, prim.height):
            tc = (np.float32(cap) - o[2]) / d[2]
            x, y = o[0] + tc * d[0], o[1] + tc * d[1]
            hit = (tc > 0) & (x * x + y * y <= np.float32(prim.radius**2)) & (tc < t)
            t = np.where(hit, tc, t)
        return t


# --- shading ----------------------------------------------------------------------------------
def _shade(layout: _Layout, K: np.ndarray, depth: np.ndarray, labels: np.ndarray, dirs: np.ndarray) -> np.ndarray:
    """Linear RGB [H, W, 3] float32: textured albedo times Lambertian irradiance, per surface."""
    h, w = depth.shape
    focal = math.sqrt(K[0, 0] * K[1, 1])
    order = np.argsort(labels.reshape(-1), kind="stable")  # pixels grouped by surface
    bounds = np.cumsum(np.bincount(labels.reshape(-1), minlength=len(layout.primitives)))
    t = np.take(depth.reshape(-1), order)
    d = np.take(dirs.reshape(3, -1), order, axis=1)
    p = d * t + layout.camera_to_world[:3, 3].astype(np.float32)[:, None]
    rgb = np.empty_like(p)
    start = 0
    for prim, mat, stop in zip(layout.primitives, layout.materials, bounds):
        if stop > start:
            part = slice(start, stop)
            n, uv = _surface(prim, p[:, part])
            # Pixel footprint on the surface (metres): patterns finer than it fade to their mean.
            facing = np.abs(n[0] * d[0, part] + n[1] * d[1, part] + n[2] * d[2, part])
            footprint = t[part] / (focal * np.maximum(facing, 0.1))
            rgb[:, part] = _albedo(mat, uv, footprint) * _irradiance(layout.light, p[:, part], n)
        start = stop
    rgb *= layout.light.color[:, None]
    unsort = np.empty_like(order)
    unsort[order] = np.arange(order.size)
    return np.moveaxis(np.take(rgb, unsort, axis=1).reshape(3, h, w), 0, -1)


def _surface(prim: Primitive, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit normals [3, N] and texture coordinates in metres [2, N] of world points on `prim`."""
    if isinstance(prim, Plane):
        n = np.broadcast_to(np.asarray(prim.normal, dtype=np.float32)[:, None], p.shape)
        return n, p[[i for i in range(3) if prim.normal[i] == 0]]
    if isinstance(prim, Box):
        c, s = np.float32(math.cos(prim.yaw)), np.float32(math.sin(prim.yaw))
        q = p - np.asarray(prim.center, dtype=np.float32)[:, None]
        loc = np.stack([c * q[0] + s * q[1], -s * q[0] + c * q[1], q[2]])
        rx, ry, rz = (np.abs(loc[i]) / np.float32(prim.half_size[i]) for i in range(3))
        on_x = (rx >= ry) & (rx >= rz)  # the face is the axis where the point is outermost
        on_z = ~on_x & (rz >= ry)
        on_y = ~on_x & ~on_z
        nx, ny, nz = np.sign(loc[0]) * on_x, np.sign(loc[1]) * on_y, np.sign(loc[2]) * on_z
        n = np.stack([c * nx - s * ny, s * nx + c * ny, nz])
        uv = np.stack([np.where(on_x, loc[1], loc[0]), np.where(on_z, loc[1], loc[2])])
        return n, uv
    if isinstance(prim, Sphere):
        n = (p - np.asarray(prim.center, dtype=np.float32)[:, None]) / np.float32(prim.radius)
        return n, np.stack([prim.radius * np.arctan2(n[1], n[0]), prim.radius * n[2]])
    q = p - np.asarray(prim.base, dtype=np.float32)[:, None]  # Cylinder
    radial = np.sqrt(q[0] * q[0] + q[1] * q[1])
    cap = np.minimum(np.abs(q[2]), np.abs(q[2] - prim.height)) < np.abs(radial - prim.radius)
    safe = np.maximum(radial, 1e-6)
    n = np.stack([np.where(cap, 0, q[0] / safe), np.where(cap, 0, q[1] / safe), np.where(cap, np.sign(q[2] - prim.height / 2), 0)])
    uv = np.stack([np.where(cap, q[0], prim.radius * np.arctan2(q[1], q[0])), np.where(cap, q[1], q[2])])
    return n.astype(np.float32), uv


def _fade(x, mean: float, period: float, footprint):
    """Band-limit a pattern: full contrast while a period spans 4+ pixels, flat below 2 (no moiré)."""
    return mean + (x - mean) * np.clip(2.0 - 4.0 * footprint / period, 0.0, 1.0)


def _lines(x, period: float, width: float, footprint):
    """Coverage in [0, 1] of lines `width` wide every `period` metres, box-filtered over the pixel."""
    frac = x / period - np.floor(x / period)
    dist = period * np.minimum(frac, 1.0 - frac)
    return (dist < 0.5 * (footprint + width)) * np.minimum(1.0, width / footprint)


def _parity(x):
    """0 for even, 1 for odd integer-valued floats (`%` is several times slower)."""
    return x - 2 * np.floor(0.5 * x)


def _hash(i, j, salt: int):
    """Deterministic per-cell random tone in [0, 1] (tiles, planks)."""
    h = (i.astype(np.int64) * 73856093) ^ (j.astype(np.int64) * 19349663) ^ salt
    h = (h ^ (h >> 13)) * 1274126177
    return ((h >> 16) & 0xFFFF).astype(np.float32) / np.float32(65535)


def _albedo(m: _Material, uv: np.ndarray, footprint: np.ndarray) -> np.ndarray:
    """Surface colour [3, N] of a physically sized pattern at texture coordinates uv (metres)."""
    a, b = uv
    s = m.scale
    c0, c1 = m.colors[0][:, None], m.colors[1][:, None]
    if m.pattern == "flat":
        return np.broadcast_to(c0, (3, a.size))
    if m.pattern == "checker":
        t = _parity(np.floor(a / s) + np.floor(b / s))
        return c0 + (c1 - c0) * _fade(t, 0.5, s, footprint)
    if m.pattern == "stripes":
        t = _parity(np.floor((a * math.cos(m.angle) + b * math.sin(m.angle)) / s))
        return c0 + (c1 - c0) * _fade(t, 0.5, s, footprint)
    if m.pattern == "noise":  # three oriented waves at physical wavelengths s, s/2.3, s/5.3
        t = 0.5
        for k, (wavelength, amp) in enumerate(((s, 0.3), (s / 2.3, 0.15), (s / 5.3, 0.08))):
            ang = m.angle + 2.1 * k
            wave = np.sin((a * math.cos(ang) + b * math.sin(ang)) * (2 * math.pi / wavelength) + m.phases[k])
            t = t + amp * _fade(wave, 0.0, wavelength, footprint)
        return c0 + (c1 - c0) * t
    if m.pattern == "tiles":
        i, j = np.floor(a / s), np.floor(b / s)
        tone = _fade(0.85 + 0.3 * _hash(i, j, m.salt), 1.0, s, footprint)
        grout = np.maximum(_lines(a, s, 0.006, footprint), _lines(b, s, 0.006, footprint))
        return c0 * tone * (1 - grout) + c1 * grout
    # planks: boards s wide and 8 s long, staggered, each with its own tone and a wavy grain
    length = 8 * s
    i = np.floor(a / s)
    shifted = b + length * _hash(i, i, m.salt)
    h = _hash(i, np.floor(shifted / length), m.salt)
    tone = c0 + (c1 - c0) * _fade(h, 0.5, s, footprint)
    grain = np.sin(2 * math.pi * (a / 0.025 + 0.6 * np.sin(2 * math.pi * b / 0.5 + 6.3 * h)))
    seams = np.maximum(_lines(a, s, 0.003, footprint), _lines(shifted, length, 0.003, footprint))
    return tone * (1 + 0.12 * _fade(grain, 0.0, 0.025, footprint)) * (1 - 0.45 * seams)


def _irradiance(light: _Light, p: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Ambient (a little brighter on up-facing surfaces) plus Lambertian diffuse, [N]."""
    ambient = light.ambient * (0.85 + 0.15 * n[2])
    if light.direction is not None:
        lx, ly, lz = light.direction.astype(np.float32)
        return ambient + light.diffuse * np.maximum(lx * n[0] + ly * n[1] + lz * n[2], 0)
    lx, ly, lz = (np.float32(light.position[i]) - p[i] for i in range(3))
    d2 = lx * lx + ly * ly + lz * lz
    cos = np.maximum(n[0] * lx + n[1] * ly + n[2] * lz, 0) / np.sqrt(d2)
    return ambient + light.diffuse * cos / (1 + d2 / 6.25)  # falls off past ~2.5 m
