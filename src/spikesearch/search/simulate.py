"""Repeated searches on a tabular space, scored by regret: the table's best test accuracy minus the test
accuracy of the cell a strategy returns (read only after it has chosen). Each repeat drives the same strategy
code as a real search, on a fresh in-memory Optuna study."""
from __future__ import annotations

import dataclasses

import numpy as np

from .pareto import hypervolume, pareto_mask
from .strategies import SearchConfig, search
from .tabular import BenchSpace


def simulate(space: BenchSpace, cfg: SearchConfig, repeats: int, seed: int = 0) -> dict:
    """``repeats`` searches with seeds ``seed``, ``seed + 1``, ...: regret (points), epochs spent, and with
    ``acc,energy`` objectives the hypervolume of the returned front (its cells' test accuracies, read after the
    search chose them by validation) as a share of the true front's, at each reference of REFERENCES
    (``hv_<reference>_mean`` / ``_sd``)."""
    best = float(space.test.max())
    regret, spent = [], []
    refs = {kind: hv_reference(space, kind) for kind in REFERENCES} if "energy" in cfg.objectives else {}
    hv: dict[str, list[float]] = {kind: [] for kind in refs}
    for r in range(repeats):
        res = search(space, dataclasses.replace(cfg, seed=seed + r))
        spent.append(res.epochs_spent)
        regret.append(best - space.truth(res.arch) if res.arch is not None else np.nan)
        acc, energy = [space.truth(f["arch"]) for f in res.front], [f["energy"] for f in res.front]
        for kind, (ref, true_hv) in refs.items():
            hv[kind].append(hypervolume(acc, energy, *ref) / true_hv)
    out = {"regret_mean": float(np.nanmean(regret)), "regret_sd": float(np.nanstd(regret)),
           "regret_p90": float(np.nanpercentile(regret, 90)), "no_pick": int(np.isnan(regret).sum()),
           "epochs_mean": float(np.mean(spent)), "epochs_max": int(np.max(spent)), "repeats": repeats}
    for kind, shares in hv.items():
        out.update({f"hv_{kind}_mean": float(np.mean(shares)), f"hv_{kind}_sd": float(np.std(shares))})
    return out


# the hypervolume's reference point: "nadir", the true front's worst accuracy and worst energy (the usual choice,
# and the one issue 24's figures used: on CIFAR-10 it is (10 %, the front's costliest cell), so the area counts
# how much accuracy above chance a front buys at each energy); "median", the table's median test accuracy and its
# largest energy, a stricter reading that counts only the accurate end of the front
REFERENCES = ("nadir", "median")


def hv_reference(space: BenchSpace, kind: str = "nadir") -> tuple[tuple[float, float], float]:
    """The reference point of ``kind`` (REFERENCES) and the true front's hypervolume over every cell of the table
    (test accuracy, the space's energy estimate)."""
    energy = np.array([space.energy(int(i)) for i in space.ids])
    if kind == "nadir":
        on = pareto_mask(space.test, energy)
        ref = (float(space.test[on].min()), float(energy[on].max()))
    elif kind == "median":
        ref = (float(np.median(space.test)), float(energy.max()))
    else:
        raise ValueError(f"reference {kind!r}: one of {REFERENCES}")
    return ref, hypervolume(space.test, energy, *ref)
