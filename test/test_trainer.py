"""The distillation trainer on tiny real models (diffusers UNet/VAE, transformers Depth Anything), CPU only.

Every run trains for a few optimizer steps on 32x32 images. The 2-process run uses torchrun with
accelerate's CPU mode (gloo), the launcher `accelerate launch` itself uses for several GPUs.
"""
import dataclasses
import importlib.util
import json
import logging
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from sharpdepth_core import trainer
from sharpdepth_core.data import TrainingImages, open_source
from sharpdepth_core.gating import add_noise
from sharpdepth_core.losses import sds_weight
from sharpdepth_core.models.student import DiffusionDepthModel
from sharpdepth_core.pipeline import SharpDepthPipeline
from sharpdepth_core.trainer import PRESETS, TrainConfig, config_dict, make_config, resolve_resume, train, training_step
from training_fixtures import pattern, tiny_models, write_bag, write_images

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def one_thread_and_fresh_accelerate():
    """Tiny models run fastest on one thread (the cores are shared); accelerate keeps singletons."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()


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
def test_bad_overrides_are_one_line_errors(changes, message):
    with pytest.raises(ValueError, match=message):
        make_config("reference", overrides=changes)


def test_a_run_that_cannot_work_is_refused_before_loading_anything(tmp_path):
    with pytest.raises(ValueError, match="data: give at least one"):
        train(make_config(overrides={"output_dir": str(tmp_path)}))
    with pytest.raises(ValueError, match="resolution: .* multiples of 8"):
        train(make_config(overrides={"data": "x", "resolution": [30, 32]}))
    with pytest.raises(ValueError, match="data_probs: 1 values for 2"):
        train(make_config(overrides={"data": "[a, b]", "data_probs": [1.0]}))


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
    with pytest.raises(SystemExit) as err:
        distill.main(["--set", "nope=1"])
    assert err.value.code == 2 and "unknown config field 'nope'" in capsys.readouterr().err
    monkeypatch.setenv("COLUMNS", "200")  # argparse wraps help at the terminal width
    with pytest.raises(SystemExit) as err:
        distill.main(["--help"])
    help_text = capsys.readouterr().out
    assert err.value.code == 0
    assert "--resume latest|PATH" in help_text and "--lambda-rec" in help_text and "[0.4 / 0.3]" in help_text


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
    result = train(cfg)
    assert result.interrupted is None and result.state.step == 3
    assert (result.state.epoch, result.state.batch) == (1, 2)  # 4 images, 2 per step: one epoch and a half
    logged = scalars(tmp_path / "run" / "logs")
    for tag in ("loss/total", "loss/sds", "loss/rec", "lr", "grad_norm", "it_per_s", "data/skipped_images"):
        assert len(logged[tag]) == 3 and all(math.isfinite(v) for v in logged[tag]), tag
    assert all(v > 0 for v in logged["loss/sds"] + logged["loss/rec"])
    pictures = images(tmp_path / "run" / "logs")
    assert pictures == {f"validation/0/{n}": [2] for n in ("image", "metric_depth", "difference", "student_depth")}
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
    pipe = SharpDepthPipeline.from_pretrained(tmp_path / "run" / "pipeline")
    assert state_dicts_equal(pipe.student.state_dict(), result.student.state_dict())
    assert torch.isfinite(pipe(pattern(3, 32, 32), seed=0).metric_depth).all()


def test_interrupt_and_resume_reaches_the_same_state_as_an_uninterrupted_run(models, tmp_path, monkeypatch):
    write_images(tmp_path / "imgs", 6)  # 3 optimizer steps per epoch
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
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored
    monkeypatch.undo()
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    rest = train(tiny_config(models, [tmp_path / "imgs"], tmp_path / "split", max_steps=5), resume="latest")
    assert rest.state == full.state
    assert state_dicts_equal(rest.student.state_dict(), full.student.state_dict())
    assert state_dicts_equal(rest.ema.state_dict(), full.ema.state_dict())
    assert optimizer_states_equal(rest.optimizer, full.optimizer)
    assert not state_dicts_equal(rest.ema.state_dict(), rest.student.state_dict())  # the EMA really averages
    for name in ("random_states_0.pkl", "scheduler.bin"):
        assert (rest.checkpoint / name).read_bytes() == (full.checkpoint / name).read_bytes(), name


def test_cli_sigterm_to_the_process_group_saves_and_resume_latest_finishes(models, tmp_path, caplog):
    """As a scheduler or a terminal stops a job: every process of the group (data workers too) gets it."""
    write_images(tmp_path / "imgs", 4)
    cfg = tiny_config(models, [tmp_path / "imgs"], tmp_path / "run", max_steps=50, grad_accum=1, num_workers=2,
                      checkpoint_every=1, keep_checkpoints=1)
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(config_dict(cfg)))
    cli = [sys.executable, str(REPO / "train" / "distill.py"), "--config", str(tmp_path / "cfg.yaml")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cli, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    first = tmp_path / "run" / "checkpoints" / "step-0000001"
    try:
        while not first.exists() and proc.poll() is None:
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "Traceback" not in err and "stopped by SIGTERM" in err
    (ckpt,) = (tmp_path / "run" / "checkpoints").iterdir()
    step = json.loads((ckpt / "trainer_state.json").read_text())["step"]
    assert 1 <= step < 50
    with caplog.at_level(logging.WARNING, logger="sharpdepth_core.trainer"):
        rest = train(dataclasses.replace(cfg, max_steps=step + 2, num_workers=0), resume="latest")
    assert rest.interrupted is None and rest.state.step == step + 2
    assert "differs in: max_steps, num_workers" in caplog.text  # a changed config is said out loud


def test_two_processes_keep_identical_replicas(models, tmp_path):
    write_images(tmp_path / "imgs", 4)
    cfg = tiny_config(models, [tmp_path / "imgs"], tmp_path / "run", max_steps=2, grad_accum=1, log_every=100)
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(config_dict(cfg)))
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "test")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(REPO / "test" / "training_fixtures.py"), str(tmp_path / "cfg.yaml"), str(tmp_path)]
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
                      depth_cache=str(tmp_path / "cache"))
    result = train(cfg)
    assert (result.state.step, result.state.epoch, result.state.batch) == (2, 0, 4)  # 4 messages: one epoch
    logged = scalars(tmp_path / "run" / "logs")
    assert all(math.isfinite(v) for v in logged["loss/total"])
    saved = json.loads((result.checkpoint / "trainer_state.json").read_text())
    assert saved["skipped_images"] == 1 and logged["data/skipped_images"][-1] == 1  # the garbage PNG
    # f_D's depth of the three readable images is cached, exactly what f_D computes.
    from sharpdepth_core.data import DepthCache
    from sharpdepth_core.models.metric import load_metric_model

    cache = DepthCache(cfg.depth_cache, f"{cfg.metric_model}|{cfg.metric_path}|32x32")
    assert len(list(Path(cfg.depth_cache).rglob("*.npy"))) == 3
    ds = TrainingImages([open_source(bag)], (32, 32))
    metric = load_metric_model(cfg.metric_model, cfg.metric_path)
    item = ds[0]
    torch.testing.assert_close(cache.load([item["key"]]), metric(item["image"][None]).depth)
    DiffusionDepthModel.from_pretrained(result.checkpoint / "student")  # usable as it is


def test_missing_images_or_weights_fail_with_a_clear_message(models, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images .* under .*empty"):
        train(tiny_config(models, [tmp_path / "empty"], tmp_path / "run", max_steps=1))
    write_images(tmp_path / "imgs", 2)
    with pytest.raises(FileNotFoundError, match="no model folder at .*nowhere"):
        train(tiny_config(models, [tmp_path / "imgs"], tmp_path / "run", max_steps=1, teacher=str(tmp_path / "nowhere")))
