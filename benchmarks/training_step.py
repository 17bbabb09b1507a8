"""P2: one training step (forward + backward + SGD) at T=5 on the same spiking CNN built with each
library's LIF, side by side in one process, on the same batch.

The network: conv3x3(1->32)-BN-LIF-avgpool2, conv3x3(32->64)-BN-LIF-avgpool2, linear(3136->10),
direct encoding, logits averaged over T, on 28x28 images (the bundled set's shape). The neuron is
LIF tau=2 with input decay, threshold 1, hard reset to 0, reset detached, ATan surrogate (alpha 2):
spikingjelly's ``LIFNode`` defaults. snntorch's ``Leaky`` has no input decay (beta = 1 - 1/tau).

Memory is what autograd keeps for backward (bytes of saved tensors, counted with
``torch.autograd.graph.saved_tensors_hooks``; the same on CPU and GPU), plus the CUDA peak on a GPU.

    python benchmarks/training_step.py --batch 64 --steps 20 --out runs/bench_training_step
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from spikesearch.core.neurons import LIF, SeqToANN, reset

T, TAU = 5, 2.0


class Net(nn.Module):
    """``make_lif()`` returns a module mapping [T, B, ...] currents to spikes."""

    def __init__(self, make_lif: Callable[[], nn.Module]) -> None:
        super().__init__()
        self.body = nn.Sequential(
            SeqToANN(nn.Conv2d(1, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32)), make_lif(), SeqToANN(nn.AvgPool2d(2)),
            SeqToANN(nn.Conv2d(32, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64)), make_lif(), SeqToANN(nn.AvgPool2d(2)),
            SeqToANN(nn.Flatten(), nn.Linear(64 * 7 * 7, 10)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x.unsqueeze(0).expand(T, *x.shape)).mean(0)


class SnntorchSeq(nn.Module):
    """snntorch's Leaky stepped over T (snntorch has no multi-step mode)."""

    def __init__(self) -> None:
        super().__init__()
        import snntorch
        from snntorch import surrogate
        self.lif = snntorch.Leaky(beta=1 - 1 / TAU, threshold=1.0, reset_mechanism="zero",
                                  spike_grad=surrogate.atan(alpha=2.0), init_hidden=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mem = torch.zeros_like(x[0])
        out = []
        for xt in x:
            spk, mem = self.lif(xt, mem)
            out.append(spk)
        return torch.stack(out)


def ours(fused: bool) -> Callable[[], nn.Module]:
    def make() -> nn.Module:
        n = LIF(tau=TAU, surrogate="atan:2", step_mode="m")
        n.fused = fused
        return n
    return make


def spikingjelly() -> Callable[[], nn.Module] | None:
    try:
        from spikingjelly.activation_based import neuron, surrogate
    except ImportError:
        return None

    def make() -> nn.Module:
        return neuron.LIFNode(tau=TAU, surrogate_function=surrogate.ATan(alpha=2.0), detach_reset=True,
                              step_mode="m")
    return make


def snntorch_available() -> bool:
    try:
        import snntorch  # noqa: F401
    except ImportError:
        return False
    return True


class Runner:
    """One variant's network, optimizer and step; built and warmed up before any timing starts."""

    def __init__(self, name: str, make: Callable[[], nn.Module], x: torch.Tensor, y: torch.Tensor) -> None:
        torch.manual_seed(0)
        self.name, self.x, self.y = name, x, y
        self.net = Net(make).to(x.device)
        self.opt = torch.optim.SGD(self.net.parameters(), lr=0.05, momentum=0.9)
        self.cuda = x.device.type == "cuda"
        self.times: list[float] = []
        self.peak = 0
        for _ in range(3):
            self.step()
        saved = [0]

        def pack(t: torch.Tensor) -> torch.Tensor:
            saved[0] += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            self.step()
        self.saved = saved[0]

    def step(self) -> float:
        for m in self.net.modules():  # spikingjelly keeps state in its own attributes
            if hasattr(m, "reset") and m is not self.net and callable(m.reset):
                m.reset()
        reset(self.net)
        loss = nn.functional.cross_entropy(self.net(self.x), self.y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return float(loss.detach())

    def timed_step(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        self.step()
        if self.cuda:
            torch.cuda.synchronize()
            self.peak = max(self.peak, torch.cuda.max_memory_allocated())
        self.times.append(time.perf_counter() - t0)

    def row(self) -> dict:
        dt = statistics.median(self.times)
        row = {"name": self.name, "images_per_s": len(self.x) / dt, "ms_per_step": 1e3 * dt, "saved_mb": self.saved / 2**20}
        if self.cuda:
            row["cuda_peak_mb"] = self.peak / 2**20
        return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=Path("runs/bench_training_step"))
    a = ap.parse_args()
    dev = torch.device(a.device)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(a.batch, 1, 28, 28, generator=g).to(dev)
    y = torch.randint(0, 10, (a.batch,), generator=g).to(dev)
    candidates = [("spikesearch LIF (fused sequence)", ours(True)), ("spikesearch LIF (op-by-op loop)", ours(False)),
                  ("spikingjelly 2.0 LIFNode (multi-step)", spikingjelly())]
    if snntorch_available():
        candidates.append(("snntorch Leaky (step loop)", SnntorchSeq))
    runners = [Runner(name, make, x, y) for name, make in candidates if make is not None]
    # round-robin, one step of each variant per round, median per variant: a shared machine's drift
    # then hits every variant alike instead of whichever happened to run last
    for _ in range(a.steps):
        for r in runners:
            r.timed_step()
    rows = [r.row() for r in runners]
    for row in rows:
        print(row, flush=True)
    ref = rows[0]["images_per_s"]
    lines = [f"| network step on {dev.type} (batch {a.batch}, T={T}) | images/s | ms/step | vs fused | saved for backward (MB) |"
             + (" CUDA peak (MB) |" if dev.type == "cuda" else ""),
             "|---|---:|---:|---:|---:|" + ("---:|" if dev.type == "cuda" else "")]
    for r in rows:
        lines.append(f"| {r['name']} | {r['images_per_s']:.0f} | {r['ms_per_step']:.1f} | {r['images_per_s'] / ref:.2f}x | "
                     f"{r['saved_mb']:.1f} |" + (f" {r['cuda_peak_mb']:.0f} |" if "cuda_peak_mb" in r else ""))
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "table.md").write_text("\n".join(lines) + "\n")
    (a.out / "rows.json").write_text(json.dumps(rows, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
