"""PNG figures for the run folder (matplotlib, Agg backend: no display needed)."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Sequence


def _writable_config_dir() -> None:
    """matplotlib warns twice on stderr when HOME is not writable; give it a private folder instead."""
    if os.environ.get("MPLCONFIGDIR"):
        return
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "matplotlib"
    try:
        base.mkdir(parents=True, exist_ok=True)
        if os.access(base, os.W_OK):
            return
    except OSError:
        pass
    private = Path(tempfile.gettempdir()) / f"spikesearch-matplotlib-{os.getuid()}"
    private.mkdir(mode=0o700, exist_ok=True)
    os.environ["MPLCONFIGDIR"] = str(private)


_writable_config_dir()
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch  # noqa: E402,F401  (re-exported for the cell diagrams)
from matplotlib.ticker import MaxNLocator  # noqa: E402


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def plot_training(history: Sequence[dict], path: Path, title: str = "") -> Path:
    epochs = [h["epoch"] for h in history]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
    a1.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    tl = [(h["epoch"], h["test_loss"]) for h in history if h.get("test_loss") is not None]
    if tl:
        a1.plot(*zip(*tl), "s-", label="test")
    a1.set(xlabel="epoch", ylabel="loss", title="loss")
    a1.legend()
    a2.plot(epochs, [100 * h["train_acc"] for h in history], "o-", label="train")
    ta = [(h["epoch"], 100 * h["test_acc"]) for h in history if h.get("test_acc") is not None]
    if ta:
        a2.plot(*zip(*ta), "s-", label="test")
        best = max(ta, key=lambda p: p[1])
        a2.annotate(f"best {best[1]:.2f}%", best, textcoords="offset points", xytext=(-10, -18))
    a2.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    a2.legend()
    for a in (a1, a2):
        a.grid(alpha=0.3)
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_spike_report(report: dict, path: Path, title: str = "") -> Path:
    neurons = [l for l in report["layers"] if l["kind"] == "neuron"]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, max(3.5, 0.32 * len(neurons) + 1.5)),
                                 gridspec_kw={"width_ratios": [3, 1.4]})
    names = [l["layer"] for l in neurons][::-1]
    rates = [100 * l["firing_rate"] for l in neurons][::-1]
    bars = a1.barh(names, rates, color="tab:orange")
    a1.bar_label(bars, fmt="%.1f%%", fontsize=7, padding=2)
    a1.set(xlabel="firing rate (% of neuron updates that spike)",
           title=f"per-layer firing rate, mean {100 * report['mean_firing_rate']:.2f}%")
    a1.tick_params(axis="y", labelsize=7)
    snn, ann = report["energy_uj_per_image"], report["ann_equivalent_energy_uj_per_image"]
    b = a2.bar(["SNN", "ANN\n(same net)"], [snn, ann], color=["tab:orange", "tab:gray"])
    a2.bar_label(b, fmt="%.3g µJ")
    a2.set(ylabel="energy per image (µJ)",
           title=f"{report['spikes_per_image']:.3g} spikes/img\n{report['sops_per_image']:.3g} SOPs + "
                 f"{report['macs_per_image']:.3g} MACs")
    a2.title.set_fontsize(9)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_accuracy_vs_timestep(curves: dict[str, Sequence[float]], path: Path, ann: dict[str, float] | None = None,
                              title: str = "") -> Path:
    """SNN accuracy after each timestep (log-x). A curve whose label starts with an ANN's name ("FP ReLU ->
    ours, signed") goes to that ANN's panel, with the ANN's accuracy dashed; the rest of its label names the
    method, which keeps one colour in every panel."""
    ann = ann or {}

    def owner(label: str) -> str:
        return next((n for n in ann if label.startswith(n)), "")

    def method(label: str) -> str:
        return label[len(owner(label)):].lstrip(" ->") or label

    panels: dict[str, dict[str, Sequence[float]]] = {}
    for label, acc in curves.items():
        panels.setdefault(owner(label), {})[label] = acc
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    color = {m: palette[i % len(palette)] for i, m in enumerate(dict.fromkeys(map(method, curves)))}
    cols = min(2, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.4 * cols, 4.2 * rows), squeeze=False, sharey=True)
    for ax, (name, group) in zip(axes.flat, panels.items()):
        for label, acc in group.items():
            ax.plot(range(1, len(acc) + 1), [100 * a for a in acc], color=color[method(label)], lw=2, label=method(label))
        for ann_name, acc in ann.items():
            if ann_name == name or (not name and len(ann) == 1):
                ax.axhline(100 * acc, color="k", ls="--", lw=1, label=f"ANN ({100 * acc:.2f}%)")
        ax.set_xscale("log", base=2)
        ax.set(xlabel="timestep T", ylabel="test accuracy (%)", title=name or title or "accuracy vs timesteps")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, loc="best")
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    if title and len(panels) > 1:
        fig.suptitle(title)
    return _save(fig, path)
