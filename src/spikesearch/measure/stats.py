"""Rank statistics for comparing a score with ground truth (proxies vs accuracy, one scorer vs another):
numpy only, ties handled as scipy does (average ranks for Spearman, tau-b for Kendall)."""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np


def ranks(x: Sequence[float]) -> np.ndarray:
    """Average ranks (1-based); tied values share the mean of their positions."""
    x = np.asarray(x, dtype=float)
    order = np.argsort(x, kind="mergesort")
    r = np.empty(len(x))
    r[order] = np.arange(1, len(x) + 1)
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=r)
    return sums[inverse] / counts[inverse]


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def kendall_tau_b(a: Sequence[float], b: Sequence[float], chunk: int = 2048) -> float:
    """Kendall's tau-b, O(n^2) in chunks of rows (n = 15,625 in about a minute)."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    n = len(x)
    conc_minus_disc = tied_x = tied_y = pairs = 0
    for start in range(0, n, chunk):
        i = np.arange(start, min(start + chunk, n))
        dx = np.sign(x[i, None] - x[None, :])
        dy = np.sign(y[i, None] - y[None, :])
        upper = np.arange(n)[None, :] > i[:, None]  # each pair once
        conc_minus_disc += int((dx * dy)[upper].sum())
        tied_x += int(((dx == 0) & (dy != 0))[upper].sum())
        tied_y += int(((dy == 0) & (dx != 0))[upper].sum())
        pairs += int(((dx != 0) & (dy != 0))[upper].sum())
    denom = np.sqrt((pairs + tied_x) * (pairs + tied_y))
    return float(conc_minus_disc / denom) if denom else float("nan")


def top_k_overlap(a: Sequence[float], b: Sequence[float], k: int) -> float:
    """Fraction of the top ``k`` by ``a`` that are also in the top ``k`` by ``b`` (highest first)."""
    ta = set(np.argsort(-np.asarray(a, dtype=float), kind="mergesort")[:k].tolist())
    tb = set(np.argsort(-np.asarray(b, dtype=float), kind="mergesort")[:k].tolist())
    return len(ta & tb) / max(k, 1)


def bootstrap(stat: Callable[[np.ndarray], float], n: int, reps: int = 1000, seed: int = 0) -> np.ndarray:
    """``stat(idx)`` over ``reps`` resamples ``idx`` of ``range(n)`` drawn with replacement (seeded): the same
    resamples for every ``stat`` given the same seed, so differences between statistics stay paired."""
    rng = np.random.default_rng(seed)
    return np.array([stat(rng.integers(0, n, n)) for _ in range(reps)], dtype=float)


def interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """The percentile interval holding ``level`` of ``values`` (NaNs, from degenerate resamples, left out)."""
    lo, hi = np.nanpercentile(np.asarray(values, dtype=float), [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)
