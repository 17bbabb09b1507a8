"""SpikeNAS-Bench's network, built with our neurons (the repository's ``Train_all_networks/model_snn.py``):

stem conv3x3 + BN (computed once, the same current every step) -> forward cell (C1) -> BN, LIF, conv3x3 + BN,
avgpool 2 -> forward cell (C2) -> BN, LIF, avgpool 2 -> dropout, Linear (no bias), LIF, Linear -> vote over groups
of outputs -> mean over T. Per dataset (``GEOMETRIES``, the repository's ``SNASNet.__init__``): CIFAR at 32 px,
100 / 500 outputs in groups of 10 / 5, hidden 1024; Tiny-ImageNet at 64 px with a stride-2 stem, 1000 outputs in
groups of 5, hidden 4096. Cell edge ops: 0 zero, 1 identity, 2/3/4 LIF with threshold 0.5/1.0/1.5 -> conv3x3
-> BN. LIF: tau 4/3, hard reset to 0, T = 5. ``width`` scales C1 = 128, C2 = 256 and the hidden 1024 (1 = the
benchmark; smaller widths make initialisation proxies cheap on a CPU). Edge LIFs that would see the same input
with the same threshold are one module standing for all of them (``score_weight``), as in ``snasnet.network``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from ..core.errors import SpikeSearchError
from ..core.neurons import LIF, SeqToANN
from ..snasnet.network import init_weights
from .bench import EDGES

THRESHOLDS = {2: 0.5, 3: 1.0, 4: 1.5}


@dataclass(frozen=True)
class Geometry:
    classes: int
    image_size: int
    outputs: int  # output neurons, voting in groups of outputs // classes
    hidden: int
    stem_stride: int = 1


GEOMETRIES = {"cifar10": Geometry(10, 32, 100, 1024), "cifar100": Geometry(100, 32, 500, 1024),
              "tinyimagenet": Geometry(200, 64, 1000, 4096, stem_stride=2)}
MIDDLE = 1.0
TAU = 4 / 3


def bench_lif(threshold: float) -> LIF:
    return LIF(tau=TAU, v_threshold=threshold, v_reset=0.0, surrogate="atan:2", detach_reset=True, step_mode="m")


def _conv_bn(c_in: int, c_out: int) -> SeqToANN:
    return SeqToANN(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out))


class BenchCell(nn.Module):
    def __init__(self, mat: np.ndarray, channels: int) -> None:
        super().__init__()
        self.mat = np.asarray(mat)
        self.convs = nn.ModuleDict()
        self.lifs = nn.ModuleDict()
        for i, j in EDGES:
            op = int(self.mat[i, j])
            if op >= 2:
                self.convs[f"{i}{j}"] = _conv_bn(channels, channels)
                key = f"{i}_{op}"
                if key not in self.lifs:
                    self.lifs[key] = bench_lif(THRESHOLDS[op])
                    self.lifs[key].score_weight = 0
                self.lifs[key].score_weight += 1

    def forward(self, x: Tensor) -> Tensor:
        nodes = [x]
        spikes: dict[str, Tensor] = {}
        for j in (1, 2, 3):
            total = None
            for i in range(j):
                op = int(self.mat[i, j])
                if op == 0:
                    continue
                if op == 1:
                    out = nodes[i]
                else:
                    key = f"{i}_{op}"
                    if key not in spikes:
                        spikes[key] = self.lifs[key](nodes[i])
                    out = self.convs[f"{i}{j}"](spikes[key])
                total = out if total is None else total + out
            nodes.append(total if total is not None else torch.zeros_like(x))
        return nodes[3]


class BenchNet(nn.Module):
    def __init__(self, mat: np.ndarray, dataset: str = "cifar10", timesteps: int = 5, width: float = 1.0,
                 in_channels: int = 3) -> None:
        super().__init__()
        if dataset not in GEOMETRIES:
            raise SpikeSearchError(f"SpikeNAS-Bench networks are built for {', '.join(GEOMETRIES)}; got {dataset!r}")
        geo = self.geometry = GEOMETRIES[dataset]
        c1, c2, hidden = (max(1, round(c * width)) for c in (128, 256, geo.hidden))
        self.timesteps, self.vote = timesteps, geo.outputs // geo.classes
        self.stem = nn.Sequential(nn.Conv2d(in_channels, c1, 3, stride=geo.stem_stride, padding=1, bias=False),
                                  nn.BatchNorm2d(c1))
        self.cell1 = BenchCell(mat, c1)
        self.downconv = nn.Sequential(SeqToANN(nn.BatchNorm2d(c1)), bench_lif(MIDDLE),
                                      SeqToANN(nn.Conv2d(c1, c2, 3, padding=1, bias=False), nn.BatchNorm2d(c2), nn.AvgPool2d(2)))
        self.cell2 = BenchCell(mat, c2)
        self.last_act = nn.Sequential(SeqToANN(nn.BatchNorm2d(c2)), bench_lif(MIDDLE), SeqToANN(nn.AvgPool2d(2)))
        side = geo.image_size // (4 * geo.stem_stride)
        self.classifier = nn.Sequential(SeqToANN(nn.Flatten(), nn.Dropout(0.5), nn.Linear(c2 * side * side, hidden, bias=False)),
                                        bench_lif(MIDDLE), SeqToANN(nn.Linear(hidden, geo.outputs)))
        init_weights(self)  # the benchmark initialises as SNASNet does

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-2:] != (self.geometry.image_size,) * 2:
            raise SpikeSearchError(f"this SpikeNAS-Bench network takes {self.geometry.image_size} px images, got shape {tuple(x.shape)}")
        stem = self.stem(x)
        h = stem.unsqueeze(0).expand(self.timesteps, *stem.shape)
        h = self.cell2(self.downconv(self.cell1(h.contiguous())))
        h = self.classifier(self.last_act(h))  # [T, B, out]
        votes = h.unflatten(-1, (-1, self.vote)).mean(-1)
        return votes.mean(0)
