"""Interoperation: a network exported by spikesearch, read by two other NIR consumers (snnTorch's
``import_nir`` and Norse's ``from_nir``), gives the same outputs step by step? Trains a small SpikingCNN one epoch
on the bundled data (hard-reset LIF, the neuron both map), exports it, imports it with snnTorch, Norse and our
``from_nir``, and compares the readout (mean over T) on the test images; then offers each reader a converted
VGG's graph (``--method calibrate``: reset by subtraction as I -> Threshold -> Delay -> Scale) and lists what it
cannot read. A reader that fails is reported with its error; where a one-line shim makes it run (a Flatten that
keeps the batch, Norse's missing AvgPool2d), that is a separate row, named. Needs
``pip install -c constraints.txt snntorch norse nirtorch`` with ``torch==2.13.0`` in the constraints file (not
dependencies).

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
    return stateful_steps(net, x, timesteps)


def stateful_steps(net, x: torch.Tensor, timesteps: int) -> torch.Tensor:
    """``[T, ...]`` outputs of a NIR-imported network that takes and returns its state each step (both consumers)."""
    state, outs = None, []
    with torch.no_grad():
        for _ in range(timesteps):
            out, state = net(x, state)
            outs.append(out)
    return torch.stack(outs)


def norse_steps(graph, x: torch.Tensor, timesteps: int, shim: bool) -> torch.Tensor:
    """Norse 1.1's ``from_nir`` (dt = the graph's); with ``shim``, its node map extended by AvgPool2d (Norse has
    none) and a Flatten that keeps the batch (as for snnTorch)."""
    import warnings

    import nir
    import nirtorch
    import norse.torch as norse
    from norse.torch.utils.import_nir import _import_norse_module

    warnings.filterwarnings("ignore")  # nirtorch.load's deprecation notice, Norse's parameter notes

    def model_map(node):
        if isinstance(node, nir.AvgPool2d):
            k, st, p = (tuple(int(v) for v in a) for a in (node.kernel_size, node.stride, node.padding))
            return nn.AvgPool2d(k, st, p)
        if isinstance(node, nir.Flatten):
            return nn.Flatten(1)
        return _import_norse_module(node, ignore_warnings=True, dt=DT)

    net = nirtorch.load(graph, model_map) if shim else norse.from_nir(graph, ignore_warnings=True, dt=DT)
    return stateful_steps(net, x, timesteps)


def converted_graph(train) -> object:
    """A 28-px VGG (width 1/16, untrained: only the graph's readability is asked) converted by calibrate."""
    from spikesearch.convert import VGG, ConvertConfig, VGGConfig, convert
    from spikesearch.data.loader import BatchLoader

    torch.manual_seed(0)
    ann = VGG(VGGConfig(width=0.0625, batchnorm=True)).eval()
    norm = [xb for xb, _ in BatchLoader(train.data.subset(64), 64, train.augment, False)]
    return to_nir(convert(ann, norm, ConvertConfig(method="calibrate", calib_images=64, calib_timesteps=4))[0], (1, 28, 28))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--timesteps", type=int, default=4)
    ap.add_argument("--images", type=int, default=500)
    ap.add_argument("--out", type=Path, default=Path("runs/bench/nir_interop"))
    a = ap.parse_args()
    torch.set_num_threads(1)
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
    import norse
    import snntorch

    readers = [(f"snnTorch {snntorch.__version__} import_nir", lambda g: snntorch_steps(g, x, a.timesteps, False)),
               (f"snnTorch {snntorch.__version__} import_nir + Flatten(start_dim=1)",
                lambda g: snntorch_steps(g, x, a.timesteps, True)),
               (f"Norse {norse.__version__} from_nir", lambda g: norse_steps(g, x, a.timesteps, False)),
               (f"Norse {norse.__version__} from_nir + AvgPool2d, Flatten(start_dim=1)",
                lambda g: norse_steps(g, x, a.timesteps, True))]
    for label, run in readers:
        try:
            rows.append((label, run(graph).mean(0)))
        except Exception as e:  # a reader that cannot run the graph is a result, reported as such
            rows.append((label, f"{type(e).__name__}: {str(e).splitlines()[0][:90]}"))
    conv = converted_graph(train)
    unread = []
    for label, run in readers:
        try:
            run(conv)
            unread.append(f"| {label} | reads it (outputs not compared) |")
        except Exception as e:
            unread.append(f"| {label} | no: {type(e).__name__}: {str(e).splitlines()[0][:90]} |")
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
        f"images, exported with dt={DT:g} s; {platform.machine()}, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}."
        "\n\nA converted VGG (28 px, --method calibrate: I -> Threshold -> Delay -> Scale loops, a padded Conv2d + Scale "
        "for its partial pools):\n\n| reader | converted VGG graph |\n|---|---|\n" + "\n".join(unread))
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "table.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
