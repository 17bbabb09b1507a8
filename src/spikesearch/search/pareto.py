"""Pareto fronts and their 2-D hypervolume, for accuracy (maximised) against energy (minimised)."""
from __future__ import annotations

import numpy as np


def pareto_mask(acc: np.ndarray, energy: np.ndarray) -> np.ndarray:
    """True where no other point has accuracy >= and energy <= with one of them strict."""
    acc, energy = np.asarray(acc, float), np.asarray(energy, float)
    order = np.lexsort((-acc, energy))  # by energy, the more accurate first among equal energies
    mask = np.zeros(len(acc), dtype=bool)
    best = -np.inf
    for k in order:
        if acc[k] > best:
            mask[k], best = True, acc[k]
    return mask


def hypervolume(acc: np.ndarray, energy: np.ndarray, ref_acc: float, ref_energy: float) -> float:
    """The area dominated by the points and bounded by the reference (accuracy ``ref_acc``, energy
    ``ref_energy``); points beyond the reference add nothing."""
    acc, energy = np.asarray(acc, float), np.asarray(energy, float)
    keep = (acc > ref_acc) & (energy < ref_energy)
    acc, energy = acc[keep], energy[keep]
    if not len(acc):
        return 0.0
    m = pareto_mask(acc, energy)
    acc, energy = acc[m], energy[m]
    order = np.argsort(energy)
    acc, energy = acc[order], energy[order]  # along the front energy rises with accuracy
    widths = np.append(energy[1:], ref_energy) - energy
    return float(np.sum(widths * (acc - ref_acc)))


def nondominated_rank(acc: np.ndarray, energy: np.ndarray) -> np.ndarray:
    """Each point's front level (0 = non-dominated; 1 = non-dominated once level 0 is removed; ...)."""
    acc, energy = np.asarray(acc, float), np.asarray(energy, float)
    rank = np.full(len(acc), -1)
    left = np.arange(len(acc))
    level = 0
    while len(left):
        m = pareto_mask(acc[left], energy[left])
        rank[left[m]] = level
        left, level = left[~m], level + 1
    return rank
