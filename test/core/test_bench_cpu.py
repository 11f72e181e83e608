"""bench/cpu.py: its "before" versions (diffusers' walking .device/.dtype, matplotlib colours) are the
code they replaced, so the comparison is fair: same depth, colours within a few levels."""
import json
import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_cpu_bench_compares_like_with_like_and_reports_every_figure():
    run = subprocess.run([sys.executable, "bench/cpu.py", "--rounds", "2"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]  # the bench asserts equal depth from both placements first
    assert run.stderr.startswith("[bench] cpu: about ")  # its estimate, before it starts
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["colours"]["max_channel_diff"] <= 5  # the built-in table reproduces matplotlib's inferno
    assert set(result["threads_ms"]) == {f"{n} thread(s), {m}" for n in (1, 2) for m in ("idle", "shared")}
    assert all(v["median_ms"] > 0 for v in result["placement"].values())


def test_pipeline_profile_reports_top_ops_of_every_stage(tmp_path):
    out = tmp_path / "profile.json"
    run = subprocess.run([sys.executable, "bench/pipeline.py", "--profile", "--config", "small", "--settings", "latent", "--resolutions", "64",
                          "--frames", "1", "--warmup", "1", "--width", "96", "--height", "64", "--json", str(out)],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["setting"] == "latent" and result["res"] == 64 and result["host_syncs_per_frame"] == "n/a (CPU)"
    stages = result["stages"]
    # every stage the pipeline times is a profiler range; the latent map needs no first decode
    assert {"metric", "encode", "affine_pass", "sharpen_pass", "decode", "difference", "fit", "point_cloud"} <= set(stages)
    for name, stage in stages.items():
        assert stage["top"] and all(op["ms"] >= 0 and op["calls"] > 0 for op in stage["top"]), name
        if name != "other":
            assert stage["wall_ms"] > 0 and 0 < stage["op_ms"] <= stage["wall_ms"] * 1.01, name
    assert any(op["name"].startswith("aten::") for op in stages["sharpen_pass"]["top"])


def test_vae_bench_times_every_variant_or_says_why_not(tmp_path):
    out = tmp_path / "vae.json"
    run = subprocess.run([sys.executable, "bench/vae.py", "--config", "small", "--device", "cpu", "--resolution", "128", "--calls", "1",
                          "--warmup", "1", "--json", str(out)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(out.read_text())
    rows = {r["variant"]: r for r in result["results"]}
    assert list(rows) == ["fp32", "bf16", "bf16-cl", "bf16-cl-plain-attention"] and result["grid"] == [96, 128]
    assert "[bench] vae: about " in run.stderr and "Dynamo" not in run.stderr
    skipped = {s["variant"]: s["reason"] for s in result["skipped"]}
    assert skipped["bf16-cl-compile-graph"] == "needs CUDA (CUDA graphs)" and "--compile-on-cpu" in skipped["bf16-cl-compile"]
    assert set(rows) | set(skipped) == {"fp32", "bf16", "bf16-cl", "bf16-cl-cudnn-benchmark", "bf16-cl-plain-attention", "bf16-cl-compile",
                                        "bf16-cl-compile-max-autotune-no-cudagraphs", "bf16-cl-compile-max-autotune", "bf16-cl-compile-graph"}
    assert rows["fp32"]["difference_vs_fp32"] == {"max": 0.0, "mean": 0.0} and rows["fp32"]["speedup"] == 1.0
    assert 1e-4 < rows["bf16"]["difference_vs_fp32"]["mean"] < 0.1  # bf16 rounding: visible, small
    for r in rows.values():
        assert r["frame_ms"] == r["ms"]["encode_image"] + r["ms"]["encode_depth"] + 2 * r["ms"]["decode_depth"]
    assert result["fastest_at_bf16_level"] in rows


def test_vae_bench_stopped_by_sigterm_reports_what_it_measured(tmp_path):
    """gpu_check.sh bounds the step with `timeout` (SIGTERM): the variants measured before it still count."""
    out = tmp_path / "vae.json"
    bench = subprocess.Popen([sys.executable, "bench/vae.py", "--config", "small", "--device", "cpu", "--resolution", "256", "--calls", "3",
                              "--warmup", "1", "--json", str(out)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    progress = []
    for line in bench.stderr:  # fp32 and bf16 are measured once the third variant starts (seconds of work left)
        progress.append(line)
        if line.strip() == "[bench] bf16-cl":
            bench.send_signal(signal.SIGTERM)
            break
    stdout, stderr = bench.communicate(timeout=300)
    assert bench.returncode == 128 + signal.SIGTERM, "".join(progress)[-2000:] + stderr[-2000:]
    result = json.loads(out.read_text())
    assert json.loads(stdout.strip().splitlines()[-1]) == result  # the line bench/gpu_summary.py reads
    order = ["fp32", "bf16", "bf16-cl", "bf16-cl-plain-attention"]  # the variants a CPU runs, in order
    measured = [r["variant"] for r in result["results"]]
    assert measured == order[:len(measured)] and len(measured) >= 2
    skipped = {s["variant"]: s["reason"] for s in result["skipped"]}
    in_flight = order[len(measured)]
    assert result["stopped"] == f"stopped by SIGTERM during the {in_flight!r} variant" == skipped[in_flight]
    assert all(skipped[v] == f"not run: {result['stopped']}" for v in order[len(measured) + 1:])
    assert skipped["bf16-cl-compile-graph"] == "needs CUDA (CUDA graphs)"  # what cannot run here still says why
    assert result["fastest_at_bf16_level"] in measured[1:]


def test_pipeline_bench_stopped_by_sigterm_reports_what_it_measured(tmp_path):
    """The same for bench/pipeline.py (gpu_check.sh's `fast` step may run out of time while compiling)."""
    out = tmp_path / "pipeline.json"
    bench = subprocess.Popen([sys.executable, "bench/pipeline.py", "--config", "small", "--settings", "reference", "latent", "light",
                              "--resolutions", "64", "512", "--frames", "1", "--warmup", "1", "--json", str(out)],
                             cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    progress = []
    for line in bench.stderr:
        progress.append(line)
        if line.startswith("[bench] reference @ 512"):  # latent and light at two resolutions still to come
            bench.send_signal(signal.SIGTERM)
            break
    stdout, stderr = bench.communicate(timeout=300)
    assert bench.returncode == 128 + signal.SIGTERM, "".join(progress)[-2000:] + stderr[-2000:]
    result = json.loads(out.read_text())
    assert json.loads(stdout.strip().splitlines()[-1]) == result
    assert [(r["setting"], r["res"]) for r in result["results"]][:2] == [("reference", 64), ("reference", 512)]
    skipped = {s["setting"]: s["reason"] for s in result["skipped"]}
    assert result["stopped"].startswith("stopped by SIGTERM during") and skipped["light"] in (result["stopped"], f"not run: {result['stopped']}")


def test_a_sigterm_at_any_point_of_the_steps_ends_in_a_report():
    """bench/timing.until_stopped: a SIGTERM that lands between two steps (not inside one) is caught too,
    and a later one cannot cut the report that follows (the race a fresh clone's run once hit)."""
    import os

    sys.path.insert(0, str(REPO / "bench"))
    from timing import until_stopped

    done = []

    def step(item: int) -> None:
        done.append(item)
        if item == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # delivered as this step ends

    try:
        finished, stopped = until_stopped([0, 1, 2], step)
        assert done == [0, 1] and finished in (1, 2) and stopped == "stopped by SIGTERM"
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
        assert until_stopped([3], done.append) == (1, None) and done[-1] == 3
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def test_first_frame_exports_into_a_workdir_a_second_time(tmp_path, monkeypatch):
    """gpu_check.sh reruns with the same OUT (issue 26 I): the second aoti export replaces the first.
    The compile itself (minutes on CPU) is replaced by a stand-in that applies the real CLI's folder
    rule (`cli.export_folder`, which refused the rerun) and writes a manifest; a failure is one line."""
    import argparse
    import importlib.util

    from sharpdepth_core import cli

    spec = importlib.util.spec_from_file_location("first_frame_bench", REPO / "bench" / "first_frame.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)

    def export(command, **_):
        out = Path(command[command.index("--out") + 1])
        try:
            cli.export_folder(out, "--overwrite" in command, "aoti")
        except ValueError as exc:
            return subprocess.CompletedProcess(command, 2, "", f"sharpdepth export: error: {exc}\n")
        out.mkdir(parents=True, exist_ok=True)
        (out / "export.json").write_text(json.dumps({"format": "aoti"}))
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(bench.subprocess, "run", export)
    args = argparse.Namespace(input_size=(320, 240), workdir=tmp_path / "first_frame", device="cpu", model=None)
    for _ in range(2):
        assert bench.export_aoti(args, tmp_path / "cache") >= 0
    (args.workdir / "aoti" / "notes.txt").write_text("mine")  # not an export's: refused, in one line
    try:
        bench.export_aoti(args, tmp_path / "cache")
    except SystemExit as exc:
        assert str(exc).startswith("first_frame.py: the aoti export failed (exit 2): sharpdepth export: error: ") and "notes.txt" in str(exc)
    else:
        raise AssertionError("a folder holding a user's file was exported into")
