"""Conversion, then spike-based fine-tuning of the converted SNN (hybrid conversion, Rathi et al., ICLR 2020): the
SNN keeps its 0/1 IF neurons (threshold 1, membrane from half threshold, reset by subtraction) and its weights and
biases are trained through them, BPTT over T one-step timesteps with a rectangular surrogate gradient, starting
from the converted weights. The SNN is no longer a training-free conversion; it emits 0/1 spikes only.

For an ANN with binary weights only the per-output-channel scale of each binary layer is trained (its signs stay
fixed, so every filter still holds two values +-alpha), beside the biases and the full-precision first and last
layers. The epoch is chosen by the SNN's accuracy at T on the validation split (10 % of the training images, as
the ANN's), never the test set.

    python benchmarks/conversion.py ...     # trains runs/bench/conversion/FP_QCFS etc.
    python benchmarks/conversion_finetune.py --ann FP_QCFS --method qcfs --t 4 --epochs 20

With ``--dataset``/``--data_dir``/``--eval_size`` as given to conversion.py (e.g. ``--dataset fashion-mnist
--data_dir /usr/share/datasets/fashion-mnist`` for the full Fashion-MNIST); the defaults are the bundled data.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import parametrize

from spikesearch.convert import VGG, ConvertConfig, VGGConfig, convert, evaluate_snn
from spikesearch.convert.methods import ConvertedIF
from spikesearch.core.neurons import reset
from spikesearch.data.loader import BatchLoader
from spikesearch.train.pipeline import make_loaders
from spikesearch.train.setup import seed_everything


class _Heaviside(torch.autograd.Function):
    """The IF neuron's spike, with a rectangular surrogate gradient one threshold wide."""

    @staticmethod
    def forward(ctx, u):
        ctx.save_for_backward(u)
        return (u >= 0).to(u.dtype)

    @staticmethod
    def backward(ctx, g):
        (u,) = ctx.saved_tensors
        return g * (u.abs() < 0.5).to(g.dtype)


class _SurrogateIF(ConvertedIF):
    def fire(self, u):
        return _Heaviside.apply(u - (self.v_threshold - self.v_init))


class _ChannelScale(nn.Module):
    """weight = fixed binary weight * a trainable per-output-channel scale (signs fixed: still binary)."""

    def __init__(self, channels: int, dims: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(channels))
        self.shape = (-1,) + (1,) * (dims - 1)

    def forward(self, w):
        return w * self.scale.view(self.shape)


def trainable(snn, binary: bool) -> list[nn.Parameter]:
    weighted = [m for m in snn.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    for i, m in enumerate(weighted):
        if binary and 0 < i < len(weighted) - 1:  # the ANN's binary layers (first and last are full precision)
            m.weight.requires_grad_(False)
            parametrize.register_parametrization(m, "weight", _ChannelScale(m.weight.shape[0], m.weight.dim()),
                                                 unsafe=True)
            m.parametrizations.weight.original.requires_grad_(False)
    return [p for p in snn.parameters() if p.requires_grad]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bench", type=Path, default=Path("runs/bench/conversion"), help="conversion.py's --out")
    ap.add_argument("--ann", default="FP_QCFS")
    ap.add_argument("--method", default="qcfs", help="the conversion fine-tuned: qcfs, calibrate, percentile ...")
    ap.add_argument("--t", type=int, default=4, help="the T trained at (the test reports T = 1..8)")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--seed", type=int, default=0, help="the ANN's --seed in conversion.py (its split), and the fine-tuning's")
    ap.add_argument("--width", type=float, default=0.25)
    ap.add_argument("--levels", type=int, default=4)
    ap.add_argument("--dataset", default="fmnist-small", help="conversion.py's --dataset")
    ap.add_argument("--data_dir", default=None)
    ap.add_argument("--eval_size", type=int, default=1000, help="test images")
    a = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))  # the CI machine's 2 cores unless told
    seed_everything(a.seed)
    binary = "binary" in a.ann
    ann = VGG(VGGConfig(width=a.width, batchnorm=True, binary=binary, levels=a.levels,
                        activation="qcfs" if "QCFS" in a.ann else "relu")).eval()
    ann.load_state_dict(torch.load(a.bench / a.ann / "checkpoints/best.pt", weights_only=True)["model"])
    # the ANN's split and normalisation images (conversion.py with --seed): best.pt was chosen on this validation split
    train, val, test, _ = make_loaders(a.dataset, a.data_dir, 64, torch.device("cpu"), a.seed, None, a.eval_size, eval_batch_size=250,
                                       val_fraction=0.1)
    norm = [x for x, _ in BatchLoader(train.data.subset(1000), 250, train.augment, False)]
    with torch.no_grad():
        ann_test = sum(int((ann(x).argmax(1) == y).sum()) for x, y in test) / len(test.data)
    snn, _ = convert(copy.deepcopy(ann), norm, ConvertConfig(percentile=99.9, method=a.method, calib_timesteps=a.t))
    for stage in snn.stages:  # the same neuron, with a gradient for training
        stage[-1].__class__ = _SurrogateIF
    params = trainable(snn, binary)
    opt = torch.optim.Adam(params, lr=a.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, a.epochs * len(train))

    def accuracy(loader, T):
        return evaluate_snn(snn, loader, T, one_step=True, progress=False)["accuracy"]

    before = accuracy(test, 8)
    best, best_epoch, best_state = accuracy(val, a.t)[-1], 0, copy.deepcopy(snn.state_dict())
    log = [f"epoch 0 (converted): val {100 * best:.2f} % at T={a.t}"]
    print(log[-1], flush=True)
    for epoch in range(1, a.epochs + 1):
        t0, n, loss_sum = time.time(), 0, 0.0
        for x, y in train:
            reset(snn)
            out = sum(snn._step(x, None) for _ in range(a.t)) / a.t
            loss = nn.functional.cross_entropy(out, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            loss_sum, n = loss_sum + float(loss.detach()) * len(y), n + len(y)
        acc = accuracy(val, a.t)[-1]
        log.append(f"epoch {epoch}: train loss {loss_sum / n:.4f}, val {100 * acc:.2f} % at T={a.t} ({time.time() - t0:.0f} s)")
        print(log[-1], flush=True)
        if acc > best:
            best, best_epoch, best_state = acc, epoch, copy.deepcopy(snn.state_dict())
    snn.load_state_dict(best_state)
    after = accuracy(test, 8)
    if binary:  # the binary layers still hold two values per filter
        for m in snn.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)) and parametrize.is_parametrized(m):
                assert all(len(torch.unique(f.abs())) == 1 for f in m.weight.detach().flatten(1))
    row = {"ann": a.ann, "ann_test": ann_test, "method": a.method, "t_trained": a.t, "epochs": a.epochs, "lr": a.lr,
           "seed": a.seed, "dataset": a.dataset, "test_images": len(test.data), "best_epoch": best_epoch, "val_best": best,
           "test_converted": before, "test_finetuned": after}
    summary = (f"{a.ann} (ANN {100 * ann_test:.2f} %) -> {a.method} + fine-tuning at T={a.t} (epoch {best_epoch}/{a.epochs} "
               f"by validation): test T=1/2/4/8 " + " / ".join(f"{100 * after[t - 1]:.1f}" for t in (1, 2, 4, 8))
               + " (converted: " + " / ".join(f"{100 * before[t - 1]:.1f}" for t in (1, 2, 4, 8)) + "); gap at T=4 / 8 "
               + " / ".join(f"{100 * (ann_test - after[t - 1]):+.1f}" for t in (4, 8))
               + f"; {len(test.data)} test images of {a.dataset}, 0/1 spikes, one-step; {platform.machine()}, torch {torch.__version__}")
    print(summary, flush=True)
    out = a.bench / a.ann / f"finetune_{a.method}_T{a.t}_s{a.seed}.json"
    out.write_text(json.dumps({**row, "log": log, "summary": summary}))


if __name__ == "__main__":
    main()
