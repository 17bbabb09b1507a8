"""SpikeDHS networks: the search trellis (cells on every reachable layer x level, weighted by beta,
edges mixed by a shared alpha, searchable neurons) and the derived network (one path, fixed ops).

Both are the same class: a derived network is the trellis restricted to one path with one op per
edge and one neuron per node. Inputs are images ``[B, C, H, W]`` (direct encoding, repeated T times)
or frames ``[T, B, C, H, W]``; logits are averaged over T.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.errors import SpikeSearchError
from ..core.models import repeat_input
from ..core.neurons import SeqToANN
from ..measure.spikes import E_MAC_PJ
from .genotype import (
    PAPER_CELL,
    PAPER_PATH_8,
    Genotype,
    check_path,
    edge_index,
    num_edges,
    transition_weights,
)
from .nodes import DGSSurrogate, NeuronChoice, NodeMix, build_neuron, synaptic_cost
from .ops import DHS_TAU, EDGE_OPS, MIX_MODES, MixedOp, dhs_lif, op_macs

if TYPE_CHECKING:
    from ..data.datasets import DatasetInfo


@dataclass
class DHSConfig:
    steps: int = 3  # nodes per cell
    layers: int = 4  # cells along a path (paper: 8)
    levels: int = 3  # resolutions in the trellis (paper: 4)
    channels: int = 8  # node channels at level 0, doubled per level (paper: 8 search, 48 retrain)
    timesteps: int = 6
    ops: tuple[str, ...] = ("skip", "conv3x3", "conv1x1", "avgpool")
    mix: str = "membrane"  # where the mixed op acts: the node's membrane (paper) or its input spikes (code)
    search_cell: bool = True
    search_layer: bool = True
    dgs: bool = False
    tps: bool = False
    hns: bool = False
    taus: tuple[float, ...] = (1.25, 2.0, 5.0)  # TPS candidates (decay 0.2, 0.5, 0.8)
    stem_stride: int = 1  # 2 halves every level's size (cheap searches on small CPUs)
    b_init: float = 3.0
    dgs_delta: float = 0.2
    top_k: int = 2
    fixed_cell: list = field(default_factory=lambda: [list(n) for n in PAPER_CELL])  # when search_cell is off

    def validate(self) -> None:
        for name in ("steps", "layers", "levels", "channels", "timesteps", "top_k", "stem_stride"):
            if getattr(self, name) <= 0:
                raise SpikeSearchError(f"{name} must be positive, got {getattr(self, name)}")
        if self.mix not in MIX_MODES:
            raise SpikeSearchError(f"mix must be one of {MIX_MODES}, got {self.mix!r}")
        for o in self.ops:
            EDGE_OPS.get(o)
        if all(o == "none" for o in self.ops):
            raise SpikeSearchError(f"ops {','.join(self.ops)}: a genotype needs an op other than 'none' (no edge would carry a signal)")
        if any(t <= 1 for t in self.taus):
            raise SpikeSearchError(f"TPS taus must all be > 1, got {self.taus}")
        if not self.search_cell and len(self.fixed_cell) != self.steps:
            raise SpikeSearchError(f"the fixed cell has {len(self.fixed_cell)} nodes, the config {self.steps} steps")

    def neuron_choices(self) -> list[NeuronChoice]:
        taus = self.taus if self.tps else (DHS_TAU,)
        return [NeuronChoice("lif", t, self.b_init) for t in taus] + ([NeuronChoice("ann")] if self.hns else [])

    @classmethod
    def for_genotype(cls, g: Genotype, run: Mapping[str, Any]) -> "DHSConfig":
        """The config a ``dhs train`` run trains ``g`` with: the trellis ``g`` was searched on (its info.config) and
        the run's width, timesteps, stem and DGS. ``dhs train`` and export both build from it, so they agree."""
        saved = g.info.get("config", {})
        return cls(levels=saved.get("levels", max(g.path) + 1), mix=saved.get("mix", "membrane"),
                   stem_stride=run["stem_stride"], channels=run["train_channels"], timesteps=run["timestep"],
                   dgs=run.get("dgs", False))


def default_path(layers: int, levels: int) -> list[int]:
    """The path of a network whose layers are not searched: SpikeDHS's published ``[0,0,1,1,1,2,2,2]`` for its
    8 layers (on the paper's 4-level trellis too), else evenly spread levels (that same path for 8 x 3)."""
    if layers == len(PAPER_PATH_8) and levels > max(PAPER_PATH_8):
        return list(PAPER_PATH_8)
    return [(k + 1) * levels // (layers + 1) for k in range(layers)]


def _resize(x: Tensor, size: int) -> Tensor:
    if x.shape[-1] == size:
        return x
    # nearest keeps spike maps binary (SpikeDHS retrain reduces this way, not by strided conv)
    y = F.interpolate(x.flatten(0, 1), size=(size, size), mode="nearest")
    return y.view(*x.shape[:3], size, size)


class Cell(nn.Module):
    """Two spiking 1x1 preprocessors (cell k-2 and k-1 brought to this level's size and width),
    ``steps`` nodes each summing its edges' currents into its own neuron; output = concat of nodes."""

    def __init__(self, c_pp: int, c_p: int, c: int, size: int, edges: list[list[tuple[int, tuple[str, ...]]]],
                 nodes: list[nn.Module], mix: str) -> None:
        super().__init__()
        self.size, self.channels = size, c
        self.pre0 = nn.Sequential(SeqToANN(nn.Conv2d(c_pp, c, 1, bias=False), nn.BatchNorm2d(c)), dhs_lif())
        self.pre1 = nn.Sequential(SeqToANN(nn.Conv2d(c_p, c, 1, bias=False), nn.BatchNorm2d(c)), dhs_lif())
        self.wiring = [[s for s, _ in node] for node in edges]
        self.edges = nn.ModuleDict({f"{i}_{s}": MixedOp(ops, c, mix) for i, node in enumerate(edges) for s, ops in node})
        self.nodes = nn.ModuleList(nodes)
        # dense MACs of every op on every edge, in wiring order: fixed by the cell's width and size
        macs = [[float(op_macs(o, c, size * size)) for o in ops] for node in edges for _, ops in node]
        self.register_buffer("macs", torch.tensor(macs), persistent=False)
        self.pre_macs = (float(c_pp * c * size * size), float(c_p * c * size * size))  # the two 1x1 input convs
        self.dense = E_MAC_PJ * (sum(max(row) for row in macs) + sum(self.pre_macs))  # the same cell as a dense ANN

    def inputs(self) -> list[tuple[nn.Conv2d, nn.BatchNorm2d, nn.Module]]:
        """The two spiking 1x1 preprocessors (cell k-2's, cell k-1's) as (conv, BN, neuron): the export hook."""
        return [(pre[0].module[0], pre[0].module[1], pre[1]) for pre in (self.pre0, self.pre1)]

    def derived_edges(self, i: int) -> list[tuple[int, nn.Module, nn.Module]]:
        """Node ``i``'s inputs in a derived cell as (source state, op, the op's own neuron or an Identity), its
        ``none`` edges left out. The export hook: no exporter reads op names or a MixedOp's lists."""
        edges = [(s, self.edges[f"{i}_{s}"]) for s in self.wiring[i]]
        return [(s, edge.ops[0], edge.fire[0]) for s, edge in edges if edge.names[0] != "none"]

    def forward(self, s0: Tensor, s1: Tensor, alpha: Tensor | None, cost0: Tensor | float,
                cost1: Tensor | float) -> tuple[Tensor, Tensor, Tensor | float]:
        """Output spikes, the expected energy (pJ per image and timestep) of the input convs and the edge ops,
        and the cost of one synaptic op fed by the output. ``cost0``/``cost1`` are that cost for ``s0``/``s1``
        (spikes: 0.9 pJ x rate; analog HNS nodes: 4.6 pJ): the input convs depend on the architecture
        through the path probability and, with HNS, through whether their input is spikes at all."""
        states = [pre(_resize(s, self.size)) for pre, s in ((self.pre0, s0), (self.pre1, s1))]
        costs = [synaptic_cost(pre[-1], s) for pre, s in zip((self.pre0, self.pre1), states)]
        energy = cost0 * self.pre_macs[0] + cost1 * self.pre_macs[1] + torch.zeros((), device=s1.device)
        e = 0
        for i, node in enumerate(self.nodes):
            current = 0
            for s in self.wiring[i]:
                op = self.edges[f"{i}_{s}"]
                w = alpha[edge_index(i, s)] if len(op.names) > 1 else None
                current = current + op(states[s], w)
                energy = energy + costs[s] * (self.macs[e, 0] if w is None else (w * self.macs[e]).sum())
                e += 1
            out = node(current)
            states.append(out)
            costs.append(synaptic_cost(node, out))
        return torch.cat(states[2:], 2), energy, sum(costs[2:]) / len(self.nodes)  # nodes are equally wide


class DHSNet(nn.Module):
    def __init__(self, cfg: DHSConfig, in_channels: int, num_classes: int, image_size: int,
                 genotype: Genotype | None = None) -> None:
        super().__init__()
        cfg.validate()
        self.cfg, self.in_channels, self.genotype = cfg, in_channels, genotype
        self.input_shape = (in_channels, image_size, image_size)
        L, C = cfg.layers, cfg.channels
        steps = genotype.steps if genotype else cfg.steps
        if genotype is not None:
            L = len(genotype.path)
            check_path(genotype.path, cfg.levels)
        if cfg.stem_stride > image_size:
            raise SpikeSearchError(f"stem stride {cfg.stem_stride} is larger than the {image_size}px input")
        self.sizes = [(image_size - 1) // cfg.stem_stride + 1]
        for _ in range(cfg.levels - 1):
            self.sizes.append((self.sizes[-1] + 1) // 2)

        searching = genotype is None
        self.search_cell = searching and cfg.search_cell
        self.search_layer = searching and cfg.search_layer
        self.path = None if self.search_layer else (genotype.path if genotype else default_path(L, cfg.levels))
        if self.path is not None:
            check_path(self.path, cfg.levels)
        cell = genotype.cell if genotype else (None if self.search_cell else cfg.fixed_cell)
        if self.search_cell:
            edges = [[(s, tuple(cfg.ops)) for s in range(i + 2)] for i in range(steps)]
            self.alpha = nn.Parameter(1e-3 * torch.randn(num_edges(steps), len(cfg.ops)))
        else:
            edges = [[(int(s), (str(o),)) for s, o in node] for node in cell]
            self.alpha = None
        self.beta = nn.Parameter(1e-3 * torch.randn(L, cfg.levels, 2)) if self.search_layer else None

        def surrogate(b: float) -> DGSSurrogate | None:
            # with a genotype, cfg.dgs keeps searching b from the derived value while the network trains
            return DGSSurrogate(b, cfg.dgs_delta) if cfg.dgs else None

        def node(k: int, i: int) -> nn.Module:
            if genotype is not None:
                choice = genotype.neuron(k, i)
                return build_neuron(choice, surrogate(choice.b) if choice.kind == "lif" else None)
            choices = cfg.neuron_choices()
            sg = surrogate(cfg.b_init)
            return NodeMix(choices, sg) if len(choices) > 1 else build_neuron(choices[0], sg)

        stem_c = steps * C
        stem_b = genotype.stem_b if genotype else cfg.b_init
        stem_sg = surrogate(stem_b)
        self.stem = nn.Sequential(SeqToANN(nn.Conv2d(in_channels, stem_c, 3, cfg.stem_stride, padding=1, bias=False), nn.BatchNorm2d(stem_c)),
                                  dhs_lif(surrogate=stem_sg if stem_sg is not None else f"dspike:{stem_b}"))
        out_c = {(-1, 0): stem_c, (-2, 0): stem_c}
        self.cells = nn.ModuleDict()
        for k in range(L):
            for lv in self.levels_at(k):
                for src, t in ((lv, "same"), (lv - 1, "down")):
                    if (k - 1, src) not in out_c or not self._transition_allowed(k, src):
                        continue
                    pp = self._prev_prev_level(k, lv, out_c)
                    self.cells[f"{k}_{lv}_{t}"] = Cell(out_c[(k - 2, pp)], out_c[(k - 1, src)], C * 2 ** lv, self.sizes[lv], edges,
                                                       [node(k, i) for i in range(steps)], cfg.mix)
                    out_c[(k, lv)] = steps * C * 2 ** lv
        self.num_layers = L
        self.heads = nn.ModuleDict({str(lv): nn.Linear(out_c[(L - 1, lv)], num_classes)
                                    for lv in range(cfg.levels) if (L - 1, lv) in out_c})
        self.energy: Tensor = torch.zeros(())
        self.dense_energy = 1.0

    def levels_at(self, k: int) -> list[int]:
        if self.path is not None:
            return [self.path[k]]
        return list(range(min(k + 2, self.cfg.levels)))

    def _transition_allowed(self, k: int, src: int) -> bool:
        if self.path is None:
            return True
        return (self.path[k - 1] if k > 0 else 0) == src

    @classmethod
    def from_run(cls, cfg: Mapping[str, Any], folder: Path, info: DatasetInfo) -> "DHSNet":
        """The network of a ``dhs train`` run: the genotype copy in its folder, built as ``dhs train`` built it
        (``DHSConfig.for_genotype``); export loads the run's weights into it."""
        g = Genotype.load(folder / "genotype.json")
        return cls(DHSConfig.for_genotype(g, cfg), info.channels, info.num_classes, info.size, genotype=g)

    def derived_cells(self) -> list[tuple["Cell", tuple[int, int], tuple[int, int], tuple[int, int]]]:
        """A derived network's cells in order: (cell, its own (layer, level) state, and the two states it reads,
        k-2's and k-1's; layers -2 and -1 are the stem); the last cell's state is the output. The export hook, so
        no exporter re-derives the wiring."""
        if self.genotype is None:
            raise SpikeSearchError("a DHS search trellis is not a network: export the derived one (dhs train's model)")
        have, cells = {(-2, 0), (-1, 0)}, []
        for k, lv in enumerate(self.path):
            src = self.path[k - 1] if k else 0
            cell = self.cells[f"{k}_{lv}_{'same' if src == lv else 'down'}"]
            cells.append((cell, (k, lv), (k - 2, self._prev_prev_level(k, lv, have)), (k - 1, src)))
            have.add((k, lv))
        return cells

    def derived_head(self) -> nn.Linear:
        """A derived network's classifier: the head on its path's last level (the export hook)."""
        return self.heads[str(self.path[-1])]

    @staticmethod
    def _prev_prev_level(k: int, lv: int, have: dict) -> int:
        return max(p for (kk, p) in have if kk == k - 2 and p <= lv)

    def arch_parameters(self) -> list[nn.Parameter]:
        """alpha, beta and the TPS/HNS node logits (the DGS logits are trained apart, see ``dgs_surrogates``)."""
        params = [p for p in (self.alpha, self.beta) if p is not None]
        return params + [m.logits for m in self.modules() if isinstance(m, NodeMix)]

    def dgs_surrogates(self) -> list[DGSSurrogate]:
        return list(dict.fromkeys(m for m in self.modules() if isinstance(m, DGSSurrogate)))

    def weight_parameters(self) -> list[nn.Parameter]:
        arch = {id(p) for p in self.arch_parameters()} | {id(s.logits) for s in self.dgs_surrogates()}
        return [p for p in self.parameters() if id(p) not in arch]

    def forward(self, x: Tensor) -> Tensor:
        x = repeat_input(x, self.cfg.timesteps, self.in_channels)
        stem = self.stem(x)
        states = {(-2, 0): stem, (-1, 0): stem}
        stem_cost = synaptic_cost(self.stem[-1], stem)
        costs = {(-2, 0): stem_cost, (-1, 0): stem_cost}
        prob = {(-1, 0): torch.ones((), device=x.device)}
        trans = transition_weights(self.beta, self.cfg.levels) if self.beta is not None else None
        alpha = torch.softmax(self.alpha, -1) if self.alpha is not None else None
        energy, dense = torch.zeros((), device=x.device), 0.0
        for k in range(self.num_layers):
            for lv in self.levels_at(k):
                total, cost = None, 0.0
                for src, t in ((lv, "same"), (lv - 1, "down")):
                    key = f"{k}_{lv}_{t}"
                    if key not in self.cells:
                        continue
                    cell = self.cells[key]
                    w = trans[k, src, 0 if t == "same" else 1] if trans is not None else torch.ones((), device=x.device)
                    pp = (k - 2, self._prev_prev_level(k, lv, states))
                    out, e, c = cell(states[pp], states[(k - 1, src)], alpha, costs[pp], costs[(k - 1, src)])
                    p = prob[(k - 1, src)] * w
                    total = w * out if total is None else total + w * out
                    cost = cost + w * c  # the level's state is the w-weighted sum: so is its cost per synaptic op
                    prob[(k, lv)] = prob.get((k, lv), 0) + p
                    energy = energy + p * e
                    dense += float(p.detach()) * cell.dense
                states[(k, lv)], costs[(k, lv)] = total, cost
        self.energy, self.dense_energy = energy, max(dense, 1e-12)
        last = self.num_layers - 1
        logits = sum(head(states[(last, int(lv))].mean((3, 4))) for lv, head in self.heads.items())
        return logits.mean(0)
