"""SNASNet figures: the score distribution of a search and a diagram of a cell."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..measure.plots import (  # matplotlib only through ..plots (its config dir)
    FancyArrowPatch,
    _save,
    plt,
)
from .search import Candidate, ranking
from .space import NUM_NODES, OP_NAMES, format_cnt_mat

OP_COLORS = {1: "tab:gray", 2: "tab:green", 3: "tab:blue", 4: "tab:purple"}


def plot_scores(history: list[Candidate], path: Path, chosen: str | None = None) -> Path:
    ranked = ranking(history)
    scores = np.array([c.score for c in ranked])
    chosen = chosen or ranked[0].cnt_mat
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 3.8), gridspec_kw={"width_ratios": [2, 1.3]})
    a1.hist(scores, bins=min(60, max(10, len(scores) // 10)), color="tab:blue", alpha=0.8)
    best = next(c for c in ranked if c.cnt_mat == chosen)
    a1.axvline(best.score, color="tab:red", lw=2)
    a1.annotate(f"chosen\n{chosen}\n{best.score:.2f}", (best.score, a1.get_ylim()[1] * 0.9), color="tab:red",
                ha="right", va="top", fontsize=8, xytext=(-4, 0), textcoords="offset points")
    a1.set(xlabel="score  log|det K|", ylabel="candidates",
           title=f"{len(history)} candidates ({len(ranked)} unique)")
    best_so_far = np.maximum.accumulate([c.score for c in history])
    a2.plot(np.arange(1, len(history) + 1), best_so_far, color="tab:red")
    a2.scatter(np.arange(1, len(history) + 1), [c.score for c in history], s=4, alpha=0.3)
    a2.set(xlabel="candidate", ylabel="score", title="best score so far")
    for a in (a1, a2):
        a.grid(alpha=0.3)
    return _save(fig, path)


def plot_cell(mat: np.ndarray, path: Path, title: str = "") -> Path:
    """Nodes on a line; forward edges as solid arcs above, backward (t-1 feedback) edges dashed below."""
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    xs = np.arange(NUM_NODES) * 2.0
    for i in range(NUM_NODES):
        for j in range(NUM_NODES):
            code = int(mat[i, j])
            if i == j or code == 0:
                continue
            forward = i < j
            span = abs(j - i)
            rad = -0.35 * (1 + 0.15 * span)  # arc3 bends left of travel: above for i<j, below for i>j
            arrow = FancyArrowPatch((xs[i], 0), (xs[j], 0), connectionstyle=f"arc3,rad={rad}",
                                    arrowstyle="-|>", mutation_scale=14, lw=2, color=OP_COLORS[code],
                                    linestyle="-" if forward else "--", shrinkA=16, shrinkB=16)
            ax.add_patch(arrow)
            ymid = -rad * (xs[j] - xs[i]) / 2  # apex of the quadratic Bezier
            ax.text((xs[i] + xs[j]) / 2, ymid, OP_NAMES[code], ha="center", va="center", fontsize=8,
                    color=OP_COLORS[code], bbox=dict(fc="white", ec="none", alpha=0.8, pad=0.5))
    labels = ["0\ninput", "1", "2", "3\noutput"]
    for x, lab in zip(xs, labels):
        ax.add_patch(plt.Circle((x, 0), 0.32, fc="white", ec="black", lw=1.5, zorder=3))
        ax.text(x, 0, lab, ha="center", va="center", zorder=4, fontsize=8)
    ax.plot([], [], "k-", label="forward (same timestep)")
    ax.plot([], [], "k--", label="backward (from t-1)")
    ax.legend(loc="lower right", fontsize=8, frameon=False)
    ax.set_xlim(-0.8, xs[-1] + 0.8)
    ax.set_ylim(-2.2, 2.2)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title(title or f"cell {format_cnt_mat(mat)}")
    return _save(fig, path)
