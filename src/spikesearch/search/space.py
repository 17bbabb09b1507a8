"""The interface a search space offers the strategies.

An architecture is a hashable key (a SpikeNAS-Bench id, a cell matrix as a tuple). A space encodes it as Optuna
parameters (so TPE / NSGA-II can model it and a study stores it), evaluates it at a fidelity — training epochs,
continuing from the lower fidelity it has already reached, never restarting — and reports what that costs."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Hashable

import numpy as np
import optuna

# the ranking signals an evaluation may carry (higher is better for every one)
SIGNALS = {
    "val_acc": "validation accuracy at the rung's epoch (%)",
    "val_acc_last10": "mean validation accuracy over the last 10 epochs trained (%)",
    "tse": "minus the training loss summed over the epochs trained (Ru et al. 2021, 'training speed estimation')",
}


@dataclass(frozen=True)
class Evaluation:
    """What training ``arch`` up to ``epochs`` epochs gives: the signals, and what reaching that rung from the
    previous one cost (``cost_epochs`` and ``cost_seconds``; a rung already reached costs nothing)."""
    epochs: int
    signals: dict[str, float]
    cost_epochs: int
    cost_seconds: float
    energy: float | None = None  # where the space measures it (our cells), or logs it (a fully trained bench cell)
    extra: dict[str, Any] = field(default_factory=dict)


class Space(ABC):
    """A search space: what the strategies need of it."""

    name: str
    max_epochs: int  # full training

    @abstractmethod
    def distributions(self) -> dict[str, optuna.distributions.CategoricalDistribution]:
        """The Optuna parameters that encode an architecture (categorical: an edge's operation)."""

    @abstractmethod
    def encode(self, arch: Hashable) -> dict[str, Any]:
        """The Optuna parameter values of ``arch``."""

    @abstractmethod
    def decode(self, params: dict[str, Any]) -> Hashable | None:
        """The architecture of a parameter set (None when it is not in the space, e.g. an untrained id)."""

    @abstractmethod
    def sample(self, rng: np.random.Generator, pool: list[Hashable] | None = None) -> Hashable:
        """A uniformly random architecture (of ``pool`` when given)."""

    @abstractmethod
    def mutate(self, arch: Hashable, rng: np.random.Generator) -> Hashable:
        """A neighbour: one edge's operation changed (the architecture itself when none is in the space)."""

    @abstractmethod
    def candidates(self, rng: np.random.Generator) -> list[Hashable]:
        """A finite set to pre-filter from: the whole space when it is a table, else a seeded draw."""

    @abstractmethod
    def zero_cost(self, name: str, archs: list[Hashable]) -> np.ndarray:
        """A training-free score of each architecture (higher = predicted better)."""

    @abstractmethod
    def evaluate(self, arch: Hashable, epochs: int) -> Evaluation:
        """Train ``arch`` to ``epochs`` epochs (continuing) and report the signals and the cost."""

    @abstractmethod
    def describe(self, arch: Hashable) -> dict[str, Any]:
        """What results.json names the architecture by (``arch_id``, ``cnt_mat``)."""

    def truth(self, arch: Hashable) -> float | None:
        """The held-out test accuracy, to score a strategy after it has chosen (never to choose); None when
        the space has no table."""
        return None

    def reset(self) -> None:
        """Forget what has been trained (a new repeat of a simulation starts from nothing)."""
