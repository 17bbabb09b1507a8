"""P1: SNASNet candidates scored per second, the official procedure re-created vs ours, on the same
candidate list, the same scoring batches (batch size, T, repeats) and the same weights, in one process.

The re-creation follows spec/snasnet.md §3 and §7 (``model_snn.find_best_neuroncell``):
- a new model per candidate, one LIF module per spiking edge (several per node), the zero op a
  ``ScaleLayer`` multiply by a zero tensor, every edge of the forward and backward lists present, the
  feedback added to a node's value once per edge that reads it (``Neuronal_Cell_backward.forward``);
- for each of the ``repeats`` batches, a new DataLoader iterator (worker processes, per-sample
  transforms) whose first batch is taken;
- a forward hook on every LIF that builds d_H with two matmuls, x(1-x)^T + (1-x)x^T, the rate-normalised
  kernel, and copies it to the host (numpy) where the kernels are averaged; numpy slogdet at the end;
- spikingjelly's LIF as torch ops, ``torch.no_grad()`` in train mode.
Where the official code differs only by a bug, both sides do the right thing, so the two rankings can
be compared: membrane state is reset between the repeats, dropout is off (its random masks would make
the two runs score different networks) and both read un-augmented batches whose images are the same.
The re-created model reuses the candidate's convolution and BN modules from ``SNASNet`` (built with
the search's per-candidate seed), so weights are identical by construction.

Ours: ``spikesearch.snasnet.search.score_candidate``: the fixed batches, one shared LIF per node (its
kernel weighted by the number of spiking edges it stands for), zero edges absent, the 3x3 average pool
as a depthwise convolution, one Gram matrix per hook (spike counts read off its diagonal), kernels kept
on the device in float64, ``inference_mode``; on the CPU channels-last maps, BatchNorm statistics in a
fixed order and Gram matrices as popcounts of packed spikes.

    python benchmarks/search_throughput.py --candidates 40 --batch 256 --out runs/bench/search_throughput
"""
from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path
from unittest import mock

import numpy as np
import torch
from torch import Tensor, nn

from spikesearch.core.neurons import BaseNode, TimeSharedDropout
from spikesearch.data.datasets import load_dataset
from spikesearch.data.loader import Augment
from spikesearch.measure.stats import spearman
from spikesearch.snasnet.network import SNASNet, macro_config
from spikesearch.snasnet.parallel import SNASNetBuilder, WorkerPool
from spikesearch.proxies import ScoreConfig
from spikesearch.snasnet.search import (
    Scorer,
    SearchConfig,
    draw_random,
    score_candidate,
)
from spikesearch.snasnet.space import NUM_NODES, format_cnt_mat, parse_cnt_mat

FORWARD_EDGES = [(0, 1), (0, 2), (1, 2), (0, 3), (1, 3), (2, 3)]
BACKWARD_EDGES = [(1, 0), (2, 0), (3, 0), (2, 1), (3, 1), (3, 2)]


class LIFNode(nn.Module):
    """spikingjelly ``clock_driven.neuron.LIFNode`` as the official code runs it: torch ops, one step per call
    (V += (X - (V - V_reset)) / tau, spike at V >= V_th, hard reset to 0). Ours would take the compiled step."""

    def __init__(self, tau: float) -> None:
        super().__init__()
        self.tau, self.v = tau, 0.0

    def forward(self, x: Tensor) -> Tensor:
        self.v = self.v + (x - self.v) / self.tau
        spike = (self.v >= 1.0).to(x.dtype)
        self.v = self.v * (1 - spike)
        return spike


class ScaleLayer(nn.Module):
    """The official zero op: a multiply by a constant zero tensor (compute still spent)."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.tensor(0.0)

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


class RefCell(nn.Module):
    """``Neuronal_Cell_backward`` / ``Neuronal_Cell``: per-edge LIFs, zero edges as multiplies."""

    def __init__(self, ours, celltype: str, make_lif) -> None:
        super().__init__()
        self.backward = celltype == "backward"
        edges = FORWARD_EDGES + (BACKWARD_EDGES if self.backward else [])
        self.ops = nn.ModuleDict()
        for i, j in edges:
            key, code = f"{i}{j}", int(ours.mat[i, j])
            if code == 0:
                self.ops[key] = ScaleLayer()
            elif code == 1:
                self.ops[key] = nn.Identity()
            elif code == 4:
                self.ops[key] = nn.AvgPool2d(3, stride=1, padding=1)
            else:  # the candidate's own conv + BN, with a LIF of this edge before it
                self.ops[key] = nn.Sequential(make_lif(), ours.edges[key])
        self.last: list = [0.0] * (NUM_NODES - 1)

    def forward(self, x: Tensor) -> Tensor:
        if not self.backward:
            x1 = self.ops["01"](x)
            x2 = self.ops["02"](x) + self.ops["12"](x1)
            return self.ops["03"](x) + self.ops["13"](x1) + self.ops["23"](x2)
        l0, l1, l2 = self.last  # as the official forward: each edge adds its source's feedback itself
        x1 = self.ops["01"](x + l0)
        x2 = self.ops["02"](x + l0) + self.ops["12"](x1 + l1)
        x3 = self.ops["03"](x + l0) + self.ops["13"](x1 + l1) + self.ops["23"](x2 + l2)
        self.last = [self.ops["10"](x1 + l1) + self.ops["20"](x2 + l2) + self.ops["30"](x3),
                     self.ops["21"](x2 + l2) + self.ops["31"](x3), self.ops["32"](x3)]
        return x3


class RefNet(nn.Module):
    def __init__(self, ours: SNASNet, make_lif) -> None:
        super().__init__()
        self.ours = ours
        self.cell1 = RefCell(ours.cell1, ours.celltype, make_lif)
        self.cell2 = RefCell(ours.cell2, ours.celltype, make_lif)
        for mod in (ours.downconv, ours.last_act, ours.classifier):  # the macro LIFs, too
            for name, child in mod.named_children():
                if isinstance(child, BaseNode):
                    setattr(mod, name, make_lif())

    def reset(self) -> None:
        for m in self.modules():
            if isinstance(m, LIFNode):
                m.v = 0.0

    def forward(self, x: Tensor) -> Tensor:
        self.cell1.last = self.cell2.last = [0.0] * (NUM_NODES - 1)
        o = self.ours
        h0 = o.stem(x)
        outs = []
        for _ in range(o.timesteps):
            h = self.cell2(o.downconv(self.cell1(h0)))
            h = o.classifier(o.last_act(h))
            outs.append(o.vote(h.unsqueeze(1)).squeeze(1))
        return torch.stack(outs).mean(0)


class IndexedImages(torch.utils.data.Dataset):
    """Per-sample transform in the worker, as torchvision's ``transforms.Normalize`` would do it."""

    def __init__(self, images: Tensor, labels: Tensor, augment: Augment) -> None:
        self.images, self.labels, self.augment = images, labels, augment

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.augment.normalise(self.images[i:i + 1])[0], int(self.labels[i])


def official_score(ours: SNASNet, dataset: IndexedImages, index_batches: list[list[int]], batch: int, workers: int,
                   device: torch.device, alpha: float = 0.5) -> float:
    net = RefNet(ours, lambda: LIFNode(tau=4 / 3))
    net.train()
    for m in net.modules():
        if isinstance(m, TimeSharedDropout):
            m.eval()
    state = {"K": None, "calls": 0}

    def hook(module, inp, out):
        x = (out > 0).float().flatten(1)
        n = x.shape[1]
        d_h = x @ (1 - x).t() + (1 - x) @ x.t()
        r = x.mean(1)
        expected = n * (r[:, None] * (1 - r[None, :]) + (1 - r[:, None]) * r[None, :])
        k = (n - alpha * d_h / (expected + 1e-3)).cpu().numpy()
        state["K"] = k if state["K"] is None else state["K"] + k
        state["calls"] += 1

    for m in net.modules():
        if isinstance(m, LIFNode):  # the official hooks every module whose type name contains LIFNode
            m.register_forward_hook(hook)
    logdets = []
    with torch.no_grad():
        for idx in index_batches:
            loader = torch.utils.data.DataLoader(dataset, batch_size=batch, sampler=idx, num_workers=workers)
            x, _ = next(iter(loader))  # a new iterator per repeat: the workers start and stop each time
            state.update(K=None, calls=0)
            net.reset()
            net(x.to(device))  # the official code moves each batch with .cuda()
            logdets.append(np.linalg.slogdet(state["K"] / state["calls"])[1])
    return float(np.mean(logdets))


@contextlib.contextmanager
def timed_convolutions(spent: list[float]):
    """Add the wall time of every ``F.conv2d`` call inside the block to ``spent[0]`` (CPU timing: on a GPU
    the calls return before the work is done)."""
    conv2d = torch.nn.functional.conv2d

    def timed(*args, **kwargs):
        t0 = time.perf_counter()
        out = conv2d(*args, **kwargs)
        spent[0] += time.perf_counter() - t0
        return out

    with mock.patch.object(torch.nn.functional, "conv2d", timed):
        yield


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--candidates", type=int, default=40, help="unique candidates scored by both procedures")
    ap.add_argument("--batch", type=int, default=256, help="scoring batch (official: 256)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--timesteps", type=int, default=5)
    ap.add_argument("--celltype", default="backward")
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers of the official procedure (official: 4)")
    ap.add_argument("--pool", type=int, default=0,
                    help="also score the list with `--workers N` local processes (the device's, shared), start-up included")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=Path("runs/bench/search_throughput"))
    a = ap.parse_args()
    device = torch.device(a.device)
    train, _, info = load_dataset("fmnist-small")
    augment = Augment.for_dataset(info)
    cfg = SearchConfig(num_search=10 * a.candidates, celltype=a.celltype, seed=a.seed,
                       score=ScoreConfig(batch_size=a.batch, repeats=a.repeats))
    keys = list(dict.fromkeys(format_cnt_mat(m) for m in draw_random(cfg, np.random.default_rng(a.seed))))[:a.candidates]
    g = torch.Generator().manual_seed(a.seed)
    order = torch.randperm(len(train), generator=g)[:a.batch * a.repeats].tolist()
    index_batches = [order[i * a.batch:(i + 1) * a.batch] for i in range(a.repeats)]
    batches = [augment.normalise(train.images[idx]).to(device) for idx in index_batches]
    dataset = IndexedImages(train.images, train.labels, augment)
    build = SNASNetBuilder(a.celltype, macro_config("fmnist-small"), a.timesteps, 4 / 3, 1.0, "atan:2", str(device))

    def seeded(key: str) -> SNASNet:
        torch.manual_seed(__import__("zlib").crc32(f"{cfg.seed}:{key}".encode()))  # the search's per-candidate seed
        return build(parse_cnt_mat(key))

    ours, ref = [], []
    t_ours = t_ref = 0.0
    t_conv = [0.0]
    for i, key in enumerate(keys):  # interleaved, so drift of a shared machine hits both sides alike
        t0 = time.perf_counter()
        with timed_convolutions(t_conv):
            ours.append(score_candidate(build, batches, cfg, key))
        t_ours += time.perf_counter() - t0
        t0 = time.perf_counter()
        ref.append(official_score(seeded(key), dataset, index_batches, a.batch, a.workers, device))
        t_ref += time.perf_counter() - t0
        print(f"{i + 1}/{len(keys)} {key}: ours {ours[-1]:.4f}  official {ref[-1]:.4f}", flush=True)
    rho = spearman(ours, ref)
    pooled = None
    if a.pool:
        scorer = Scorer(build, batches, cfg, None, progress=False)
        t0 = time.perf_counter()
        WorkerPool(build, batches, cfg, a.pool, "processes").search([parse_cnt_mat(k) for k in keys], scorer)
        t_pool = time.perf_counter() - t0
        pooled = [c.score for c in scorer.history]
    result = {"candidates": len(keys), "batch": a.batch, "timesteps": a.timesteps, "repeats": a.repeats,
              "celltype": a.celltype, "device": str(device), "loader_workers": a.workers,
              "official_candidates_per_s": len(keys) / t_ref, "ours_candidates_per_s": len(keys) / t_ours,
              "speedup": t_ref / t_ours, "spearman": rho, "max_abs_score_difference": float(np.max(np.abs(np.subtract(ours, ref)))),
              "same_best": int(np.argmax(ours)) == int(np.argmax(ref))}
    if device.type == "cpu":
        result.update(ours_convolution_share=t_conv[0] / t_ours, convolution_bound=t_ref / t_conv[0])
    if pooled is not None:
        result.update(pool_workers=a.pool, pool_candidates_per_s=len(keys) / t_pool, pool_speedup=t_ref / t_pool,
                      pool_spearman=spearman(pooled, ref), pool_same_scores=pooled == ours)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    table = ("| procedure | candidates/s | ratio |\n|---|---|---|\n"
             f"| official procedure, re-created | {result['official_candidates_per_s']:.3f} | 1.00x |\n"
             f"| spikesearch | {result['ours_candidates_per_s']:.3f} | **{result['speedup']:.2f}x** |\n"
             + (f"| spikesearch, `--workers {a.pool}` processes (start-up included) | {result['pool_candidates_per_s']:.3f} "
                f"| **{result['pool_speedup']:.2f}x** |\n" if pooled is not None else "") + "\n"
             f"{len(keys)} unique {a.celltype} candidates, batch {a.batch}, T={a.timesteps}, {a.repeats} repeats, "
             f"{device}; Spearman between the two score lists {rho:.4f}, largest score difference "
             f"{result['max_abs_score_difference']:.2e}, same best candidate: {result['same_best']}"
             + (f"; the worker processes' scores equal the serial ones: {result['pool_same_scores']}, Spearman "
                f"{result['pool_spearman']:.4f}" if pooled is not None else "") + ".\n"
             + (f"\nConvolutions (oneDNN) take {100 * result['ours_convolution_share']:.0f} % of our time; the official "
                f"procedure takes {result['convolution_bound']:.1f}x the time of our convolutions alone, the ceiling "
                f"for any scorer that runs them at that speed on this machine.\n" if device.type == "cpu" else ""))
    (a.out / "table.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
