"""Genotypes: the cell wiring, the network path and the per-node neurons that a search derives.

A cell has ``steps`` nodes. Node ``i`` may read state 0 (the cell two layers back), state 1 (the
previous cell) and states ``2..i+1`` (earlier nodes), so there are ``2 + 3 + 4 = 9`` edges for three
nodes, numbered node by node as in SpikeDHS's ``decode.py``. A path lists the resolution level of each
layer (0 = input resolution, each level halves it); it starts at level 0 or 1 and goes down by at
most one level per layer, never up.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..core.errors import SpikeSearchError
from ..runs import atomic_write_bytes, jsonable
from .nodes import NeuronChoice
from .ops import EDGE_OPS, PASSIVE_OPS

# the CIFAR cell SpikeDHS published (README / LEAStereo.py, [[edge, op]] with op 1 = snn_b3, 2 = snn_b5),
# as (source, op) pairs per node; the paper's two conv ops are one conv3x3 at retrain
PAPER_CELL = [[(1, "conv3x3"), (0, "conv3x3")], [(1, "conv3x3"), (0, "conv3x3")], [(2, "conv3x3"), (3, "conv3x3")]]
PAPER_PATH_8 = [0, 0, 1, 1, 1, 2, 2, 2]


def edge_index(node: int, source: int) -> int:
    """Row of ``alpha`` for the edge ``source -> node``."""
    return sum(2 + m for m in range(node)) + source


def num_edges(steps: int) -> int:
    return edge_index(steps, 0)


@dataclass
class Genotype:
    cell: list[list[tuple[int, str]]]
    path: list[int]
    nodes: list[list[NeuronChoice]] = field(default_factory=list)  # per layer, per node; empty = default LIF
    stem_b: float = 3.0
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        # strict types: a genotype is an editable file, and 1.9 must not quietly become level 1
        self.cell = [[(_integer(s, "a cell edge's source"), _text(o, "a cell edge's op")) for s, o in _pairs(node)]
                     for node in _list(self.cell, "cell")]
        self.path = [_integer(v, "a path level") for v in _list(self.path, "path")]
        self.nodes = [[c if isinstance(c, NeuronChoice) else NeuronChoice.from_json(c) for c in _list(layer, "a nodes layer")]
                      for layer in _list(self.nodes, "nodes")]
        self.stem_b = _number(self.stem_b, "stem_b")
        if self.stem_b <= 0:
            raise SpikeSearchError(f"genotype stem_b must be > 0, got {self.stem_b}")
        if not isinstance(self.info, dict):
            raise SpikeSearchError(f"genotype info must be a JSON object, got {type(self.info).__name__}")
        self.validate()

    @property
    def steps(self) -> int:
        return len(self.cell)

    def validate(self) -> None:
        if not self.cell:
            raise SpikeSearchError("genotype cell is empty")
        for i, node in enumerate(self.cell):
            if not node:
                raise SpikeSearchError(f"genotype node {i} has no input edge")
            for s, o in node:
                if not 0 <= s < i + 2:
                    raise SpikeSearchError(f"genotype node {i}: source {s} is not an earlier state (0..{i + 1})")
                EDGE_OPS.get(o)
            if all(o == "none" for _, o in node):
                raise SpikeSearchError(f"genotype node {i} has only 'none' edges: it would always output zero "
                                       "(a search never derives that)")
        check_path(self.path)
        if self.nodes and (len(self.nodes) != len(self.path) or any(len(n) != self.steps for n in self.nodes)):
            raise SpikeSearchError(f"genotype nodes must list {self.steps} neurons for each of the {len(self.path)} layers")

    def neuron(self, layer: int, node: int) -> NeuronChoice:
        return self.nodes[layer][node] if self.nodes else NeuronChoice()

    def to_json(self) -> dict:
        return {"cell": [[list(e) for e in node] for node in self.cell], "path": self.path,
                "nodes": [[c.to_json() for c in layer] for layer in self.nodes], "stem_b": self.stem_b, "info": self.info}

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        # one key per line, each value on one line: short enough to read and edit by hand; never NaN
        body = ",\n".join(f" {json.dumps(k)}: {json.dumps(jsonable(v), allow_nan=False)}" for k, v in self.to_json().items())
        atomic_write_bytes(path, ("{\n" + body + "\n}\n").encode())
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Genotype":
        path = Path(path)
        if not path.is_file():
            raise SpikeSearchError(f"genotype file {path} does not exist")
        try:
            d = json.loads(path.read_bytes(), parse_constant=_no_constant)
            if not isinstance(d, dict):
                raise ValueError(f"top level is {type(d).__name__}, not an object")
            return cls(d["cell"], d["path"], d.get("nodes", []), d.get("stem_b", 3.0), d.get("info", {}))
        except SpikeSearchError as e:
            raise SpikeSearchError(f"genotype file {path}: {e}") from None
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError, RecursionError) as e:
            raise SpikeSearchError(f"genotype file {path} is not a valid genotype ({type(e).__name__}: "
                                   f"{str(e)[:200]})") from None


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number a genotype may hold")


def _list(v, what: str) -> list:
    if not isinstance(v, (list, tuple)):
        raise SpikeSearchError(f"genotype {what} must be a list, got {type(v).__name__}")
    return list(v)


def _pairs(node) -> list:
    pairs = _list(node, "cell node")
    if not all(isinstance(e, (list, tuple)) and len(e) == 2 for e in pairs):
        raise SpikeSearchError(f"genotype cell node {node!r}: each edge is [source, op]")
    return pairs


def _integer(v, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise SpikeSearchError(f"{what} must be an integer, got {v!r}")
    return int(v)


def _text(v, what: str) -> str:
    if not isinstance(v, str):
        raise SpikeSearchError(f"{what} must be a string, got {v!r}")
    return v


def _number(v, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.number)) or not math.isfinite(float(v)):
        raise SpikeSearchError(f"genotype {what} must be a finite number, got {v!r}")
    return float(v)


def check_path(path: list[int], levels: int | None = None) -> None:
    if not path:
        raise SpikeSearchError("network path is empty")
    prev = 0
    for k, lv in enumerate(path):
        if lv - prev not in (0, 1):
            raise SpikeSearchError(f"network path {path}: layer {k} goes from level {prev} to {lv}; "
                                   f"a path stays or goes down one level per layer, starting from level 0")
        if levels is not None and lv >= levels:
            raise SpikeSearchError(f"network path {path}: level {lv} does not exist (levels 0..{levels - 1})")
        prev = lv


def derive_cell(alpha: Tensor, ops: tuple[str, ...], steps: int, top_k: int = 2) -> list[list[tuple[int, str]]]:
    """Keep the ``top_k`` incoming edges of each node ranked by their strongest non-passive op, then the
    argmax op of each kept edge (skip may win; none may not)."""
    w = torch.softmax(alpha.detach(), -1)
    active = [j for j, o in enumerate(ops) if o not in PASSIVE_OPS]
    usable = [j for j, o in enumerate(ops) if o != "none"]
    if not usable:
        raise SpikeSearchError("the op set holds only 'none'")
    cell = []
    for i in range(steps):
        rows = [w[edge_index(i, s)] for s in range(i + 2)]
        strength = [float(r[active].max()) if active else float(r[usable].max()) for r in rows]
        keep = sorted(range(i + 2), key=lambda s: -strength[s])[:top_k]
        cell.append([(s, ops[usable[int(rows[s][usable].argmax())]]) for s in sorted(keep)])
    return cell


def transition_weights(beta: Tensor, levels: int) -> Tensor:
    """Softmax of ``beta [L, levels, 2]`` over the valid transitions (stay, down) out of each level;
    the lowest level can only stay, so its stay weight is exactly 1."""
    mask = torch.zeros(levels, 2, dtype=torch.bool, device=beta.device)
    mask[levels - 1, 1] = True
    return torch.softmax(beta.masked_fill(mask, float("-inf")), -1)


def viterbi(beta: Tensor, levels: int) -> list[int]:
    """Most probable path through the trellis: ``beta[k, l, t]`` scores leaving level l of layer k-1
    (the stem, level 0, for k = 0) by t (0 stay, 1 down)."""
    logp = transition_weights(beta.detach().double(), levels).log().cpu().numpy()
    n_layers = logp.shape[0]
    score = np.full(levels, -np.inf)
    score[0] = 0.0  # the stem
    back = np.zeros((n_layers, levels), dtype=int)
    for k in range(n_layers):
        new = np.full(levels, -np.inf)
        for lv in range(levels):
            for src, t in ((lv, 0), (lv - 1, 1)):
                if src >= 0 and score[src] + logp[k, src, t] > new[lv]:
                    new[lv], back[k, lv] = score[src] + logp[k, src, t], src
        score = new
    path = [int(np.argmax(score))]
    for k in range(n_layers - 1, 0, -1):
        path.append(int(back[k, path[-1]]))
    return path[::-1]


def random_genotype(ops: tuple[str, ...], steps: int, layers: int, levels: int, rng: np.random.Generator,
                    top_k: int = 2) -> Genotype:
    """A uniform draw from the same discrete space a search derives from (default neurons)."""
    usable = [o for o in ops if o != "none"]
    cell = []
    for i in range(steps):
        sources = sorted(rng.choice(i + 2, size=min(top_k, i + 2), replace=False).tolist())
        cell.append([(s, str(rng.choice(usable))) for s in sources])
    path, lv = [], 0
    for _ in range(layers):
        lv = min(lv + int(rng.integers(2)), levels - 1)
        path.append(lv)
    return Genotype(cell, path, info={"source": "random"})


def genotype_summary(g: Genotype) -> dict:
    return {"cell": g.to_json()["cell"], "path": g.path, **({"nodes": [[c.label() for c in n] for n in g.nodes]} if g.nodes else {})}

