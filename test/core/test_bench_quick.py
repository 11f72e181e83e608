"""What `make bench` says about its time (issue 30 item 4): every bench it runs has a short run
(--quick, or QUICK=1 as `make bench QUICK=1` sets) and prints its estimate line before it starts.
Checked on the cheap benches and on the parsers; no timings are asserted."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ESTIMATE = re.compile(r"^\[bench\] (\w+): about \d+ s.* for .+ on the 2-core reference CPU, 1 thread.*"
                      r"(--quick or QUICK=1 for a short run|a short run \(--quick\))$", re.M)


def _bench_module(name: str):
    import importlib.util

    sys.path.insert(0, str(REPO / "bench"))
    spec = importlib.util.spec_from_file_location(f"{name}_bench", REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_bench_of_make_bench_has_a_short_run_and_an_estimate():
    makefile = (REPO / "Makefile").read_text()
    recipe = makefile.split("\nbench:", 1)[1].split("\n\n", 1)[0]
    benches = re.findall(r"bench/(\w+)\.py", recipe)
    assert {"synthetic", "pointcloud", "cpu", "train_step", "pipeline", "vae", "temporal", "speed_accuracy"} <= set(benches)
    assert "export QUICK" in makefile
    for name in benches:
        source = (REPO / "bench" / f"{name}.py").read_text()
        assert "add_quick(" in source and "quick_defaults(" in source and "announce(" in source, name


def test_quick_takes_the_short_settings_from_the_flag_or_the_environment_and_explicit_flags_win(monkeypatch):
    train_step = _bench_module("train_step")
    from timing import quick_defaults

    monkeypatch.delenv("QUICK", raising=False)
    assert quick_defaults(train_step.build_parser(), [], train_step.QUICK).steps == 20
    assert quick_defaults(train_step.build_parser(), ["--quick"], train_step.QUICK).steps == train_step.QUICK["steps"]
    monkeypatch.setenv("QUICK", "1")
    args = quick_defaults(train_step.build_parser(), ["--warmup", "2"], train_step.QUICK)
    assert (args.quick, args.steps, args.warmup) == (True, train_step.QUICK["steps"], 2)
    monkeypatch.setenv("QUICK", "0")
    assert quick_defaults(train_step.build_parser(), [], train_step.QUICK).steps == 20


def test_the_estimate_line_counts_the_work_units():
    speed_accuracy = _bench_module("speed_accuracy")
    quick = speed_accuracy.estimate(5, tuple(speed_accuracy.QUICK["settings"]))
    full = speed_accuracy.estimate(100, speed_accuracy.SETTINGS)
    assert quick < 60 < full  # the short run leaves out the compiled settings
    pipeline = _bench_module("pipeline")
    args = pipeline.parse_args(["--quick"], cuda=False)
    assert args.resolutions == [512] and pipeline.cpu_estimate(args) < pipeline.cpu_estimate(pipeline.parse_args([], cuda=False)) / 3


def test_synthetic_quick_run_says_its_time_first_and_runs_small():
    run = subprocess.run([sys.executable, "bench/synthetic.py", "--sizes", "64x48", "--styles", "toy"], cwd=REPO, capture_output=True,
                         text=True, timeout=120, env={**os.environ, "QUICK": "1"})
    assert run.returncode == 0, run.stderr[-2000:]
    assert ESTIMATE.match(run.stderr.splitlines()[0]) and "short run" in run.stderr
    assert json.loads(run.stdout.strip().splitlines()[-1])["results"][0]["frames"] == 10


def test_temporal_quick_run_reports_every_model_in_one_estimate_line_and_no_warnings(tmp_path):
    """QUICK=1 with --frames 3 (explicit wins): the estimate line, the light difference map's row (its
    decoder loads on first use), and nothing multi-line from the libraries on stderr."""
    out = tmp_path / "t.json"
    run = subprocess.run([sys.executable, "bench/temporal.py", "--frames", "3", "--json", str(out)], cwd=REPO, capture_output=True,
                         text=True, timeout=300, env={**os.environ, "QUICK": "1"})
    assert run.returncode == 0, run.stderr[-2000:]
    assert [m.group(1) for m in ESTIMATE.finditer(run.stderr)] == ["temporal"]
    assert run.stderr.strip().splitlines() == [ESTIMATE.search(run.stderr).group(0)]  # no progress bar off a terminal, no warnings
    result = json.loads(out.read_text())
    assert (result["sequences"], result["frames"]) == (1, 3)
    assert "SharpDepth, light difference map" in result["models"] and len(result["models"]) == 9  # 6 + the 3 temporal rows
