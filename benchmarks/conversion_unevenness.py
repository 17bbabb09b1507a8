"""Where a 0/1 conversion's error *enters*, layer by layer: for every IF layer at T, the SNN's rate against

- the ANN fed by the ANN (global error: what reaches the layer from everything before it), and
- the ANN activation of the SNN's own input rates (local error: what this layer adds), with the neurons that
  fired though that activation is 0 (the unevenness error), the neurons whose spike count differs from it,
- and the local error once the layer's input is *evenly spread*: the same input rates fed as a constant current.
  For a QCFS ANN at T = L this is zero in every layer (the conversion is exact; tests/test_convert.py pins it), so
  whatever local error remains is the unevenness of the spike trains between layers.
SRP rows add its masks: neurons silenced, silenced though the ANN is active, kept though it is 0.

    python benchmarks/conversion.py ...     # trains runs/bench/conversion/FP_QCFS etc.
    python benchmarks/conversion_unevenness.py --ann FP_QCFS --method qcfs --t 4 8
"""
from __future__ import annotations

import argparse
import copy
import os
import platform
from pathlib import Path

import torch

from spikesearch.convert import VGG, ConvertConfig, VGGConfig, convert
from spikesearch.convert.converter import ann_activation
from spikesearch.core.neurons import reset
from spikesearch.data.loader import BatchLoader
from spikesearch.train.pipeline import make_loaders


@torch.no_grad()
def spikes_per_stage(snn, x, T):
    """One-step simulation; every stage's (masked) output per counted step, and SRP's masks (or None)."""
    reset(snn)
    masks = None
    if snn.presim:
        for _ in range(snn.presim):
            snn.step(x)
        masks = [(stage[-1].membrane > 1e-3).to(x.dtype) for stage in snn.stages]
        reset(snn)
    rec, total = [[] for _ in snn.stages], 0.0
    for _ in range(T):
        h = x
        for k, stage in enumerate(snn.stages):
            h = stage(h) if masks is None else stage(h) * masks[k]
            rec[k].append(h)
        total = total + snn.output(h)
    return rec, masks, total


@torch.no_grad()
def table(snn, x, y, T) -> list[str]:
    acts = [ann_activation(levels, clip=False) for levels in snn.levels]
    rec, masks, total = spikes_per_stage(snn, x, T)
    acc = float((total.argmax(1) == y).float().mean())
    head = ("| IF | mean ANN act. | global rel. error | local rel. error | fired though local ANN = 0 | count differs "
            "from local ANN | local rel. error, evenly spread input |" + (
                " silenced | silenced though ANN >= 1/T | kept though ANN = 0 |" if masks else ""))
    lines = [f"T = {T}: SNN accuracy {100 * acc:.1f} % on these images", "", head,
             "|" + "---|" * (head.count("|") - 1)]
    a_glob, r_prev = x, x
    for k, stage in enumerate(snn.stages):
        ops = snn.ann_ops(k)
        a_glob = acts[k](ops(a_glob))
        r = torch.stack(rec[k]).mean(0)
        a_loc = acts[k](ops(r_prev))
        neuron = stage[-1]
        neuron.reset_state()
        z = stage[:-1](r_prev)
        r_even = torch.stack([neuron(z) for _ in range(T)]).mean(0)
        if masks is not None:
            r_even = r_even * masks[k]
        mean_loc = max(float(a_loc.mean()), 1e-12)
        cells = [f"{float(a_glob.mean()):.3f}", f"{100 * float((a_glob - r).abs().mean()) / float(a_glob.mean()):.0f} %",
                 f"{100 * float((a_loc - r).abs().mean()) / mean_loc:.0f} %",
                 f"{100 * float(((a_loc == 0) & (r > 0)).float().mean()):.1f} %",
                 f"{100 * float(((a_loc.clamp(max=1) * T).round() != (r * T).round()).float().mean()):.1f} %",
                 f"{100 * float((a_loc - r_even).abs().mean()) / mean_loc:.0f} %"]
        if masks is not None:
            m = masks[k]
            cells += [f"{100 * float((m == 0).float().mean()):.0f} %",
                      f"{100 * float(((m == 0) & (a_loc >= 1 / T)).float().mean()):.1f} %",
                      f"{100 * float(((m == 1) & (a_loc == 0)).float().mean()):.0f} %"]
        lines.append(f"| {k + 1} | " + " | ".join(cells) + " |")
        r_prev = r
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bench", type=Path, default=Path("runs/bench/conversion"), help="conversion.py's --out")
    ap.add_argument("--ann", default="FP_QCFS")
    ap.add_argument("--method", default="qcfs")
    ap.add_argument("--t", type=int, nargs="+", default=[4, 8])
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--width", type=float, default=0.25)
    ap.add_argument("--levels", type=int, default=4)
    a = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))  # the CI machine's 2 cores unless told
    ann = VGG(VGGConfig(width=a.width, batchnorm=True, binary="binary" in a.ann, levels=a.levels,
                        activation="qcfs" if "QCFS" in a.ann else "relu")).eval()
    ann.load_state_dict(torch.load(a.bench / a.ann / "checkpoints/best.pt", weights_only=True)["model"])
    # the same split and normalisation images as conversion.py
    train, _, test, _ = make_loaders("fmnist-small", None, 64, torch.device("cpu"), 0, None, 1000,
                                     eval_batch_size=a.images, val_fraction=0.1)
    norm = [x for x, _ in BatchLoader(train.data.subset(1000), 250, train.augment, False)]
    x, y = next(iter(test))
    snn, _ = convert(copy.deepcopy(ann), norm, ConvertConfig(method=a.method))
    with torch.no_grad():
        ann_acc = float((ann(x).argmax(1) == y).float().mean())
        # the converted stages (BN folded, rescaled) with the ANN's own activations: a conversion bug shows here
        h = x
        for k, levels in enumerate(snn.levels):
            h = ann_activation(levels, clip=False)(snn.ann_ops(k)(h))
        converted_acc = float((snn.output(h).argmax(1) == y).float().mean())
    lines = [(f"{a.ann.replace('_', ' ')} -> {a.method}, ANN {100 * ann_acc:.1f} % (its converted stages with the ANN's "
              f"activations: {100 * converted_acc:.1f} %) on the first {a.images} test images, one-step; "
              f"{platform.machine()}, torch {torch.__version__}"), ""]
    for T in a.t:
        lines += table(snn, x, y, T) + [""]
    out = a.bench / f"unevenness_{a.ann}_{a.method}.md"
    out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
