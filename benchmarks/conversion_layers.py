"""Where a conversion loses accuracy, layer by layer: the per-layer report (``convert.report.layer_report``) of an
ANN that ``benchmarks/conversion.py`` trained, for several methods side by side: relative rate error, neurons silent
though the ANN asks for a spike, and neurons that fired though the ANN is 0, per IF layer at one T.

    python benchmarks/conversion.py ...            # trains runs/bench/conversion/FP_ReLU etc.
    python benchmarks/conversion_layers.py --ann FP_ReLU --methods percentile signed --t 8
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
from pathlib import Path

import torch

from spikesearch.convert import VGG, ConvertConfig, VGGConfig, convert
from spikesearch.convert.report import layer_report
from spikesearch.data.loader import BatchLoader
from spikesearch.train.pipeline import make_loaders


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bench", type=Path, default=Path("runs/bench/conversion"), help="conversion.py's --out")
    ap.add_argument("--ann", default="FP_ReLU")
    ap.add_argument("--methods", nargs="+", default=["percentile", "signed"])
    ap.add_argument("--t", type=int, default=8)
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--width", type=float, default=0.25)
    ap.add_argument("--levels", type=int, default=4)
    a = ap.parse_args()
    torch.set_num_threads(2)
    ann = VGG(VGGConfig(width=a.width, batchnorm=True, binary="binary" in a.ann, levels=a.levels,
                        activation="qcfs" if "QCFS" in a.ann else "relu")).eval()
    ann.load_state_dict(torch.load(a.bench / a.ann / "checkpoints/best.pt", weights_only=True)["model"])
    train, _, test, _ = make_loaders("fmnist-small", None, 64, torch.device("cpu"), 0, None, a.images, eval_batch_size=a.images)
    norm = [x for x, _ in BatchLoader(train.data.subset(1000), 250, train.augment, False)]
    x = next(iter(test))[0]
    reports = {}
    for method in a.methods:
        snn, _ = convert(copy.deepcopy(ann), norm, ConvertConfig(method=method))
        reports[method] = layer_report(snn, x, [a.t], one_step=True)
    layers = [r["layer"] for r in reports[a.methods[0]]]
    lines = [f"| {a.ann.replace('_', ' ')}, T={a.t} | " + " | ".join(f"IF {n}" for n in layers) + " |",
             "|---|" + "---|" * len(layers)]
    for method, rows in reports.items():
        for label, key in (("relative rate error", "rel"), ("silent though the ANN asks for a spike", "dead"),
                           ("fired though the ANN is 0", "extra")):
            lines.append(f"| {method}: {label} | " + " | ".join(f"{100 * r['per_t'][a.t][key]:.0f} %" for r in rows) + " |")
    saturated = max(100 * r["saturated"] for r in reports[a.methods[0]])
    lines.append(f"\nSaturated neurons (ANN above threshold): {saturated:.1f} % of a layer at most. "
                 f"{a.images} test images, one-step; {platform.machine()}, torch {torch.__version__}.")
    out = a.bench / f"layers_{a.ann}_T{a.t}.md"
    out.write_text("\n".join(lines) + "\n")
    (a.bench / f"layers_{a.ann}_T{a.t}.json").write_text(json.dumps(reports))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
