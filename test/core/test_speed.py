"""Speed presets (issue 20, part 3): `exact` is the reference; `fast` holds what bench/speed_accuracy.py
chose on the validation scenes, and its JSON and `speed.FAST` must agree; the preset's parts reach the
pipeline (CPU: the cheaper algorithm in fp32; CUDA: also bf16 and one compiled CUDA graph per frame)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sharpdepth_core.speed import FastPath
from sharpdepth_core.pipeline import SharpDepthPipeline
from sharpdepth_core.speed import BUDGET, EXACT, FAST, Preset, fast_path, preset

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))
import speed_accuracy  # noqa: E402  (bench/ is not a package)


def test_fast_is_what_the_validation_run_chose():
    val = json.loads((REPO / "bench" / "speed_accuracy_val.json").read_text())
    assert val["split"] == "val" and val["first_seed"] == speed_accuracy.SPLITS["val"]
    assert Preset(**val["fast_preset"]) == FAST
    assert val["methods"]["fast"]["within_budget"]  # the preset as a whole, not only its parts
    held_out = json.loads((REPO / "bench" / "speed_accuracy.json").read_text())
    assert held_out["split"] == "eval" and Preset(**held_out["fast_preset"]) == FAST  # the table users read


def test_choose_fast_takes_the_settings_within_budget_and_drops_the_costliest():
    def row(abs_rel, dbe=0.0):
        m = {"cost": {"abs_rel": abs_rel, "dbe_acc": dbe, "dbe_compl": dbe}}
        return {**m, "within_budget": speed_accuracy.within_budget(m)}

    methods = {"bf16": row(0.001), "compiled": row(0.0), "light-difference": row(0.01), "latent-difference": row(0.015, 0.049),
               "light-encoder": row(0.03)}
    chosen = speed_accuracy.choose_fast(methods)
    assert chosen == Preset(difference="latent", depth_encoder="vae", bf16=True, compiled=True)  # latent over light; z_d over budget
    methods["latent-difference"] = row(0.0, 0.051)  # DBE over its 5 %
    assert speed_accuracy.choose_fast(methods).difference == "light"
    assert speed_accuracy.drop_costliest(chosen, methods) == Preset(difference="exact", bf16=True, compiled=True)
    assert BUDGET == {"abs_rel": 0.02, "dbe_acc": 0.05, "dbe_compl": 0.05}


def test_presets_on_each_device():
    assert preset("exact") == EXACT == Preset() and preset("fast") == FAST
    with pytest.raises(ValueError, match="speed must be one of exact, fast, got 'turbo'"):
        preset("turbo")
    assert fast_path(FAST, "cpu") is None and fast_path(EXACT, "cuda") is None
    assert fast_path(Preset(bf16=True, compiled=True), "cuda") == FastPath(torch.bfloat16, torch.bfloat16, channels_last=True,
                                                                        compile=True, cuda_graphs=True)


def test_the_embedded_pipeline_at_each_speed():
    exact, fast = SharpDepthPipeline.from_pretrained(), SharpDepthPipeline.from_pretrained(speed="fast")
    assert (exact.difference, exact.depth_encoder) == ("exact", "vae")
    assert (fast.difference, fast.depth_encoder, fast.fast) == (FAST.difference, FAST.depth_encoder, None)  # CPU: fp32, eager
    assert SharpDepthPipeline.from_pretrained(speed="fast", difference="exact").difference == "exact"  # explicit wins
    rgb = torch.rand(1, 3, 96, 128)
    a, b = exact(rgb, seed=0).depth, fast(rgb, seed=0).depth
    assert not torch.equal(a, b) and (a - b).abs().mean() < 0.1 * a.mean()  # a different computation, close to the same depth


def test_the_bench_reports_costs_against_the_exact_path(tmp_path):
    out = tmp_path / "acc.json"
    run = subprocess.run([sys.executable, "bench/speed_accuracy.py", "--split", "val", "--scenes", "2", "--settings", "latent-difference",
                          "light-encoder", "fast", "--json", str(out)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(out.read_text())
    methods = result["methods"]
    assert set(methods) == {"exact", "exact, seed 1", "f_D", "latent-difference", "light-encoder", "fast"}
    assert methods["exact"]["cost"] == {"abs_rel": 0.0, "dbe_acc": 0.0, "dbe_compl": 0.0} and methods["exact"]["max_abs_diff_m"] == 0
    assert methods["latent-difference"]["mean_abs_diff_m"] > 0 and methods["f_D"]["mean_abs_diff_m"] > methods["latent-difference"]["mean_abs_diff_m"]
    for m in methods.values():
        assert m["within_budget"] == all(m["cost"][k] <= BUDGET[k] for k in BUDGET)
    assert "fast preset measured (chosen on these scenes)" in run.stdout
