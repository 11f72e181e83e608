"""One hostile corpus through every image reader: node, predict, trainer folders and recordings, replay
folders and recordings. Real files written here: PNG headers claiming 30000 x 30000 and 9000 x 9000
(valid CRCs, no pixels), a Radiance .hdr header claiming 8000 x 8000 (a format Pillow cannot size), a
FIFO named like an image, a truncated JPEG, corrupt bytes, a 16-bit PNG, raw frames claiming 10 GP or
in an odd encoding, truncated MCAP recordings. Every reader delivers the same readable images, skips
every other one with a line naming it, and never hands a bomb to a decoder (the decoders are wrapped
to fail the test if one arrives: refused before decoding, not after).

The node is exercised through the guard and conversions it runs (`check_message_size` in its image
callback, then `compressed_to_rgb8` / `image_to_rgb8` on its worker), called directly: the full node
over rclpy refusing bombs is test_ros_bad_input.py's test of oversized frames.
"""
from __future__ import annotations

import os
import re
import struct
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image, ImageFile
from helpers_training import image_message, pattern, truncated_recording, write_bag, write_messages

from sharpdepth_core import data
from sharpdepth_core.cli import main
from sharpdepth_core.images import DEFAULT_MAX_INPUT_PIXELS, check_message_size, compressed_to_rgb8, image_to_rgb8
from sharpdepth_ros.replay import ReplayPublisher, source_frames

GOOD = [pattern(i, 24, 32) for i in range(2)]
GREY16 = (np.arange(24 * 32, dtype=np.uint32).reshape(24, 32) * 65535 // (24 * 32 - 1)).astype(np.uint16)
GREY16_AS_RGB = np.repeat(np.round(GREY16 / 257).astype(np.uint8)[..., None], 3, axis=2)  # max 65535: both scalings agree


def png_header(width: int, height: int) -> bytes:
    """A PNG that announces width x height (valid IHDR CRC) and holds no pixel: what a size check must stop."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + chunk(b"IEND", b"")


def encoded(ext: str, pixels: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(ext, pixels[..., ::-1] if pixels.ndim == 3 else pixels)
    assert ok
    return buf.tobytes()


BOMBS = {
    "png30000": png_header(30000, 30000),  # beyond Pillow's own limit
    "png9000": png_header(9000, 9000),  # 81 MP: within Pillow's, beyond max_input_pixels
    "radiance": b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y 8000 +X 8000\n" + bytes(64),  # OpenCV decodes it, Pillow cannot size it
}
BROKEN = {"truncated": encoded(".jpg", pattern(5, 64, 64))[:-300], "corrupt": b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4}
# what each reader says for each refused item (files: Pillow's open; frames: the header check)
FILE_REASONS = {"png30000": "image too large to decode safely", "png9000": "9000x9000 = 81.0 MP is above the limit",
                "radiance": "not a readable image (not a format Pillow can identify", "truncated": "not a readable image",
                "corrupt": "not a readable image (not a format Pillow can identify"}  # never "<_io.BufferedReader name=3>"
FRAME_REASONS = {"png30000": "too large to decode safely", "png9000": "9000x9000 = 81.0 MP is above the limit",
                 "radiance": "not a format whose size can be read before decoding", "truncated": "could not decode",
                 "corrupt": "not a format whose size can be read before decoding"}


@pytest.fixture(autouse=True)
def no_bomb_is_decoded(monkeypatch):
    """Decoding a bomb fails the test (AssertionError passes through every reader's ValueError handling)."""
    imdecode, load = cv2.imdecode, ImageFile.ImageFile.load
    bombs = set(BOMBS.values())

    def guarded_imdecode(buf, flags):
        assert bytes(np.asarray(buf)) not in bombs, "a bomb reached cv2.imdecode"
        return imdecode(buf, flags)

    def guarded_load(im):
        assert im.width * im.height <= DEFAULT_MAX_INPUT_PIXELS, f"Pillow decoding {im.size}"
        return load(im)

    def no_imread(*args):
        raise AssertionError("image files are read through sharpdepth_core.images.read_image_file")

    monkeypatch.setattr(cv2, "imdecode", guarded_imdecode)
    monkeypatch.setattr(cv2, "imread", no_imread)
    monkeypatch.setattr(ImageFile.ImageFile, "load", guarded_load)


# --- image folders: predict, trainer, replay --------------------------------------------------------

def corpus_folder(folder):
    """{file name: expected RGB or the refusal's reason}, in name order; the FIFO's reason is None
    (checked apart: every reader lists it, `images.list_images`, and says it is not a regular file)."""
    folder.mkdir()
    Image.fromarray(GOOD[0]).save(folder / "a_good.png")
    expect = {"a_good.png": GOOD[0]}
    for i, (name, payload) in enumerate({**BOMBS, **BROKEN}.items()):
        file = f"b{i}_{name}.{'jpg' if name == 'truncated' else 'png'}"
        (folder / file).write_bytes(payload)
        expect[file] = FILE_REASONS[name]
    os.mkfifo(folder / "c_fifo.png")
    expect["c_fifo.png"] = None
    cv2.imwrite(str(folder / "d_grey16.png"), GREY16)
    expect["d_grey16.png"] = GREY16_AS_RGB
    Image.fromarray(GOOD[1]).save(folder / "e_good.ppm")  # a suffix the replay used to refuse
    expect["e_good.ppm"] = GOOD[1]
    return expect


def check_folder_reader(expect: dict, delivered: dict, lines: str) -> None:
    readable = {name: v for name, v in expect.items() if isinstance(v, np.ndarray)}
    assert sorted(delivered) == sorted(readable)
    for name, rgb in delivered.items():
        if rgb is not None:
            np.testing.assert_array_equal(rgb, readable[name], err_msg=name)
    for name, reason in expect.items():
        if isinstance(reason, str):
            (line,) = [line for line in lines.splitlines() if name in line]  # one line each
            assert reason in line, line
    assert "c_fifo.png: not a regular file" in lines


def test_folders_through_predict_trainer_and_replay(tmp_path, tiny_pipeline_dir, capsys):
    expect = corpus_folder(tmp_path / "corpus")
    # predict: outputs for the readable images only (decoded pixels are not an output: presence is checked)
    assert main(["predict", str(tmp_path / "corpus"), "--out", str(tmp_path / "out"), "--model", str(tiny_pipeline_dir)]) == 3  # some unreadable
    delivered = {name: None for name in expect if (tmp_path / "out" / f"{name.rsplit('.', 1)[0]}_depth.npy").is_file()}
    check_folder_reader(expect, delivered, capsys.readouterr().err)
    # the trainer's folder reader
    folder = data.ImageFolder(tmp_path / "corpus")
    delivered, lines = {}, []
    for i, path in enumerate(folder.files):
        try:
            delivered[path.name] = folder.read(i)
        except data.UnreadableImage as error:
            lines.append(str(error))
    check_folder_reader(expect, delivered, "\n".join(lines))
    # the replay's folder source (and the FIFO comes back as a line, not a hang)
    lines = []
    frames = list(source_frames(str(tmp_path / "corpus"), warn=lines.append))
    names = sorted(expect)
    check_folder_reader(expect, {names[f.index]: f.rgb for f in frames}, "\n".join(lines))


def test_exif_orientation_is_applied_to_files(tmp_path):
    """A photo stored sideways with EXIF orientation 6 (rotate 90° clockwise to view) is read upright, by
    every file reader; the size limit counts the same pixels either way."""
    stored = pattern(3, 16, 24)
    exif = Image.Exif()
    exif[0x0112] = 6
    (tmp_path / "photos").mkdir()
    Image.fromarray(stored).save(tmp_path / "photos" / "side.png", exif=exif)
    upright = np.rot90(stored, k=-1)
    np.testing.assert_array_equal(data.ImageFolder(tmp_path / "photos").read(0), upright)
    (frame,) = source_frames(str(tmp_path / "photos"))
    np.testing.assert_array_equal(frame.rgb, upright)
    assert frame.K[0, 2] == (16 - 1) / 2  # K of the upright image (16 wide)


# --- recordings: node conversions, trainer, replay --------------------------------------------------

T0 = 1_000_000_000


def compressed_message(t: int, payload: bytes, fmt: str = "png"):
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.LATEST)
    Header, Time = ts.types["std_msgs/msg/Header"], ts.types["builtin_interfaces/msg/Time"]
    return ts.types["sensor_msgs/msg/CompressedImage"](header=Header(stamp=Time(sec=t // 10**9, nanosec=t % 10**9), frame_id="camera"),
                                                        format=fmt, data=np.frombuffer(payload, np.uint8))


def corpus_messages() -> tuple[list, dict, dict]:
    """(messages for write_messages, {(topic, t): expected RGB}, {(topic, t): refusal reason}). The
    compressed topic starts with a corrupt frame (a bad first frame is skipped, not fatal); the raw
    topic's first frame is good (the trainer judges a topic by its first message)."""
    comp, raw = "/camera/image_raw/compressed", "/camera/image_raw"
    c, r = "sensor_msgs/msg/CompressedImage", "sensor_msgs/msg/Image"
    payloads = [("corrupt", BROKEN["corrupt"]), ("good", encoded(".png", GOOD[0]))] + list(BOMBS.items()) + [
        ("truncated", BROKEN["truncated"]), ("grey16", encoded(".png", GREY16)), ("good", encoded(".jpg", GOOD[1]))]
    messages, readable, refused = [], {}, {}
    for i, (name, payload) in enumerate(payloads):
        t = T0 + i
        messages.append((comp, c, t, compressed_message(t, payload, "jpeg" if name == "truncated" else "png")))
        if name == "good":
            readable[(comp, t)] = cv2.imdecode(np.frombuffer(payload, np.uint8), cv2.IMREAD_COLOR)[..., ::-1]  # JPEG: as decoded
        elif name == "grey16":
            readable[(comp, t)] = GREY16_AS_RGB
        else:
            refused[(comp, t)] = FRAME_REASONS[name]
    huge = image_message(T0 + 101, GOOD[0], "rgb8")
    huge.height = huge.width = 100_000
    huge.step, huge.data = 300_000, np.zeros(3, np.uint8)  # a copy or a decode would fail differently
    odd = image_message(T0 + 102, GOOD[0][..., :2].copy(), "rgb8")
    odd.encoding = "yuv422"
    raws = [(image_message(T0 + 100, GOOD[0], "rgb8"), GOOD[0]), (huge, "100000x100000 = 10000.0 MP is above the limit"),
            (odd, "unsupported image encoding 'yuv422'"), (image_message(T0 + 103, GREY16, "mono16"), GREY16_AS_RGB),
            (image_message(T0 + 104, GOOD[1], "bgr8"), GOOD[1][..., ::-1])]
    for msg, outcome in raws:
        t = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
        messages.append((raw, r, t, msg))
        (readable if isinstance(outcome, np.ndarray) else refused)[(raw, t)] = outcome
    return messages, readable, refused


def check_message_reader(readable: dict, refused: dict, delivered: dict, lines: dict) -> None:
    assert sorted(delivered) == sorted(readable) and sorted(lines) == sorted(refused)
    for key, rgb in delivered.items():
        np.testing.assert_array_equal(rgb, readable[key], err_msg=str(key))
    for key, line in lines.items():
        assert refused[key] in line and "\n" not in line, (key, line)


def test_frames_through_the_node_trainer_and_replay(tmp_path):
    messages, readable, refused = corpus_messages()
    # the node's guard and conversions, message by message
    delivered, lines = {}, {}
    for topic, _, t, msg in messages:
        try:
            check_message_size(msg, DEFAULT_MAX_INPUT_PIXELS)
            delivered[(topic, t)] = image_to_rgb8(msg) if hasattr(msg, "encoding") else compressed_to_rgb8(msg)
        except ValueError as error:
            lines[(topic, t)] = str(error)
    check_message_reader(readable, refused, delivered, lines)
    bag = write_messages(tmp_path / "corpus", messages)
    # the trainer's recording reader
    source = data.RosbagImages(bag)
    delivered, lines = {}, {}
    for i, (topic, t, _) in enumerate(source.index):
        try:
            delivered[(topic, t)] = source.read(i)
        except data.UnreadableImage as error:
            lines[(topic, t)] = str(error)
    check_message_reader(readable, refused, delivered, lines)
    # the replay, one topic at a time
    delivered, lines = {}, {}
    for topic in ("/camera/image_raw/compressed", "/camera/image_raw"):
        said = []
        frames = list(source_frames(str(bag), topic=topic, warn=said.append))
        stamps = sorted(t for (top, t) in {**readable, **refused} if top == topic)
        delivered.update({(topic, stamps[f.index]): f.rgb for f in frames})
        lines.update({(topic, int(line.split(" @ ")[1].split(":")[0])): line for line in said})
    check_message_reader(readable, refused, delivered, lines)


def test_truncated_recordings_are_recovered_by_the_trainer_and_the_replay(tmp_path):
    frames, bag, mcap = truncated_recording(tmp_path / "crashed")
    for path in (bag, mcap):
        said = []
        got = list(source_frames(str(path), warn=said.append))
        assert len(got) == 3
        for frame, rgb in zip(got, frames):
            np.testing.assert_array_equal(frame.rgb, rgb)
        (line,) = said
        assert "is truncated" in line and f"{mcap.name}: " in line
        assert len(data.open_source(path)) == 3


@pytest.mark.parametrize("cut", [0.5, 0.9])
def test_a_single_chunk_mcap_cut_short_says_it_is_truncated(tmp_path, cut):
    """The chunk holds the schemas and channels too, so the complete part of the file has no topic at all."""
    bag = write_bag(tmp_path / "bag", [pattern(i, 64, 96) for i in range(3)])  # 55 KB: the chunk is 97 % of the file
    (mcap,) = bag.glob("*.mcap")
    mcap.write_bytes(mcap.read_bytes()[: int(mcap.stat().st_size * cut)])
    for path in (mcap, bag):
        with pytest.raises(data.DataError, match=rf"recording {re.escape(str(path))} is truncated \(no MCAP footer.*{mcap.name}: 0\.00 of"):
            data.open_source(path)
        with pytest.raises(ValueError) as refused:  # plainly: no empty topic name, no empty list of topics
            list(source_frames(str(path)))
        assert str(refused.value).startswith(f"bag {path} has no image topic; recording {path} is truncated (no MCAP footer")
        assert "topics:" not in str(refused.value) and " ;" not in str(refused.value)


# --- the replay publisher over rclpy: skipping, not stopping -----------------------------------------

@pytest.mark.parametrize("loop", [False, True])
def test_the_replay_skips_bad_frames_once_each_and_goes_on(ros_context, tmp_path, capfd, loop):
    """[0, FIFO named 1.png, corrupt, 3, 4]: the FIFO neither hangs nor ends the source, the corrupt
    file neither; each is one line, not repeated when the source loops."""
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in (0, 3, 4):
        Image.fromarray(pattern(i, 12, 16)).save(folder / f"{i}.png")
    os.mkfifo(folder / "1.png")
    (folder / "2.png").write_bytes(BROKEN["corrupt"])
    published = []
    node = ReplayPublisher(context=ros_context, timer=False, on_frame=lambda header, frame: published.append(frame.index),
                           parameter_overrides=_parameters(source=str(folder), loop=loop))
    try:
        for _ in range(9):
            node.publish_next()
    finally:
        node.destroy_node()
    assert published == ([0, 3, 4, 0, 3, 4, 0, 3, 4] if loop else [0, 3, 4])
    err = capfd.readouterr().err
    assert err.count("1.png: not a regular file") == 1 and err.count("2.png: not a readable image") == 1


def _parameters(**values) -> list:
    from rclpy.parameter import Parameter

    return [Parameter(k, value=v) for k, v in values.items()]


def test_a_bag_whose_first_frame_is_bad_replays_the_rest(ros_context, tmp_path):
    messages = [("/cam/image_raw/compressed", "sensor_msgs/msg/CompressedImage", T0, compressed_message(T0, BOMBS["png9000"])),
                ("/cam/image_raw/compressed", "sensor_msgs/msg/CompressedImage", T0 + 1, compressed_message(T0 + 1, encoded(".png", GOOD[0])))]
    bag = write_messages(tmp_path / "bag", messages)
    published = []
    node = ReplayPublisher(context=ros_context, timer=False, on_frame=lambda header, frame: published.append(frame.rgb),
                           parameter_overrides=_parameters(source=str(bag), loop=False))
    try:
        while node.publish_next():
            pass
    finally:
        node.destroy_node()
    assert len(published) == 1
    np.testing.assert_array_equal(published[0], GOOD[0])
