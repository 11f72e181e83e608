"""The trainer's checkpoints: `checkpoints/step-NNNNNNN/` under a run's output folder, written whole or
not at all, rotated, checked before resuming, and never confused with a user's folder.

A checkpoint holds `student/` and `ema/` in the diffusers layout that `DiffusionDepthModel.from_pretrained`
(and so the pipeline and the node) loads, with a `pipeline.json` beside them (what `--student` needs
besides the weights), accelerate's optimizer / LR-schedule / RNG states, `trainer_state.json` (step,
data position) and `config.yaml`. Only folders named step-N that hold `trainer_state.json` are the
trainer's: rotation deletes nothing else. A save is written in a marked scratch folder (`files.scratch_dir`)
and renamed into place, so a crash leaves no half checkpoint and no unmarked temporary folder.
"""
from __future__ import annotations

import json
import logging
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import yaml

from . import pipeline_config
from .files import TEMP_PREFIX, honour_umask, is_scratch, remove_scratch, scratch_dir
from .models.hub import CheckpointError
from .training_config import TrainConfig, config_dict

log = logging.getLogger(__name__)


STEP_FOLDER = re.compile(r"step-(\d+)")


def is_checkpoint(folder: Path) -> bool:
    """A folder this trainer wrote: named step-N and holding its trainer_state.json."""
    return bool(STEP_FOLDER.fullmatch(folder.name)) and (folder / "trainer_state.json").is_file()


def checkpoints(output_dir: Path) -> list[Path]:
    """This trainer's checkpoints in output_dir, oldest first; anything else there is not ours to touch."""
    folders = [p for p in (output_dir / "checkpoints").glob("step-*") if is_checkpoint(p)]
    return sorted(folders, key=lambda p: int(p.name.split("-")[1]))


def check_output_dir(cfg: TrainConfig, resuming: bool) -> None:
    """Refuse, before training, a run whose writing would replace what it did not write: a `pipeline/`
    that is not a pipeline folder, or (starting afresh) the checkpoints of an earlier run, which
    rotation would delete and `--resume latest` would mix with this run's."""
    out = Path(cfg.output_dir)
    pipeline = out / "pipeline"
    held = [p for p in pipeline.iterdir() if not is_scratch(p)] if pipeline.is_dir() else []
    if (pipeline.exists() and not pipeline.is_dir()) or (held and not (pipeline / pipeline_config.FILE).is_file()):
        raise FileExistsError(f"{pipeline} exists and is not a pipeline folder; a finished run writes its pipeline there: "
                              "move it, or choose another output_dir")
    named = [p for p in (out / "checkpoints").glob("step-*") if (m := STEP_FOLDER.fullmatch(p.name))
            and p.name == f"step-{int(m.group(1)):07d}"]  # the names this trainer saves under
    foreign = sorted(p for p in named if not is_checkpoint(p))
    if foreign:
        raise FileExistsError(f"{foreign[0]} is not a complete checkpoint of this trainer (no trainer_state.json), and "
                              "the run saves its checkpoints under these names: move it, or choose another output_dir")
    found = checkpoints(out)
    if found and not resuming:
        raise FileExistsError(f"{out / 'checkpoints'} holds the checkpoints of an earlier run (newest {found[-1].name}): "
                              "continue it with --resume latest, or choose another output_dir")


def damage(folder: Path) -> str | None:
    """What makes a checkpoint unusable, found before anything loads (None: intact): each torch state
    must be a whole torch file that opens weights-only (memory-mapped: its tensors are not read) with
    accelerate's own loader, each weights file's header must be whole, the state and config must parse."""
    import pickle
    import zipfile

    from accelerate.utils import load
    from safetensors import safe_open

    for file in sorted([*folder.glob("*.bin"), *folder.glob("*.pkl")]):
        if not zipfile.is_zipfile(file):
            return f"{file} is damaged: truncated, or not a torch state file"
        try:
            load(file, map_location="cpu", mmap=True)
        except pickle.UnpicklingError:
            return f"{file} is damaged: it holds objects other than tensors and plain values, which are never loaded"
        except Exception as exc:
            return f"{file} is damaged: {type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:200]}"
    for file in sorted(folder.glob("*/**/*.safetensors")):
        try:
            with safe_open(file, "pt"):
                pass
        except Exception as exc:
            return f"{file} is damaged: {(str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]}"
    for file, parse in ((folder / "trainer_state.json", json.loads), (folder / "config.yaml", yaml.safe_load)):
        try:
            if not isinstance(parse(file.read_text()), dict):
                raise ValueError
        except (OSError, ValueError, yaml.YAMLError):
            return f"{file} is damaged: not the mapping the trainer writes"
    return None


def resolve_resume(output_dir: str | Path, resume: str | None) -> Path | None:
    """`latest` -> the newest intact checkpoint (None when there is none yet), saying which damaged ones
    it passed over; a path must exist and be intact. A damaged one is a one-line CheckpointError."""
    if resume is None:
        return None
    if resume == "latest":
        found, damaged = checkpoints(Path(output_dir)), []
        if not found:
            log.info("no checkpoint in %s yet: starting a new run", Path(output_dir) / "checkpoints")
            return None
        for folder in reversed(found):
            if (found_damage := damage(folder)) is None:
                for message in damaged:
                    log.warning("%s; resuming from the newest intact checkpoint, %s", message, folder)
                return folder
            damaged.append(found_damage)
        raise CheckpointError(f"no intact checkpoint in {Path(output_dir) / 'checkpoints'}: {damaged[0]}"
                              + (f" (and {len(damaged) - 1} older ones are damaged too)" if len(damaged) > 1 else ""))
    path = Path(resume)
    if not (path / "trainer_state.json").is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist or is incomplete (no trainer_state.json)")
    if (found_damage := damage(path)) is not None:
        raise CheckpointError(f"cannot resume from {path}: {found_damage}")
    return path


def delete(folder: Path) -> None:
    """Moved into a marked scratch folder first: a deletion cut short leaves a scratch folder (removed by
    the next save), never a step folder without its state."""
    doomed = scratch_dir(folder.parent)
    folder.rename(doomed / folder.name)
    shutil.rmtree(doomed)


def save(acc, cfg: TrainConfig, step: int, trainer_state: dict, pipeline_json: dict, state_bytes: Callable[[], int]) -> Path:
    """Checkpoint `step` (accelerate's `save_state`, whose hooks write student/ and ema/) with the trainer's
    own files; keep the newest `cfg.keep_checkpoints`. All processes call this. A failed write (a full disk,
    mostly) is one OSError saying the space needed (`state_bytes()`) and what is still there to resume from."""
    out = Path(cfg.output_dir) / "checkpoints"
    final = out / f"step-{step:07d}"
    scratch = out / f"{TEMP_PREFIX}partial-{final.name}"  # one name every process can know
    tmp = scratch / final.name
    if acc.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        for leftover in out.iterdir():  # a crashed save's, recognised by its marker: never a user's folder
            remove_scratch(leftover)
        scratch_dir(out, scratch.name)
    acc.wait_for_everyone()
    try:
        acc.save_state(tmp)
        if acc.is_main_process:
            (tmp / "trainer_state.json").write_text(json.dumps(trainer_state, indent=2))
            (tmp / "config.yaml").write_text(yaml.safe_dump(config_dict(cfg), sort_keys=False))
            pipeline_config.write(tmp, pipeline_json)
            honour_umask(tmp)
    except Exception as exc:  # torch and safetensors each say "disk full" in their own words
        if acc.is_main_process:
            shutil.rmtree(scratch, ignore_errors=True)
        raise _unsaved(cfg, final, exc, state_bytes()) from exc
    acc.wait_for_everyone()
    if acc.is_main_process:
        if final.exists():  # its own (check_output_dir refuses any other): a resumed run saving a step again
            delete(final)
        tmp.rename(final)
        shutil.rmtree(scratch)
        for old in checkpoints(Path(cfg.output_dir))[: -cfg.keep_checkpoints]:
            delete(old)
    acc.wait_for_everyone()
    return final


def _unsaved(cfg: TrainConfig, folder: Path, exc: Exception, need: int) -> OSError:
    free = shutil.disk_usage(folder.parent).free
    cause = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
    kept = checkpoints(Path(cfg.output_dir))
    then = (f"{kept[-1]} is intact: free some space and continue with --resume latest" if kept
            else "no earlier checkpoint exists: free some space and start again")
    return OSError(f"cannot write checkpoint {folder} ({cause}): it needs about {need / 1e6:.1f} MB and {folder.parent} "
                   f"has {free / 1e6:.1f} MB free; {then}")


def load(acc, cfg: TrainConfig, folder: Path, student) -> dict:
    """Restore a checkpoint (accelerate's `load_state`: its hooks load the student and EMA weights, then
    the optimizer, LR schedule, RNG and accumulation step); returns its trainer_state.json. A student of
    another architecture than `student` is one line naming what differs, before anything loads."""
    _check_architecture(folder, student, cfg.student_init or cfg.teacher)
    acc.load_state(str(folder))
    saved = json.loads((folder / "trainer_state.json").read_text())
    old_cfg = yaml.safe_load((folder / "config.yaml").read_text())
    changed = sorted(k for k, v in config_dict(cfg).items() if old_cfg.get(k) != v)
    if changed:
        log.warning("resuming %s with a config that differs in: %s", folder, ", ".join(changed))
    return saved


def _check_architecture(folder: Path, student, source: str) -> None:
    """Loading another architecture would fail with one size mismatch per tensor."""
    problems = []
    for part in ("unet", "vae"):
        file = folder / "student" / part / "config.json"
        try:
            saved = json.loads(file.read_text())
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"checkpoint {folder} is incomplete: cannot read {file} ({type(exc).__name__})") from exc
        live = json.loads(getattr(student, part).to_json_string())
        for key in sorted(k for k in set(saved) | set(live) if not k.startswith("_")):
            if saved.get(key) != live.get(key):
                problems.append(f"{part} {key} {saved.get(key)} (checkpoint) vs {live.get(key)}")
    if problems:
        more = f" and {len(problems) - 3} more" if len(problems) > 3 else ""
        raise CheckpointError(
            f"cannot resume from {folder}: its student is another architecture than the configured one ({source}): "
            f"{'; '.join(problems[:3])}{more}; resume with the checkpoint's own teacher / student_init (its config.yaml), "
            "or start a new run in another output_dir"
        )
