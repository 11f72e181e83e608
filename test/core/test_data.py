"""Training data: real image files and real rosbag2 recordings (MCAP and sqlite3) written with rosbags."""
import logging
import os
import re

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from sharpdepth_core.images import natural_key
from sharpdepth_core.data import (
    DataError,
    DepthCache,
    ImageFolder,
    MixingSampler,
    RosbagImages,
    TrainingImages,
    draw_flips,
    fit_to_resolution,
    flip_where,
    open_source,
)
from helpers_training import (
    camera_info_message,
    image_message,
    pattern,
    truncated_recording,
    write_bag,
    write_images,
    write_messages,
)


def test_image_folder_is_recursive_sorted_and_reads_exact_pixels(tmp_path):
    paths = write_images(tmp_path / "imgs", 4)
    (tmp_path / "imgs" / "notes.txt").write_text("not an image")
    Image.fromarray(pattern(9, 16, 24)).save(tmp_path / "imgs" / "sub" / "UPPER.PNG")
    folder = open_source(tmp_path / "imgs")
    assert isinstance(folder, ImageFolder)
    assert len(folder) == 5 and folder.files == sorted(folder.files, key=natural_key)  # case-blind, frame2 before frame10
    assert any(p.parent.name == "sub" for p in folder.files)
    i = folder.files.index(paths[0])  # a PNG: lossless
    np.testing.assert_array_equal(folder.read(i), np.asarray(Image.open(paths[0]).convert("RGB")))
    assert folder.key(i) != folder.key(folder.files.index(paths[2]))


def test_fit_to_resolution_covers_then_centre_crops():
    img = np.zeros((48, 96, 3), np.uint8)
    img[:, :48] = (255, 0, 0)  # left half red, right half blue
    img[:, 48:] = (0, 0, 255)
    x = fit_to_resolution(img, (32, 32))  # 48x96 -> 32x64 (cover), crop 16 columns on each side
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert torch.allclose(x[:, :, :14], torch.tensor([1.0, 0, 0]).view(3, 1, 1))
    assert torch.allclose(x[:, :, 18:], torch.tensor([0, 0, 1.0]).view(3, 1, 1))
    # Centred: the red/blue boundary sits in the middle, mirror-symmetric.
    torch.testing.assert_close(x[0].flip(-1), x[2])
    up = fit_to_resolution(np.full((10, 20, 3), 128, np.uint8), (32, 48))  # smaller than the target
    assert up.shape == (3, 32, 48) and torch.allclose(up, torch.full_like(up, 128 / 255))


def test_corrupt_images_are_skipped_with_a_warning_and_counted(tmp_path, caplog):
    paths = write_images(tmp_path / "imgs", 4)
    good = paths[1].read_bytes()
    paths[1].write_bytes(good[: len(good) // 3])  # truncated JPEG
    paths[3].write_bytes(b"garbage, not a JPEG")
    ds = TrainingImages([ImageFolder(tmp_path / "imgs")], (32, 32))
    bad = [ds.sources[0].files.index(p) for p in (paths[1], paths[3])]
    assert bad == [1, 2]  # neighbours in the sorted order
    with caplog.at_level(logging.WARNING, logger="sharpdepth_core.data"):
        batches = list(DataLoader(ds, batch_size=2, shuffle=False))
    assert sum(int(b["skipped"].sum()) for b in batches) == 2 + 1  # item 1 skips two files, item 2 one
    assert sum("skipping unreadable training image" in r.message for r in caplog.records) == 3
    assert all(torch.isfinite(b["image"]).all() for b in batches)
    keys = [k for b in batches for k in b["key"]]
    assert not any(str(ds.sources[0].files[i].resolve()) in k for i in bad for k in keys)


def test_image_files_are_decoded_as_the_cli_decodes_them(tmp_path, caplog):
    """16-bit scaled to 8 bits (it read as all white), 32-bit float refused and skipped (it read as black)."""
    (tmp_path / "imgs").mkdir()
    ramp = (np.arange(16 * 24, dtype=np.uint32).reshape(16, 24) * 170).astype(np.uint16)  # 0 .. 65110
    Image.fromarray(ramp).save(tmp_path / "imgs" / "a16.png")
    Image.fromarray(np.full((16, 24), 0.5, np.float32)).save(tmp_path / "imgs" / "b_float.tiff")
    Image.fromarray(pattern(1, 16, 24)).save(tmp_path / "imgs" / "c.png")
    ds = TrainingImages([ImageFolder(tmp_path / "imgs")], (16, 24))
    first = ds[0]
    expect = np.repeat((ramp / 257).round().astype(np.uint8)[..., None], 3, axis=2)
    torch.testing.assert_close(first["image"], torch.from_numpy(expect).permute(2, 0, 1).float() / 255)
    assert first["skipped"] == 0 and first["image"].std() > 0.2
    with caplog.at_level(logging.WARNING, logger="sharpdepth_core.data"):
        second = ds[1]
    assert second["skipped"] == 1 and second["key"].startswith(str((tmp_path / "imgs" / "c.png").resolve()))
    assert "b_float.tiff" in caplog.text and "32-bit" in caplog.text


def test_all_corrupt_and_empty_data_are_clear_errors(tmp_path):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a.png").write_bytes(b"nope")
    with pytest.raises(DataError, match=r"none of the 1 training images can be read \(the last: .*a.png: not a readable"):
        TrainingImages([ImageFolder(tmp_path / "bad")], (32, 32))[0]
    (tmp_path / "empty" / "deeper").mkdir(parents=True)
    (tmp_path / "empty" / "deeper" / "readme.md").write_text("x")
    with pytest.raises(ValueError, match="no images .* under .*empty"):
        ImageFolder(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        open_source(tmp_path / "missing")
    with pytest.raises(ValueError, match="no training data"):
        TrainingImages([], (32, 32))
    with pytest.raises(ValueError, match="multiples of 8"):
        TrainingImages([ImageFolder(tmp_path / "bad")], (30, 32))


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_rosbag2_camera_topics_decode_exactly(tmp_path, storage, caplog):
    frames = [pattern(i, 20, 30) for i in range(3)]
    bag = write_bag(tmp_path / "bag", frames, encoding="bgr8", storage=storage, pad=4,
                    compressed_topic="/camera/image_raw/compressed", corrupt_compressed=1)
    everything = open_source(bag)
    assert isinstance(everything, RosbagImages)
    assert everything.topics == ["/camera/image_raw", "/camera/image_raw/compressed"]  # /chatter ignored
    raw = RosbagImages(bag, topics=["/camera/image_raw"])
    assert len(raw) == 3
    for i in range(3):  # bgr8 with 4 bytes of row padding -> the original RGB
        np.testing.assert_array_equal(raw.read(i), frames[i])
    # The recording as a training source: the garbage compressed frame is skipped and counted.
    ds = TrainingImages([everything], (16, 24))
    with caplog.at_level(logging.WARNING, logger="sharpdepth_core.data"):
        items = [ds[i] for i in range(len(ds))]
    assert sum(it["skipped"] for it in items) == 1
    assert "could not decode compressed image" in caplog.text
    # Every image decoded to the frame it came from (PNG is lossless).
    for it in items:
        t = int(it["key"].split("|")[2])
        expect = fit_to_resolution(frames[(t - 1_000_000_000) // 100_000_000], (16, 24))
        torch.testing.assert_close(it["image"], expect)


def test_default_topics_are_the_camera_images_and_the_log_says_which(tmp_path, caplog):
    """The node's own colour-mapped depth (rgb8, with a camera_info beside it) is no training image."""
    frames = [pattern(i, 12, 16) for i in range(3)]
    messages = []
    for i, rgb in enumerate(frames):
        t = 1_000_000_000 + i * 100_000_000
        messages += [("/camera/image_raw", "sensor_msgs/msg/Image", t, image_message(t, rgb, "rgb8")),
                     ("/camera/camera_info", "sensor_msgs/msg/CameraInfo", t, camera_info_message(t, 12, 16)),
                     ("/camera/depth/colored", "sensor_msgs/msg/Image", t + 1, image_message(t, 255 - rgb, "rgb8")),
                     ("/camera/depth/camera_info", "sensor_msgs/msg/CameraInfo", t + 1, camera_info_message(t, 12, 16)),
                     ("/camera/depth/image", "sensor_msgs/msg/Image", t + 1,
                      image_message(t, np.full((12, 16), 2.0, np.float32), "32FC1")),
                     ("/ir/image", "sensor_msgs/msg/Image", t + 2, image_message(t, np.full((12, 16), 7, np.uint16), "16UC1")),
                     ("/mono/image", "sensor_msgs/msg/Image", t + 2, image_message(t, rgb[..., 0], "mono8"))]
    bag = write_messages(tmp_path / "node_output", messages)
    with caplog.at_level(logging.INFO, logger="sharpdepth_core.data"):
        source = open_source(bag)
    assert source.topics == ["/camera/image_raw", "/mono/image"] and len(source) == 6
    for i in range(len(source)):
        topic, t, _ = source.index[i]
        rgb = frames[(t - 1_000_000_000) // 100_000_000]
        np.testing.assert_array_equal(source.read(i), rgb if topic == "/camera/image_raw" else np.repeat(rgb[..., :1], 3, 2))
    (line,) = [r.message for r in caplog.records if "training on" in r.message]
    assert "/camera/image_raw (3 images), /mono/image (3 images)" in line
    assert "/camera/depth/colored (depth, not a camera picture)" in line and "/ir/image (encoding 16UC1)" in line
    assert "/camera/depth/image (depth" in line and "--topics" in line
    # Chosen explicitly, a topic is used as it is.
    assert RosbagImages(bag, topics=["/camera/depth/colored"]).topics == ["/camera/depth/colored"]
    only_depth = write_messages(tmp_path / "depth_only", [m for m in messages if m[0] == "/camera/depth/colored"])
    with pytest.raises(DataError, match=r"no camera image topic \(left out: /camera/depth/colored .*--topics"):
        open_source(only_depth)


def test_a_truncated_mcap_recording_is_read_as_far_as_it_is_complete(tmp_path, caplog):
    frames, bag, mcap = truncated_recording(tmp_path / "crashed")
    for path in (mcap, bag):  # the file, and the folder the recorder left
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="sharpdepth_core.data"):
            source = open_source(path)
        assert len(source) == 3 and source.topics == ["/camera/image_raw"]
        for i in range(3):
            np.testing.assert_array_equal(source.read(i), frames[i])
        (warning,) = [r.message for r in caplog.records if r.levelno == logging.WARNING]
        assert "is truncated" in warning and "recovered 3 messages" in warning and "3 of them camera images" in warning
        assert f"{mcap.name}: " in warning and " MB" in warning
    # In data-loader workers too (the recovered reader is rebuilt there, never pickled open).
    ds = TrainingImages([open_source(bag)], (32, 64))
    got = torch.cat([b["image"] for b in DataLoader(ds, batch_size=1, num_workers=2)])
    torch.testing.assert_close(got, torch.stack([fit_to_resolution(f, (32, 64)) for f in frames[:3]]))
    assert mcap.read_bytes()[-8:] != b"\x89MCAP0\r\n"  # the user's file is left as it was


def test_rosbag_errors_name_the_topics(tmp_path):
    bag = write_bag(tmp_path / "bag", [pattern(0, 8, 8)])
    with pytest.raises(ValueError, match=r"no image topic \['/front'\]; image topics are \['/camera/image_raw'\]"):
        RosbagImages(bag, topics=["/front"])
    from rosbags.rosbag2 import Writer
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.LATEST)
    with Writer(tmp_path / "text_only", version=9) as w:
        c = w.add_connection("/chatter", "std_msgs/msg/String", typestore=ts)
        w.write(c, 1, ts.serialize_cdr(ts.types["std_msgs/msg/String"](data="hi"), "std_msgs/msg/String"))
    with pytest.raises(ValueError, match="no image messages"):
        open_source(tmp_path / "text_only")


def test_rosbag_source_works_in_dataloader_workers(tmp_path):
    frames = [pattern(i, 16, 16) for i in range(4)]
    ds = TrainingImages([RosbagImages(write_bag(tmp_path / "bag", frames))], (16, 16))
    ds.sources[0].read(0)  # an open reader in the parent must not be pickled into the workers
    got = torch.cat([b["image"] for b in DataLoader(ds, batch_size=2, num_workers=2)])
    expect = torch.stack([fit_to_resolution(f, (16, 16)) for f in frames])
    torch.testing.assert_close(got, expect)


def test_mixing_sampler_order_depends_only_on_seed_and_epoch():
    s = MixingSampler([3, 5], seed=7)
    first = list(s)
    assert sorted(first) == list(range(8))  # no probabilities: a permutation of everything
    assert list(MixingSampler([3, 5], seed=7)) == first
    s.set_epoch(1)
    assert list(s) != first and sorted(s) == list(range(8))


def test_mixing_sampler_follows_probabilities():
    s = MixingSampler([10, 1000], probs=[3, 1], seed=0)  # probabilities are normalised
    idx = torch.tensor(list(s))
    assert len(idx) == 1010 and idx.min() >= 0 and idx.max() < 1010
    assert abs((idx < 10).float().mean().item() - 0.75) < 0.05  # 10 images drawn 75 % of the time
    assert (idx >= 10).any()  # the large source is drawn too
    assert (torch.tensor(list(MixingSampler([10, 1000], probs=[0, 1]))) >= 10).all()
    with pytest.raises(ValueError, match="2 mixing probabilities for 3"):
        MixingSampler([1, 2, 3], probs=[0.5, 0.5])
    with pytest.raises(ValueError, match="positive sum"):
        MixingSampler([1, 2], probs=[0, 0])


def test_flips_are_drawn_once_and_applied_per_sample():
    torch.manual_seed(0)
    img = torch.arange(8 * 3 * 2 * 4, dtype=torch.float32).view(8, 3, 2, 4)
    flips = draw_flips(8)
    assert flips.dtype == torch.bool and 0 < flips.sum() < 8  # some flipped, some not (seeded)
    f_img, f_depth = flip_where(img, flips), flip_where(img[:, :1] * 10, flips)
    torch.testing.assert_close(f_depth, f_img[:, :1] * 10)  # the same decision per sample
    torch.testing.assert_close(f_img[flips], img[flips].flip(-1))
    torch.testing.assert_close(f_img[~flips], img[~flips])
    assert draw_flips(4, p=1.0).all() and not draw_flips(4, p=0.0).any()


def test_depth_cache_round_trip_is_exact_and_namespaced(tmp_path):
    mask = os.umask(0o022)
    try:
        cache = DepthCache(tmp_path / "cache", "depth-anything-v2|/m", (32, 32))
        depth = torch.rand(2, 1, 32, 32) * 50
        assert cache.load(["a", "b"]) is None
        cache.save(["a", "b"], depth)
    finally:
        os.umask(mask)
    assert torch.equal(cache.load(["b", "a"]), depth.flip(0))
    assert cache.load(["a", "c"]) is None  # one missing: recompute the batch
    assert DepthCache(tmp_path / "cache", "other-model|/m", (32, 32)).load(["a"]) is None
    assert DepthCache(tmp_path / "cache", "depth-anything-v2|/m", (32, 48)).load(["a"]) is None
    assert not list((tmp_path / "cache").rglob("*.tmp"))
    assert {oct(p.stat().st_mode & 0o777) for p in (tmp_path / "cache").rglob("*.npy")} == {"0o644"}  # the umask's


def test_bad_depth_cache_entries_are_reported_missing_once_naming_the_file(tmp_path, caplog):
    cache = DepthCache(tmp_path / "cache", "m", (8, 8))
    good = torch.rand(1, 1, 8, 8) + 1
    cache.save(["nan", "short", "shape", "ok"], good.expand(4, 1, 8, 8))
    nan = np.ones((1, 8, 8), np.float32)
    nan[0, 2, 3] = np.nan
    np.save(cache.path("nan"), nan)
    cache.path("short").write_bytes(cache.path("short").read_bytes()[:100])
    np.save(cache.path("shape"), np.ones((1, 4, 8), np.float32))
    for key, problem in (("nan", "not finite"), ("short", "unreadable"), ("shape", r"of shape \(1, 4, 8\)")):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="sharpdepth_core.data"):
            assert cache.load(["ok", key]) is None  # recomputed by the caller ...
        (record,) = caplog.records
        assert str(cache.path(key)) in record.message and str(tmp_path / "cache") in record.message
        assert re.search(problem, record.message)
        cache.save([key], good)  # ... and overwritten
        assert torch.equal(cache.load(["ok", key]), torch.cat([good, good]))


def test_training_reads_every_encoding_the_node_accepts():
    """One decoder for node and trainer: a mono16 or padded bgra8 frame is training data too."""
    from types import SimpleNamespace

    from sharpdepth_core.data import UnreadableImage, decode_image_message

    mono16 = np.array([[0, 1000], [2000, 4000]], dtype="<u2")
    msg = SimpleNamespace(encoding="mono16", height=2, width=2, step=4, is_bigendian=0, data=mono16.tobytes())
    rgb = decode_image_message(msg)
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 2, 3)
    assert rgb[..., 0].tolist() == [[0, 64], [128, 255]]  # scaled by the frame's maximum
    bgra = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    padded = np.concatenate([bgra.reshape(2, 12), np.zeros((2, 4), np.uint8)], axis=1)
    msg = SimpleNamespace(encoding="bgra8", height=2, width=3, step=16, is_bigendian=0, data=padded.tobytes())
    np.testing.assert_array_equal(decode_image_message(msg), bgra[..., 2::-1])
    with pytest.raises(UnreadableImage, match="32FC1|unsupported"):
        decode_image_message(SimpleNamespace(encoding="32FC1", height=1, width=1, step=4, is_bigendian=0, data=b"\0" * 4))


def test_a_size_refusal_below_a_tenth_of_a_megapixel_counts_pixels():
    """"0.0 MP is above the limit of 0.0 MP" said nothing (issue 30 item 9)."""
    from sharpdepth_core.images import check_size

    with pytest.raises(ValueError, match=r"^x of 40x30 = 1,200 pixels is above the limit of 1,000 pixels \(max_input_pixels\)"):
        check_size(30, 40, 1000, "x")
    with pytest.raises(ValueError, match=r"= 0.3 MP is above the limit of 0.1 MP"):
        check_size(500, 600, 100_000, "x")
