"""SpikeDHS figures: how alpha, beta, the node choices and the surrogate temperatures moved during the
search, and the derived cell and network path."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..measure.plots import (  # matplotlib only through ..plots (its config dir)
    FancyArrowPatch,
    _save,
    plt,
)
from .genotype import Genotype
from .nodes import NeuronChoice

OP_COLORS = {"none": "tab:gray", "skip": "black", "conv1x1": "tab:green", "conv3x3": "tab:blue", "avgpool": "tab:purple",
             "conv3x3_b3": "tab:blue", "conv3x3_b5": "tab:cyan"}


def plot_evolution(history: list[dict], ops: tuple[str, ...], path: Path, neuron_labels: list[str] | None = None) -> Path:
    """One panel per kind of architecture parameter that was searched, x = search epoch."""
    epochs = [h["epoch"] for h in history]
    panels = [k for k in ("alpha", "beta", "nodes", "b") if history[-1].get(k)]
    fig, axes = plt.subplots(1, max(len(panels), 1), figsize=(4.6 * max(len(panels), 1), 3.8), squeeze=False)
    for ax, kind in zip(axes[0], panels):
        if kind == "alpha":  # mean weight of each op over the edges
            a = np.array([h["alpha"] for h in history])
            for j, op in enumerate(ops):
                ax.plot(epochs, a[:, :, j].mean(1), "-o", ms=3, color=OP_COLORS.get(op), label=op)
                ax.fill_between(epochs, a[:, :, j].min(1), a[:, :, j].max(1), color=OP_COLORS.get(op), alpha=0.12)
            ax.set(title="cell: op weight (mean, range over edges)", ylabel="softmax(alpha)")
        elif kind == "beta":  # probability of going down, per layer (mean over levels that can)
            b = np.array([h["beta"] for h in history])
            for k in range(b.shape[1]):
                ax.plot(epochs, b[:, k, :-1, 1].mean(1), "-o", ms=3, label=f"layer {k}")
            ax.set(title="path: P(go down) per layer", ylabel="softmax(beta) down")
        elif kind == "nodes":
            w = np.array([list(h["nodes"].values()) for h in history])  # [epochs, nodes, K]
            for j in range(w.shape[2]):
                lab = neuron_labels[j] if neuron_labels else f"candidate {j}"
                ax.plot(epochs, w[:, :, j].mean(1), "-o", ms=3, label=lab)
                ax.fill_between(epochs, w[:, :, j].min(1), w[:, :, j].max(1), alpha=0.12)
            ax.set(title="neurons (TPS/HNS): weight per candidate", ylabel="softmax(node logits)")
        else:
            v = np.array([list(h["b"].values()) for h in history])
            ax.plot(epochs, v, color="tab:red", alpha=0.25, lw=1)
            ax.plot(epochs, v.mean(1), color="tab:red", lw=2.5, label="mean over nodes")
            ax.set(title="DGS: Dspike temperature b per node", ylabel="b (larger = sharper)")
        ax.set_xlabel("search epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, path)


def plot_genotype(g: Genotype, levels: int, path: Path, title: str = "") -> Path:
    """Left: the cell (inputs k-2, k-1, nodes, edges coloured by op). Right: the trellis with the path."""
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [1.2, 1]})
    names = ["c(k-2)", "c(k-1)"] + [f"node {i}" for i in range(g.steps)]
    xs = np.arange(len(names)) * 1.8
    for i, node in enumerate(g.cell):
        for s, op in node:
            rad = -0.3 - 0.05 * (i + 2 - s)
            a1.add_patch(FancyArrowPatch((xs[s], 0), (xs[i + 2], 0), connectionstyle=f"arc3,rad={rad}", arrowstyle="-|>",
                                         mutation_scale=13, lw=2, color=OP_COLORS.get(op, "tab:orange"), shrinkA=15, shrinkB=15))
            a1.text((xs[s] + xs[i + 2]) / 2, -rad * (xs[i + 2] - xs[s]) / 2, op, ha="center", va="center", fontsize=7,
                    color=OP_COLORS.get(op, "tab:orange"), bbox=dict(fc="white", ec="none", alpha=0.8, pad=0.3))
    for x, lab in zip(xs, names):
        a1.add_patch(plt.Circle((x, 0), 0.42, fc="white" if "node" in lab else "0.9", ec="black", lw=1.4, zorder=3))
        a1.text(x, 0, lab.replace(" ", "\n"), ha="center", va="center", fontsize=7, zorder=4)
    a1.text(xs[-1] + 0.9, 0, "concat\nnodes", fontsize=7, va="center")
    a1.set_xlim(-0.8, xs[-1] + 1.8)
    a1.set_ylim(-1.2, 2.2)
    a1.set_aspect("equal")
    a1.axis("off")
    a1.set_title("cell")
    layers = len(g.path)
    for k in range(-1, layers):
        for lv in range(levels):
            a2.plot(k, -lv, "o", color="0.85", ms=9, zorder=1)
    a2.plot(range(-1, layers), [0] + [-p for p in g.path], "-o", color="tab:red", lw=2.5, ms=10, zorder=2)
    searched_neurons = any(c.kind == "ann" or c.tau != NeuronChoice().tau for layer in g.nodes for c in layer)
    for k, lv in enumerate(g.path):
        if searched_neurons:
            lab = ",".join("A" if c.kind == "ann" else f"{c.tau:g}" for c in g.nodes[k])
            a2.annotate(lab, (k, -lv), xytext=(0, 9), textcoords="offset points", ha="center", fontsize=7)
    a2.set_yticks([-lv for lv in range(levels)], [f"level {lv} (1/{2 ** lv})" for lv in range(levels)])
    a2.set_xticks(range(-1, layers), ["stem"] + [str(k) for k in range(layers)])
    a2.set(xlabel="layer", title="network path" + (" (labels: node taus, A = ANN neuron)" if searched_neurons else ""))
    a2.grid(alpha=0.2)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)
