"""Side-by-side timing for the benchmarks: methods alternate, so a load change hits all of them alike;
a SIGTERM (bench/gpu_check.sh's `timeout`) that ends a bench early without losing what it measured;
and what every bench says about its own time: the estimate line before it starts, progress while it
runs, and the short run (--quick, or QUICK=1 in the environment: `make bench QUICK=1`)."""
from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable

# Estimates are each bench's work units times seconds per unit measured on the project's 2-core AMD
# EPYC (1 PyTorch thread) and written into the bench as constants; another machine, or other work
# on this one, makes the real time differ (each bench's constants say how they were measured).
REFERENCE_MACHINE = "the 2-core reference CPU, 1 thread"


def add_quick(parser: argparse.ArgumentParser, what: str) -> None:
    """--quick: the bench's short run (`what` says what it shrinks to); QUICK=1 in the environment too."""
    parser.add_argument("--quick", action="store_true", default=os.environ.get("QUICK", "").strip() not in ("", "0"),
                        help=f"a short run: {what} (also QUICK=1 in the environment, as `make bench QUICK=1` sets); "
                             "explicit flags still win")


def quick_defaults(parser: argparse.ArgumentParser, argv, quick: dict) -> argparse.Namespace:
    """Parse argv; with --quick (or QUICK=1) the options in `quick` take their short-run values unless
    given on the command line."""
    args = parser.parse_args(argv)
    if args.quick:
        parser.set_defaults(**quick)
        args = parser.parse_args(argv)
    return args


def _seconds(s: float) -> str:
    if s < 90:
        return f"{max(1, round(s))} s"
    return f"{round(s, -1):.0f} s ({s / 60:.1f} min)" if s < 600 else f"{s / 60:.0f} min"


def announce(bench: str, seconds: float, work: str, quick: bool, note: str = "") -> str:
    """The one line a bench prints (stderr) before it starts: about how long, for what work, and how
    to get a short run. Returned too (tests read it)."""
    line = (f"[bench] {bench}: about {_seconds(seconds)} for {work} on {REFERENCE_MACHINE}"
            + (f" ({note})" if note else "")
            + ("; a short run (--quick)" if quick else "; --quick or QUICK=1 for a short run"))
    print(line, file=sys.stderr, flush=True)
    return line


def progress(items: Iterable | None = None, total: int | None = None, desc: str = "", unit: str = "it"):
    """A tqdm bar on stderr; off where stderr is not a terminal (logs and tests get no carriage returns:
    the benches' own "[bench] ..." lines still say where they are)."""
    from tqdm import tqdm

    return tqdm(items, total=total, desc=desc, unit=unit, file=sys.stderr, disable=None, leave=False, dynamic_ncols=True)


def quiet_known_warnings() -> None:
    """Silence the one known, harmless multi-line warning of the compiled benches: when torch.compile
    traces diffusers' Upsample2D.forward in bf16, Dynamo warns (a 9-line UserWarning, twice: the
    VAE decoder's two call sites) that it traces through `is_torch_version`'s functools.lru_cache.
    That function compares torch's version string with a constant, so tracing it uncached gives the
    same answer; the warning says nothing about our code. Matched by its message and file, so any other
    Dynamo warning still shows."""
    import warnings

    warnings.filterwarnings("ignore", message=r"Dynamo detected a call to a `functools\.lru_cache`-wrapped function at "
                            r"'upsampling\.py:\d+'", category=UserWarning)


def log(message: str) -> None:
    """A "[bench] ..." line on stderr that does not break a progress bar."""
    from tqdm import tqdm

    tqdm.write(f"[bench] {message}", file=sys.stderr)
    sys.stderr.flush()


class Stopped(BaseException):
    """Raised by the SIGTERM handler of `until_stopped` wherever the step is (a compile can take
    minutes): not an Exception, so a step's own failure handling does not swallow it."""


def _stop(signum, frame) -> None:
    raise Stopped(signal.Signals(signum).name)


def until_stopped(items: list, step: Callable[[object], None]) -> tuple[int, str | None]:
    """`step(item)` for each item until a SIGTERM (bench/gpu_check.sh's `timeout`): (items finished,
    None or "stopped by SIGTERM"). Afterwards SIGTERM is ignored, so the report of what was measured
    always gets out; the bench then exits with STOPPED_EXIT."""
    signal.signal(signal.SIGTERM, _stop)
    finished = 0
    try:
        for item in items:
            step(item)
            finished += 1
    except Stopped as exc:
        return finished, f"stopped by {exc}"
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    return finished, None


STOPPED_EXIT = 128 + signal.SIGTERM


def time_alternately(methods: dict[str, Callable[[], object]], rounds: int) -> dict[str, list[float]]:
    """Milliseconds of each zero-argument callable per round: one call of each per round, the order
    rotating, after one untimed warm-up call each (caches filled, as a node's first frame fills them)."""
    names = list(methods)
    for method in methods.values():
        method()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            t0 = time.perf_counter()
            methods[name]()
            times[name].append((time.perf_counter() - t0) * 1e3)
    return times
