"""The SNASNet cell and macro network, simulated step by step (backward edges need the previous step).

Op codes on edges: 0 none (no module, no compute), 1 skip, 2 LIF->conv1x1->BN, 3 LIF->conv3x3->BN,
4 avgpool3x3. The official code gives every conv edge its own LIF; all edges leaving one node receive
the same input, so those LIFs always hold the same state and emit the same spikes. Here each node has
one LIF shared by its conv edges (same outputs, same gradients, less work), carrying
``score_weight`` = the number of edge LIFs it stands for so the search score weights it as the
official hooks do.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch
from torch import Tensor, nn

from ..core.batchnorm import BatchNorm2d
from ..core.errors import SpikeSearchError
from ..core.models import repeat_input
from ..core.neurons import LIF, BaseNode, Stateful, TimeSharedDropout
from ..core.registry import Registry
from ..runs import read_json_object
from .space import NUM_NODES, check_matrix, format_cnt_mat, parse_cnt_mat

if TYPE_CHECKING:
    from ..data.datasets import DatasetInfo

NeuronFactory = Callable[[], BaseNode]


class BoxFilter3(nn.Module):
    """``AvgPool2d(3, stride=1, padding=1)`` (zero padding counted) as a depthwise convolution: the same
    numbers to float rounding, 4-8x faster on CPU than torch's NCHW average pooling, and no state."""

    def forward(self, x: Tensor) -> Tensor:
        weight = torch.full((x.shape[1], 1, 3, 3), 1 / 9, dtype=x.dtype, device=x.device)
        return nn.functional.conv2d(x, weight, padding=1, groups=x.shape[1])


# op code -> (factory(C) -> module, whether the op consumes spikes of its source node)
EDGE_OPS: Registry[tuple[Callable[[int], nn.Module], bool]] = Registry("edge op")
EDGE_OPS.add("1", (lambda c: nn.Identity(), False))
EDGE_OPS.add("2", (lambda c: nn.Sequential(nn.Conv2d(c, c, 1, bias=False), BatchNorm2d(c)), True))
EDGE_OPS.add("3", (lambda c: nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), BatchNorm2d(c)), True))
EDGE_OPS.add("4", (lambda c: BoxFilter3(), False))


class SNASCell(nn.Module, Stateful):
    """One timestep per call. Node k's effective value is its forward sum plus the feedback that
    backward edges j->k computed from node j at the previous timestep (node 3 gets no feedback)."""

    def __init__(self, channels: int, mat: np.ndarray, neuron: NeuronFactory) -> None:
        super().__init__()
        self.mat = np.array(mat)
        self.edges = nn.ModuleDict()
        self.spiking = {}
        for i in range(NUM_NODES):
            for j in range(NUM_NODES):
                code = int(self.mat[i, j])
                if i != j and code:
                    factory, spiking = EDGE_OPS.get(str(code))
                    self.edges[f"{i}{j}"] = factory(channels)
                    self.spiking[f"{i}{j}"] = spiking
        self.lifs = nn.ModuleDict()
        for i in range(NUM_NODES):
            n = sum(self.spiking[k] for k in self.edges if k[0] == str(i))
            if n:
                lif = neuron()
                lif.score_weight = n
                self.lifs[str(i)] = lif
        self.feedback: list[Tensor | float] = [0.0] * (NUM_NODES - 1)

    def reset_state(self) -> None:
        self.feedback = [0.0] * (NUM_NODES - 1)

    def edge_list(self) -> list[tuple[int, int, nn.Module, BaseNode | None]]:
        """Each edge as (source node, destination node, op, the source's LIF if the op reads its spikes, else None);
        an edge j -> k with j > k acts one step later. The export hook: no exporter parses the edge keys."""
        return [(int(k[0]), int(k[1]), op, self.lifs[k[0]] if self.spiking[k] else None) for k, op in self.edges.items()]

    def forward(self, x: Tensor) -> Tensor:
        z: list[Tensor] = []
        spikes: dict[int, Tensor] = {}

        def source(i: int, key: str) -> Tensor:
            if not self.spiking[key]:
                return z[i]
            if i not in spikes:  # each node's LIF advances exactly once per timestep
                spikes[i] = self.lifs[str(i)](z[i])
            return spikes[i]

        for j in range(NUM_NODES):
            if j == 0:
                xj = x
            else:
                ins = [self.edges[f"{i}{j}"](source(i, f"{i}{j}")) for i in range(j) if f"{i}{j}" in self.edges]
                xj = sum(ins[1:], ins[0]) if ins else torch.zeros_like(x)  # no stack(): one pass less
            fb = self.feedback[j] if j < NUM_NODES - 1 else 0.0
            z.append(xj + fb if isinstance(fb, Tensor) else xj)  # adding a float 0 would still cost a pass
        new_fb: list[Tensor | float] = [0.0] * (NUM_NODES - 1)
        for k in range(NUM_NODES - 1):
            terms = [self.edges[f"{j}{k}"](source(j, f"{j}{k}")) for j in range(k + 1, NUM_NODES) if f"{j}{k}" in self.edges]
            if terms:
                new_fb[k] = sum(terms[1:], terms[0])
        self.feedback = new_fb
        return z[-1]


def init_weights(model: nn.Module) -> None:
    """The official SNASNet initialisation (SpikeNAS-Bench's too): convs kaiming-uniform (a=2), BN 1/0,
    Linear N(0, 0.01) with zero bias."""
    for mod in model.modules():
        if isinstance(mod, nn.Conv2d):
            nn.init.kaiming_uniform_(mod.weight, a=2)
        elif isinstance(mod, nn.BatchNorm2d):
            nn.init.ones_(mod.weight)
            nn.init.zeros_(mod.bias)
        elif isinstance(mod, nn.Linear):
            nn.init.normal_(mod.weight, 0, 0.01)
            if mod.bias is not None:
                nn.init.zeros_(mod.bias)


@dataclass(frozen=True)
class MacroConfig:
    """Per-dataset widths of the macro network (official ``model_snn.SNASNet``; spec/snasnet.md 1.4)."""

    in_channels: int
    num_classes: int
    image_size: int
    c1: int  # cell1 channels (128 * channel_ratio)
    c2: int  # cell2 channels (256 * channel_ratio)
    stem_stride: int
    hidden: int  # classifier hidden width H
    out_neurons: int  # M output neurons, averaged in groups of vote = M / classes
    second_avgpooling: int = 2
    dropout: float = 0.5

    @property
    def vote(self) -> int:
        return self.out_neurons // self.num_classes

    @property
    def feature_size(self) -> int:
        return self.image_size // self.stem_stride // 2 // self.second_avgpooling


PRESETS: dict[str, MacroConfig] = {
    "cifar10": MacroConfig(3, 10, 32, 256, 512, 1, 1024, 100),
    "cifar100": MacroConfig(3, 100, 32, 128, 256, 1, 1024, 500),
    "tinyimagenet": MacroConfig(3, 200, 64, 128, 256, 2, 4096, 1000),
    # The bundled 28x28 grayscale data: same structure, widths cut so 2 CPU cores train it in minutes.
    "fmnist-small": MacroConfig(1, 10, 28, 16, 32, 1, 256, 100),
    "fashion-mnist": MacroConfig(1, 10, 28, 32, 64, 1, 512, 100),
    # event cameras (2 polarity channels): the 128px sensors get a stride-4 stem, as tinyimagenet's stride 2
    "nmnist": MacroConfig(2, 10, 34, 32, 64, 1, 512, 100),
    "dvsgesture": MacroConfig(2, 11, 128, 64, 128, 4, 1024, 110),
    "cifar10dvs": MacroConfig(2, 10, 128, 64, 128, 4, 1024, 100),
}


def macro_config(dataset: str, **overrides) -> MacroConfig:
    if dataset not in PRESETS:
        raise SpikeSearchError(f"no SNASNet preset for dataset {dataset!r}; presets: {', '.join(PRESETS)}")
    cfg = replace(PRESETS[dataset], **{k: v for k, v in overrides.items() if v is not None})
    if cfg.second_avgpooling <= 0 or cfg.feature_size <= 0:
        raise SpikeSearchError(f"second_avgpooling {cfg.second_avgpooling} leaves no feature map for {cfg.image_size}px input")
    if cfg.out_neurons % cfg.num_classes:
        raise SpikeSearchError(f"output neurons {cfg.out_neurons} must be a multiple of {cfg.num_classes} classes")
    return cfg


class SNASNet(nn.Module):
    """stem (conv+BN, no LIF, computed once: direct encoding) -> cell1 -> downconv + pool -> cell2 ->
    BN-LIF + avgpool(second_avgpooling) -> dropout-FC-LIF-FC -> vote -> mean over T."""

    def __init__(self, mat: np.ndarray, celltype: str = "backward", macro: MacroConfig = PRESETS["fmnist-small"],
                 timesteps: int = 5, tau: float = 4 / 3, threshold: float = 1.0, surrogate: str = "atan:2") -> None:
        super().__init__()
        if timesteps <= 0:
            raise SpikeSearchError(f"timesteps must be positive, got {timesteps}")
        self.mat = check_matrix(np.asarray(mat), celltype)
        self.celltype, self.macro, self.timesteps = celltype, macro, timesteps

        def neuron() -> BaseNode:
            return LIF(tau=tau, v_threshold=threshold, v_reset=0.0, surrogate=surrogate, detach_reset=True)

        m = macro
        self.stem = nn.Sequential(nn.Conv2d(m.in_channels, m.c1, 3, stride=m.stem_stride, padding=1, bias=False),
                                  BatchNorm2d(m.c1))
        self.cell1 = SNASCell(m.c1, self.mat, neuron)
        self.downconv = nn.Sequential(BatchNorm2d(m.c1), neuron(), nn.Conv2d(m.c1, m.c2, 3, padding=1, bias=False),
                                      BatchNorm2d(m.c2), nn.AvgPool2d(2, 2))
        self.cell2 = SNASCell(m.c2, self.mat, neuron)
        self.last_act = nn.Sequential(BatchNorm2d(m.c2), neuron(), nn.AvgPool2d(m.second_avgpooling, m.second_avgpooling))
        self.classifier = nn.Sequential(nn.Flatten(), TimeSharedDropout(m.dropout),
                                        nn.Linear(m.c2 * m.feature_size ** 2, m.hidden, bias=False), neuron(),
                                        nn.Linear(m.hidden, m.out_neurons))
        self.vote = nn.AvgPool1d(m.vote, m.vote)
        init_weights(self)

    @classmethod
    def from_run(cls, cfg: Mapping[str, Any], folder: Path, info: DatasetInfo) -> "SNASNet":
        """The network of a ``snasnet`` run: the cell its search picked (results.json) or it was given, in its
        dataset's macro preset (which sizes it, not ``info``); export loads the run's weights into it."""
        results = folder / "results.json"
        cnt_mat = read_json_object(results)["cnt_mat"] if results.is_file() else cfg.get("cnt_mat")
        if not cnt_mat:
            raise SpikeSearchError(f"{folder}: the search has not picked a cell yet (no results.json)")
        macro = macro_config(cfg["dataset"], second_avgpooling=cfg["second_avgpooling"])
        return cls(parse_cnt_mat(cnt_mat), cfg["celltype"], macro, cfg["timestep"], cfg["tau"], cfg["threshold"],
                   cfg["surrogate"])

    @property
    def cnt_mat(self) -> str:
        return format_cnt_mat(self.mat)

    def voted_readout(self) -> tuple[nn.Sequential, Tensor, Tensor]:
        """The classifier's layers before its output layer, and that layer's weight and bias (float64) with the vote
        (each class's mean over its group of outputs) folded in. The export hook: a graph has no vote to write."""
        m = self.macro
        vote = torch.eye(m.num_classes, dtype=torch.float64).repeat_interleave(m.vote, 1) / m.vote
        last = self.classifier[-1]
        return self.classifier[:-1], vote @ last.weight.detach().double(), vote @ last.bias.detach().double()

    def step(self, h: Tensor) -> Tensor:
        h = self.cell1(h)
        h = self.cell2(self.downconv(h))
        h = self.classifier(self.last_act(h))
        return self.vote(h.unsqueeze(1)).squeeze(1)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 5:  # event frames [T, B, C, H, W]: a stem pass per timestep
            x = repeat_input(x, self.timesteps, self.macro.in_channels)
            return torch.stack([self.step(self.stem(xt)) for xt in x]).mean(0)
        x = repeat_input(x, 1, self.macro.in_channels)[0]  # checks [B, C, H, W] and the channel count
        if x.shape[-1] != self.macro.image_size or x.shape[-2] != self.macro.image_size:
            raise SpikeSearchError(f"SNASNet built for {self.macro.image_size}px images, got shape {tuple(x.shape)}")
        h = self.stem(x)
        if self.downconv[2].weight.is_contiguous(memory_format=torch.channels_last):
            # a model moved to channels-last (CPU scoring) keeps every map so: a 1-channel image, and the
            # stem's output with it, would stay NCHW, and mixed layouts make each sum a strided pass
            h = h.contiguous(memory_format=torch.channels_last)
        return torch.stack([self.step(h) for _ in range(self.timesteps)]).mean(0)
