"""Repeated searches on a tabular space, scored by regret: the table's best test accuracy minus the test
accuracy of the cell a strategy returns (read only after it has chosen). Each repeat drives the same strategy
code as a real search, on a fresh in-memory Optuna study."""
from __future__ import annotations

import dataclasses

import numpy as np

from .pareto import hypervolume
from .strategies import SearchConfig, search
from .tabular import BenchSpace


def simulate(space: BenchSpace, cfg: SearchConfig, repeats: int, seed: int = 0) -> dict:
    """``repeats`` searches with seeds ``seed``, ``seed + 1``, ...: regret (points), epochs spent, and with
    ``acc,energy`` objectives the hypervolume of the returned front as a share of the true front's."""
    best = float(space.test.max())
    regret, spent, hv = [], [], []
    ref, true_hv = hv_reference(space)
    for r in range(repeats):
        res = search(space, dataclasses.replace(cfg, seed=seed + r))
        spent.append(res.epochs_spent)
        regret.append(best - space.truth(res.arch) if res.arch is not None else np.nan)
        if "energy" in cfg.objectives:
            front = res.front
            hv.append(hypervolume([space.truth(f["arch"]) for f in front], [f["energy"] for f in front], *ref) / true_hv)
    out = {"regret_mean": float(np.nanmean(regret)), "regret_sd": float(np.nanstd(regret)),
           "regret_p90": float(np.nanpercentile(regret, 90)), "no_pick": int(np.isnan(regret).sum()),
           "epochs_mean": float(np.mean(spent)), "epochs_max": int(np.max(spent)), "repeats": repeats}
    if hv:
        out.update(hv_mean=float(np.mean(hv)), hv_sd=float(np.std(hv)))
    return out


def hv_reference(space: BenchSpace) -> tuple[tuple[float, float], float]:
    """The reference point (the table's median test accuracy, the largest energy of any cell) and the true
    front's hypervolume over every cell of the table (test accuracy, logged-rate energy estimate). The median,
    not chance: with chance accuracy as reference almost any accurate cell covers most of the area (30 random
    full trainings already reach 96 % of it on CIFAR-10), which would hide what a search adds."""
    energy = np.array([space.energy(int(i)) for i in space.ids])
    ref = (float(np.median(space.test)), float(energy.max()))
    return ref, hypervolume(space.test, energy, *ref)
