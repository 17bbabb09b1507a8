"""The searchable neuron of a SpikeDHS node: DGS (surrogate temperature), TPS (time constant) and
HNS (spiking or analog).

* :class:`DGSSurrogate` is a Dspike surrogate whose backward is ``sum_k softmax(a)_k g_{b + d_k}``
  over the candidates ``b - delta, b, b + delta``. Its forward is the Heaviside, so the logits ``a``
  get no gradient from a loss directly; :func:`spikesearch.dhs.search.dgs_phase` trains them by the
  hypergradient of the validation loss through one weight step, then moves ``b`` to the winner.
* :class:`NodeMix` runs K candidate neurons (LIFs with different tau, optionally a ReLU "ANN
  neuron") on the same current and mixes their outputs with ``softmax(logits)``; the logits are
  architecture parameters trained like the cell's alpha.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..core.errors import SpikeSearchError
from ..core.surrogate import SURROGATES, Surrogate, _Spike
from ..measure.spikes import E_AC_PJ, E_MAC_PJ
from .ops import DHS_TAU, dhs_lif

DSPIKE = SURROGATES.get("dspike")


@dataclass(frozen=True)
class _MixedDspike:
    """A surrogate shape for ``_Spike``: the ``alpha`` it is handed is the weight vector."""

    temperatures: tuple[float, ...]

    def grad(self, x: Tensor, weights: Tensor) -> Tensor:
        return sum(w * DSPIKE.grad(x, b) for w, b in zip(weights, self.temperatures))


class DGSSurrogate(Surrogate):
    def __init__(self, b: float = 3.0, delta: float = 0.2, b_range: tuple[float, float] = (1.0, 6.0)) -> None:
        super().__init__("dspike", b)
        self.delta, self.b_range = float(delta), b_range
        self.logits = nn.Parameter(torch.zeros(3))
        self.searching = False

    def offsets(self) -> tuple[float, ...]:
        return (-self.delta, 0.0, self.delta)

    def forward(self, x: Tensor) -> Tensor:
        if not self.searching:
            return super().forward(x)
        shape = _MixedDspike(tuple(self.alpha + d for d in self.offsets()))
        return _Spike.apply(x, shape, torch.softmax(self.logits, 0))

    def commit(self) -> float:
        """Move ``b`` to the winning candidate, clamp it, and restart the logits. A tie keeps the current
        ``b``: a node whose logits got no gradient (all still equal) must not drift down by delta."""
        w = self.logits.detach()
        step = 0.0 if bool(w[1] >= w.max()) else self.offsets()[int(w.argmax())]
        self.alpha = float(min(max(self.alpha + step, self.b_range[0]), self.b_range[1]))
        with torch.no_grad():
            self.logits.zero_()
        return self.alpha

    # b is a plain float (the surrogate reads it every call); it travels in the state dict as extra state,
    # so checkpoints of searches and of DGS training resume with the b each node has reached
    def get_extra_state(self) -> dict:
        return {"b": self.alpha}

    def set_extra_state(self, state: dict) -> None:
        self.alpha = float(state["b"])


@dataclass(frozen=True)
class NeuronChoice:
    """One candidate (or the derived choice) of a node: ``kind`` 'lif' (with tau) or 'ann'."""

    kind: str = "lif"
    tau: float = DHS_TAU
    b: float = 3.0

    def to_json(self) -> dict:
        return {"kind": "ann"} if self.kind == "ann" else {"kind": "lif", "tau": self.tau, "b": self.b}

    @classmethod
    def from_json(cls, d: dict) -> "NeuronChoice":
        if not isinstance(d, dict):
            raise SpikeSearchError(f"a node is an object like {{'kind': 'lif', 'tau': 2.0, 'b': 3.0}}, got {d!r}")
        kind = d.get("kind", "lif")
        if kind not in ("lif", "ann"):
            raise SpikeSearchError(f"node kind must be 'lif' or 'ann', got {kind!r}")
        if kind == "ann":
            return cls("ann")
        tau, b = d.get("tau", DHS_TAU), d.get("b", 3.0)
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in (tau, b))
        if not (numbers and tau > 1 and b > 0):
            raise SpikeSearchError(f"node {d}: tau must be a finite number > 1 and b a finite number > 0")
        return cls("lif", float(tau), float(b))

    def label(self) -> str:
        return "ANN" if self.kind == "ann" else f"LIF tau={self.tau:g}"


def build_neuron(choice: NeuronChoice, surrogate: Surrogate | None = None) -> nn.Module:
    if choice.kind == "ann":
        return nn.ReLU()
    return dhs_lif(choice.tau, surrogate if surrogate is not None else f"dspike:{choice.b}")


class NodeMix(nn.Module):
    """``sum_k softmax(logits)_k neuron_k(I)`` over candidate neurons fed the same current."""

    def __init__(self, choices: list[NeuronChoice], surrogate: Surrogate | None = None) -> None:
        super().__init__()
        self.choices = list(choices)
        self.neurons = nn.ModuleList(build_neuron(c, surrogate) for c in choices)
        self.logits = nn.Parameter(1e-3 * torch.randn(len(choices)))
        self.cost = torch.tensor(0.0)

    def weights(self) -> Tensor:
        return torch.softmax(self.logits, 0)

    def forward(self, current: Tensor) -> Tensor:
        w = self.weights()
        outs = [n(current) for n in self.neurons]
        # expected energy of one synaptic op fed by this node: an AC per spike, a MAC per analog value
        self.cost = sum(wk * synaptic_cost(n, o) for wk, n, o in zip(w, self.neurons, outs))
        return sum(wk * o for wk, o in zip(w, outs))

    def best(self) -> int:
        return int(self.logits.argmax())


def synaptic_cost(node: nn.Module, out: Tensor) -> Tensor | float:
    """Expected pJ per synaptic op whose input is ``out``, the output of ``node``."""
    if isinstance(node, NodeMix):
        return node.cost
    if isinstance(node, nn.ReLU):
        return E_MAC_PJ
    return E_AC_PJ * out.detach().mean()
