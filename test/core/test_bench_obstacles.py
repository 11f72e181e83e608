"""bench/obstacles.py on two scenes: every row and confidence is scored, the figures are sane."""
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_obstacles_bench_scores_every_row_and_confidence(tmp_path):
    out, picture = tmp_path / "o.json", tmp_path / "o.png"
    run = subprocess.run([sys.executable, "bench/obstacles.py", "--split", "val", "--scenes", "2", "--json", str(out), "--figure", str(picture)],
                         cwd=REPO, capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(out.read_text())
    rows = result["rows"]
    assert len(rows) == 11 and rows["f_D"]["flying_vs_f_D"] == 1.0 and rows["f_D"]["kept"] == 1.0
    masked = [r for name, r in rows.items() if "min_confidence" in name]
    assert len(masked) == 6 and all(0 < r["kept"] < 1 for r in masked)
    # the threshold with a margin keeps more than the plain 10 % quantile of the same scenes, and at least 90 % of them
    q = result["confidence_quantiles"]
    for name in ("SharpDepth exact", "f_D only"):
        assert 0 <= q[f"{name}, >= 90 % kept with margin"] < q[name]["90 %"]
    assert all(r["kept"] >= 0.9 for name, r in rows.items() if "with margin" in name)
    # masking only removes points: never more flying points or phantom voxels than the same depth unmasked
    exact = rows["SharpDepth exact"]
    for name, r in rows.items():
        if name.startswith("SharpDepth exact, min_confidence"):
            assert r["flying_per_100k"] <= exact["flying_per_100k"] and r["phantom_voxels"] <= exact["phantom_voxels"]
    for name, s in result["sparsification"].items():
        assert s["oracle"][-1] <= s["model"][-1] + 1e-9 and s["ause"] >= 0, name  # nothing beats the oracle
    assert picture.stat().st_size > 10_000
