"""Several workers on one study: processes on this machine (``--workers N``) or on other machines that join
through the same storage URL (Optuna's RDB storage: SQLite on one machine, PostgreSQL across machines).

The plan is fixed before any worker starts: the first process enqueues random search's cells as WAITING trials
(``random_plan``), so which cells are trained does not depend on how many workers share them, and the result
equals a single worker's. A worker pops a WAITING trial (atomically where the storage locks rows: PostgreSQL),
trains the cell and tells the value; its heartbeat marks the trial alive. A worker killed mid-trial stops beating:
after the grace period any worker fails the stale trial and ``retry`` enqueues the same cell again; the lost
attempt stays FAIL.

SQLite has no row lock: two workers can both fail the same stale trial and both enqueue a retry, two workers
popping at once can both be handed the same waiting trial, and a worker whose heartbeat came late can complete
its trial just as another fails it as stale (both see it running), so that its retry trains the cell again. So a
cell is trained by its lowest-numbered live attempt only (a later one that finds an earlier attempt waiting,
running or complete stands down as FAIL), a trial told twice keeps its first value (the second tell is refused),
and ``collect`` counts each cell's first completion once, whatever the race."""
from __future__ import annotations

import os
import time
import numpy as np
import optuna
from optuna.storages._heartbeat import get_heartbeat_thread
from optuna.trial import TrialState

from ..core.errors import SpikeSearchError
from .space import Space
from .strategies import ARCH_ATTR, SearchConfig, SearchResult, new_study, random_plan

PLAN_ATTR = "plan"
DUPLICATE_ATTR = "duplicate_of"
MAX_RETRY = 3
LIVE = (TrialState.WAITING, TrialState.RUNNING, TrialState.COMPLETE)


def _cell(trial: optuna.trial.FrozenTrial) -> dict:
    return trial.params or trial.system_attrs.get("fixed_params") or {}


def retry(study: optuna.Study, failed: optuna.trial.FrozenTrial) -> None:
    """Enqueue a stale trial's cell again, unless an attempt at it is alive or done, or it died ``MAX_RETRY``
    times already."""
    cell = _cell(failed)
    if not cell:  # killed between ask and its first word: no cell was taken
        return
    same = [t for t in study.get_trials(deepcopy=False) if t.number != failed.number and _cell(t) == cell]
    died = [t for t in same if t.state == TrialState.FAIL and DUPLICATE_ATTR not in t.user_attrs]
    if any(t.state in LIVE for t in same) or len(died) >= MAX_RETRY:
        return
    study.enqueue_trial(cell, skip_if_exists=False)


def rdb_storage(url: str, heartbeat: int = 10, grace: int = 30) -> optuna.storages.RDBStorage:
    """An RDB storage whose trials beat every ``heartbeat`` s and are failed (and retried) after ``grace`` s."""
    return optuna.storages.RDBStorage(url, heartbeat_interval=heartbeat, grace_period=grace,
                                      heartbeat_stale_trial_callback=retry)


def _earlier_attempt(study: optuna.Study, number: int, cell: dict) -> int | None:
    """The number of an earlier attempt at ``cell`` that is waiting, running or complete, if any."""
    return next((t.number for t in study.get_trials(deepcopy=False)
                 if t.number < number and t.state in LIVE and _cell(t) == cell), None)


def plan(cfg: SearchConfig, space: Space, storage: optuna.storages.BaseStorage, name: str) -> optuna.Study:
    """The study with random search's plan enqueued, once: a study that already holds it is left as it is."""
    if cfg.strategy != "random" or len(cfg.objectives) != 1:
        raise SpikeSearchError("several workers run --strategy random with --objectives acc (a fixed plan); the "
                               "other strategies decide from each result and run in one process")
    study = new_study(cfg, storage, name=name, load=True)
    if PLAN_ATTR not in study.user_attrs:
        cells = random_plan(space, cfg)
        for arch in cells:
            study.enqueue_trial(space.encode(arch))
        study.set_user_attr(PLAN_ATTR, len(cells))
    return study


def work(study: optuna.Study, space: Space, cfg: SearchConfig, poll: float = 0.5) -> int:
    """Train WAITING trials until none is waiting or running (a running one may die and come back); the number
    of trials this worker completed."""
    dists = space.distributions()
    done = 0
    while True:
        optuna.storages.fail_stale_trials(study)
        states = [t.state for t in study.get_trials(deepcopy=False)]
        if TrialState.WAITING not in states:
            if TrialState.RUNNING not in states:
                return done
            time.sleep(poll)
            continue
        trial = study.ask()
        # ask/tell starts no heartbeat of its own (study.optimize does): Optuna's thread beats from the first
        # moment, since a trial that never beat is never found stale (it would wait forever)
        with get_heartbeat_thread(trial._trial_id, study._storage):
            try:
                done += _attempt(study, trial, space, cfg, dists)
            except optuna.exceptions.UpdateFinishedTrialError:
                # finished by someone else: handed to two workers at once (SQLite), the other one told it first; or
                # judged dead (a heartbeat late past the grace period) and retried, the retry counts
                continue


def _attempt(study: optuna.Study, trial: optuna.Trial, space: Space, cfg: SearchConfig, dists: dict) -> int:
    """Train the cell of a popped trial and tell its value: 1 when it was told, 0 when it stood down."""
    cell = _cell(study._storage.get_trial(trial._trial_id))
    if not cell:  # another worker took the last waiting trial: ask made a fresh one
        study.tell(trial, state=TrialState.FAIL)
        return 0
    earlier = _earlier_attempt(study, trial.number, cell)
    if earlier is not None:  # a duplicate retry (see the module's note): the earlier attempt trains it
        trial.set_user_attr(DUPLICATE_ATTR, earlier)
        study.tell(trial, state=TrialState.FAIL)
        return 0
    arch = space.decode({k: trial.suggest_categorical(k, d.choices) for k, d in dists.items()})
    trial.set_user_attr(ARCH_ATTR, space.describe(arch))
    trial.set_user_attr("pid", os.getpid())
    space.reset()  # a worker may not continue from another's state: every trial trains from scratch here
    ev = space.evaluate(arch, space.max_epochs)
    trial.set_user_attr("epochs", ev.epochs)
    study.tell(trial, ev.signals[cfg.final_signal])
    return 1


def collect(study: optuna.Study, space: Space) -> SearchResult:
    """The result of a finished study: the best COMPLETE trial; each cell's epochs counted once."""
    finals, archs = [], []
    for t in study.get_trials(states=(TrialState.COMPLETE,)):  # in trial order: a cell's first completion
        arch = space.decode(t.params)
        if ARCH_ATTR in t.user_attrs and arch not in archs:
            finals.append(t)
            archs.append(arch)
    if not finals:
        return SearchResult(None, 0, 0.0, len(study.trials))
    rows = [{"arch": a, "acc": t.value, "energy": None} for a, t in zip(archs, finals)]
    return SearchResult(archs[int(np.argmax([t.value for t in finals]))], sum(t.user_attrs["epochs"] for t in finals),
                        0.0, len(study.trials), finals=rows)
