"""Why some searched cells' validation accuracy collapses: the same trained weights evaluated with BatchNorm's
running statistics (eval mode, what every evaluation and a deployed network use), with each batch's own
statistics (as in training), and with running statistics re-estimated on training batches. Reads the cells of a
``spikesearch search --space snasnet`` run (``RUN/cells/<cnt_mat>/checkpoints/last.pt``) on the bundled data.

    python benchmarks/bn_eval_mode.py runs/mo_s1            # every cell of the run that finished a rung
"""
from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import torch
from torch import nn

from spikesearch.cli.snasnet import MODEL_DEFAULTS
from spikesearch.core.neurons import reset
from spikesearch.core.surrogate import make_surrogate
from spikesearch.snasnet.network import macro_config
from spikesearch.snasnet.parallel import SNASNetBuilder
from spikesearch.snasnet.space import parse_cnt_mat
from spikesearch.train.pipeline import make_loaders
from spikesearch.train.setup import seed_everything

BN = nn.modules.batchnorm._BatchNorm


def accuracy(model: nn.Module, loader, batch_stats: bool = False) -> float:
    model.eval()
    for m in model.modules():
        if batch_stats and isinstance(m, BN):
            m.train()  # normalise by the batch's own statistics (their running update is thrown away with the copy)
    correct = n = 0
    with torch.no_grad():
        for x, y in loader:
            reset(model)
            correct += int((model(x).argmax(1) == y).sum())
            n += len(y)
    return 100 * correct / n


def recalibrated(model: nn.Module, loader, batches: int) -> nn.Module:
    model = copy.deepcopy(model)
    for m in model.modules():
        if isinstance(m, BN):
            m.reset_running_stats()
            m.momentum = None  # a cumulative average over the batches
    model.train()
    with torch.no_grad():
        for k, (x, _) in enumerate(loader):
            if k == batches:
                break
            reset(model)
            model(x)
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("--batches", type=int, default=21, help="training batches to re-estimate the running statistics")
    a = ap.parse_args()
    cfg = json.loads((a.run / "config.json").read_text())
    torch.set_num_threads(1)
    seed_everything(cfg["seed"])
    m = MODEL_DEFAULTS
    loaders = make_loaders(cfg["dataset"], cfg["data_dir"], m["batch_size"], torch.device("cpu"), cfg["seed"],
                           cfg["train_subset"], cfg["test_subset"], frames=cfg["timestep"], val_fraction=cfg["val_fraction"])
    make_surrogate(m["surrogate"])
    build = SNASNetBuilder(cfg["celltype"], macro_config(cfg["dataset"]), cfg["timestep"], m["tau"], m["threshold"],
                           m["surrogate"], "cpu")
    print("| cell | backward edges | epochs | eval mode (running stats) | batch statistics | running stats re-estimated |")
    print("|---|---:|---:|---:|---:|---:|")
    for folder in sorted((a.run / "cells").iterdir()):
        ckpt = folder / "checkpoints" / "last.pt"
        if not ckpt.is_file():
            continue
        mat = parse_cnt_mat(folder.name.replace("-", " "))
        net = build(mat)
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        net.load_state_dict(state["model"])
        back = int((torch.tensor(mat).tril(-1) > 0).sum())
        row = [accuracy(net, loaders.val), accuracy(copy.deepcopy(net), loaders.val, batch_stats=True),
               accuracy(recalibrated(net, loaders.train, a.batches), loaders.val)]
        print(f"| `{folder.name.replace('-', ' ')}` | {back} | {state['epoch'] + 1} | " + " | ".join(f"{v:.1f}" for v in row) + " |",
              flush=True)


if __name__ == "__main__":
    main()
