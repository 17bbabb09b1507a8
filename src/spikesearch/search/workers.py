"""Several workers on one study: processes on this machine (``--workers N``) or on other machines that join
through the same storage URL (Optuna's RDB storage: SQLite on one machine, PostgreSQL across machines).

The plan is fixed before any worker starts: the first process enqueues random search's cells as WAITING trials
(``random_plan``), so which cells are trained does not depend on how many workers share them, and the result
equals a single worker's. A worker pops a WAITING trial (atomically, in the storage), trains the cell and tells
the value; its heartbeat marks the trial alive. A worker killed mid-trial stops beating: after the grace period
any worker fails the stale trial and ``RetryHeartbeatStaleTrialCallback`` enqueues the same cell again, so the cell is
trained to completion once and counted once (COMPLETE), the lost attempt stays FAIL."""
from __future__ import annotations

import os
import time
import numpy as np
import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.storages._heartbeat import get_heartbeat_thread
from optuna.trial import TrialState

from ..core.errors import SpikeSearchError
from .space import Space
from .strategies import ARCH_ATTR, SearchConfig, SearchResult, new_study, random_plan

PLAN_ATTR = "plan"


def rdb_storage(url: str, heartbeat: int = 10, grace: int = 30) -> optuna.storages.RDBStorage:
    """An RDB storage whose trials beat every ``heartbeat`` s and are failed (and retried) after ``grace`` s."""
    return optuna.storages.RDBStorage(url, heartbeat_interval=heartbeat, grace_period=grace,
                                      heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=3))


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
            frozen = study._storage.get_trial(trial._trial_id)
            if not (frozen.system_attrs.get("fixed_params") or frozen.params):  # another worker took the last one
                study.tell(trial, state=TrialState.FAIL)
                continue
            arch = space.decode({k: trial.suggest_categorical(k, d.choices) for k, d in dists.items()})
            trial.set_user_attr(ARCH_ATTR, space.describe(arch))
            trial.set_user_attr("pid", os.getpid())
            space.reset()  # a worker may not continue from another's state: every trial trains from scratch here
            ev = space.evaluate(arch, space.max_epochs)
            try:
                trial.set_user_attr("epochs", ev.epochs)
                study.tell(trial, ev.signals[cfg.final_signal])
            except optuna.exceptions.UpdateFinishedTrialError:
                continue  # judged dead (a heartbeat late past the grace period) and retried: the retry counts
        done += 1


def collect(study: optuna.Study, space: Space) -> SearchResult:
    """The result of a finished study: the best COMPLETE trial; each cell's epochs counted once."""
    finals = [t for t in study.get_trials(states=(TrialState.COMPLETE,)) if ARCH_ATTR in t.user_attrs]
    if not finals:
        return SearchResult(None, 0, 0.0, len(study.trials))
    archs = [space.decode(t.params) for t in finals]
    if len(set(archs)) != len(archs):
        raise SpikeSearchError(f"study {study.study_name}: a cell completed twice")
    rows = [{"arch": a, "acc": t.value, "energy": None} for a, t in zip(archs, finals)]
    return SearchResult(archs[int(np.argmax([t.value for t in finals]))], sum(t.user_attrs["epochs"] for t in finals),
                        0.0, len(study.trials), finals=rows)
