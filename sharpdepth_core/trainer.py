"""GT-free distillation (docs/METHOD.md, Training): f_D and a frozen f_G teach a one-step student G_θ.

The configuration (`TrainConfig`, presets, YAML and command line) is `training_config`; checkpoints
(written whole, rotated, checked before resuming) are `checkpoints`. `training_step` is the method,
one batch, read top to bottom; `train` is the loop around it with accelerate (one or many
GPUs/machines, CPU for tests, mixed precision, gradient accumulation), the student's EMA, signals
and TensorBoard. A finished run also writes `<output_dir>/pipeline/`, a pipeline folder (`--model`
of the CLI, `model` of the node) holding the final student and f_D; a `pipeline/` holding what that
save would not write stops the run before training.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import shutil
import signal
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from torch import Tensor, nn

from . import checkpoints
from .data import DataError, DepthCache, MixingSampler, TrainingImages, draw_flips, flip_where, open_source
from .files import foreign_entries, is_scratch, refusal, scratch_dir
from .gating import add_noise, difference_map, downsample_to_latent, gate
from .losses import reconstruction_loss, sds_loss, sds_weight
from .normalization import normalize_depth
from .training_config import TrainConfig, check_config, check_models, config_dict, distilled_from, student_pipeline_config

log = logging.getLogger(__name__)


# --- the method: one batch ---------------------------------------------------------------------


def training_step(student: nn.Module, codec, teacher: nn.Module, difference_model: nn.Module, image: Tensor,
                  depth: Tensor, cfg: TrainConfig) -> dict[str, Tensor]:
    """docs/METHOD.md Training 1-7 for a batch (image in [0, 1], f_D's metric depth); returns the losses.

    `difference_model` makes the difference map (step 2): the student's EMA, or frozen f_G early in
    training. The SDS `teacher` (step 5) is always frozen f_G.
    """
    # 1. f_D's depth (given), normalised; image and depth latents
    d_n, _, _ = normalize_depth(depth)
    with torch.no_grad():
        z_i, z_d = codec.encode_image(image), codec.encode_depth(d_n)
        # 2. d̃ from the difference model's affine pass (pure noise in the depth slot), then e, ê
        z_a = difference_model(z_i, torch.randn_like(z_d))
        e = difference_map(codec.decode_depth(z_a), d_n, fit_first=cfg.fit_difference)
        # 3. the student's input: the gated latent (or the clean z_d: the "no noise" ablation), or pure noise
        gated = (gate(z_d, downsample_to_latent(e, z_d.shape[-2:]), add_noise(z_a, torch.randn_like(z_a)))
                 if cfg.gating_noise else z_d)
        pure = (torch.rand(z_d.shape[0]) < cfg.pure_noise_prob).view(-1, 1, 1, 1).to(z_d.device)
        z_in = torch.where(pure, torch.randn_like(z_d), gated)
    # 4. ẑ = G_θ(input)
    z_hat = student(z_i, z_in)
    # 5. SDS, x0 form, against frozen f_G
    with torch.no_grad():
        x_hat = teacher(z_i, add_noise(z_hat.detach(), torch.randn_like(z_hat)))
    l_sds = sds_loss(z_hat, x_hat, sds_weight())
    # 6. noise-aware reconstruction, through the frozen VAE decoder
    l_rec = reconstruction_loss(codec.decode_depth(z_hat), d_n, e)
    # 7. the total
    loss = cfg.lambda_sds * l_sds + cfg.lambda_rec * l_rec
    return {"loss": loss, "sds": l_sds.detach(), "rec": l_rec.detach(), "e_mean": e.mean()}


# --- the run: models, data, optimisation, state ------------------------------------------------


@dataclass
class TrainState:
    """What `--resume` needs besides accelerate's states: where in the data and the schedule we are."""

    step: int = 0  # optimizer steps done
    epoch: int = 0
    batch: int = 0  # micro-batches of this epoch already consumed (per process)
    skipped_images: int = 0  # unreadable images replaced so far (this process; checkpoints hold the total)


@dataclass
class TrainResult:
    checkpoint: Path  # the last checkpoint folder; its student/ is a loadable model
    state: TrainState
    interrupted: int | None  # the signal number that stopped the run early, if one did
    student: nn.Module  # unwrapped, as on this process
    ema: nn.Module
    optimizer: torch.optim.Optimizer
    pipeline: Path | None  # the finished run's pipeline folder (None when interrupted)


class StopOnSignal:
    """SIGINT/SIGTERM ask the loop to save a checkpoint and stop after the current optimizer step.

    A repeat within `ECHO_S` is ignored (launchers forward the terminal's Ctrl-C, so each process
    may see it twice); a later one stops at once without a checkpoint (KeyboardInterrupt), so
    Ctrl-C always ends a run, even one stuck in a step.
    """

    ECHO_S = 2.0

    def __init__(self):
        self.signum: int | None = None
        self._first = 0.0
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        if self.signum is None:
            self.signum, self._first = signum, time.monotonic()
            log.warning("%s received: saving a checkpoint after this step, then stopping (again to stop at once)", name)
        elif time.monotonic() - self._first > self.ECHO_S:
            log.warning("%s received again: stopping at once, without a checkpoint", name)
            raise KeyboardInterrupt

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


def _own_session(worker_id: int) -> None:
    """Data-loader workers leave the terminal's session: Ctrl-C and a SIGTERM to the process group
    reach only the main process, which saves a checkpoint and then ends them. Their own signals stay
    at the defaults, so the loader's shutdown (SIGTERM) always ends them, and they exit by themselves
    when the main process dies."""
    os.setsid()
    for s in (signal.SIGINT, signal.SIGTERM):  # (a forked worker inherits the main process's handlers)
        signal.signal(s, signal.SIG_DFL)


def _make_ema(student: nn.Module, cfg: TrainConfig):
    # ema-pytorch, not diffusers' EMAModel: the reference's EMA settings are ema-pytorch's own
    # parameters (beta 0.9999, update_after_step 100, update_every 10, with its decay warm-up), so
    # this implementation reproduces the reference's EMA schedule as it is; EMAModel has another
    # warm-up rule and no update_every. The frozen VAE is not averaged.
    from ema_pytorch import EMA

    ema = EMA(student, beta=cfg.ema_beta, update_after_step=cfg.ema_update_after_step, update_every=cfg.ema_update_every,
              include_online_model=False, ignore_startswith_names={"vae."})
    ema.ema_model.eval()
    return ema


class _Run:
    """The live objects of a run, built once: models, data, optimizer, schedule, EMA, depth cache."""

    def __init__(self, cfg: TrainConfig, acc):
        from diffusers.optimization import get_scheduler

        from .models.metric import load_metric_model
        from .models.student import DiffusionDepthModel

        self.cfg, self.acc = cfg, acc
        dev = acc.device
        frozen_dtype = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[cfg.mixed_precision]
        sources = [open_source(p, cfg.topics) for p in cfg.data]
        self.dataset = TrainingImages(sources, cfg.resolution)
        self.dataset[0]  # at least one image is readable (else one DataError now, before any model loads)
        self.sampler = MixingSampler([len(s) for s in sources], cfg.data_probs, seed=cfg.seed)
        loader = torch.utils.data.DataLoader(
            self.dataset, batch_size=cfg.batch_size, sampler=self.sampler, num_workers=cfg.num_workers, drop_last=True,
            generator=torch.Generator().manual_seed(cfg.seed),  # the global RNG stays untouched: resumable
            worker_init_fn=_own_session, pin_memory=dev.type == "cuda",
        )
        if len(loader) == 0:
            raise DataError(f"{len(self.dataset)} training images are fewer than one batch of {cfg.batch_size}")
        if acc.is_main_process:  # one line for what loads (distill.py hides the libraries' per-shard bars)
            student = f", the student {cfg.student_init}" if cfg.student_init else " (the student starts from it)"
            metric = cfg.metric_model + (f" ({cfg.metric_path})" if cfg.metric_path else "")
            log.info("loading the teacher %s%s and the metric model %s on %s", cfg.teacher, student, metric, dev)
        student = DiffusionDepthModel.from_pretrained(cfg.student_init or cfg.teacher, dtype=torch.float32, device=dev)
        student.unet.requires_grad_(True).train()
        if cfg.gradient_checkpointing:
            student.unet.enable_gradient_checkpointing()
            student.vae.enable_gradient_checkpointing()
        self.teacher = DiffusionDepthModel.from_pretrained(cfg.teacher, dtype=frozen_dtype, device=dev)
        self.metric = load_metric_model(cfg.metric_model, cfg.metric_path, dev, torch.float32)
        self.ema = _make_ema(student, cfg).to(dev)
        self.cache = None
        if cfg.depth_cache:
            self.cache = DepthCache(cfg.depth_cache, f"{cfg.metric_model}|{cfg.metric_path}", cfg.resolution)
        lr = cfg.lr * (cfg.batch_size * cfg.grad_accum * acc.num_processes if cfg.scale_lr else 1)
        opt_cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
        optimizer = opt_cls(student.unet.parameters(), lr=lr, betas=cfg.adam_betas, weight_decay=cfg.weight_decay)
        self.student, self.optimizer, self.loader = acc.prepare(student, optimizer, loader)
        steps_per_epoch = math.ceil(len(self.loader) / cfg.grad_accum)
        limits = [n for n in (cfg.max_steps, cfg.epochs and cfg.epochs * steps_per_epoch) if n]
        self.total_steps = min(limits)
        schedule = get_scheduler(cfg.lr_schedule if cfg.lr_schedule == "cosine" else "constant_with_warmup",
                                 optimizer, num_warmup_steps=cfg.warmup_steps, num_training_steps=self.total_steps)
        self.scheduler = acc.prepare(schedule)
        self.unwrapped = acc.unwrap_model(self.student)
        self.codec = self.unwrapped.codec
        acc.register_save_state_pre_hook(self._save_models)
        acc.register_load_state_pre_hook(self._load_models)

    def metric_depth(self, image: Tensor, keys: list[str]) -> Tensor:
        """f_D's depth of the batch, from the cache where it has it (`keys` name the images as given)."""
        depth = self.cache.load(keys) if self.cache else None
        if depth is None:
            depth = self.metric(image, None).depth
            if self.cache:
                self.cache.save(keys, depth)
        return depth.to(self.acc.device)

    def inputs(self, batch: dict) -> tuple[Tensor, Tensor]:
        """(image, f_D depth) of a batch, randomly flipped left-right: f_D on the flipped image
        (`flip_before_metric`, the reference script; its cache entry keyed by the flip), or image and
        depth flipped together after f_D. The flips are drawn the same way in both cases."""
        image, flips = batch["image"], draw_flips(batch["image"].shape[0])
        if self.cfg.flip_before_metric:
            image = flip_where(image, flips)
            keys = [k + "|flipped" if f else k for k, f in zip(batch["key"], flips.tolist())]
            return image, self.metric_depth(image, keys)
        depth = self.metric_depth(image, batch["key"])
        return flip_where(image, flips), flip_where(depth, flips)

    def _save_models(self, models, weights, output_dir) -> None:
        """accelerate hook: the student and its EMA as loadable model folders instead of a state dict."""
        if self.acc.is_main_process:
            self.unwrapped.save_pretrained(Path(output_dir) / "student")
            self.ema.ema_model.save_pretrained(Path(output_dir) / "ema")
        weights.pop()

    def _load_models(self, models, input_dir) -> None:
        from .models.student import DiffusionDepthModel

        for name, target in (("student", self.acc.unwrap_model(models.pop())), ("ema", self.ema.ema_model)):
            saved = DiffusionDepthModel.from_pretrained(Path(input_dir) / name, dtype=torch.float32)
            target.load_state_dict(saved.state_dict())


def _total(acc, n: int) -> int:
    """Sum of a per-process count over all processes (every process must call this)."""
    return int(acc.reduce(torch.tensor(n, device=acc.device), "sum")) if acc.num_processes > 1 else n


def _save_checkpoint(run: _Run, state: TrainState) -> Path:
    trainer_state = {**dataclasses.asdict(state), "skipped_images": _total(run.acc, state.skipped_images),
                     "ema_step": int(run.ema.step), "ema_initted": bool(run.ema.initted)}

    def state_bytes() -> int:
        optimizer_state = run.optimizer.state_dict()["state"].values()
        tensors = [*run.unwrapped.state_dict().values(), *run.ema.ema_model.state_dict().values(),
                   *(t for s in optimizer_state for t in s.values() if torch.is_tensor(t))]
        return sum(t.numel() * t.element_size() for t in tensors)

    return checkpoints.save(run.acc, run.cfg, state.step, trainer_state, student_pipeline_config(run.cfg), state_bytes)


def _load_checkpoint(run: _Run, folder: Path) -> TrainState:
    saved = checkpoints.load(run.acc, run.cfg, folder, run.unwrapped)
    run.ema.step.fill_(saved.pop("ema_step"))
    run.ema.initted.fill_(saved.pop("ema_initted"))
    state = TrainState(**saved)
    if not run.acc.is_main_process:  # the saved count is the total of all processes: keep it once
        state.skipped_images = 0
    log.info("resumed from %s at step %d (epoch %d, batch %d)", folder, state.step, state.epoch, state.batch)
    return state


def _pipeline(run: _Run):
    """The inference pipeline around the current student, as the node would run it."""
    from .pipeline import SharpDepthPipeline

    return SharpDepthPipeline(run.unwrapped, run.metric, processing_res=max(run.cfg.resolution),
                              difference_fit_first=run.cfg.fit_difference, distilled_from=distilled_from(run.cfg))


def _check_pipeline_folder(run: _Run) -> None:
    """The final save's own rule (`replacing_dir`), before the first step rather than after the last: an
    existing `<output_dir>/pipeline/` may hold only what this run's pipeline save writes (learnt from a
    save of the untrained pipeline to a temporary folder) and what an earlier save may add."""
    from .pipeline import EARLIER_SAVE

    pipeline, refused = Path(run.cfg.output_dir) / "pipeline", None
    held = pipeline.is_dir() and any(not is_scratch(p) for p in pipeline.iterdir())
    if held and run.acc.is_main_process:
        scratch = scratch_dir(Path(run.cfg.output_dir))
        try:
            written = _pipeline(run).save_pretrained(scratch / "pipeline")
            produced = {f"{p.relative_to(written).as_posix()}{'/' if p.is_dir() else ''}" for p in written.rglob("*")}
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        foreign = foreign_entries(pipeline, produced, EARLIER_SAVE)
        refused = refusal(pipeline, foreign, "a finished run's pipeline does not hold") if foreign else None
    if _total(run.acc, int(refused is not None)):  # every process stops, not only the one that looked
        raise refused or ValueError(f"{pipeline}: refused by the main process")


def _log_pictures(run: _Run, step: int) -> None:
    """Image, f_D depth, difference map and student depth (the pipeline's output) of fixed training images."""
    from .visualize import colorize_depth, colorize_difference

    writer, pipe = run.acc.get_tracker("tensorboard", unwrap=True), _pipeline(run)
    for i in range(min(run.cfg.validation_images, len(run.dataset))):
        image = run.dataset[i]["image"]
        out = pipe(image[None].to(run.acc.device), seed=i)  # seeded with its own generator: no global RNG used
        depth, metric = out.depth[0, 0].cpu().numpy(), out.metric_depth[0, 0].cpu().numpy()
        lo, hi = float(metric.min()), float(metric.max())  # one colour scale for both depths
        pictures = {"image": (image.permute(1, 2, 0).numpy() * 255).round().astype("uint8"),
                    "metric_depth": colorize_depth(metric, lo, hi),
                    "difference": colorize_difference(out.difference[0, 0].cpu().numpy()),
                    "student_depth": colorize_depth(depth, lo, hi)}
        for name, rgb in pictures.items():
            writer.add_image(f"validation/{i}/{name}", rgb, step, dataformats="HWC")


class _Meter:
    """Running means of the losses between log steps, steps per second, and the TensorBoard/progress write."""

    def __init__(self, step: int):
        self.sums, self.step, self.time = 0.0, step, time.perf_counter()

    def add(self, out: dict[str, Tensor], grad_accum: int) -> None:
        self.sums = self.sums + torch.stack([out["loss"].detach(), out["sds"], out["rec"]]).float() / grad_accum
        self.last = out

    def log(self, run: _Run, state: TrainState, bar) -> None:
        steps = state.step - self.step
        loss, sds, rec = (self.sums / max(steps, 1)).tolist()
        lr = run.scheduler.get_last_lr()[0]
        run.acc.log({"loss/total": loss, "loss/sds": sds, "loss/rec": rec, "lr": lr,
                     "grad_norm": float(self.last["grad_norm"]), "e_mean": float(self.last["e_mean"]),
                     "it_per_s": steps / (time.perf_counter() - self.time),
                     "data/skipped_images": _total(run.acc, state.skipped_images)}, step=state.step)
        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
        self.sums, self.step, self.time = 0.0, state.step, time.perf_counter()


# --- the loop ----------------------------------------------------------------------------------


def train(cfg: TrainConfig, resume: str | None = None) -> TrainResult:
    """Run or resume (`resume`: "latest" or a checkpoint folder) a distillation; all processes call this."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    check_config(cfg)
    ckpt = checkpoints.resolve_resume(cfg.output_dir, resume)
    checkpoints.check_output_dir(cfg, resuming=ckpt is not None)
    check_models(cfg)
    acc = Accelerator(gradient_accumulation_steps=cfg.grad_accum, mixed_precision=cfg.mixed_precision,
                      log_with="tensorboard", project_dir=cfg.output_dir, step_scheduler_with_optimizer=False)
    set_seed(cfg.seed, device_specific=True)  # noise differs per process; the data order comes from the sampler
    run = _Run(cfg, acc)
    _check_pipeline_folder(run)
    state = _load_checkpoint(run, ckpt) if ckpt else TrainState()
    # One folder of event files for the whole run, resumes included: the config goes in as text, not as
    # accelerate's hparams (each call of those writes a new logs/<timestamp>/ folder).
    acc.init_trackers("logs")
    if acc.is_main_process:
        text = "```yaml\n" + yaml.safe_dump(config_dict(cfg), sort_keys=False) + "```"
        acc.get_tracker("tensorboard", unwrap=True).add_text("config", text, state.step)
    try:
        ckpt, interrupted = _loop(run, state, ckpt)
    except BaseException as exc:
        # Release the data-loader iterator the traceback's frames hold, so torch shuts its workers down
        # now; left to the interpreter's exit, they are terminated there and torch reports that as a
        # worker failure.
        traceback.clear_frames(exc.__traceback__)
        lines = str(exc).strip().splitlines()
        if isinstance(exc, DataError) and len(lines) > 1:
            # Raised in a worker: torch re-raises it with the worker's traceback as the message, whose
            # last line is "sharpdepth_core.data.DataError: <the message>".
            raise DataError(lines[-1].split(": ", 1)[-1]) from None
        raise
    pipeline = None
    if interrupted is None:  # a finished run: a pipeline folder for --model / the node
        pipeline = Path(cfg.output_dir) / "pipeline"
        if acc.is_main_process:
            _pipeline(run).save_pretrained(pipeline)  # replacing_dir gives it the umask's modes
    acc.wait_for_everyone()
    acc.end_training()
    if interrupted:
        log.warning("stopped by %s at step %d; checkpoint %s; continue with --resume latest",
                    signal.Signals(interrupted).name, state.step, ckpt)
    return TrainResult(ckpt, state, interrupted, run.unwrapped, run.ema.ema_model, run.optimizer.optimizer, pipeline)


def _loop(run: _Run, state: TrainState, ckpt: Path | None) -> tuple[Path | None, int | None]:
    """Optimizer steps until the end of the schedule or a signal; (last checkpoint, signal or None)."""
    from tqdm.auto import tqdm

    cfg, acc = run.cfg, run.acc
    bar = tqdm(total=run.total_steps, initial=state.step, desc="distill", disable=not acc.is_local_main_process)
    meter = _Meter(state.step)
    first_step, interrupted = state.step + 1, None
    with StopOnSignal() as stop:
        while state.step < run.total_steps and interrupted is None:
            run.loader.set_epoch(state.epoch)
            for batch in acc.skip_first_batches(run.loader, state.batch) if state.batch else run.loader:
                state.batch += 1
                state.skipped_images += int(batch["skipped"].sum())
                with acc.accumulate(run.student):
                    image, depth = run.inputs(batch)
                    difference_model = run.ema.ema_model if state.step >= cfg.ema_difference_from_step else run.teacher
                    with acc.autocast():
                        out = training_step(run.student, run.codec, run.teacher, difference_model, image, depth, cfg)
                    acc.backward(out["loss"])
                    if acc.sync_gradients:
                        if cfg.ema_before_step:  # the reference script: the EMA sees the weights before this step
                            run.ema.update()
                        out["grad_norm"] = acc.clip_grad_norm_(run.student.parameters(), cfg.grad_clip or math.inf)
                    run.optimizer.step()
                    run.optimizer.zero_grad(set_to_none=True)
                meter.add(out, cfg.grad_accum)
                if not acc.sync_gradients:
                    continue
                if not acc.optimizer_step_was_skipped:
                    run.scheduler.step()
                if not cfg.ema_before_step:
                    run.ema.update()
                state.step += 1
                bar.update()
                if state.step % cfg.log_every == 0:
                    meter.log(run, state, bar)
                # pictures early (a run's first step) and at its end, however short, and every validate_every
                pictured = state.step in (first_step, run.total_steps) or state.step % max(cfg.validate_every, 1) == 0
                if cfg.validate_every and pictured and acc.is_main_process:
                    _log_pictures(run, state.step)
                if stop.signum:
                    acc.set_trigger()
                if acc.check_trigger():  # a signal on any process stops all of them at this same step
                    interrupted = stop.signum or signal.SIGTERM
                if interrupted or state.step % cfg.checkpoint_every == 0 or state.step >= run.total_steps:
                    ckpt = _save_checkpoint(run, state)
                if interrupted or state.step >= run.total_steps:
                    break
            else:
                state.epoch, state.batch = state.epoch + 1, 0
    bar.close()
    return ckpt, interrupted
