"""bench/cpu.py: its "before" versions (diffusers' walking .device/.dtype, matplotlib colours) are the
code they replaced, so the comparison is fair: same depth, colours within a few levels."""
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_cpu_bench_compares_like_with_like_and_reports_every_figure():
    run = subprocess.run([sys.executable, "bench/cpu.py", "--rounds", "2"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]  # the bench asserts equal depth from both placements first
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["colours"]["max_channel_diff"] <= 5  # the built-in table reproduces matplotlib's inferno
    assert set(result["threads_ms"]) == {f"{n} thread(s), {m}" for n in (1, 2) for m in ("idle", "shared")}
    assert all(v["median_ms"] > 0 for v in result["placement"].values())
