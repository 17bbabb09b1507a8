"""Where a conversion loses accuracy: per layer, the gap between the ANN's activation (in units of the layer's
threshold) and the SNN's firing rate after T steps, and the neurons that cannot follow.

For every IF layer and every T in ``timesteps``:
- ``mae``: mean |a - r_T| over neurons and images, ``a`` the ANN activation / threshold (ReLU unclipped), ``r_T``
  the SNN's spike count / T; ``rel``: mae / mean(a); ``bias``: mean(min(a, 1) - r_T), the systematic part a rate
  can follow (what bias calibration removes);
- ``saturated``: neurons with a > 1 (the ANN asks for more than one spike per step; the rate stops at 1);
- ``dead``: neurons with a >= 1/T (at least one spike expected by T) that have not fired by T;
- ``extra``: neurons with a = 0 that fired (the unevenness error: early spikes a negative input never takes back).
The ANN side runs through the converted (rescaled, BN-folded) stages with the ANN's own activations, so a
gap is the spiking approximation's, not a conversion bug's.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from .converter import SpikingNet, ann_activation


@torch.no_grad()
def layer_report(snn: SpikingNet, x: Tensor, timesteps: list[int], one_step: bool) -> list[dict]:
    """The ANN side uses its own activation per stage in threshold units (ReLU unclipped, so saturation shows)."""
    ann_acts = [ann_activation(levels, clip=False) for levels in snn.levels]
    t_max = max(timesteps)
    counts: list[list[Tensor]] = [[] for _ in snn.stages]
    handles = [stage[-1].register_forward_hook(lambda m, i, out, k=k: counts[k].append(out))
               for k, stage in enumerate(snn.stages)]
    try:
        snn.simulate(x, t_max, one_step)
    finally:
        for h in handles:
            h.remove()
    rows, a = [], x.mean(0) if x.dim() == 5 else x
    for k in range(len(snn.stages)):
        a = ann_acts[k](snn.ann_ops(k)(a))
        spikes = torch.stack(counts[k][-t_max:]).cumsum(0)  # [T, B, ...] spikes so far (SRP's presim left out)
        mean_a = float(a.mean())
        row = {"layer": k + 1, "neurons": int(a[0].numel()), "ann_mean": mean_a, "saturated": float((a > 1).float().mean()),
               "per_t": {}}
        for t in timesteps:
            r = spikes[t - 1] / t
            row["per_t"][t] = {"mae": float((a - r).abs().mean()), "rel": float((a - r).abs().mean()) / max(mean_a, 1e-12),
                               "bias": float((a.clamp(max=1) - r).mean()),
                               "dead": float(((a >= 1 / t) & (spikes[t - 1] == 0)).float().mean()),
                               "extra": float(((a == 0) & (spikes[t - 1] > 0)).float().mean()),
                               "rate": float(r.mean())}
        rows.append(row)
    return rows


def plot_layer_report(rows: list[dict], path: Path, title: str) -> Path:
    from ..measure.plots import _save, plt

    ts = sorted(rows[0]["per_t"], key=int)
    rel = [[100 * r["per_t"][t]["rel"] for t in ts] for r in rows]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 0.35 * len(rows) + 2.2), gridspec_kw={"width_ratios": [3, 2]})
    im = a1.imshow(rel, aspect="auto", cmap="magma_r", vmin=0, vmax=min(100, max(max(r) for r in rel)))
    a1.set_xticks(range(len(ts)), [f"T={t}" for t in ts])
    a1.set_yticks(range(len(rows)), [f"IF {r['layer']} ({r['neurons']:,})" for r in rows])
    for i, r in enumerate(rel):
        for j, v in enumerate(r):
            a1.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=7, color="white" if v > 50 else "black")
    fig.colorbar(im, ax=a1, label="|ANN - SNN rate| / mean ANN activation (%)")
    a1.set_title("relative rate error per layer")
    y = range(len(rows))
    t_last = ts[-1]
    a2.barh([i - 0.2 for i in y], [100 * r["saturated"] for r in rows], height=0.4, label="saturated (ANN > threshold)")
    a2.barh([i + 0.2 for i in y], [100 * r["per_t"][t_last]["dead"] for r in rows], height=0.4,
            label=f"silent at T={t_last} though ANN >= 1/T")
    a2.set_yticks(list(y), [f"IF {r['layer']}" for r in rows])
    a2.invert_yaxis()
    a2.set_xlabel("% of neurons")
    a2.legend(fontsize=7, loc="lower right")
    fig.suptitle(title)
    return _save(fig, path)
