"""bench/cameras.py runs the node and, beside it, the pipeline alone, and reports their ratio (CPU, tiny models)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_cameras_bench_reports_the_node_beside_the_pipeline(tmp_path):
    out = tmp_path / "cameras.json"
    run = subprocess.run([sys.executable, "bench/cameras.py", "--cameras", "1", "2", "--warmup", "1", "--seconds", "2", "--speed", "fast",
                          "--json", str(out)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["speed"] == "fast" and [r["cameras"] for r in result["results"]] == [1, 2]
    for r in result["results"]:
        assert r["aggregate_fps"] > 0 and r["pipeline_fps"] > 0 and len(r["per_camera_fps"]) == r["cameras"]
        assert abs(r["node_share_of_pipeline"] - r["aggregate_fps"] / r["pipeline_fps"]) < 0.01
        assert 0 < r["latency_s"]["median"] <= r["latency_s"]["p95"]
