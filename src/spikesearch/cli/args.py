"""Argument types and shared flags of the command line: every number is checked when it is parsed
(finite, in range), so nonsense never reaches a model or a run folder."""
from __future__ import annotations

import argparse
import math
import re

SEED_MAX = 2**32 - 1  # numpy's seed range
# a converted SNN's simulation length: Lu & Sengupta reach the ANN's accuracy in 100-200 steps; each step
# costs a full forward pass over the test set, so a billion is a typo, not an experiment
TIME_MAX = 10_000
SCHEDULER_HELP = ("the same in every command: cosine to lr/100; step = lr/10 at 50%% and 75%% of the epochs "
                  "(SNASNet's official step); multistep = step at the recipe's milestones; periodic = lr*gamma "
                  "every step_size epochs; none")


def add_validation(p: argparse.ArgumentParser, note: str = "") -> None:
    """The held-out split that chooses a "best" checkpoint (never the test set)."""
    p.add_argument("--val_fraction", type=_checked(float, lambda v: 0 <= v < 1, "must be in [0, 1)"), default=0.1,
                   help=note + "seeded fraction of the training images held out to choose the best epoch; 0: none, "
                        "the last epoch is reported")


def _parse(s: str, kind: type) -> float | int:
    try:
        v = kind(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not {'an integer' if kind is int else 'a number'}") from None
    if kind is float and not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {s}")
    return v


def _checked(kind: type, ok, requirement: str):
    """An argparse type: parse as ``kind`` (finite for floats), then require ``ok(value)``."""
    def parse(s: str):
        v = _parse(s, kind)
        if not ok(v):
            raise argparse.ArgumentTypeError(f"{requirement}, got {v}")
        return v
    return parse


positive_int = _checked(int, lambda v: v > 0, "must be positive")
nonneg_int = _checked(int, lambda v: v >= 0, "must be >= 0")
seed = _checked(int, lambda v: 0 <= v <= SEED_MAX, f"a seed is an integer in 0..{SEED_MAX}")
positive_float = _checked(float, lambda v: v > 0, "must be > 0")
nonneg_float = _checked(float, lambda v: v >= 0, "must be >= 0")
fraction = _checked(float, lambda v: 0 <= v <= 1, "must be in [0, 1]")
percentile = _checked(float, lambda v: 0 < v <= 100, "a percentile is in (0, 100]")
timesteps = _checked(int, lambda v: 0 < v <= TIME_MAX, f"must be in 1..{TIME_MAX} timesteps")
tau = _checked(float, lambda v: v > 1, "a time constant must be > 1 (1/tau is a decay fraction)")


def device(s: str) -> str:
    if s in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", s):
        return s
    raise argparse.ArgumentTypeError(f"{s!r} is not a device: auto, cpu, cuda or cuda:N")


def add_run_flags(p: argparse.ArgumentParser, resume: bool = True) -> None:
    """The run-folder flags (see ``run``): ``--overwrite`` everywhere, ``--resume``/``--override`` where a
    command can continue a run."""
    p.add_argument("--overwrite", action="store_true", help="replace the run folder if the name already holds a run")
    if resume:
        p.add_argument("--resume", action="store_true",
                       help="continue the run in the run folder (its settings must match, see --override)")
        p.add_argument("--override", nargs="+", default=None, metavar="KEY",
                       help="with --resume: settings allowed to differ from the stored config.json (recorded there)")
