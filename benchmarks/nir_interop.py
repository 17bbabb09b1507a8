"""Interoperation: a network exported by spikesearch, read by another NIR reader (snnTorch's ``import_nir``),
gives the same outputs step by step? Trains a small SpikingCNN one epoch on the bundled data (hard-reset LIF,
the neuron snnTorch maps), exports it, imports it with snnTorch and with our ``from_nir``, and compares every
step's readout on the test images. Needs ``pip install snntorch==1.0.0 nirtorch`` (not a dependency).

    python benchmarks/nir_interop.py --out runs/bench/nir_interop
"""
from __future__ import annotations

import argparse
import contextlib
import io
import platform
import time
from pathlib import Path

import torch
from torch import nn

from spikesearch import SpikingCNN, TrainConfig, Trainer
from spikesearch.core.neurons import reset
from spikesearch.export import DT, from_nir, to_nir
from spikesearch.runs import Run
from spikesearch.train.pipeline import make_loaders
from spikesearch.train.setup import seed_everything


def snntorch_steps(graph, x: torch.Tensor, timesteps: int, fix_flatten: bool) -> torch.Tensor:
    from snntorch import import_nir

    with contextlib.redirect_stdout(io.StringIO()):  # it prints a warning per rescaled layer
        net = import_nir.import_from_nir(graph)
    if fix_flatten:  # snnTorch reads NIR's Flatten(start_dim=0) as torch's, which flattens the batch too
        for name, m in list(net.named_modules()):
            if isinstance(m, nn.Flatten):
                m.start_dim, m.end_dim = 1, -1
    state, outs = None, []
    with torch.no_grad():
        for _ in range(timesteps):
            out, state = net(x, state)
            outs.append(out)
    return torch.stack(outs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--timesteps", type=int, default=4)
    ap.add_argument("--images", type=int, default=500)
    ap.add_argument("--out", type=Path, default=Path("runs/bench/nir_interop"))
    a = ap.parse_args()
    seed_everything(0)
    train, _, test, info = make_loaders("fmnist-small", None, 64, torch.device("cpu"), 0, 2000, a.images)
    model = SpikingCNN(1, 10, 28, widths=(16, 32), timesteps=a.timesteps, tau=2.0)
    Trainer(model, train, test, TrainConfig(epochs=1, optimizer="adam", lr=5e-3, weight_decay=0, progress=False),
            Run("ann", a.out, quiet=True, overwrite=True)).fit()
    model.eval()
    x = torch.cat([b for b, _ in test])
    y = torch.cat([t for _, t in test])
    graph = to_nir(model, (1, 28, 28))
    reset(model)
    with torch.no_grad():
        ours = model(x)  # mean over T of the readout
    rows = []
    theirs = from_nir(graph)(x, timesteps=a.timesteps).mean(0)
    rows.append(("spikesearch from_nir", theirs))
    for fix in (False, True):
        label = "snnTorch 1.0.0 import_nir" + (" + Flatten(start_dim=1)" if fix else "")
        try:
            rows.append((label, snntorch_steps(graph, x, a.timesteps, fix).mean(0)))
        except Exception as e:  # a reader that cannot run the graph is a result, reported as such
            rows.append((label, f"{type(e).__name__}: {str(e).splitlines()[0][:90]}"))
    lines = ["| reader | runs | max abs readout difference | same prediction | its test accuracy |", "|---|---|---|---|---|",
             f"| spikesearch (the model itself) | yes | 0 | 100 % | {100 * float((ours.argmax(1) == y).float().mean()):.1f} % |"]
    for label, out in rows:
        if isinstance(out, str):
            lines.append(f"| {label} | no: {out} | | | |")
            continue
        same = float((out.argmax(1) == ours.argmax(1)).float().mean())
        acc = float((out.argmax(1) == y).float().mean())
        lines.append(f"| {label} | yes | {float((out - ours).abs().max()):.2e} | {100 * same:.1f} % | {100 * acc:.1f} % |")
    table = "\n".join(lines) + (
        f"\n\nSpikingCNN [16, 32] (LIF tau 2, hard reset), 1 epoch on 2000 bundled images, T={a.timesteps}, {len(y)} test "
        f"images, exported with dt={DT:g} s; {platform.machine()}, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}.")
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "table.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
