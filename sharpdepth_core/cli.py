"""`sharpdepth` command line. Subcommands register themselves in COMMANDS (an `add_*` function that
adds its parser and sets `func`); `main` dispatches and turns expected errors into one line.

    sharpdepth predict INPUT... --out DIR [--model DIR | --student P [--metric NAME]] [--ply]
    sharpdepth predict FRAMES/ --out DIR --sequence [--poses POSES.json --intrinsics fx,fy,cx,cy] [--temporal image|odometry]
    sharpdepth export --out DIR [--model DIR | --student P] [--precision fp16] [--input-size WxH [--fixed]] [--tensorrt | --engine aoti]

Everything that can be checked without the models (arguments, devices, the output folder) is
checked before they load, so a mistake costs a second, not a model load.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import threading
import warnings
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from . import pipeline_config
from .choices import DIFFERENCE_METHODS, ENGINES, TEMPORAL_MODES
from .devices import DTYPES
from .hub_ids import DEPTH_ANYTHING_OUTDOOR_ID
from .images import DEFAULT_MAX_INPUT_PIXELS, list_images
from .speed import BUDGET_TEXT, SPEEDS

if TYPE_CHECKING:  # torch loads only when a command runs: --help stays fast
    import torch

# What predict writes per image (<name> + suffix); an input folder's files named like these are skipped.
OUTPUT_SUFFIXES = ("_depth.npy", "_depth.png", "_depth_color.png", "_confidence.npy", "_metric_depth.npy",
                   "_metric_depth_color.png", "_difference.png", ".ply")
# predict's record of the files it wrote in an output folder: only those are ever overwritten.
PREDICT_RECORD = ".sharpdepth-predict.json"
SEQUENCE_SCORES = "sequence.json"  # predict --sequence --poses: the temporal alignment error of consecutive frames
# Bounds on the JSON files read (regular files only, files.read_json_file): a calibration or an export.json
# is a few kB; --poses holds ~400 bytes per frame (64 MiB: over 100,000 frames); predict's record ~300
# bytes per image.
MAX_SMALL_JSON_BYTES, MAX_LIST_JSON_BYTES = 1 << 20, 64 << 20
# export --batch: the node batches the newest frame of each camera (at most 8 cameras), and tracing a full-size
# VAE at the grid holds every image of the batch at once (batch 100,000 ran for minutes, then ran out).
MAX_EXPORT_BATCH = 16
OPTIONS_WITH_VALUES = ("--intrinsics",)  # values may start with '-' (a negative cx): joined as --opt=value
# predict's exit status: a script can tell a complete run from a partial one without reading stderr.
EXIT_NONE_WRITTEN, EXIT_ERROR, EXIT_SOME_FAILED = 1, 2, 3
PREDICT_EXIT_CODES = (
    f"exit status: 0 every input written; {EXIT_NONE_WRITTEN} nothing written (no input could be processed); "
    f"{EXIT_ERROR} bad arguments, models or output folder (nothing processed); {EXIT_SOME_FAILED} some inputs written, "
    "others not (a missing or unreadable file, an empty folder, an image refused or whose outputs are in the way, "
    "a full disk, which stops the run: each said in one line, and how many in the last); 130 / 143 stopped by "
    "SIGINT / SIGTERM (nothing partly written left)"
)


def default_threads() -> int:
    """Half the CPU cores this process may use (at least 1): see --threads."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 2)
    return max(1, cores // 2)


def positive_int(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return n


def non_negative_int(value: str) -> int:
    n = int(value)
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or a positive integer, got {value}")
    return n


def _device_help() -> str:
    return "auto (cuda when available), cpu, cuda, cuda:N or mps; checked before the models load"


# --- predict -------------------------------------------------------------------------------------


def add_predict(sub) -> None:
    p = sub.add_parser(
        "predict",
        help="sharp metric depth for images or folders of images",
        description="Writes, per image: <name>_depth.npy (float32 metres), <name>_depth.png (uint16 millimetres, "
        "0 = invalid or beyond 65.535 m), <name>_confidence.npy (float32 in [0, 1], higher = more trusted, 0 where the "
        "depth is invalid), <name>_metric_depth.npy (the metric model f_D's depth, for comparison), "
        "<name>_depth_color.png and <name>_metric_depth_color.png (one colour scale for the pair, from the 2nd to the "
        "98th percentile of both, with a colour bar giving its ends and the map's full range in metres), <name>_difference.png (the difference map e, with its bar) and, with --ply, "
        "<name>.ply. Files that predict did not write itself are never overwritten (it records what it wrote in "
        f"DIR/{PREDICT_RECORD}); files named like its outputs are skipped when reading a folder.",
        epilog=PREDICT_EXIT_CODES,
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders (not recursive; regular files only)")
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder (created)")
    models = p.add_argument_group("models (default: the embedded models, small models for synthetic rooms only)")
    models.add_argument("--model", type=Path, metavar="DIR", help="a SharpDepth pipeline folder (student/, metric/, pipeline.json)")
    models.add_argument("--student", metavar="PATH_OR_ID",
                        help="a SharpDepth release / Lotus-G diffusers folder or hub id; a pipeline.json beside the folder "
                        "(as the trainer writes) supplies the metric backend and processing resolution")
    models.add_argument(
        "--metric", metavar="NAME",
        help="with --student: the metric backend f_D (needed unless a pipeline.json beside the student names one): "
        "unidepth-v1, unidepth-v2, depth-pro (when it predicts no field of view, a 60 degree horizontal one is "
        "assumed unless --intrinsics gives K), depth-anything-v2 (default checkpoint: the Indoor-Small metric model, "
        f"depth capped at 20 m; for outdoor scenes pass --metric-path {DEPTH_ANYTHING_OUTDOOR_ID}, capped at 80 m), small-conv",
    )
    models.add_argument("--metric-path", metavar="PATH_OR_ID", help="metric backend weights (default: its usual hub id)")
    p.add_argument("--processing-res", type=int, metavar="N", help="longer edge of the processing grid (default: the model's)")
    p.add_argument("--metric-at-input-resolution", action="store_true",
                   help="run f_D on the full-size input and resize its depth onto the grid (default: on the grid "
                   "image, the reference code's order; this option is a named departure from it)")
    p.add_argument("--speed", choices=SPEEDS, default="exact",
                   help="exact (default): the reference computation; fast: the cheaper settings whose measured accuracy "
                   f"cost stays within {BUDGET_TEXT.replace('%', '%%')} (on a GPU also bf16, one compiled CUDA graph per frame, "
                   "minutes of compiling at the first image); the costs are in docs/METHOD.md, Speed presets")
    p.add_argument("--difference", choices=DIFFERENCE_METHODS,
                   help="how the difference map is made (default: the --speed preset's): exact (VAE decode, the reference), "
                   "light (the small decoder in the pipeline folder's light_decoder/), latent (from the latents, no decode)")
    p.add_argument("--seed", type=int, default=0,
                   help="noise seed (default 0: the same noise draw for every image, so the frames of a video do not "
                   "flicker from the noise; -1: fresh noise per image)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    p.add_argument("--device", default="auto", help=_device_help())
    p.add_argument("--engine", choices=ENGINES, default="pytorch",
                   help="what runs the UNet and VAE: pytorch (default), or onnx / tensorrt / aoti on --engine-dir")
    p.add_argument("--engine-dir", type=Path, metavar="DIR", help="the folder `sharpdepth export` wrote, for --engine")
    p.add_argument("--threads", type=positive_int, default=default_threads(), metavar="N",
                   help=f"CPU threads for PyTorch (default: half the cores available, here {default_threads()}); "
                   "use all cores only on an otherwise idle machine (README: Images)")
    p.add_argument("--max-input-pixels", type=non_negative_int, default=DEFAULT_MAX_INPUT_PIXELS, metavar="N",
                   help=f"refuse images above N pixels, from the file header before decoding (default {DEFAULT_MAX_INPUT_PIXELS:,}"
                   "; 0: no limit of ours, Pillow's decompression-bomb limit still applies)")
    p.add_argument("--intrinsics", metavar="fx,fy,cx,cy|FILE.json",
                   help="camera K. Without it the run is reference-exact (the reference gives the metric model no K); "
                   "with it K goes to the metric backend (UniDepth, Depth Pro and small-conv use it) and to --ply. "
                   "JSON: {\"K\": 3x3 or 9 numbers, optional \"width\", \"height\" of the calibration}")
    p.add_argument("--ply", action="store_true", help="also write a coloured point cloud (K: --intrinsics, else the backend's)")
    video = p.add_argument_group("a video's frames")
    video.add_argument("--sequence", action="store_true",
                       help="the inputs are one video's frames, in order: files in the order given, each folder's images "
                       "sorted naturally (frame2 before frame10); every frame gets --seed's noise draw")
    video.add_argument("--poses", type=Path, metavar="FILE.json",
                       help="with --sequence and --intrinsics: the camera's pose at each frame, a JSON object "
                       "{\"camera_to_world\": [one 4x4 matrix per frame, in the frames' order]} (metres; the camera's "
                       f"optical frame: x right, y down, z forward); writes DIR/{SEQUENCE_SCORES}: the temporal alignment "
                       "error (TAE) of SharpDepth and f_D between consecutive frames. With no ground truth, occlusions count "
                       "as error: compare models on the same frames, not with published TAE figures")
    video.add_argument("--temporal", choices=TEMPORAL_MODES, default="off",
                       help="with --sequence: the causal temporal mode (docs/METHOD.md, Temporal mode): each frame's depth "
                       "fused with the previous frames' output, moved by the camera's motion found from the images (image) "
                       "or from --poses as the first guess (odometry); falls back to the frame's own result on a cut (a "
                       "jump, a scene change). The written depth is the fused one (f_D's is not); default off")
    p.set_defaults(func=run_predict)


def find_images(inputs: list[str]) -> tuple[list[Path], list[str], int]:
    """Image files named or contained (one level, `images.list_images`: natural order) in folders; one
    line per problem; and how many inputs gave no image (missing, not a regular file, an empty folder:
    each a failed input). In folders, files named like predict's own outputs are left out (a rerun into
    the input folder must not feed them back)."""
    images, problems, unusable = [], [], 0
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            candidates = list_images(path)
            outputs = [p for p in candidates if p.name.lower().endswith(OUTPUT_SUFFIXES)]
            skip = set(outputs)
            found = [p for p in candidates if p not in skip]
            images += found
            if outputs:
                problems.append(f"{path}: skipped {len(outputs)} file(s) named like sharpdepth outputs (e.g. {outputs[0].name})")
            if not found:
                problems.append(f"{path}: no images in this folder")
                unusable += 1
        elif path.is_file():
            images.append(path)
        else:
            problems.append(f"{path}: {'not a regular file' if path.exists() else 'no such file or folder'}")
            unusable += 1
    return images, problems, unusable


def parse_intrinsics(value: str | None) -> tuple[np.ndarray, tuple[int, int] | None] | None:
    """(K 3x3, calibration (H, W) or None) from "fx,fy,cx,cy" or a JSON file."""
    if value is None:
        return None
    source = Path(value)
    if source.suffix.lower() == ".json" or source.is_file():
        if not source.exists():
            raise ValueError(f"--intrinsics {value}: no such file")
        from .files import read_json_file

        try:
            data = read_json_file(source, MAX_SMALL_JSON_BYTES)
        except ValueError as exc:  # a FIFO, a device, a huge or deeply nested file
            raise ValueError(f"--intrinsics {exc}") from exc
        try:
            K = np.asarray(data.get("K", data.get("k")), dtype=np.float64).reshape(3, 3)
            hw = (data["height"], data["width"]) if "height" in data or "width" in data else None
        except (ValueError, TypeError, AttributeError, KeyError) as exc:
            raise ValueError(f"--intrinsics {value}: expected a JSON object with \"K\" (3x3 or 9 numbers) and optionally "
                             f"both \"width\" and \"height\" ({type(exc).__name__})") from exc
        if hw is not None and not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in hw):
            raise ValueError(f"--intrinsics {value}: width and height must be positive integers, got {hw[1]!r} x {hw[0]!r}")
    else:
        try:
            fx, fy, cx, cy = (float(v) for v in value.split(","))
        except ValueError as exc:
            raise ValueError(f"--intrinsics {value!r}: expected fx,fy,cx,cy or a JSON file") from exc
        K, hw = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]]), None
    if not np.isfinite(K).all() or K[0, 0] <= 0 or K[1, 1] <= 0:
        raise ValueError(f"--intrinsics {value}: fx and fy must be finite and positive")
    return K, hw


def read_poses(path: Path, frames: int) -> list[np.ndarray]:
    """--poses: one camera-to-world 4x4 per frame, checked (count, finite, rigid) before the models load;
    read as a bounded regular file (a FIFO, /dev/zero, a huge or deeply nested file: one line)."""
    from .files import read_json_file

    try:
        data = read_json_file(path, MAX_LIST_JSON_BYTES)
    except ValueError as exc:
        raise ValueError(f"--poses {exc}") from exc
    try:
        poses = np.asarray(data["camera_to_world"], dtype=np.float64)
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        raise ValueError(f"--poses {path}: expected a JSON object {{\"camera_to_world\": [one 4x4 matrix per frame]}} "
                         f"({type(exc).__name__})") from exc
    if poses.ndim != 3 or poses.shape[1:] != (4, 4):
        raise ValueError(f"--poses {path}: camera_to_world must be a list of 4x4 matrices, got shape {poses.shape}")
    if len(poses) != frames:
        raise ValueError(f"--poses {path}: {len(poses)} poses for {frames} frames (one per frame, in order)")
    for i, T in enumerate(poses):
        R = T[:3, :3]
        if not (np.isfinite(T).all() and np.allclose(T[3], [0, 0, 0, 1]) and np.allclose(R.T @ R, np.eye(3), atol=1e-4)
                and np.linalg.det(R) > 0):
            raise ValueError(f"--poses {path}: pose {i} is not a rigid transform (a rotation, a translation, last row 0 0 0 1)")
    return list(poses)


def check_writable(folder: Path, option: str = "--out") -> None:
    """ValueError unless a file can be created in `folder`, or where it does not exist yet, in its
    nearest existing parent (it is created there): found before the models load, not after."""
    probe = folder
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise ValueError(f"{option} {folder}: cannot be created, {probe} is not a folder")
    try:
        tempfile.TemporaryFile(dir=probe).close()
    except OSError as exc:
        raise ValueError(f"{option} {folder}: cannot write in {probe} ({exc.strerror or type(exc).__name__})") from exc


def output_folder(out: Path) -> Path:
    """The absolute output folder, checked (a folder or absent, writable) before anything loads."""
    out = Path(os.path.abspath(out.expanduser()))
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: exists and is not a folder")
    check_writable(out)
    return out


def _save_npy(path: Path, array: np.ndarray) -> None:
    """`array` as .npy, written whole through the file's own `write` (numpy's writes straight to a file
    report a full disk as "N requested and M written", with no errno: a full disk must say so)."""
    import io

    from .files import write_bytes

    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    write_bytes(path, buffer.getbuffer())


def depth_to_millimetres(depth: np.ndarray) -> np.ndarray:
    """uint16 millimetres, 0 where the depth is invalid or beyond 65.535 m (the 16UC1 convention)."""
    mm = np.where(np.isfinite(depth), depth * 1000.0, 0.0).round()
    return np.where((mm > 0) & (mm <= 65535), mm, 0).astype(np.uint16)


def depth_pictures(depth: np.ndarray, metric_depth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The coloured depth and metric depth on one colour scale (`depth_range` of both), each above a colour
    bar giving that scale's ends in metres, saying that they are percentiles, and giving the map's full
    range (for the depth, the range `summary_line` prints): a user comparing the two sees why they differ."""
    from .visualize import PERCENTILES, colorize_depth, depth_colour_bar, depth_range, with_bar

    lo, hi = depth_range(depth, metric_depth) or (float("nan"), float("nan"))
    pictures = []
    for d in (depth, metric_depth):
        valid = d[np.isfinite(d) & (d > 0)]
        notes = (f"scale: {PERCENTILES[0]}-{PERCENTILES[1]}th percentile of depth and f_D",
                 f"full range {valid.min():.2f}-{valid.max():.2f} m" if valid.size else "no valid depth")
        pictures.append(with_bar(colorize_depth(d, lo, hi), depth_colour_bar(d.shape[1], lo, hi, notes)))
    return tuple(pictures)


def name_too_long(out: Path, names: list[str]) -> str | None:
    """Why one of an image's output `names` cannot be created in `out` (with the temporary name it is
    first written under, `files.temp_name`) because it is longer than the file system allows; None when
    all fit. Said per image: a 240-character input name otherwise stopped the whole run (ENAMETOOLONG)."""
    from .files import temp_name

    try:
        limit = os.pathconf(out, "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    longest = max(names, key=lambda name: len(os.fsencode(temp_name(out / name).name)))
    needed = len(os.fsencode(temp_name(out / longest).name))
    if needed <= limit:
        return None
    return (f"its output {longest} (written under a temporary name of {needed} bytes) is longer than the {limit} bytes a "
            f"file name may have in {out}; rename the input to a shorter name")


def _read_record(out: Path) -> set[str]:
    """Names of the files predict wrote in `out` before (none when the record is missing or unreadable:
    not a regular file, too large, too deep, damaged)."""
    from .files import read_json_file

    try:
        files = read_json_file(out / PREDICT_RECORD, MAX_LIST_JSON_BYTES).get("files", [])
        return {str(f) for f in files}
    except (ValueError, AttributeError, TypeError):
        return set()


def _write_record(out: Path, names: set[str]) -> None:
    from .files import write_text

    write_text(out / PREDICT_RECORD, json.dumps({"files": sorted(names)}, indent=1) + "\n")


def _check_model_arguments(args) -> None:
    if args.engine_dir and args.engine == "pytorch":
        raise ValueError("--engine-dir goes with --engine onnx, tensorrt or aoti")
    if args.model and (args.student or args.metric or args.metric_path):
        raise ValueError("--model excludes --student, --metric and --metric-path (a pipeline folder names its own models)")
    if (args.metric or args.metric_path) and not args.student:
        raise ValueError("--metric and --metric-path go with --student (a pipeline folder names its own metric model)")
    if args.model and not args.model.is_dir():
        raise ValueError(f"--model {args.model}: no such folder")


def _check_model_sources(args) -> None:
    """A --student folder or hub id, and the metric weights named with it, found (cache, else download)
    or refused in one line before torch and diffusers load (seconds) rather than after."""
    from .models.hub import resolve_model_dir

    if not args.student:
        return
    resolve_model_dir(args.student, "student model (--student)")
    beside = pipeline_config.beside_student(args.student)  # a trainer's checkpoint names its f_D
    metric, path = pipeline_config.metric_source(beside, args.metric, args.metric_path)  # as from_pretrained finds them
    if path and not (metric or "").startswith("unidepth"):  # UniDepth's own loader finds its weights
        resolve_model_dir(path, f"metric model {metric} (--metric-path)")


def read_predict_arguments(args) -> tuple[list[Path], int, tuple | None, torch.device, Path, list | None] | None:
    """(images, inputs that gave no image, camera, device, output folder, poses or None): everything
    checked that can be without the models; None (said on stderr) when there is nothing to process."""
    from .devices import check_device
    from .limits import check_processing_res

    _check_model_arguments(args)
    check_processing_res(args.processing_res, "--processing-res")
    if args.poses and not (args.sequence and args.intrinsics):
        raise ValueError("--poses goes with --sequence and --intrinsics (the frames' order and the camera's K)")
    if args.temporal != "off" and not args.sequence:
        raise ValueError(f"--temporal {args.temporal} goes with --sequence (the frames of one video, in order)")
    if args.temporal == "odometry" and not args.poses:
        raise ValueError("--temporal odometry needs --poses (and --intrinsics): the camera's pose at each frame")
    images, problems, unusable = find_images(args.inputs)
    for line in problems:
        print(f"sharpdepth predict: {line}", file=sys.stderr)
    if not images:
        print("sharpdepth predict: error: no images to process", file=sys.stderr)
        return None
    camera = parse_intrinsics(args.intrinsics)
    poses = read_poses(args.poses, len(images)) if args.poses else None
    _check_model_sources(args)
    device = check_device(args.device)  # torch loads here (auto: is there a GPU?)
    out = output_folder(args.out)
    if poses and (out / SEQUENCE_SCORES).exists() and SEQUENCE_SCORES not in _read_record(out):
        raise ValueError(f"{out / SEQUENCE_SCORES} exists and was not written by sharpdepth predict; not overwritten "
                         "(choose another --out, or move it away)")
    if args.sequence and not poses:
        print("sharpdepth predict: note: --sequence without --poses: the frames are processed in order with the same "
              "noise; their temporal alignment error needs --poses and --intrinsics", file=sys.stderr)
    return images, unusable, camera, device, out, poses


def load_predict_pipeline(args, device):
    """The pipeline predict runs (on `args.threads` CPU threads), with a note when its depth means little:
    predict's options mapped to `SharpDepthPipeline.from_pretrained`, where every pipeline is assembled."""
    import torch

    from .devices import torch_dtype
    from .models import EMBEDDED_DIR
    from .models.hub import quiet_loading
    from .pipeline import SharpDepthPipeline

    torch.set_num_threads(args.threads)
    quiet_loading()  # one progress bar: ours
    folder = None if args.student else (args.model or EMBEDDED_DIR)
    with warnings.catch_warnings(record=True) as caught:  # a preset part the folder lacks: one plain line each
        pipe = SharpDepthPipeline.from_pretrained(
            folder, student=args.student, metric=args.metric, metric_path=args.metric_path, device=device,
            dtype=torch_dtype(args.dtype), processing_res=args.processing_res, speed=args.speed, difference=args.difference,
            metric_at_input_res=args.metric_at_input_resolution, engine=args.engine, engine_dir=args.engine_dir)
    for message in dict.fromkeys(str(w.message) for w in caught):
        print(f"sharpdepth predict: warning: {message}", file=sys.stderr)
    if pipe.untrained:
        print("sharpdepth predict: WARNING: these are UNTRAINED random-weight models; the depth means nothing", file=sys.stderr)
    if pipe.synthetic_only:
        print("sharpdepth predict: note: these models are (or were distilled from) the embedded small models, trained on "
              "synthetic rooms only, not for real cameras; for photographs pass full-size models with --model or --student",
              file=sys.stderr)
    return pipe


def image_K(K: np.ndarray, calib_hw: tuple[int, int] | None, image_hw: tuple[int, int]) -> np.ndarray:
    """--intrinsics for one image: a JSON calibration of another size scaled (same aspect ratio, with a
    warning) or refused (ValueError); a bare fx,fy,cx,cy whose principal point is far off-centre warned about."""
    from .geometry import check_calibration, check_calibration_size, principal_point_note, scale_intrinsics

    if calib_hw is None:
        note = principal_point_note(K, image_hw, "--intrinsics")
    else:
        note = check_calibration_size(calib_hw, image_hw, "--intrinsics")
        K = scale_intrinsics(K, calib_hw, image_hw) if note else K
    check_calibration(K, image_hw)  # an impossible K (e.g. fx = 1e-9 px): this image is refused in one line
    if note:
        warnings.warn(note)
    return K


def predict_image(pipe, path: Path, camera, args):
    """(rgb, the pipeline's output) for one image file, or None when it cannot be used (said in one line).
    Warnings (a degenerate fit, Pillow's size warning) become one plain line each, not file:line dumps."""
    from tqdm import tqdm

    from .images import read_image_file

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            rgb = read_image_file(path, args.max_input_pixels or None)
            K = None if camera is None else image_K(*camera, rgb.shape[:2])
            result = pipe(rgb, K=K, seed=None if args.seed < 0 else args.seed)
        except ValueError as exc:
            message = str(exc)
            tqdm.write(message if message.startswith(str(path)) else f"{path}: error: {message}", file=sys.stderr)
            return None
    for w in dict.fromkeys(str(w.message) for w in caught):
        tqdm.write(f"sharpdepth predict: warning: {path}: {w}", file=sys.stderr)
    return rgb, result


def write_outputs(out: Path, stem: str, rgb: np.ndarray, result, ply: bool) -> tuple[np.ndarray, np.ndarray]:
    """One image's files (OUTPUT_SUFFIXES) in `out`, each written whole; returns its (depth, difference
    map). When one cannot be written (a full disk) or a signal stops the run midway, all of the image's
    files are removed (they are predict's own: a mix of this run's and an earlier run's would be no
    result); OSError then says why, with the space they need and the space free."""
    import shutil

    from .geometry import unproject, write_ply
    from .visualize import colorize_difference, difference_colour_bar, save_png, with_bar

    depth = result.depth[0, 0].float().cpu().numpy()
    metric = result.metric_depth[0, 0].float().cpu().numpy()
    e = result.difference[0, 0].float().cpu().numpy()
    confidence = result.confidence[0, 0].float().cpu().numpy().astype(np.float32)
    depth_color, metric_color = depth_pictures(depth, metric)
    difference = with_bar(colorize_difference(e), difference_colour_bar(e.shape[1]))
    files = {  # name: (writer, data)
        "_depth.npy": (_save_npy, depth.astype(np.float32)), "_depth.png": (save_png, depth_to_millimetres(depth)),
        "_depth_color.png": (save_png, depth_color), "_confidence.npy": (_save_npy, confidence), "_metric_depth.npy": (_save_npy, metric.astype(np.float32)),
        "_metric_depth_color.png": (save_png, metric_color), "_difference.png": (save_png, difference),
    }
    if ply:
        files[".ply"] = (lambda path, xyz: write_ply(path, xyz, rgb), unproject(depth, result.K[0].cpu().numpy()))
    try:
        for suffix, (write, data) in files.items():
            write(out / (stem + suffix), data)
    except BaseException as exc:  # a full disk, or SIGINT / SIGTERM midway
        for suffix in files:
            (out / (stem + suffix)).unlink(missing_ok=True)
        if not isinstance(exc, OSError):
            raise
        # at most the raw pixels (+ PNG's row filters, npy's header), with the PLY's colours
        needed = sum(data.nbytes + data.shape[0] + 128 for _, data in files.values()) + (rgb.nbytes if ply else 0)
        raise OSError(exc.errno, f"{exc.strerror or exc}; its outputs need up to {needed / 1e6:.2f} MB, "
                      f"{shutil.disk_usage(out).free / 1e6:.2f} MB free there; its files in {out} removed") from exc
    return depth, e


def summary_line(path: Path, rgb: np.ndarray, depth: np.ndarray, e: np.ndarray, result) -> str:
    """What predict says about one image on stdout: size, depth range, trusted share, time, fallback."""
    valid = depth[np.isfinite(depth) & (depth > 0)]
    line = (  # the range the colour bar's "full range" gives (`depth_pictures`)
        f"{path}: {rgb.shape[1]}x{rgb.shape[0]}, depth {valid.min():.2f}-{valid.max():.2f} m (median {np.median(valid):.2f})"
        if valid.size else f"{path}: {rgb.shape[1]}x{rgb.shape[0]}, no valid depth"
    )
    line += f", e<0.5 on {100 * float((e < 0.5).mean()):.0f}%, {result.timings['total']:.2f} s"
    if result.fallback[0]:
        line += ", FALLBACK: degenerate fit, metric backend depth written"
    return line


def sequence_scores(frames: list[tuple | None], poses: list[np.ndarray]) -> list[dict]:
    """Per pair of consecutive frames, the TAE (both directions, no ground truth: occlusions included)
    of SharpDepth and f_D; a pair is left out (None) where a frame was not written or the two differ in
    size or K, or no pixel of one lands in the other."""
    from .metrics import temporal_alignment_error

    pairs = []
    for t in range(len(frames) - 1):
        a, b = frames[t], frames[t + 1]
        row = {"frames": [t, t + 1], "SharpDepth": None, "f_D": None}
        if a is not None and b is not None and a[0].shape == b[0].shape and np.allclose(a[2], b[2]):
            for k, name in enumerate(("SharpDepth", "f_D")):
                try:
                    row[name] = temporal_alignment_error([a[k], b[k]], None, a[2], poses[t:t + 2])
                except ValueError:  # no pixel of one frame lands in the other
                    pass
        pairs.append(row)
    return pairs


def write_sequence_scores(out: Path, images: list[Path], frames: list[tuple | None], poses: list[np.ndarray], poses_file: Path) -> None:
    """DIR/sequence.json (the frames, each consecutive pair's TAE, the means over the pairs scored) and
    one line on stdout."""
    from .files import write_text

    pairs = sequence_scores(frames, poses)
    mean = {name: (float(np.mean(v)) if (v := [p[name] for p in pairs if p[name] is not None]) else None)
            for name in ("SharpDepth", "f_D")}
    scored = sum(p["SharpDepth"] is not None for p in pairs)
    write_text(out / SEQUENCE_SCORES, json.dumps({
        "frames": [str(p) for p in images], "poses": str(poses_file),
        "tae": "temporal alignment error: AbsRel of a frame's depth reprojected into the next with the poses against "
               "the next frame's depth, both directions; no ground truth, so occlusions count as error",
        "pairs": pairs, "mean_tae": mean, "pairs_scored": scored}, indent=1) + "\n")
    if scored:
        print(f"sequence: TAE between consecutive frames ({scored} of {len(pairs)} pairs; occlusions included): "
              f"SharpDepth {mean['SharpDepth']:.4f}, f_D {mean['f_D']:.4f} -> {out / SEQUENCE_SCORES}")
    else:
        print(f"sharpdepth predict: no pair of consecutive frames could be scored (each needs both frames written, at one "
              f"size, with pixels in common); see {out / SEQUENCE_SCORES}", file=sys.stderr)


def run_predict(args) -> int:
    """Read the arguments, load the models, then per image: predict it and write its outputs.
    Exit status: PREDICT_EXIT_CODES."""
    from tqdm import tqdm

    checked = read_predict_arguments(args)
    if checked is None:
        return EXIT_NONE_WRITTEN
    images, unusable, camera, device, out, poses = checked
    pipe = load_predict_pipeline(args, device)
    out.mkdir(parents=True, exist_ok=True)
    ours = _read_record(out)
    done, left, stems = 0, 0, set()
    frames: list[tuple | None] = [None] * len(images)  # with --poses: each written frame's (depth, f_D depth, K)
    temporal = None
    if args.temporal != "off":
        from .temporal import TemporalDepth

        temporal = TemporalDepth(args.temporal)
    for i, path in enumerate(tqdm(images, desc="sharpdepth", unit="image", file=sys.stderr, disable=None)):
        stem, n = path.stem, 1
        while stem in stems:
            stem, n = f"{path.stem}_{n}", n + 1
        stems.add(stem)
        names = [stem + s for s in OUTPUT_SUFFIXES if s != ".ply" or args.ply]
        too_long = name_too_long(out, names)
        if too_long:
            tqdm.write(f"{path}: error: {too_long}", file=sys.stderr)
            continue
        theirs = [name for name in names if (out / name).exists() and (name not in ours or not (out / name).is_file())]
        if theirs:
            tqdm.write(f"{path}: error: {out / theirs[0]} exists and was not written by sharpdepth predict; not overwritten "
                       "(choose another --out, or move it away)", file=sys.stderr)
            continue
        predicted = predict_image(pipe, path, camera, args)
        if predicted is None:
            if temporal is not None:
                temporal.reset()  # a frame missing from the video: start again at the next one
            continue
        rgb, result = predicted
        restart = ""
        if temporal is not None:
            fused = temporal.update(result.depth[0, 0].float().cpu(), result.K[0].cpu(), image=rgb,
                                    pose=poses[i] if args.temporal == "odometry" else None)
            result = replace(result, depth=fused.depth.to(result.depth)[None, None])
            restart = f", temporal: restarted ({fused.reason})" if fused.cut and fused.reason != "first frame" else ""
        try:
            if not ours.issuperset(names):  # recorded before writing: a crash midway leaves files predict may overwrite
                ours.update(names)
                _write_record(out, ours)
            depth, e = write_outputs(out, stem, rgb, result, args.ply)
        except OSError as exc:  # a full disk: every later image would fail the same way
            left = len(images) - i - 1
            tqdm.write(f"{path}: error: cannot write to {out}: {exc.strerror or exc}; "
                       f"{left} later image(s) not processed", file=sys.stderr)
            break
        tqdm.write(summary_line(path, rgb, depth, e, result) + restart, file=sys.stdout)
        done += 1
        if poses:
            frames[i] = (depth, result.metric_depth[0, 0].float().cpu().numpy(), result.K[0].double().cpu().numpy())
    sequence_failed = False
    if poses and done:
        try:
            ours.add(SEQUENCE_SCORES)
            _write_record(out, ours)
            write_sequence_scores(out, images, frames, poses, args.poses)
        except OSError as exc:
            print(f"sharpdepth predict: error: cannot write {out / SEQUENCE_SCORES}: {exc.strerror or exc}", file=sys.stderr)
            sequence_failed = True
    if done == 0:
        print(f"sharpdepth predict: error: none of the {len(images)} images could be processed", file=sys.stderr)
        return EXIT_NONE_WRITTEN
    print(f"sharpdepth predict: {done} of {len(images)} images written to {out}", file=sys.stderr)
    failed = {"image(s) failed": len(images) - left - done, "image(s) not processed after a write error": left,
              "input(s) gave no image": unusable}
    if any(failed.values()):
        what = ", ".join(f"{n} {kind}" for kind, n in failed.items() if n)
        print(f"sharpdepth predict: error: {sum(failed.values())} input(s) not written ({what}, each said above); "
              f"exit status {EXIT_SOME_FAILED}", file=sys.stderr)
    return EXIT_SOME_FAILED if any(failed.values()) or sequence_failed else 0


# --- export --------------------------------------------------------------------------------------


def add_export(sub) -> None:
    p = sub.add_parser(
        "export",
        help="ONNX graphs (and TensorRT engines) or AOTInductor packages of the student UNet and the VAE, for "
        "engine onnx / tensorrt / aoti",
        description="Writes unet.onnx, vae_encoder.onnx, vae_decoder.onnx and export.json to --out (a new or empty "
        "folder, or with --overwrite an earlier export of the same kind); with --tensorrt also builds the TensorRT engines "
        "for the processing grids of --input-size. --engine aoti writes compiled AOTInductor packages (unet.pt2, ...) "
        "for the one --input-size grid and --device instead: native code, trusted like any binary. export.json records "
        "the student's weight hash and, for a fixed grid, the processing_res: the node refuses an export made for "
        "another model or grid at start-up.",
    )
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="export folder")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier export in --out (nothing else is ever deleted)")
    p.add_argument("--engine", choices=("onnx", "aoti"), default="onnx",
                   help="onnx: ONNX graphs for engines onnx and tensorrt (default); aoti: AOTInductor packages compiled "
                   "now for one grid (--input-size) and --device, loaded by engine aoti without compiling")
    models = p.add_argument_group("model (default: the embedded models)")
    models.add_argument("--model", type=Path, metavar="DIR", help="a SharpDepth pipeline folder (its student/ is exported)")
    models.add_argument("--student", metavar="PATH_OR_ID", help="a SharpDepth release / Lotus-G diffusers folder or hub id")
    p.add_argument("--precision", choices=("fp32", "fp16"), default="fp32", help="the UNet's (default fp32)")
    p.add_argument("--vae-precision", choices=("fp32", "fp16"),
                   help="the VAE's (default: the UNet's, but fp32 for fp16 when the VAE config asks for upcasting, as SD-2's)")
    p.add_argument("--input-size", metavar="WxH", help="camera image size: with --fixed or --tensorrt, the processing grid follows from it")
    p.add_argument("--processing-res", type=int, nargs="+", metavar="N",
                   help="longer edge(s) of the processing grid (default: the model's, from its pipeline.json, else 768; "
                   "--fixed takes one)")
    p.add_argument("--fixed", action="store_true", help="fixed H/W graphs for the --input-size grid (default: dynamic H/W)")
    p.add_argument("--batch", type=int, metavar="N",
                   help=f"fixed batch size, 1 to {MAX_EXPORT_BATCH} (default: dynamic; 1 for --engine aoti)")
    p.add_argument("--tensorrt", action="store_true", help="also build TensorRT engines (needs tensorrt and a CUDA GPU)")
    p.add_argument("--tensorrt-cache", type=Path, metavar="DIR", help="engine cache folder (default: DIR/tensorrt)")
    p.add_argument("--device", default="auto", help=f"where to trace (aoti: to compile for): {_device_help()}")
    p.set_defaults(func=run_export)


def parse_size(value: str) -> tuple[int, int]:
    """"WxH" -> (H, W)."""
    try:
        w, h = (int(v) for v in value.lower().split("x"))
    except ValueError as exc:
        raise ValueError(f"--input-size {value!r}: expected WxH, e.g. 640x480") from exc
    if w <= 0 or h <= 0:
        raise ValueError(f"--input-size {value!r}: width and height must be positive")
    return h, w


def export_folder(out: Path, overwrite: bool, fmt: str = "onnx") -> Path:
    """The absolute export folder, checked before any model loads: new, empty, or (with `overwrite`)
    an earlier export of format `fmt` (export.json) holding nothing sharpdepth export did not write."""
    from .export import FORMAT_EXTRAS, FORMATS, GRAPHS, MANIFEST
    from .files import foreign_entries, refusal

    out = Path(os.path.abspath(out.expanduser()))
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: exists and is not a folder")
    entries = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if entries:
        if MANIFEST not in entries:
            raise ValueError(f"--out {out}: not empty and not an earlier export (no {MANIFEST}); choose a new or empty folder")
        if not overwrite:
            raise ValueError(f"--out {out}: holds an earlier export; pass --overwrite to replace it")
        try:
            earlier = _manifest_format(out / MANIFEST)
        except ValueError as exc:
            raise ValueError(f"--out {out}: not replaced, its {MANIFEST} is none that sharpdepth export wrote ({exc}); "
                             "choose a new or empty folder, or move it away") from exc
        if earlier not in (None, fmt):
            raise ValueError(f"--out {out}: holds an earlier {earlier} export, and --overwrite replaces one of the same kind: "
                             f"write the {fmt} export to another folder")
        foreign = foreign_entries(out, {MANIFEST, *(f"{g}.{FORMATS[fmt]}" for g in GRAPHS)}, FORMAT_EXTRAS[fmt])
        if foreign:
            raise refusal(out, foreign, "sharpdepth export did not write")
    check_writable(out)
    return out


def _manifest_format(path: Path) -> str | None:
    """The format an export.json names (manifests from before AOTI: onnx); None when it is no valid
    JSON (a damaged manifest, which --overwrite replaces). ValueError for a link, FIFO, device or a
    file above MAX_SMALL_JSON_BYTES: export writes none of these, so none is ever replaced."""
    from .files import read_regular_file

    if path.is_symlink():
        raise ValueError(f"{path}: a symbolic link")
    data = read_regular_file(path, MAX_SMALL_JSON_BYTES)
    try:
        raw = json.loads(data)
    except (ValueError, RecursionError):
        return None
    return raw.get("format", "onnx") if isinstance(raw, dict) else None


def _model_processing_res(args) -> int:
    """The processing_res of the model being exported: its pipeline.json's (pipeline folder, or beside
    the student folder as the trainer writes it), else 768."""
    from .models import EMBEDDED_DIR
    from .pipeline import DEFAULT_PROCESSING_RES

    if args.student:
        config = pipeline_config.beside_student(args.student)
    else:
        folder = Path(args.model or EMBEDDED_DIR)
        config = pipeline_config.read(folder) if (folder / pipeline_config.FILE).is_file() else {}
    return config.get("processing_res") or DEFAULT_PROCESSING_RES


def run_export(args) -> int:
    from .devices import check_device
    from .engines import TensorRTEngine
    from .export import export_aoti, export_onnx, student_weights_sha256
    from .models import EMBEDDED_DIR, DiffusionDepthModel, resolve_model_dir
    from .models.hub import quiet_loading
    from .limits import check_processing_res
    from .preprocessing import plan_resize

    if args.model and args.student:
        raise ValueError("--model and --student exclude each other")
    if args.model and not args.model.is_dir():
        raise ValueError(f"--model {args.model}: no such folder")
    aoti = args.engine == "aoti"
    if aoti and args.tensorrt:
        raise ValueError("--tensorrt builds engines from ONNX graphs: it goes without --engine aoti")
    fixed = args.fixed or aoti
    if (fixed or args.tensorrt) and not args.input_size:
        raise ValueError("--fixed, --tensorrt and --engine aoti need --input-size WxH (the camera's image size)")
    if fixed and args.processing_res and len(args.processing_res) != 1:
        raise ValueError("--fixed and --engine aoti export one processing grid: give one --processing-res")
    for res in args.processing_res or ():
        check_processing_res(res, "--processing-res")
    if args.batch is not None and not 1 <= args.batch <= MAX_EXPORT_BATCH:
        raise ValueError(f"--batch {args.batch}: expected 1 to {MAX_EXPORT_BATCH} (a fixed batch; the node batches one frame "
                         "per camera)")
    input_hw = parse_size(args.input_size) if args.input_size else None
    device = check_device(args.device)
    out = export_folder(args.out, args.overwrite, args.engine)
    if args.tensorrt:
        from .engines import import_tensorrt

        import_tensorrt()  # fail before the export, not after
    resolutions = args.processing_res or [_model_processing_res(args)]
    student_dir = resolve_model_dir(args.student or Path(args.model or EMBEDDED_DIR) / "student", DiffusionDepthModel.what)
    quiet_loading()  # no "Loading checkpoint shards" bar per sharded model: this line says what loads
    print(f"sharpdepth export: loading the student {student_dir} on {device}", file=sys.stderr)
    student = DiffusionDepthModel.from_pretrained(student_dir, device=device)
    grids = [plan_resize(input_hw, r, student.codec.downsample_factor).padded_hw for r in resolutions] if input_hw else []
    common = dict(precision=args.precision, vae_precision=args.vae_precision, processing_res=resolutions[0] if fixed else None,
                  input_hw=input_hw if fixed else None, student_sha256=student_weights_sha256(student_dir))
    try:  # the export is written in a scratch folder (files.replacing_dir): nothing of it is left when this fails
        if aoti:
            print(f"sharpdepth export: compiling AOTInductor packages on {device} (minutes for full-size models)", file=sys.stderr)
            manifest = export_aoti(student, out, image_hw=grids[0], batch=args.batch or 1, **common)
        else:
            manifest = export_onnx(student, out, image_hw=grids[0] if args.fixed else None, batch=args.batch, **common)
    except OSError as exc:  # a full disk
        import shutil

        weights = sum(p.numel() for p in student.parameters()) * (2 if args.precision == "fp16" else 4)
        raise ValueError(f"cannot write the export in {out}: {exc.strerror or exc}; it needs about {weights / 1e6:.1f} MB (its "
                         f"weights), {shutil.disk_usage(out.parent if not out.exists() else out).free / 1e6:.1f} MB free "
                         "there; nothing of it was left") from exc
    shape = "dynamic H/W" if manifest.image_hw is None else "fixed {}x{} (HxW)".format(*manifest.image_hw)
    for name, info in manifest.graphs.items():
        size = sum((out / f).stat().st_size for f in (info.file, info.external_data) if f) / 2**20
        print(f"{out / info.file}: {info.precision}, {shape}, {size:.1f} MiB")
    if args.tensorrt:
        engine = TensorRTEngine(out, args.tensorrt_cache, device if device.type != "cpu" else "cuda")
        for hw in dict.fromkeys(grids):
            for plan in engine.prebuild(hw, batch=args.batch or 1):
                print(f"{plan}: TensorRT engine for the {hw[0]}x{hw[1]} (HxW) grid")
    engines = "'aoti'" if aoti else "'onnx' or 'tensorrt'"
    print(f"sharpdepth export: done; use it with engine {engines} and export folder {out}", file=sys.stderr)
    return 0


# --- entry point ---------------------------------------------------------------------------------

COMMANDS = (add_predict, add_export)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sharpdepth", description="SharpDepth: sharp and metric monocular depth.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def join_option_values(argv: list[str]) -> list[str]:
    """`--intrinsics -1,...` as `--intrinsics=-1,...`: argparse takes a value starting with '-' for an option."""
    joined, i = [], 0
    while i < len(argv):
        if argv[i] in OPTIONS_WITH_VALUES and i + 1 < len(argv):
            joined.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
        else:
            joined.append(argv[i])
            i += 1
    return joined


class Stopped(BaseException):
    """SIGINT or SIGTERM as an exception: it unwinds, so every `finally` runs (files.replacing_dir removes
    its scratch folder, atomic_write its temporary file) before the command exits 128 + the signal."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _stop(signum: int, frame) -> None:
    """The SIGINT / SIGTERM handler while a command runs: a second signal is ignored, so the cleanup
    that the first one started runs to its end."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    raise Stopped(signum)


def run_command(args) -> int:
    """`args.func`, with expected errors as one line (exit 2) and SIGINT / SIGTERM as one line and
    exit 130 / 143, nothing partial left behind (instead of a KeyboardInterrupt traceback, or SIGTERM's
    kill that skips all cleanup)."""
    handlers = {}
    if threading.current_thread() is threading.main_thread():  # signal handlers belong to the main thread
        handlers = {sig: signal.signal(sig, _stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, ImportError) as exc:  # model errors subclass these
        print(f"sharpdepth {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except (Stopped, KeyboardInterrupt) as exc:
        signum = exc.signum if isinstance(exc, Stopped) else signal.SIGINT
        print(f"sharpdepth {args.command}: stopped by {signal.Signals(signum).name}; nothing partly written was left",
              file=sys.stderr)
        return 128 + signum
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


def main(argv: list[str] | None = None) -> int:
    """Exit status: 0 done, 1 nothing could be processed, 2 bad arguments, models or input, 3 (predict)
    some inputs not written (PREDICT_EXIT_CODES), 130 / 143 stopped by SIGINT / SIGTERM."""
    return run_command(build_parser().parse_args(join_option_values(sys.argv[1:] if argv is None else list(argv))))


if __name__ == "__main__":
    sys.exit(main())
