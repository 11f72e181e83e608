"""Training data: real image files and real rosbag2 recordings (MCAP and sqlite3) written with rosbags."""
import logging

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from sharpdepth_core.data import (
    DepthCache,
    ImageFolder,
    MixingSampler,
    RosbagImages,
    TrainingImages,
    fit_to_resolution,
    open_source,
    random_flip,
)
from training_fixtures import pattern, write_bag, write_images


def test_image_folder_is_recursive_sorted_and_reads_exact_pixels(tmp_path):
    paths = write_images(tmp_path / "imgs", 4)
    (tmp_path / "imgs" / "notes.txt").write_text("not an image")
    Image.fromarray(pattern(9, 16, 24)).save(tmp_path / "imgs" / "sub" / "UPPER.PNG")
    folder = open_source(tmp_path / "imgs")
    assert isinstance(folder, ImageFolder)
    assert len(folder) == 5 and folder.files == sorted(folder.files)
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


def test_all_corrupt_and_empty_data_are_clear_errors(tmp_path):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a.png").write_bytes(b"nope")
    with pytest.raises(RuntimeError, match="none of the 1 training images can be read"):
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


def test_random_flip_flips_image_and_depth_together():
    torch.manual_seed(0)
    img = torch.arange(8 * 3 * 2 * 4, dtype=torch.float32).view(8, 3, 2, 4)
    depth = img[:, :1] * 10
    f_img, f_depth = random_flip(img, depth)
    flipped = (f_img != img).flatten(1).any(1)
    assert 0 < flipped.sum() < 8  # some flipped, some not (seeded)
    torch.testing.assert_close(f_depth, f_img[:, :1] * 10)  # the same decision per sample
    torch.testing.assert_close(f_img[flipped], img[flipped].flip(-1))
    assert torch.equal(random_flip(img, p=1.0)[0], img.flip(-1)) and torch.equal(random_flip(img, p=0.0)[0], img)


def test_depth_cache_round_trip_is_exact_and_namespaced(tmp_path):
    cache = DepthCache(tmp_path / "cache", "depth-anything-v2|/m|32x32")
    depth = torch.rand(2, 1, 32, 32) * 50
    assert cache.load(["a", "b"]) is None
    cache.save(["a", "b"], depth)
    assert torch.equal(cache.load(["b", "a"]), depth.flip(0))
    assert cache.load(["a", "c"]) is None  # one missing: recompute the batch
    assert DepthCache(tmp_path / "cache", "other-model|/m|32x32").load(["a"]) is None
    assert not list((tmp_path / "cache").rglob("*.tmp"))


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
