"""Real files for the data and trainer tests: tiny image folders and rosbag2 recordings written with rosbags."""
from __future__ import annotations

import os
import struct
from pathlib import Path

import cv2
import numpy as np
from PIL import Image


def pattern(seed: int, h: int, w: int) -> np.ndarray:
    """A uint8 RGB image with structure (a bright box on a gradient), different per seed."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1), np.full_like(xx, 40)], -1)
    y0, x0 = rng.integers(0, h // 2), rng.integers(0, w // 2)
    img[y0 : y0 + h // 3, x0 : x0 + w // 3] = rng.integers(120, 255, 3)
    return img.astype(np.uint8)


def write_images(folder: Path, n: int, size_hw: tuple[int, int] = (48, 64), seed: int = 0) -> list[Path]:
    """n PNG/JPEG images, some in a sub-folder, sizes around size_hw."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        h, w = size_hw[0] + 8 * (i % 2), size_hw[1]
        sub = folder / "sub" if i % 3 == 2 else folder
        sub.mkdir(exist_ok=True)
        path = sub / f"img{i:03d}.{'jpg' if i % 2 else 'png'}"
        Image.fromarray(pattern(seed + i, h, w)).save(path)
        paths.append(path)
    return paths


def write_bag(
    path: Path,
    frames: list[np.ndarray],
    topic: str = "/camera/image_raw",
    encoding: str = "rgb8",
    storage: str = "mcap",
    pad: int = 0,
    compressed_topic: str | None = None,
    corrupt_compressed: int | None = None,
    extra_string_topic: bool = True,
) -> Path:
    """A rosbag2 recording written with rosbags: raw Image frames (optionally with row padding),
    optionally the same frames PNG-compressed on a second topic (one of them replaced by garbage),
    and a non-image topic that readers must ignore."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.LATEST)
    Img, Comp = ts.types["sensor_msgs/msg/Image"], ts.types["sensor_msgs/msg/CompressedImage"]
    Header, Time = ts.types["std_msgs/msg/Header"], ts.types["builtin_interfaces/msg/Time"]
    String = ts.types["std_msgs/msg/String"]
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    with Writer(path, version=9, storage_plugin=plugin) as writer:
        raw = writer.add_connection(topic, Img.__msgtype__, typestore=ts)
        comp = writer.add_connection(compressed_topic, Comp.__msgtype__, typestore=ts) if compressed_topic else None
        text = writer.add_connection("/chatter", String.__msgtype__, typestore=ts) if extra_string_topic else None
        for i, rgb in enumerate(frames):
            t = 1_000_000_000 + i * 100_000_000
            header = Header(stamp=Time(sec=t // 10**9, nanosec=t % 10**9), frame_id="camera")
            h, w = rgb.shape[:2]
            px = rgb[..., ::-1] if encoding == "bgr8" else rgb
            rows = np.zeros((h, w * 3 + pad), np.uint8)
            rows[:, : w * 3] = px.reshape(h, w * 3)
            msg = Img(header=header, height=h, width=w, encoding=encoding, is_bigendian=0, step=w * 3 + pad,
                      data=rows.reshape(-1))
            writer.write(raw, t, ts.serialize_cdr(msg, Img.__msgtype__))
            if comp is not None:
                ok, png = cv2.imencode(".png", rgb[..., ::-1])
                data = np.frombuffer(b"not an image" * 3, np.uint8) if i == corrupt_compressed else png.reshape(-1)
                writer.write(comp, t, ts.serialize_cdr(Comp(header=header, format="png", data=data), Comp.__msgtype__))
            if text is not None:
                writer.write(text, t + 1, ts.serialize_cdr(String(data=f"frame {i}"), String.__msgtype__))
    return path


def write_messages(path: Path, messages: list[tuple[str, str, int, object]]) -> Path:
    """A rosbag2 MCAP recording of (topic, msgtype, timestamp ns, message) written with rosbags."""
    from rosbags.rosbag2 import Writer
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.LATEST)
    with Writer(path, version=9) as writer:
        conns = {}
        for topic, msgtype, t, msg in messages:
            if topic not in conns:
                conns[topic] = writer.add_connection(topic, msgtype, typestore=ts)
            writer.write(conns[topic], t, ts.serialize_cdr(msg, msgtype))
    return path


def truncated_recording(folder: Path) -> tuple[list[np.ndarray], Path, Path]:
    """(frames, folder, .mcap file): a rosbag2 MCAP recording of 5 frames in two 1 MiB chunks, cut in the
    middle of its second chunk as a recorder killed mid-write leaves it (no footer, no summary, no
    metadata.yaml): 3 frames are complete."""
    frames = [pattern(i, 256, 512) for i in range(5)]  # 393 KB each: rosbags closes a chunk after 3
    bag = write_bag(folder, frames, extra_string_topic=False)
    (mcap,) = bag.glob("*.mcap")
    data = mcap.read_bytes()
    chunks, pos = [], 8
    while pos < len(data) - 8:  # MCAP records: opcode (1 byte), length (uint64), content
        opcode, length = struct.unpack_from("<BQ", data, pos)
        chunks += [pos] if opcode == 0x06 else []
        pos += 9 + length
    assert len(chunks) == 2
    mcap.write_bytes(data[: chunks[1] + (len(data) - chunks[1]) // 3])
    (bag / "metadata.yaml").unlink()
    return frames, bag, mcap


def image_message(t: int, pixels: np.ndarray, encoding: str):
    """sensor_msgs/Image (rosbags type) of an HxW or HxWxC array, unpadded."""
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.LATEST)
    Header, Time = ts.types["std_msgs/msg/Header"], ts.types["builtin_interfaces/msg/Time"]
    h, w = pixels.shape[:2]
    data = np.ascontiguousarray(pixels).view(np.uint8).reshape(-1)
    return ts.types["sensor_msgs/msg/Image"](
        header=Header(stamp=Time(sec=t // 10**9, nanosec=t % 10**9), frame_id="camera"), height=h, width=w,
        encoding=encoding, is_bigendian=0, step=data.size // h, data=data)


def camera_info_message(t: int, h: int, w: int):
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.LATEST)
    Header, Time = ts.types["std_msgs/msg/Header"], ts.types["builtin_interfaces/msg/Time"]
    Roi = ts.types["sensor_msgs/msg/RegionOfInterest"]
    k = np.array([w, 0, w / 2, 0, w, h / 2, 0, 0, 1], np.float64)
    return ts.types["sensor_msgs/msg/CameraInfo"](
        header=Header(stamp=Time(sec=t // 10**9, nanosec=t % 10**9), frame_id="camera"), height=h, width=w,
        distortion_model="plumb_bob", d=np.zeros(5), k=k, r=np.eye(3).reshape(-1), p=np.zeros(12), binning_x=0,
        binning_y=0, roi=Roi(x_offset=0, y_offset=0, height=0, width=0, do_rectify=False))


def tiny_models(folder: Path) -> dict[str, str]:
    """Tiny random Lotus-G (teacher and student init) and Depth Anything V2 metric folders, saved once."""
    from sharpdepth_core.tiny import tiny_depth_anything, tiny_student

    if not (folder / "lotus").is_dir():
        tiny_student().save_pretrained(folder / "lotus")
        tiny_depth_anything().save_pretrained(folder / "metric")
    return {"teacher": str(folder / "lotus"), "metric_model": "depth-anything-v2", "metric_path": str(folder / "metric")}


def _run_rank(config_yaml: str, result_dir: str) -> None:
    """Entry point of one process of the multi-process test: train, then dump this replica's state."""
    import torch
    from safetensors.torch import save_file

    from sharpdepth_core.trainer import train
    from sharpdepth_core.training_config import make_config

    result = train(make_config(yaml_file=config_yaml))
    rank = int(os.environ["RANK"])  # (the process group is gone once train() has ended)
    tensors = {f"student.{k}": v for k, v in result.student.state_dict().items()}
    tensors.update({f"ema.{k}": v for k, v in result.ema.state_dict().items()})
    for i, s in enumerate(result.optimizer.state.values()):
        tensors.update({f"adam.{i}.{k}": v for k, v in s.items() if torch.is_tensor(v)})
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, f"{result_dir}/rank{rank}.safetensors")


if __name__ == "__main__":
    import sys

    _run_rank(sys.argv[1], sys.argv[2])
