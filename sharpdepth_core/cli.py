"""`sharpdepth` command line. Subcommands register themselves in COMMANDS (an `add_*` function that
adds its parser and sets `func`); `main` dispatches and turns expected errors into one line.

    sharpdepth predict INPUT... --out DIR [--model DIR | --student P --metric NAME] [--ply]
    sharpdepth export --out DIR [--model DIR | --student P] [--precision fp16] [--input-size WxH [--fixed]] [--tensorrt]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
DTYPES = {"float32": "float32", "fp32": "float32", "float16": "float16", "fp16": "float16", "bfloat16": "bfloat16", "bf16": "bfloat16"}


# --- predict -------------------------------------------------------------------------------------


def add_predict(sub) -> None:
    p = sub.add_parser(
        "predict",
        help="sharp metric depth for images or folders of images",
        description="Writes, per image: <name>_depth.npy (float32 metres), <name>_depth.png (uint16 millimetres, "
        "0 = invalid or beyond 65.535 m), <name>_depth_color.png, <name>_difference.png and, with --ply, <name>.ply.",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders (not recursive)")
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder (created)")
    models = p.add_argument_group("models (default: the embedded models)")
    models.add_argument("--model", type=Path, metavar="DIR", help="a SharpDepth pipeline folder (student/, metric/, pipeline.json)")
    models.add_argument("--student", metavar="PATH_OR_ID", help="a SharpDepth release / Lotus-G diffusers folder or hub id")
    models.add_argument("--metric", metavar="NAME", help="metric backend: unidepth-v1, unidepth-v2, depth-pro, depth-anything-v2")
    models.add_argument("--metric-path", metavar="PATH_OR_ID", help="metric backend weights (default: its usual hub id)")
    p.add_argument("--processing-res", type=int, metavar="N", help="longer edge of the processing grid (default: the model's)")
    p.add_argument("--seed", type=int, default=0, help="noise seed (default 0; -1: fresh noise)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--intrinsics", metavar="fx,fy,cx,cy|FILE.json",
                   help="camera K, given to the metric backend and used for --ply; JSON: {\"K\": 3x3 or 9 numbers, "
                   "optional \"width\", \"height\" of the calibration}")
    p.add_argument("--ply", action="store_true", help="also write a coloured point cloud (K: --intrinsics, else the backend's)")
    p.set_defaults(func=run_predict)


def find_images(inputs: list[str]) -> tuple[list[Path], list[str]]:
    """Image files named or contained (one level) in folders, in order; plus one problem line per bad input."""
    images, problems = [], []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
            images += found
            if not found:
                problems.append(f"{path}: no images in this folder")
        elif path.is_file():
            images.append(path)
        else:
            problems.append(f"{path}: no such file or folder")
    return images, problems


def load_rgb(path: Path) -> np.ndarray:
    """Any common image as uint8 HxWx3 RGB: grayscale is replicated, alpha dropped, 16-bit scaled."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            if im.mode.startswith("I;16"):
                gray = (np.asarray(im, dtype=np.float64) / 257).round().astype(np.uint8)
                return np.repeat(gray[..., None], 3, axis=2)
            if im.mode in ("I", "F"):
                raise ValueError(f"{path}: unsupported image mode {im.mode} (32-bit); convert it to 8 or 16 bit")
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"{path}: not a readable image ({type(exc).__name__})") from exc


def parse_intrinsics(value: str | None) -> tuple[np.ndarray, tuple[int, int] | None] | None:
    """(K 3x3, calibration (H, W) or None) from "fx,fy,cx,cy" or a JSON file."""
    if value is None:
        return None
    source = Path(value)
    if source.suffix.lower() == ".json" or source.is_file():
        try:
            data = json.loads(source.read_text())
            K = np.asarray(data.get("K", data.get("k")), dtype=np.float64).reshape(3, 3)
            hw = (int(data["height"]), int(data["width"])) if "height" in data and "width" in data else None
        except (OSError, ValueError, TypeError, AttributeError, KeyError) as exc:
            raise ValueError(f"--intrinsics {value}: expected a JSON file with \"K\" (3x3 or 9 numbers) ({type(exc).__name__})") from exc
    else:
        try:
            fx, fy, cx, cy = (float(v) for v in value.split(","))
        except ValueError as exc:
            raise ValueError(f"--intrinsics {value!r}: expected fx,fy,cx,cy or a JSON file") from exc
        K, hw = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]]), None
    if not np.isfinite(K).all() or K[0, 0] <= 0 or K[1, 1] <= 0:
        raise ValueError(f"--intrinsics {value}: fx and fy must be finite and positive")
    return K, hw


def _save_npy(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, array)
    os.replace(tmp, path)


def depth_to_millimetres(depth: np.ndarray) -> np.ndarray:
    """uint16 millimetres, 0 where the depth is invalid or beyond 65.535 m (the 16UC1 convention)."""
    mm = np.where(np.isfinite(depth), depth * 1000.0, 0.0).round()
    return np.where((mm > 0) & (mm <= 65535), mm, 0).astype(np.uint16)


def _load_pipeline(args):
    import torch
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    from .pipeline import SharpDepthPipeline

    diffusers_logging.disable_progress_bar()  # one progress bar: ours
    transformers_logging.disable_progress_bar()
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, DTYPES[args.dtype])
    if args.student or args.metric:
        if args.model:
            raise ValueError("--model and --student/--metric exclude each other")
        if not (args.student and args.metric):
            raise ValueError("--student and --metric go together")
        return SharpDepthPipeline.from_pretrained(
            student=args.student, metric=args.metric, metric_path=args.metric_path,
            device=device, dtype=dtype, processing_res=args.processing_res,
        )
    return SharpDepthPipeline.from_pretrained(args.model, device=device, dtype=dtype, processing_res=args.processing_res)


def run_predict(args) -> int:
    from tqdm import tqdm

    from .geometry import scale_intrinsics, unproject, write_ply
    from .visualize import colorize_depth, colorize_difference, save_png

    images, problems = find_images(args.inputs)
    for line in problems:
        print(f"sharpdepth predict: {line}", file=sys.stderr)
    if not images:
        print("sharpdepth predict: error: no images to process", file=sys.stderr)
        return 1
    camera = parse_intrinsics(args.intrinsics)
    pipe = _load_pipeline(args)
    if pipe.untrained:
        print("sharpdepth predict: WARNING: these are UNTRAINED random-weight models; the depth means nothing", file=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)
    done, stems = 0, set()
    for path in tqdm(images, desc="sharpdepth", unit="image", file=sys.stderr, disable=None):
        stem, n = path.stem, 1
        while stem in stems:
            stem, n = f"{path.stem}_{n}", n + 1
        stems.add(stem)
        try:
            rgb = load_rgb(path)
            K = None
            if camera is not None:
                K, calib_hw = camera
                if calib_hw is not None and calib_hw != rgb.shape[:2]:
                    K = scale_intrinsics(K, calib_hw, rgb.shape[:2])
            out = pipe(rgb, K=K, seed=None if args.seed < 0 else args.seed)
        except ValueError as exc:
            tqdm.write(f"{path}: error: {exc}", file=sys.stderr)
            continue
        depth = out.depth[0, 0].float().cpu().numpy()
        e = out.difference[0, 0].float().cpu().numpy()
        _save_npy(args.out / f"{stem}_depth.npy", depth.astype(np.float32))
        save_png(args.out / f"{stem}_depth.png", depth_to_millimetres(depth))
        save_png(args.out / f"{stem}_depth_color.png", colorize_depth(depth))
        save_png(args.out / f"{stem}_difference.png", colorize_difference(e))
        if args.ply:
            write_ply(args.out / f"{stem}.ply", unproject(depth, out.K[0].cpu().numpy()), rgb)
        valid = depth[np.isfinite(depth) & (depth > 0)]
        summary = (
            f"{path}: {rgb.shape[1]}x{rgb.shape[0]}, depth {valid.min():.2f}-{valid.max():.2f} m (median {np.median(valid):.2f})"
            if valid.size else f"{path}: {rgb.shape[1]}x{rgb.shape[0]}, no valid depth"
        )
        summary += f", e<0.5 on {100 * float((e < 0.5).mean()):.0f}%, {out.timings['total']:.2f} s"
        if out.fallback[0]:
            summary += ", FALLBACK: degenerate fit, metric backend depth written"
        tqdm.write(summary, file=sys.stdout)
        done += 1
    if done == 0:
        print(f"sharpdepth predict: error: none of the {len(images)} images could be processed", file=sys.stderr)
        return 1
    print(f"sharpdepth predict: {done} of {len(images)} images written to {args.out}", file=sys.stderr)
    return 0


# --- export --------------------------------------------------------------------------------------


def add_export(sub) -> None:
    p = sub.add_parser(
        "export",
        help="ONNX graphs of the student UNet and the VAE (and TensorRT engines) for engine onnx / tensorrt",
        description="Writes unet.onnx, vae_encoder.onnx, vae_decoder.onnx and export.json to --out (replaced whole); "
        "with --tensorrt also builds the TensorRT engines for the processing grids of --input-size.",
    )
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="export folder")
    models = p.add_argument_group("model (default: the embedded models)")
    models.add_argument("--model", type=Path, metavar="DIR", help="a SharpDepth pipeline folder (its student/ is exported)")
    models.add_argument("--student", metavar="PATH_OR_ID", help="a SharpDepth release / Lotus-G diffusers folder or hub id")
    p.add_argument("--precision", choices=("fp32", "fp16"), default="fp32", help="the UNet's (default fp32)")
    p.add_argument("--vae-precision", choices=("fp32", "fp16"),
                   help="the VAE's (default: the UNet's, but fp32 for fp16 when the VAE config asks for upcasting, as SD-2's)")
    p.add_argument("--input-size", metavar="WxH", help="camera image size: with --fixed or --tensorrt, the processing grid follows from it")
    p.add_argument("--processing-res", type=int, nargs="+", default=[768], metavar="N",
                   help="longer edge(s) of the processing grid (default 768; --fixed takes one)")
    p.add_argument("--fixed", action="store_true", help="fixed H/W graphs for the --input-size grid (default: dynamic H/W)")
    p.add_argument("--batch", type=int, help="fixed batch size (default: dynamic)")
    p.add_argument("--tensorrt", action="store_true", help="also build TensorRT engines (needs tensorrt and a CUDA GPU)")
    p.add_argument("--tensorrt-cache", type=Path, metavar="DIR", help="engine cache folder (default: DIR/tensorrt)")
    p.add_argument("--device", default="auto", help="where to trace: auto, cpu, cuda, cuda:N")
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


def run_export(args) -> int:
    import torch

    from .engines import TensorRTEngine
    from .export import export_onnx
    from .models import EMBEDDED_DIR, DiffusionDepthModel
    from .preprocessing import plan_resize

    if args.model and args.student:
        raise ValueError("--model and --student exclude each other")
    if (args.fixed or args.tensorrt) and not args.input_size:
        raise ValueError("--fixed and --tensorrt need --input-size WxH (the camera's image size)")
    if args.fixed and len(args.processing_res) != 1:
        raise ValueError("--fixed exports one processing grid: give one --processing-res")
    if any(r < 8 for r in args.processing_res):
        raise ValueError(f"--processing-res must be >= 8, got {args.processing_res}")
    input_hw = parse_size(args.input_size) if args.input_size else None
    if args.tensorrt:
        from .engines import import_tensorrt

        import_tensorrt()  # fail before the export, not after
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    student = DiffusionDepthModel.from_pretrained(args.student or (args.model or EMBEDDED_DIR) / "student", device=device)
    grids = [plan_resize(input_hw, r, student.codec.downsample_factor).padded_hw for r in args.processing_res] if input_hw else []
    manifest = export_onnx(
        student, args.out, precision=args.precision, vae_precision=args.vae_precision,
        image_hw=grids[0] if args.fixed else None, batch=args.batch,
    )
    shape = "dynamic H/W" if manifest.image_hw is None else "fixed {}x{} (HxW)".format(*manifest.image_hw)
    for name, info in manifest.graphs.items():
        size = sum((args.out / f).stat().st_size for f in (info.file, info.external_data) if f) / 2**20
        print(f"{args.out / info.file}: {info.precision}, {shape}, {size:.1f} MiB")
    if args.tensorrt:
        engine = TensorRTEngine(args.out, args.tensorrt_cache, device if device != "cpu" else "cuda")
        for hw in dict.fromkeys(grids):
            for plan in engine.prebuild(hw, batch=args.batch or 1):
                print(f"{plan}: TensorRT engine for the {hw[0]}x{hw[1]} (HxW) grid")
    print(f"sharpdepth export: done; use it with engine 'onnx' or 'tensorrt' and export folder {args.out}", file=sys.stderr)
    return 0


# --- entry point ---------------------------------------------------------------------------------

COMMANDS = (add_predict, add_export)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sharpdepth", description="SharpDepth: sharp and metric monocular depth.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Exit status: 0 done, 1 nothing could be processed, 2 bad arguments, models or input."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, ImportError) as exc:  # model errors subclass these
        print(f"sharpdepth {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
