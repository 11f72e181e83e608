"""The distillation trainer on tiny real models (diffusers UNet/VAE, transformers Depth Anything), CPU only.

Every run trains for a few optimizer steps on 32x32 images. The 2-process run uses torchrun with
accelerate's CPU mode (gloo), the launcher `accelerate launch` itself uses for several GPUs.
"""
import argparse
import dataclasses
import errno
import importlib.util
import json
import logging
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from sharpdepth_core import trainer, training_config
from sharpdepth_core.data import DataError, DepthCache, TrainingImages, open_source
from sharpdepth_core.embedded import EMBEDDED_DIR
from sharpdepth_core.gating import add_noise
from sharpdepth_core.losses import sds_weight
from sharpdepth_core.models.hub import CheckpointError
from sharpdepth_core.models.metric import load_metric_model
from sharpdepth_core.models.student import DiffusionDepthModel
from sharpdepth_core.pipeline import SharpDepthPipeline
from sharpdepth_core.checkpoints import resolve_resume
from sharpdepth_core.trainer import train, training_step
from sharpdepth_core.training_config import PRESETS, TrainConfig, config_dict, make_config
from helpers_training import pattern, tiny_models, write_bag, write_images

REPO = Path(__file__).resolve().parents[2]


def reset_accelerate() -> None:
    """accelerate keeps singletons; a second run in one process needs them cleared."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()


@pytest.fixture(autouse=True)
def one_thread_and_fresh_accelerate():
    """Tiny models run fastest on one thread (the cores are shared); accelerate keeps singletons."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    reset_accelerate()


def run_cli(args: list[str], **env: str) -> subprocess.Popen:
    """Python with `args` in its own process group, importing this checkout's packages, on one thread."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), **env}
    return subprocess.Popen([sys.executable, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, cwd=REPO)


def finish(proc: subprocess.Popen, timeout: float) -> tuple[int, str]:
    """(exit status, stderr); a process still running after `timeout` is a hang: killed, and the test fails."""
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
        pytest.fail(f"still running after {timeout} s (a hang); stderr:\n{err[-3000:]}")
    return proc.returncode, err


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, str]:
    return tiny_models(tmp_path_factory.mktemp("models"))


def tiny_config(models, data, out, **changes) -> TrainConfig:
    base = dict(models, data=[str(d) for d in data], output_dir=str(out), resolution=[32, 32], num_workers=0,
                grad_accum=2, mixed_precision="no", lr=1e-4, warmup_steps=1, ema_update_after_step=0,
                ema_update_every=1, log_every=1, validate_every=0, checkpoint_every=100)
    return make_config("reference", overrides={**base, **changes})


def scalars(logdir: Path) -> dict[str, list[float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir))
    acc.Reload()
    return {tag: [e.value for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def images(logdir: Path) -> dict[str, list[int]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir))
    acc.Reload()
    return {tag: [e.step for e in acc.Images(tag)] for tag in acc.Tags()["images"]}


def state_dicts_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def optimizer_states_equal(a: torch.optim.Optimizer, b: torch.optim.Optimizer) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    if sa["param_groups"] != sb["param_groups"] or sa["state"].keys() != sb["state"].keys():
        return False
    return all(state_dicts_equal(sa["state"][k], sb["state"][k]) for k in sa["state"])


# --- config ------------------------------------------------------------------------------------


def test_presets_follow_the_method_table():
    ref, paper = PRESETS["reference"], PRESETS["paper"]
    assert (ref.lambda_sds, ref.lambda_rec, paper.lambda_sds, paper.lambda_rec) == (1.0, 0.4, 1.0, 0.3)
    assert (ref.optimizer, ref.adam_betas, ref.weight_decay, ref.scale_lr, ref.lr) == ("adamw", (0.9, 0.999), 1e-2, True, 1e-6)
    assert (paper.optimizer, paper.lr, paper.lr_schedule, paper.scale_lr) == ("adam", 1e-6, "constant", False)
    assert (ref.lr_schedule, ref.warmup_steps, ref.batch_size, ref.grad_accum, ref.epochs) == ("cosine", 200, 1, 8, 6)
    assert (paper.batch_size, paper.grad_accum, paper.max_steps) == (1, 16, 13_000)
    assert (ref.ema_beta, ref.ema_update_after_step, ref.ema_update_every) == (0.9999, 100, 10)
    assert (ref.pure_noise_prob, paper.pure_noise_prob) == (0.2, 0.0)
    assert (ref.mixed_precision, ref.grad_clip) == ("bf16", 1.0)
    assert ref.ema_difference_from_step == 0 and paper.ema_difference_from_step > 0  # reference: EMA from step 0
    assert (ref.fit_difference, paper.fit_difference) == (False, True)
    # The reference script's two cheap accidents are reproduced in its preset only.
    assert (ref.ema_before_step, ref.flip_before_metric) == (True, True)
    assert (paper.ema_before_step, paper.flip_before_metric) == (False, False)


def test_nano_preset_is_the_embedded_models_at_the_small_scale():
    nano, ref = PRESETS["nano"], PRESETS["reference"]
    assert nano.teacher == str(EMBEDDED_DIR / "teacher")
    assert (nano.metric_model, nano.metric_path) == ("small-conv", str(EMBEDDED_DIR / "metric"))
    assert nano.resolution == (96, 128)  # the embedded models' camera, 128 x 96
    assert (nano.lr, nano.scale_lr, nano.lr_schedule, nano.warmup_steps) == (1e-4, False, "cosine", 20)
    assert (nano.batch_size, nano.grad_accum) == (4, 1)
    assert (nano.max_steps, nano.epochs, nano.mixed_precision) == (300, None, "no")
    assert (nano.ema_beta, nano.ema_update_after_step, nano.ema_update_every) == (0.99, 10, 1)
    assert nano.depth_cache and nano.num_workers <= 2
    method = ("lambda_sds", "lambda_rec", "pure_noise_prob", "gating_noise", "ema_difference_from_step", "fit_difference",
              "optimizer", "weight_decay", "grad_clip", "ema_before_step", "flip_before_metric")
    assert all(getattr(nano, f) == getattr(ref, f) for f in method)  # the reference method
    training_config.check_config(dataclasses.replace(nano, data=["imgs"]))


def test_yaml_then_overrides_win_and_values_are_typed(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("lr: 1e-5\nresolution: [64, 96]\ndata: /imgs\ngrad_clip: null\nlambda_rec: 0.5\n")
    cfg = make_config("paper", f, {"lambda-rec": "0.25", "gradient_checkpointing": "yes", "topics": "[/a, /b]"})
    assert cfg.lr == 1e-5 and isinstance(cfg.lr, float)  # PyYAML reads 1e-5 as a string; coerced
    assert cfg.resolution == (64, 96) and cfg.data == ["/imgs"] and cfg.grad_clip is None
    assert cfg.lambda_rec == 0.25 and cfg.gradient_checkpointing is True and cfg.topics == ["/a", "/b"]
    assert cfg.grad_accum == 16  # untouched: from the paper preset
    # The saved form reloads to the same config.
    f2 = tmp_path / "saved.yaml"
    f2.write_text(yaml.safe_dump(config_dict(cfg)))
    assert make_config("reference", f2) == cfg


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"learning_rate": "1"}, "unknown config field 'learning_rate'"),
        ({"lambda_sd": "1"}, "did you mean 'lambda_sds'"),
        ({"optimizer": "sgd"}, "'sgd' is not one of adam, adamw"),
        ({"grad_accum": "2.5"}, "cannot use '2.5' as int"),
        ({"resolution": "[64]"}, "needs 2 values"),
        ({"gradient_checkpointing": "maybe"}, "cannot use 'maybe' as bool"),
    ],
)
def test_bad_overrides_are_one_line_errors(changes, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        make_config("reference", overrides=changes)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(changes))
    with pytest.raises(ValueError, match=f"^{tmp_path / 'c.yaml'}: .*{message}"):  # the file is named
        make_config("reference", tmp_path / "c.yaml")


def test_a_run_that_cannot_work_is_refused_before_loading_anything(tmp_path):
    with pytest.raises(ValueError, match="data: give at least one"):
        train(make_config(overrides={"output_dir": str(tmp_path)}))
    with pytest.raises(ValueError, match="resolution: .* multiples of 8"):
        train(make_config(overrides={"data": "x", "resolution": [30, 32]}))
    with pytest.raises(ValueError, match="data_probs: 1 values for 2"):
        train(make_config(overrides={"data": "[a, b]", "data_probs": [1.0]}))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"resolution": "[100000, 100000]"}, r"resolution: \(100000, 100000\) must be .* at most 2048"),
        ({"data_probs": "[nan]"}, "data_probs: nan must be finite"),
        ({"data_probs": "[0, 0]", "data": "[a, b]"}, r"data_probs: \[0.0, 0.0\] must be >= 0 with a positive sum"),
        ({"data_probs": "[-1, 2]", "data": "[a, b]"}, "data_probs: .* must be >= 0"),
        ({"lr": "nan"}, "lr: nan must be finite"),
        ({"grad_clip": "inf", "adam_betas": "[0.9, .inf]"}, "adam_betas: inf must be finite; grad_clip: inf must be finite"),
        ({"lambda_rec": "-inf"}, "lambda_rec: -inf must be finite"),
    ],
)
def test_non_finite_and_oversized_values_are_refused_before_loading_anything(changes, message, tmp_path):
    """`data_probs=[nan]` passed and failed in torch.multinomial; a huge resolution in an allocation."""
    with pytest.raises(ValueError, match=message) as err:
        train(make_config(overrides={"data": "a", "output_dir": str(tmp_path / "run"), **changes}))
    assert "\n" not in str(err.value) and not (tmp_path / "run").exists()


def _distill_module():
    spec = importlib.util.spec_from_file_location("distill", REPO / "train" / "distill.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_resolves_preset_file_set_and_flags_in_that_order(tmp_path, capsys, monkeypatch):
    distill = _distill_module()
    f = tmp_path / "c.yaml"
    f.write_text("lr: 3.0e-6\nseed: 5\nwarmup_steps: 7\n")
    rc = distill.main(["--preset", "paper", "--config", str(f), "--set", "seed=6", "--set", "warmup_steps=8",
                       "--warmup-steps", "9", "--data", "/a", "/b.mcap", "--resolution", "64", "96", "--print-config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    assert rc == 0
    assert printed["lr"] == 3e-6 and printed["seed"] == 6 and printed["warmup_steps"] == 9
    assert printed["data"] == ["/a", "/b.mcap"] and printed["resolution"] == [64, 96] and printed["grad_accum"] == 16
    # --print-config refuses what training refuses.
    assert distill.main(["--data", "/a", "--set", "lr=-1", "--set", "num_workers=-2", "--print-config"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "lr: -1.0 must be > 0" in err and "num_workers: must be >= 0" in err
    with pytest.raises(SystemExit) as err:
        distill.main(["--set", "nope=1"])
    assert err.value.code == 2 and "unknown config field 'nope'" in capsys.readouterr().err
    monkeypatch.setenv("COLUMNS", "200")  # argparse wraps help at the terminal width
    with pytest.raises(SystemExit) as err:
        distill.main(["--help"])
    help_text = capsys.readouterr().out
    assert err.value.code == 0
    assert "--resume latest|PATH" in help_text and "--lambda-rec" in help_text and "[0.4 / 0.3 / 0.4]" in help_text


def test_cli_help_shows_every_presets_value_where_they_differ(tmp_path, capsys, monkeypatch):
    """nano's values needed --print-config; the closing text said the field flags were "below"."""
    distill = _distill_module()
    monkeypatch.setenv("COLUMNS", "400")  # one line per flag
    with pytest.raises(SystemExit):
        distill.main(["--help"])
    help_text = capsys.readouterr().out
    lines = {line.split()[0]: line for line in help_text.splitlines() if line.strip().startswith("--")}
    assert lines["--lr"].endswith("[1e-06 / 1e-06 / 0.0001]")  # reference / paper / nano
    assert lines["--teacher"].endswith("[jingheya/lotus-depth-g-v1-0 / jingheya/lotus-depth-g-v1-0 / <embedded>/teacher]")
    assert lines["--seed"].endswith("[0]")  # the same in every preset
    assert "reference / paper / nano where they differ" in help_text and f"<embedded> is {EMBEDDED_DIR}" in help_text
    assert "--print-config --preset NAME" in help_text and "below" not in help_text
    # What the help points at works without data: the preset is printed, then what it lacks is said.
    assert distill.main(["--print-config", "--preset", "nano"]) == 1
    out, err = capsys.readouterr()
    assert config_dict(PRESETS["nano"]) == yaml.safe_load(out)
    assert err.strip() == "distill.py: error: invalid training config: data: give at least one image folder or recording"


# --- the method --------------------------------------------------------------------------------


class Recorder(torch.nn.Module):
    """Passes calls through to a model and keeps its inputs and outputs."""

    def __init__(self, model):
        super().__init__()
        self.model, self.calls = model, []

    def forward(self, z_img, z_depth):
        out = self.model(z_img, z_depth)
        if out.requires_grad:
            out.retain_grad()
        self.calls.append((z_depth.detach().clone(), out))
        return out


def test_training_step_sds_gradient_on_z_hat_is_w_times_residual_over_n(models):
    torch.manual_seed(0)
    load = DiffusionDepthModel.from_pretrained
    student, teacher, ema = load(models["teacher"]), Recorder(load(models["teacher"])), Recorder(load(models["teacher"]))
    student.unet.requires_grad_(True)
    rec_student = Recorder(student)
    image = torch.from_numpy(pattern(0, 32, 32)).permute(2, 0, 1)[None].float() / 255
    depth = 1 + 4 * torch.rand(1, 1, 32, 32)
    cfg = make_config(overrides={"lambda_rec": 0.0, "pure_noise_prob": 0.0})
    out = training_step(rec_student, student.codec, teacher, ema, image, depth, cfg)
    out["loss"].backward()
    # One call each: the EMA's affine pass on pure noise, the student, the frozen teacher on noised ẑ.
    assert len(ema.calls) == len(rec_student.calls) == len(teacher.calls) == 1
    z_hat = rec_student.calls[0][1]
    x_hat = teacher.calls[0][1]
    expected = sds_weight() * (z_hat.detach() - x_hat.detach()) / z_hat.numel()
    torch.testing.assert_close(z_hat.grad, expected, rtol=1e-5, atol=1e-10)
    # The teacher saw ẑ noised at t = 999: removing sqrt(ᾱ) ẑ leaves sqrt(1 - ᾱ) ε with ε ~ N(0, 1).
    eps = (teacher.calls[0][0] - add_noise(z_hat.detach(), torch.zeros_like(z_hat))) / (sds_weight() ** 0.5)
    assert 0.5 < eps.std().item() < 1.5
    assert all(torch.isfinite(v).all() for v in out.values())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.unet.parameters())
    assert all(p.grad is None for p in student.vae.parameters())  # the VAE is frozen


# --- the loop ----------------------------------------------------------------------------------


def test_without_gating_noise_the_student_sees_the_clean_depth_latent(models):
    """The paper's "clean z_d, no noise" ablation: the student's depth slot is enc(norm(d)) exactly."""
    torch.manual_seed(0)
    load = DiffusionDepthModel.from_pretrained
    student, teacher, ema = Recorder(load(models["teacher"])), load(models["teacher"]), load(models["teacher"])
    image = torch.from_numpy(pattern(0, 32, 32)).permute(2, 0, 1)[None].float() / 255
    depth = 1 + 4 * torch.rand(1, 1, 32, 32)
    z_d = student.model.codec.encode_depth(trainer.normalize_depth(depth)[0])
    for gating_noise in (True, False):
        cfg = make_config(overrides={"pure_noise_prob": 0.0, "gating_noise": gating_noise})
        training_step(student, student.model.codec, teacher, ema, image, depth, cfg)
        seen = student.calls[-1][0]
        assert torch.equal(seen, z_d) != gating_noise  # gated: noise replaces z_d where e > 0


def test_a_few_steps_log_finite_losses_and_save_loadable_checkpoints(models, tmp_path):
    write_images(tmp_path / "imgs", 4)
    cfg = tiny_config(models, [tmp_path / "imgs"], tmp_path / "run", max_steps=3, checkpoint_every=1, keep_checkpoints=2,
                      validate_every=2, validation_images=1)
    mask = os.umask(0o022)
    try:
        result = train(cfg)
    finally:
        os.umask(mask)
    assert result.interrupted is None and result.state.step == 3
    assert (result.state.epoch, result.state.batch) == (1, 2)  # 4 images, 2 per step: one epoch and a half
    logged = scalars(tmp_path / "run" / "logs")
    for tag in ("loss/total", "loss/sds", "loss/rec", "lr", "grad_norm", "it_per_s", "data/skipped_images"):
        assert len(logged[tag]) == 3 and all(math.isfinite(v) for v in logged[tag]), tag
    assert all(v > 0 for v in logged["loss/sds"] + logged["loss/rec"])
    pictures = images(tmp_path / "run" / "logs")
    assert pictures == {f"validation/0/{n}": [1, 2, 3] for n in ("image", "metric_depth", "difference", "student_depth")}
    assert logged["lr"][0] == pytest.approx(2e-4)  # lr x batch 1 x grad_accum 2 x 1 process, warm-up done
    # Keep the last 2 checkpoints, each complete; the student folder is a model the pipeline loads.
    folders = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert folders == ["step-0000002", "step-0000003"]
    ckpt = result.checkpoint
    assert yaml.safe_load((ckpt / "config.yaml").read_text()) == config_dict(cfg)
    assert json.loads((ckpt / "trainer_state.json").read_text())["step"] == 3
    loaded = DiffusionDepthModel.from_pretrained(ckpt / "student")
    assert state_dicts_equal(loaded.state_dict(), result.student.state_dict())
    init = DiffusionDepthModel.from_pretrained(models["teacher"])
    assert not torch.equal(loaded.unet.conv_in.weight, init.unet.conv_in.weight)  # trained
    assert state_dicts_equal(loaded.vae.state_dict(), init.vae.state_dict())  # frozen
    ema = DiffusionDepthModel.from_pretrained(ckpt / "ema")
    assert state_dicts_equal(ema.state_dict(), result.ema.state_dict())
    # "latest" is the newest complete checkpoint; a half-written temporary folder is never chosen.
    (tmp_path / "run" / "checkpoints" / ".tmp-step-0000009").mkdir()
    assert resolve_resume(tmp_path / "run", "latest") == ckpt
    with pytest.raises(FileNotFoundError, match="does not exist or is incomplete"):
        resolve_resume(tmp_path / "run", str(tmp_path / "nowhere"))
    # The finished run's pipeline folder is what `sharpdepth predict --model` and the node load.
    assert result.pipeline == tmp_path / "run" / "pipeline"
    pipe = SharpDepthPipeline.from_pretrained(tmp_path / "run" / "pipeline")
    assert state_dicts_equal(pipe.student.state_dict(), result.student.state_dict())
    assert torch.isfinite(pipe(pattern(3, 32, 32), seed=0).metric_depth).all()
    # Each checkpoint's student carries what it needs beside it: no metric backend to name.
    origin = {"teacher": str(Path(models["teacher"]).resolve()), "metric": str(Path(models["metric_path"]).resolve()),
              "embedded": False}
    assert json.loads((ckpt / "pipeline.json").read_text()) == {
        "metric_backend": "depth-anything-v2", "metric_path": str(Path(models["metric_path"]).resolve()),
        "processing_res": 32, "difference_fit_first": False, "untrained": False, "distilled_from": origin}
    assert pipe.distilled_from == origin
    from_ckpt = SharpDepthPipeline.from_pretrained(student=ckpt / "student")
    assert from_ckpt.processing_res == 32 and from_ckpt.metric_model.name == "depth-anything-v2"
    torch.testing.assert_close(from_ckpt(pattern(3, 32, 32), seed=0).depth, pipe(pattern(3, 32, 32), seed=0).depth)
    # Every file the run wrote honours the umask (safetensors alone would write the weights 0600).
    modes = {oct(f.stat().st_mode & 0o777) for f in (tmp_path / "run").rglob("*") if f.is_file()}
    assert modes == {"0o644"}


def test_a_run_shorter_than_validate_every_logs_pictures_early_and_at_its_end(models, tmp_path):
    """A short run (max_steps 3, validate_every 100) logged no pictures at all."""
    write_images(tmp_path / "imgs", 4)
    cfg = tiny_config(models, [tmp_path / "imgs"], tmp_path / "run", max_steps=3, grad_accum=1, validate_every=100,
                      validation_images=2)
    train(cfg)
    pictures = images(tmp_path / "run" / "logs")
    names = ("image", "metric_depth", "difference", "student_depth")
    assert pictures == {f"validation/{i}/{n}": [1, 3] for i in range(2) for n in names}


def test_interrupt_and_resume_reaches_the_same_state_as_an_uninterrupted_run(models, tmp_path, monkeypatch):
    write_images(tmp_path / "imgs", 6)  # 3 optimizer steps per epoch
    before = signal.getsignal(signal.SIGINT)  # Python's default, or SIG_IGN when started in the background
    full = train(tiny_config(models, [tmp_path / "imgs"], tmp_path / "full", max_steps=5))
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    calls, real_step = [], trainer.training_step

    def signal_during_third_micro_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            signal.raise_signal(signal.SIGINT)  # the real handler; the loop stops after step 2
        return real_step(*args, **kwargs)

    monkeypatch.setattr(trainer, "training_step", signal_during_third_micro_batch)
    part = train(tiny_config(models, [tmp_path / "imgs"], tmp_path / "split", max_steps=5))
    assert part.interrupted == signal.SIGINT and part.state.step == 2 and part.checkpoint.name == "step-0000002"
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored
    monkeypatch.undo()
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    rest = train(tiny_config(models, [tmp_path / "imgs"], tmp_path / "split", max_steps=5), resume="latest")
    # One run, one folder of logs: the resumed part writes beside the first (no logs/<timestamp>/ folders).
    assert not [p for p in (tmp_path / "split" / "logs").iterdir() if p.is_dir()]
    assert scalars(tmp_path / "split" / "logs")["loss/total"] == pytest.approx(scalars(tmp_path / "full" / "logs")["loss/total"])
    assert rest.state == full.state
    assert state_dicts_equal(rest.student.state_dict(), full.student.state_dict())
    assert state_dicts_equal(rest.ema.state_dict(), full.ema.state_dict())
    assert optimizer_states_equal(rest.optimizer, full.optimizer)
    assert not state_dicts_equal(rest.ema.state_dict(), rest.student.state_dict())  # the EMA really averages
    for name in ("random_states_0.pkl", "scheduler.bin"):
        assert (rest.checkpoint / name).read_bytes() == (full.checkpoint / name).read_bytes(), name


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_cli_signal_to_the_process_group_saves_and_resume_latest_finishes(models, tmp_path, caplog, signum):
    """As a scheduler (SIGTERM) or a terminal's Ctrl-C (SIGINT) stops a job: the whole process group gets it,
    data-loader workers included; the run ends promptly with a checkpoint."""
    write_images(tmp_path / "imgs", 4)
    cfg = tiny_config(models, [tmp_path / "imgs"], tmp_path / "run", max_steps=50, grad_accum=1, num_workers=2,
                      checkpoint_every=1, keep_checkpoints=1)
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(config_dict(cfg)))
    proc = run_cli([str(REPO / "train" / "distill.py"), "--config", str(tmp_path / "cfg.yaml")])
    first = tmp_path / "run" / "checkpoints" / "step-0000001"
    deadline = time.monotonic() + 120
    while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signum)
    rc, err = finish(proc, timeout=120)
    name = signal.Signals(signum).name
    assert rc == 128 + signum, err[-2000:]
    assert "Traceback" not in err and f"stopped by {name}" in err
    (ckpt,) = (tmp_path / "run" / "checkpoints").iterdir()
    step = json.loads((ckpt / "trainer_state.json").read_text())["step"]
    assert 1 <= step < 50
    if signum == signal.SIGINT:
        return
    with caplog.at_level(logging.WARNING, logger="sharpdepth_core.trainer"):
        rest = train(dataclasses.replace(cfg, max_steps=step + 2, num_workers=0), resume="latest")
    assert rest.interrupted is None and rest.state.step == step + 2
    assert "differs in: max_steps, num_workers" in caplog.text  # a changed config is said out loud


def test_two_processes_keep_identical_replicas(models, tmp_path):
    write_images(tmp_path / "imgs", 4)
    cfg = tiny_config(models, [tmp_path / "imgs"], tmp_path / "run", max_steps=2, grad_accum=1, log_every=100)
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(config_dict(cfg)))
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "test")])}  # this checkout's packages
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(REPO / "test" / "helpers_training.py"), str(tmp_path / "cfg.yaml"), str(tmp_path)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    r0, r1 = load_file(tmp_path / "rank0.safetensors"), load_file(tmp_path / "rank1.safetensors")
    assert state_dicts_equal(r0, r1)
    init = DiffusionDepthModel.from_pretrained(models["teacher"])
    assert not torch.equal(r0["student.unet.conv_in.weight"], init.unet.conv_in.weight)
    saved = json.loads((tmp_path / "run" / "checkpoints" / "step-0000002" / "trainer_state.json").read_text())
    assert saved["step"] == 2 and saved["batch"] == 2  # each process took 2 of the 4 images
    assert (tmp_path / "run" / "checkpoints" / "step-0000002" / "random_states_1.pkl").is_file()


def test_training_on_a_rosbag2_mcap_recording_in_bf16_with_a_depth_cache(models, tmp_path):
    frames = [pattern(i, 24, 40) for i in range(2)]
    bag = write_bag(tmp_path / "drive", frames, compressed_topic="/camera/image_raw/compressed", corrupt_compressed=1)
    cfg = tiny_config(models, [bag], tmp_path / "run", max_steps=2, mixed_precision="bf16",
                      depth_cache=str(tmp_path / "cache"), flip_before_metric=False)
    result = train(cfg)
    assert (result.state.step, result.state.epoch, result.state.batch) == (2, 0, 4)  # 4 messages: one epoch
    logged = scalars(tmp_path / "run" / "logs")
    assert all(math.isfinite(v) for v in logged["loss/total"])
    saved = json.loads((result.checkpoint / "trainer_state.json").read_text())
    assert saved["skipped_images"] == 1 and logged["data/skipped_images"][-1] == 1  # the garbage PNG
    # f_D's depth of the three readable images is cached, exactly what f_D computes.
    cache = DepthCache(cfg.depth_cache, f"{cfg.metric_model}|{cfg.metric_path}", (32, 32))
    assert len(list(Path(cfg.depth_cache).rglob("*.npy"))) == 3
    ds = TrainingImages([open_source(bag)], (32, 32))
    metric = load_metric_model(cfg.metric_model, cfg.metric_path)
    item = ds[0]
    torch.testing.assert_close(cache.load([item["key"]]), metric(item["image"][None]).depth)
    DiffusionDepthModel.from_pretrained(result.checkpoint / "student")  # usable as it is


def test_missing_images_or_weights_fail_with_a_clear_message(models, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images .* under .*empty"):
        train(tiny_config(models, [tmp_path / "empty"], tmp_path / "run", max_steps=1))
    write_images(tmp_path / "imgs", 2)
    with pytest.raises(FileNotFoundError, match="no model folder at .*nowhere"):
        train(tiny_config(models, [tmp_path / "imgs"], tmp_path / "run", max_steps=1, teacher=str(tmp_path / "nowhere")))


# --- bad data, signals, output folders ------------------------------------------------------------


def _unreadable_folder(folder: Path) -> Path:
    folder.mkdir()
    for i in range(3):
        (folder / f"a{i}.png").write_bytes(b"not an image")
    return folder


def test_a_run_on_sharded_models_says_what_loads_in_one_line_without_loading_bars(models, tmp_path):
    """distill.py drew a "Loading checkpoint shards" bar per sharded model (in a fresh process: hiding the
    libraries' bars is process-wide)."""
    import shutil

    from diffusers import UNet2DConditionModel
    from transformers import AutoModelForDepthEstimation

    teacher, metric = tmp_path / "lotus", tmp_path / "metric"
    shutil.copytree(models["teacher"], teacher, ignore=shutil.ignore_patterns("unet"))
    UNet2DConditionModel.from_pretrained(Path(models["teacher"]) / "unet").save_pretrained(teacher / "unet", max_shard_size="1MB")
    AutoModelForDepthEstimation.from_pretrained(models["metric_path"]).save_pretrained(metric, max_shard_size="100KB")
    assert len(list((teacher / "unet").glob("*.safetensors"))) > 1 and len(list(metric.glob("*.safetensors"))) > 1
    write_images(tmp_path / "imgs", 4)
    cfg = tiny_config({**models, "teacher": str(teacher), "metric_path": str(metric)}, [tmp_path / "imgs"], tmp_path / "run",
                      max_steps=1, grad_accum=1)
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(config_dict(cfg)))
    rc, err = finish(run_cli([str(REPO / "train" / "distill.py"), "--config", str(tmp_path / "cfg.yaml")]), 300)
    assert rc == 0, err[-3000:]
    assert "Loading checkpoint shards" not in err and "Loading weights" not in err
    (line,) = [ln for ln in err.splitlines() if "loading the" in ln]
    assert line.endswith(f"sharpdepth_core.trainer: loading the teacher {teacher} (the student starts from it) and the "
                         f"metric model depth-anything-v2 ({metric}) on cpu")


@pytest.mark.parametrize("workers", [0, 2])
def test_unreadable_data_ends_the_run_with_one_line(models, tmp_path, workers):
    """It hung for good with data-loader workers (they ignored the signals the main process waited on)."""
    cfg = tiny_config(models, [_unreadable_folder(tmp_path / "bad")], tmp_path / "run", max_steps=2, num_workers=workers)
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(config_dict(cfg)))
    rc, err = finish(run_cli([str(REPO / "train" / "distill.py"), "--config", str(tmp_path / "cfg.yaml")]), 120)
    assert rc == 1 and "Traceback" not in err, err[-3000:]
    (line,) = [ln for ln in err.splitlines() if ln.startswith("distill.py: error")]
    assert line.startswith("distill.py: error: none of the 3 training images can be read (the last: ")


def test_a_data_error_in_a_loader_worker_ends_the_run_with_one_line(models, tmp_path):
    """Images that become unreadable after start-up (read only by the workers then): one line, no hang."""
    write_images(tmp_path / "imgs", 4)
    cfg = tiny_config(models, [tmp_path / "imgs"], tmp_path / "run", max_steps=4, grad_accum=1, num_workers=2)
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(config_dict(cfg)))
    script = f"""
import os, runpy, sys
from sharpdepth_core import data
main_process, read = os.getpid(), data.ImageFolder.read
def gone_in_workers(self, i):
    if os.getpid() != main_process:
        raise data.UnreadableImage(f"{{self.files[i]}}: deleted")
    return read(self, i)
data.ImageFolder.read = gone_in_workers
sys.argv = ["distill.py", "--config", {str(tmp_path / "cfg.yaml")!r}]
runpy.run_path({str(REPO / "train" / "distill.py")!r}, run_name="__main__")
"""
    rc, err = finish(run_cli(["-c", script]), 120)
    assert rc == 1 and "Traceback" not in err, err[-3000:]
    (line,) = [ln for ln in err.splitlines() if ln.startswith("distill.py: error")]
    assert line.startswith("distill.py: error: none of the 4 training images can be read (the last: ")
    assert line.endswith(": deleted)")


def test_resuming_with_a_student_of_another_architecture_is_one_line(models, tmp_path):
    from diffusers import UNet2DConditionModel

    write_images(tmp_path / "imgs", 2)
    cfg = tiny_config(models, [tmp_path / "imgs"], tmp_path / "run", max_steps=1, grad_accum=1)
    ckpt = train(cfg).checkpoint
    reset_accelerate()
    narrow = DiffusionDepthModel.from_pretrained(models["teacher"])
    narrow.unet = UNet2DConditionModel.from_config({**narrow.unet.config, "block_out_channels": [16, 32]})
    narrow.save_pretrained(tmp_path / "narrow")
    with pytest.raises(CheckpointError) as err:
        train(dataclasses.replace(cfg, teacher=str(tmp_path / "narrow"), max_steps=2), resume="latest")
    message = str(err.value)
    assert "\n" not in message and len(message) < 800
    assert message.startswith(f"cannot resume from {ckpt}: its student is another architecture")
    assert "unet block_out_channels [32, 64] (checkpoint) vs [16, 32]" in message and str(tmp_path / "narrow") in message


def test_files_in_output_dir_the_trainer_did_not_write_are_left_alone(models, tmp_path):
    write_images(tmp_path / "imgs", 4)
    out = tmp_path / "run"
    mine = {out / "notes.txt": "mine", out / "checkpoints" / "keep" / "a.txt": "mine",
            out / "checkpoints" / "step-final" / "trainer_state.json": "{}", out / "checkpoints" / "step-2" / "b.txt": "mine",
            out / "logs" / "c.txt": "mine", out / "pipeline.txt": "mine"}
    for path, text in mine.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    cfg = tiny_config(models, [tmp_path / "imgs"], out, max_steps=3, grad_accum=1, checkpoint_every=1, keep_checkpoints=1)
    train(cfg)
    assert all(path.read_text() == text for path, text in mine.items())
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["keep", "step-0000003", "step-2", "step-final"]
    # What the run would replace or mix with, it refuses before training, naming it.
    reset_accelerate()
    with pytest.raises(FileExistsError, match=r"holds the checkpoints of an earlier run \(newest step-0000003\).*--resume latest"):
        train(cfg)
    (tmp_path / "other" / "pipeline").mkdir(parents=True)
    (tmp_path / "other" / "pipeline" / "a.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"other/pipeline exists and is not a pipeline folder"):
        train(dataclasses.replace(cfg, output_dir=str(tmp_path / "other")))
    (tmp_path / "third" / "checkpoints" / "step-0000002").mkdir(parents=True)
    with pytest.raises(FileExistsError, match=r"third/checkpoints/step-0000002 is not a complete checkpoint"):
        train(dataclasses.replace(cfg, output_dir=str(tmp_path / "third")))
    assert not (tmp_path / "other" / "checkpoints").exists() and not (tmp_path / "third" / "logs").exists()


@pytest.mark.parametrize("failure", [OSError(errno.ENOSPC, "No space left on device"),
                                     RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 64 vs 0")])
def test_a_checkpoint_that_cannot_be_written_is_one_line_and_leaves_the_last_one_intact(models, tmp_path, monkeypatch,
                                                                                         capsys, failure):
    """A full disk mid-checkpoint (torch reports it as the RuntimeError): two tracebacks, and the partial
    folder left on the full disk. Now: one line with the folder and the space needed, nothing partial."""
    write_images(tmp_path / "imgs", 4)
    cfg = tiny_config(models, [tmp_path / "imgs"], tmp_path / "run", max_steps=3, grad_accum=1, checkpoint_every=1)
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(config_dict(cfg)))
    real_save, saves = trainer._Run._save_models, []

    def disk_full_at_the_second_checkpoint(self, models_, weights, output_dir):
        real_save(self, models_, weights, output_dir)  # student/ and ema/ written: the disk fills up after them
        saves.append(output_dir)
        if len(saves) == 2:
            raise failure

    monkeypatch.setattr(trainer._Run, "_save_models", disk_full_at_the_second_checkpoint)
    assert _distill_module().main(["--config", str(tmp_path / "cfg.yaml")]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = [ln for ln in err.splitlines() if ln.startswith("distill.py: error")]
    checkpoints, first = tmp_path / "run" / "checkpoints", tmp_path / "run" / "checkpoints" / "step-0000001"
    assert line.startswith(f"distill.py: error: cannot write checkpoint {checkpoints / 'step-0000002'} (")
    assert line.endswith(f"{first} is intact: free some space and continue with --resume latest")
    need = float(re.search(r"it needs about ([\d.]+) MB", line).group(1)) * 1e6
    written = sum(f.stat().st_size for f in first.rglob("*") if f.is_file())
    assert 0.9 * written < need < 1.1 * written  # the estimate is the size of a checkpoint
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step-0000001"]  # no partial folder
    assert json.loads((first / "trainer_state.json").read_text())["step"] == 1
    monkeypatch.undo()
    reset_accelerate()
    assert train(cfg, resume="latest").state.step == 3  # space freed: the run continues from the intact one


def test_resume_latest_passes_over_damaged_checkpoints_and_an_explicit_one_is_one_line(models, tmp_path, caplog, capsys):
    """A truncated optimizer.bin or a non-weights pickle ended in a 35-line traceback advising weights_only=False."""
    write_images(tmp_path / "imgs", 4)
    cfg = tiny_config(models, [tmp_path / "imgs"], tmp_path / "run", max_steps=3, grad_accum=1, checkpoint_every=1,
                      keep_checkpoints=3)
    train(cfg)
    reset_accelerate()
    step1, step2, step3 = sorted((tmp_path / "run" / "checkpoints").iterdir())
    optimizer = step3 / "optimizer.bin"
    optimizer.write_bytes(optimizer.read_bytes()[: optimizer.stat().st_size // 2])  # cut short
    torch.save({"rng": argparse.Namespace(seed=1)}, step2 / "random_states_0.pkl")  # an object, not weights
    with caplog.at_level(logging.INFO, logger="sharpdepth_core.trainer"):
        assert resolve_resume(tmp_path / "run", "latest") == step1
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warned == [f"{optimizer} is damaged: truncated, or not a torch state file; resuming from the newest intact "
                      f"checkpoint, {step1}",
                      f"{step2 / 'random_states_0.pkl'} is damaged: it holds objects other than tensors and plain values, "
                      f"which are never loaded; resuming from the newest intact checkpoint, {step1}"]
    with caplog.at_level(logging.INFO, logger="sharpdepth_core.trainer"):
        result = train(dataclasses.replace(cfg, max_steps=2), resume="latest")
    assert result.state.step == 2 and f"resumed from {step1} at step 1" in caplog.text
    assert json.loads((step2 / "trainer_state.json").read_text())["step"] == 2  # the damaged step-2 replaced
    # An explicit damaged checkpoint: one line naming the file, from the command line too.
    reset_accelerate()
    with pytest.raises(SystemExit) as exit_:
        _distill_module().main(["--resume", str(step3), "--print-config"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err and "weights_only" not in err
    assert err.splitlines()[-1] == (f"distill.py: error: cannot resume from {step3}: {optimizer} is damaged: truncated, "
                                    "or not a torch state file")
    weights = step2 / "student" / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match=f"^cannot resume from {step2}: {weights} is damaged: .*incomplete"):
        resolve_resume(tmp_path / "run", str(step2))
    (step1 / "trainer_state.json").write_text("{")
    with pytest.raises(CheckpointError, match=rf"^no intact checkpoint in {tmp_path / 'run' / 'checkpoints'}: {step3}.*"
                                              r"\(and 2 older ones are damaged too\)$"):
        resolve_resume(tmp_path / "run", "latest")


def test_a_pipeline_folder_the_final_save_would_refuse_stops_the_run_before_its_first_step(models, tmp_path, monkeypatch):
    """A user's file in <output_dir>/pipeline/: the run trained to the end and only the final save refused
    (and --resume latest hit the same wall). The check is the save's own rule, applied first."""
    write_images(tmp_path / "imgs", 4)
    cfg = tiny_config(models, [tmp_path / "imgs"], tmp_path / "run", max_steps=1, grad_accum=1, checkpoint_every=1)
    train(cfg)  # a finished run: pipeline/ is its own
    reset_accelerate()
    assert train(dataclasses.replace(cfg, max_steps=2), resume="latest").state.step == 2  # its own pipeline/ is replaced
    reset_accelerate()
    pipeline = tmp_path / "run" / "pipeline"
    (pipeline / "student" / "notes.txt").write_text("mine")
    steps = []
    monkeypatch.setattr(trainer, "training_step", lambda *a, **k: steps.append(1))
    with pytest.raises(ValueError) as err:
        train(dataclasses.replace(cfg, max_steps=3), resume="latest")
    assert str(err.value).startswith(f"{pipeline}: refusing to replace a non-empty folder that the project did not write "
                                     "(it holds student/notes.txt, which a finished run's pipeline does not hold)")
    assert "\n" not in str(err.value) and steps == []  # before the first step
    assert (pipeline / "student" / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["checkpoints", "logs", "pipeline"]  # no scratch left
    (pipeline / "student" / "notes.txt").unlink()
    (pipeline / ".sharpdepth-mine").mkdir()  # named like the project's scratch, but the user's (issue 26 A)
    (pipeline / ".sharpdepth-mine" / "thesis.txt").write_text("mine")
    reset_accelerate()
    with pytest.raises(ValueError, match=r"it holds \.sharpdepth-mine/, \.sharpdepth-mine/thesis.txt, which a finished"):
        train(dataclasses.replace(cfg, max_steps=3), resume="latest")
    assert steps == [] and (pipeline / ".sharpdepth-mine" / "thesis.txt").read_text() == "mine"
    assert not [p for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.startswith(".")]  # checkpoint scratch gone
    # The same rule for a fresh run's output folder; an empty pipeline/ is fine, as the save finds it.
    reset_accelerate()
    other = tmp_path / "other" / "pipeline"
    other.mkdir(parents=True)
    (other / "pipeline.json").write_text("{}")
    (other / "README.md").write_text("mine")
    with pytest.raises(ValueError, match=r"it holds README.md, which a finished run's pipeline does not hold"):
        train(dataclasses.replace(cfg, output_dir=str(tmp_path / "other")))
    assert steps == [] and (other / "README.md").read_text() == "mine"
    monkeypatch.undo()
    reset_accelerate()
    (other / "pipeline.json").unlink()
    (other / "README.md").unlink()
    assert train(dataclasses.replace(cfg, output_dir=str(tmp_path / "other"))).pipeline == other


# --- offline, the nano preset, resuming with the saved config ----------------------------------------


def test_the_readme_command_offline_names_every_setting_to_change_in_one_line(tmp_path):
    write_images(tmp_path / "imgs", 2)
    proc = run_cli([str(REPO / "train" / "distill.py"), "--preset", "reference", "--data", str(tmp_path / "imgs"),
                    "--output-dir", str(tmp_path / "run")], HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    rc, err = finish(proc, 120)
    assert rc == 1 and "Traceback" not in err, err[-3000:]
    (line,) = [ln for ln in err.splitlines() if ln.startswith("distill.py: error")]
    assert line.startswith("distill.py: error: the models of this config cannot be found; set teacher, metric_")
    assert "teacher: f_G teacher: 'jingheya/lotus-depth-g-v1-0' is not a local folder" in line
    assert "--preset nano" in line and not (tmp_path / "run").exists()


def test_pipeline_config_names_a_local_metric_folder_absolutely(tmp_path, monkeypatch):
    (tmp_path / "fd").mkdir()
    monkeypatch.chdir(tmp_path)
    cfg = make_config(overrides={"metric_model": "depth-anything-v2", "metric_path": "fd", "resolution": [48, 64]})
    assert training_config.student_pipeline_config(cfg) == {
        "metric_backend": "depth-anything-v2", "metric_path": str(tmp_path / "fd"), "processing_res": 64,
        "difference_fit_first": False, "untrained": False,
        "distilled_from": {"teacher": "jingheya/lotus-depth-g-v1-0", "metric": str(tmp_path / "fd"), "embedded": False}}
    hub = make_config("paper", overrides={"metric_model": "depth-pro"})
    assert training_config.student_pipeline_config(hub)["metric_path"] == "apple/DepthPro-hf"
    assert training_config.student_pipeline_config(hub)["difference_fit_first"] is True


def test_pipeline_json_records_whether_the_student_was_distilled_from_the_embedded_models(tmp_path, monkeypatch):
    """Decided on resolved paths: any teacher, or the initial student, inside the embedded models' folder."""
    nano = training_config.distilled_from(PRESETS["nano"])
    assert nano == {"teacher": str(EMBEDDED_DIR / "teacher"), "metric": str(EMBEDDED_DIR / "metric"), "embedded": True}
    (tmp_path / "fg").mkdir()
    (tmp_path / "link").symlink_to(EMBEDDED_DIR)
    monkeypatch.chdir(tmp_path)
    real = make_config(overrides={"teacher": "fg", "metric_model": "depth-anything-v2", "metric_path": "fg"})
    assert training_config.distilled_from(real)["embedded"] is False
    for field, value in [("metric_path", "link/metric"), ("student_init", "link/../nano/student"), ("teacher", "link/teacher")]:
        origin = training_config.distilled_from(dataclasses.replace(real, **{field: value}))
        assert origin["embedded"] is True and str(EMBEDDED_DIR) in origin[{"metric_path": "metric"}.get(field, field)]


def test_nano_preset_trains_on_an_image_folder_and_its_pipeline_loads(models, tmp_path, capsys):
    """`--preset nano` with the embedded f_D and, for speed, a tiny teacher: the pipeline records that an
    embedded model taught it."""
    write_images(tmp_path / "imgs", 4)
    sets = {"teacher": models["teacher"], "resolution": "[32, 32]", "max_steps": 2, "num_workers": 0,
            "batch_size": 2, "depth_cache": tmp_path / "cache", "validate_every": 0}
    argv = ["--preset", "nano", "--data", str(tmp_path / "imgs"), "--output-dir", str(tmp_path / "run")]
    rc = _distill_module().main(argv + [f"--set={k}={v}" for k, v in sets.items()])
    out = capsys.readouterr().out
    assert rc == 0
    assert f"pipeline (--model, the node's model): {tmp_path / 'run' / 'pipeline'}" in out
    saved = yaml.safe_load((tmp_path / "run" / "checkpoints" / "step-0000002" / "config.yaml").read_text())
    assert (saved["metric_model"], saved["lr"], saved["ema_beta"]) == ("small-conv", 1e-4, 0.99)
    pipe = SharpDepthPipeline.from_pretrained(tmp_path / "run" / "pipeline")
    assert pipe.metric_model.name == "small-conv" and pipe.processing_res == 32
    assert torch.isfinite(pipe(pattern(5, 32, 32), seed=0).depth).all()
    origin = {"teacher": str(Path(models["teacher"]).resolve()), "metric": str(EMBEDDED_DIR / "metric"), "embedded": True}
    assert pipe.distilled_from == origin
    from_checkpoint = SharpDepthPipeline.from_pretrained(student=tmp_path / "run" / "checkpoints" / "step-0000002" / "student")
    assert from_checkpoint.distilled_from == origin


def test_resume_latest_alone_continues_with_the_runs_saved_config(models, tmp_path, monkeypatch, capsys, caplog):
    monkeypatch.chdir(tmp_path)  # the default output_dir, runs/sharpdepth, is relative
    write_images(tmp_path / "imgs", 4)
    cfg = tiny_config(models, [tmp_path / "imgs"], PRESETS["reference"].output_dir, max_steps=2, grad_accum=1, seed=3)
    train(cfg)
    reset_accelerate()
    distill = _distill_module()
    assert distill.main(["--resume", "latest", "--print-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == config_dict(cfg)
    with caplog.at_level(logging.WARNING, logger="sharpdepth_core.trainer"):
        assert distill.main(["--resume", "latest", "--max-steps", "4"]) == 0
    assert "differs in: max_steps" in caplog.text
    saved = Path("runs/sharpdepth/checkpoints/step-0000004")
    assert json.loads((saved / "trainer_state.json").read_text())["step"] == 4
    assert yaml.safe_load((saved / "config.yaml").read_text()) == {**config_dict(cfg), "max_steps": 4}


# --- the reference script's EMA order and flip -----------------------------------------------------


@pytest.mark.parametrize("before", [True, False])
def test_ema_update_before_or_after_the_optimizer_step(models, tmp_path, before):
    """While the EMA still copies the student (step <= ema_update_after_step), it holds the weights it saw:
    updated before the optimizer step, those of the step before (the reference script's order)."""
    write_images(tmp_path / "imgs", 4)
    cfg = tiny_config(models, [tmp_path / "imgs"], tmp_path / "run", max_steps=2, grad_accum=1, checkpoint_every=1,
                      keep_checkpoints=2, ema_update_after_step=10, ema_before_step=before)
    result = train(cfg)
    step1 = DiffusionDepthModel.from_pretrained(tmp_path / "run" / "checkpoints" / "step-0000001" / "student")
    assert not state_dicts_equal(step1.state_dict(), result.student.state_dict())
    assert state_dicts_equal(result.ema.state_dict(), (step1 if before else result.student).state_dict())


@pytest.mark.parametrize("before", [True, False])
def test_flip_before_or_after_f_d(models, tmp_path, before):
    """Reference: f_D sees the flipped image (its cache entry keyed by the flip); otherwise f_D sees the
    image as read and its depth is flipped with it."""
    write_images(tmp_path / "imgs", 4)
    cfg = tiny_config(models, [tmp_path / "imgs"], tmp_path / "run", max_steps=2, depth_cache=str(tmp_path / "cache"),
                      flip_before_metric=before)  # 2 steps x 2 micro-batches: each image once
    train(cfg)
    cache = DepthCache(cfg.depth_cache, f"{cfg.metric_model}|{cfg.metric_path}", (32, 32))
    metric = load_metric_model(cfg.metric_model, cfg.metric_path)
    ds = TrainingImages([open_source(tmp_path / "imgs")], (32, 32))
    flipped_seen = 0
    for i in range(len(ds)):
        image = ds[i]["image"][None]
        plain, flipped = cache.load([ds[i]["key"]]), cache.load([ds[i]["key"] + "|flipped"])
        assert (plain is None) != (flipped is None)  # one entry per image seen
        if flipped is not None:
            flipped_seen += 1
            torch.testing.assert_close(flipped, metric(image.flip(-1)).depth)  # f_D ran on the flipped image,
            assert (flipped - metric(image).depth.flip(-1)).abs().max() > 1e-3  # which is not its depth flipped
        else:
            torch.testing.assert_close(plain, metric(image).depth)
    assert (flipped_seen > 0) == before
    assert len(list(Path(cfg.depth_cache).rglob("*.npy"))) == 4


def test_a_bad_depth_cache_entry_is_recomputed_during_training(models, tmp_path, caplog):
    write_images(tmp_path / "imgs", 4)
    cfg = tiny_config(models, [tmp_path / "imgs"], tmp_path / "run", max_steps=2, depth_cache=str(tmp_path / "cache"),
                      flip_before_metric=False)
    cache = DepthCache(cfg.depth_cache, f"{cfg.metric_model}|{cfg.metric_path}", (32, 32))
    ds = TrainingImages([open_source(tmp_path / "imgs")], (32, 32))
    bad = {0: np.full((1, 32, 32), np.nan, np.float32), 1: np.ones((1, 16, 32), np.float32), 2: None}
    for i, depth in bad.items():
        path = cache.path(ds[i]["key"])
        path.parent.mkdir(parents=True, exist_ok=True)
        if depth is None:
            np.save(path, np.ones((1, 32, 32), np.float32))
            path.write_bytes(path.read_bytes()[:200])  # truncated
        else:
            np.save(path, depth)
    with caplog.at_level(logging.WARNING, logger="sharpdepth_core.data"):
        result = train(cfg)
    assert result.state.step == 2 and math.isfinite(scalars(tmp_path / "run" / "logs")["loss/total"][-1])
    metric = load_metric_model(cfg.metric_model, cfg.metric_path)
    for i in range(4):  # every entry now holds f_D's depth
        torch.testing.assert_close(cache.load([ds[i]["key"]]), metric(ds[i]["image"][None]).depth)
    warned = [r.message for r in caplog.records if "depth cache" in r.message]
    assert len(warned) == 3  # once each, naming its file
    assert all(sum(str(cache.path(ds[i]["key"])) in w for w in warned) == 1 for i in bad)


def test_a_repeated_signal_stops_at_once_unless_it_is_the_launchers_echo(monkeypatch):
    before = signal.getsignal(signal.SIGINT)
    with trainer.StopOnSignal() as stop:
        signal.raise_signal(signal.SIGINT)
        assert stop.signum == signal.SIGINT  # first: save a checkpoint after this step, then stop
        signal.raise_signal(signal.SIGINT)  # at once again: the launcher forwarding the same Ctrl-C
        monkeypatch.setattr(trainer.StopOnSignal, "ECHO_S", 0.0)
        with pytest.raises(KeyboardInterrupt):  # later again: the user insists, the run stops now
            signal.raise_signal(signal.SIGTERM)
    assert signal.getsignal(signal.SIGINT) is before
