"""SpikeNAS-Bench as a tabular space: evaluating a cell at k epochs reads what its log holds at epoch k (the
validation accuracy, the training loss so far), and costs the epochs (and the logged seconds, pro rata) from the
rung it had reached. Nothing is trained; the test accuracy is read only by ``truth`` to score a strategy."""
from __future__ import annotations

from typing import Any, Hashable

import numpy as np
import optuna

from ..core.errors import SpikeSearchError
from ..nasbench.bench import EDGES, Bench, cell_of, energy_estimate, fed_nodes, id_of, rate_sum
from .space import Evaluation, Space

FULL_EPOCHS = 100  # every usable log holds 100 epoch rows (690 CIFAR-10 logs hold 200; full training = 100 here)
_CHOICES = (0, 1, 2, 3, 4)
THRESHOLDS = {2: 0.5, 3: 1.0, 4: 1.5}  # op -> the LIF threshold of its edge
# the energy of a fully trained cell, from its log: synaptic operations per image (the objective), or the plain sum
# of the firing rates (what issue 24's hypervolume figures used)
ENERGIES = {"sops": energy_estimate, "rates": rate_sum}


def _edge(i: int, j: int) -> str:
    return f"edge_{i}{j}"


def inv_threshold(arch_id: int) -> float:
    """A training-free energy proxy: the sum over the cell's spiking edges of 1 / threshold (a lower threshold
    fires more), counting only edges whose source node the cell's input reaches (an edge fed by nothing never
    fires). Kendall tau with the logged energy estimate over all cells: 0.88 on CIFAR-10, 0.89 CIFAR-100, 0.88
    Tiny-ImageNet; 0.74 / 0.76 / 0.54 when unfed edges counted too, 0.58 for the count of spiking edges (CIFAR-10;
    docs/search.md)."""
    mat = cell_of(arch_id)
    fed = fed_nodes(mat)
    return float(sum(1 / THRESHOLDS[int(mat[i, j])] for i, j in EDGES if int(mat[i, j]) in THRESHOLDS and i in fed))


class BenchSpace(Space):
    """The trained cells of one dataset of a SpikeNAS-Bench clone; ``scores`` adds zero-cost columns (a
    ``nasbench proxies`` run's proxies.csv) for the cells it scored; ``energy`` names the estimate (ENERGIES)."""

    name = "spikenas-bench"
    max_epochs = FULL_EPOCHS

    def __init__(self, bench: Bench, scores: dict[str, dict[int, float]] | None = None, energy: str = "sops"):
        if energy not in ENERGIES:
            raise SpikeSearchError(f"energy estimate {energy!r}: choose from {', '.join(ENERGIES)}")
        self.bench, self.dataset, self.energy_kind = bench, bench.dataset, energy
        self.ids = np.array(sorted(bench))
        self.row = {int(i): k for k, i in enumerate(self.ids)}
        recs = [bench[int(i)] for i in self.ids]
        short = [r.arch_id for r in recs if r.epochs < FULL_EPOCHS]
        if short:
            raise SpikeSearchError(f"SpikeNAS-Bench {self.dataset}: ids {short[:5]} log fewer than {FULL_EPOCHS} epochs")
        self.val = np.array([r.val_acc[:FULL_EPOCHS] for r in recs])
        self.cum_val = np.cumsum(self.val, axis=1)
        self.cum_loss = np.cumsum([r.train_loss[:FULL_EPOCHS] for r in recs], axis=1)
        self.seconds = np.array([(r.seconds or 0.0) * FULL_EPOCHS / r.epochs for r in recs]) / FULL_EPOCHS
        self.params = np.array([r.params for r in recs], dtype=float)
        self.test = np.array([r.test_acc for r in recs])
        self.scores = scores or {}
        self.reached: dict[int, int] = {}
        self._energy: dict[int, float] = {}

    def distributions(self) -> dict[str, optuna.distributions.CategoricalDistribution]:
        return {_edge(i, j): optuna.distributions.CategoricalDistribution(_CHOICES) for i, j in EDGES}

    def encode(self, arch: Hashable) -> dict[str, Any]:
        mat = cell_of(int(arch))
        return {_edge(i, j): int(mat[i, j]) for i, j in EDGES}

    def decode(self, params: dict[str, Any]) -> Hashable | None:
        mat = np.zeros((4, 4), dtype=np.int64)
        for i, j in EDGES:
            mat[i, j] = params[_edge(i, j)]
        arch = id_of(mat)
        return arch if arch in self.row else None

    def sample(self, rng: np.random.Generator, pool: list[Hashable] | None = None) -> Hashable:
        return int(rng.choice(self.ids if pool is None else pool))

    def mutate(self, arch: Hashable, rng: np.random.Generator) -> Hashable:
        mat = cell_of(int(arch))
        order = rng.permutation(len(EDGES))
        for e in order:  # the first edge whose change lands on a trained cell (subsets hold few)
            i, j = EDGES[int(e)]
            for op in rng.permutation([o for o in _CHOICES if o != mat[i, j]]):
                new = mat.copy()
                new[i, j] = op
                if id_of(new) in self.row:
                    return id_of(new)
        return arch

    def candidates(self, rng: np.random.Generator) -> list[Hashable]:
        return [int(i) for i in self.ids]

    def zero_cost(self, name: str, archs: list[Hashable]) -> np.ndarray:
        if name == "params":
            return self.params[[self.row[int(a)] for a in archs]]
        if name == "inv_threshold":
            return np.array([inv_threshold(int(a)) for a in archs])
        if name not in self.scores:
            raise SpikeSearchError(f"zero-cost score {name!r}: 'params', 'inv_threshold', or a column of --scores "
                                   f"({', '.join(self.scores) or 'none given'})")
        col = self.scores[name]
        return np.array([col.get(int(a), np.nan) for a in archs], dtype=float)  # NaN: a cell the run did not score

    def evaluate(self, arch: Hashable, epochs: int) -> Evaluation:
        arch = int(arch)
        k, e = self.row[arch], min(int(epochs), FULL_EPOCHS)
        before = self.reached.get(arch, 0)
        self.reached[arch] = max(before, e)
        cost = max(0, e - before)
        last = max(0, e - 10)
        signals = {"val_acc": float(self.val[k, e - 1]),
                   "val_acc_last10": float((self.cum_val[k, e - 1] - (self.cum_val[k, last - 1] if last else 0)) / (e - last)),
                   "tse": float(-self.cum_loss[k, e - 1])}
        return Evaluation(e, signals, cost, cost * float(self.seconds[k]),
                          self.energy(arch) if e == FULL_EPOCHS else None)

    def energy(self, arch: Hashable) -> float:
        """The cell's energy estimate from its log's firing rates (nasbench.bench): by default the synaptic
        operations per image, in millions."""
        if arch not in self._energy:
            self._energy[arch] = ENERGIES[self.energy_kind](self.bench[int(arch)], self.dataset)
        return self._energy[arch]

    def describe(self, arch: Hashable) -> dict[str, Any]:
        return {"arch_id": int(arch), "cnt_mat": cell_of(int(arch)).tolist()}

    def truth(self, arch: Hashable) -> float | None:
        return float(self.test[self.row[int(arch)]])

    def reset(self) -> None:
        self.reached.clear()
