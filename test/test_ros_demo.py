"""`make demo` in small: the in-process demo runs, says its models are untrained, records every
topic to a readable MCAP bag, writes the pictures and a summary, and exits 0."""
from __future__ import annotations

import json
import re
from collections import Counter

from PIL import Image

from sharpdepth_core.models import tiny
from sharpdepth_ros import demo


def test_demo_runs_untrained_and_records_everything(tmp_path, capsys):
    """Through `--config` (how users point the demo at other models), with tiny random-weight
    models: the demo must say twice that they are untrained. (The trained embedded models are
    covered by test_nano.py.)"""
    folder = tiny.tiny_pipeline(processing_res=64).save_pretrained(tmp_path / "tiny")
    config = tmp_path / "params.yaml"
    config.write_text(f"/**/sharpdepth:\n  ros__parameters:\n    model: {folder}\n    device: cpu\n")
    out = tmp_path / "demo"
    args = ["--out", str(out), "--frames", "2", "--width", "64", "--height", "48", "--seed", "4", "--config", str(config)]
    assert demo.main(args) == 0
    printed = capsys.readouterr().out
    assert printed.count("UNTRAINED MODELS") == 2 and "plumbing check only" in printed

    summary = json.loads((out / "summary.json").read_text())
    assert summary["untrained_models"] is True
    assert [f["scene"] for f in summary["frames"]] == [4, 5]
    assert all(0 <= f["valid"] <= 1 and f["abs_rel"] >= 0 and f["f_D_abs_rel"] >= 0 for f in summary["frames"])
    assert all(f["dbe_acc"] > 0 and f["dbe_compl"] > 0 and f["f_D_dbe_compl"] > 0 for f in summary["frames"])
    assert summary["mean_dbe_compl"] == sum(f["dbe_compl"] for f in summary["frames"]) / 2
    header = printed.splitlines()[printed.splitlines().index(next(line for line in printed.splitlines() if "latency [ms]" in line)):][:4]
    assert header[0].split() == ["latency", "[ms]", "AbsRel", "DBE", "compl", "[px]"]
    assert header[1].split() == ["frame", "scene", "e2e", "model", "SharpD.", "f_D", "SharpD.", "f_D", "valid"]
    for line in header[2:]:  # every value ends where its column header ends
        ends = [m.end() for m in re.finditer(r"\S+", line)]
        assert ends == [m.end() for m in re.finditer(r"\S+", header[1])], header
    table = printed[printed.index("this run: 2 frames, a small sample"):]
    assert "f_D" in table and "SharpDepth" in table and "DBE compl" in table
    assert "held-out scenes" not in printed  # the embedded models' report is not these models'

    from rosbags.highlevel import AnyReader

    (mcap,) = (out / "sharpdepth_demo").glob("*.mcap")
    with AnyReader([mcap]) as reader:
        counts = Counter(c.topic for c, _, _ in reader.messages())
        depth = next(reader.deserialize(raw, c.msgtype) for c, _, raw in reader.messages() if c.topic == "/camera/depth/image")
    assert counts.pop("/diagnostics") >= 1  # published before the demo ends: the bag holds every topic
    assert counts == {topic: 2 for topic in demo.TOPICS if topic != "/diagnostics"}
    assert (depth.encoding, depth.height, depth.width) == ("32FC1", 48, 64)

    width, height = Image.open(out / "overview.png").size  # labelled: 6 columns, 2 rows, colour bars
    assert width > 6 * 64 and height > 2 * 48
    for i in range(2):
        for name in ("depth", "difference", "cloud"):
            assert Image.open(out / f"frame_{i:02d}_{name}.png").size == (64, 48)


def test_config_without_a_sharpdepth_section_is_one_clear_error(tmp_path, capsys):
    config = tmp_path / "params.yaml"
    config.write_text("/**/other_node:\n  ros__parameters:\n    x: 1\n")
    assert demo.main(["--out", str(tmp_path / "o"), "--config", str(config)]) == 1
    assert "has no 'sharpdepth'" in capsys.readouterr().err
