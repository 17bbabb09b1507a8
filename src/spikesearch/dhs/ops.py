"""Edge operations of the SpikeDHS cell and the DARTS mixed op over them.

Every op maps a spike map ``[T, B, C, H, W]`` to a *current* of the same shape. With the mixed op
applied on the membrane (the paper's choice) the node sums the softmax(alpha)-weighted currents into
its own LIF. With ``mix='spikes'`` (the released search code) each op fires its own LIF, whose Dspike
temperature is the ``_b<temp>`` suffix of the op name (``conv3x3_b5``), and the node integrates the
weighted spikes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn

from ..core.errors import SpikeSearchError
from ..core.neurons import LIF, SeqToANN
from ..core.registry import Registry

# SpikeDHS's neuron: u <- 0.2 u (1 - s) + I, threshold 0.5, hard reset (spikingjelly tau = 1.25, no input decay)
DHS_TAU = 1.25
DHS_THRESHOLD = 0.5


def dhs_lif(tau: float = DHS_TAU, surrogate="dspike:3") -> LIF:
    return LIF(tau=tau, decay_input=False, v_threshold=DHS_THRESHOLD, v_reset=0.0, surrogate=surrogate,
               detach_reset=True, step_mode="m")


@dataclass(frozen=True)
class EdgeOp:
    build: Callable[[int], nn.Module]
    kernel: int  # dense MACs per output element and input channel = kernel^2 (0: no synapses)
    b: float = 3.0  # Dspike temperature of the op's own LIF when mixing spikes


class Zero(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return torch.zeros_like(x)


def _conv_bn(c: int, k: int) -> nn.Module:
    return SeqToANN(nn.Conv2d(c, c, k, padding=k // 2, bias=False), nn.BatchNorm2d(c))


EDGE_OPS: Registry[EdgeOp] = Registry("SpikeDHS edge op")
EDGE_OPS.add("none", EdgeOp(lambda c: Zero(), 0))
EDGE_OPS.add("skip", EdgeOp(lambda c: nn.Identity(), 0))
EDGE_OPS.add("conv1x1", EdgeOp(lambda c: _conv_bn(c, 1), 1))
EDGE_OPS.add("conv3x3", EdgeOp(lambda c: _conv_bn(c, 3), 3))
EDGE_OPS.add("avgpool", EdgeOp(lambda c: SeqToANN(nn.AvgPool2d(3, 1, 1, count_include_pad=False)), 0))
# the paper's two conv ops differ only in the surrogate of their own LIF, so only mix='spikes' tells them apart
EDGE_OPS.add("conv3x3_b3", EdgeOp(lambda c: _conv_bn(c, 3), 3, 3.0))
EDGE_OPS.add("conv3x3_b5", EdgeOp(lambda c: _conv_bn(c, 3), 3, 5.0))

MIX_MODES = ("membrane", "spikes")
# ops that never win an edge ranking: DARTS ranks edges by their strongest real op
PASSIVE_OPS = ("none", "skip")


def op_macs(name: str, channels: int, hw: int) -> int:
    return EDGE_OPS.get(name).kernel ** 2 * channels * channels * hw


class MixedOp(nn.Module):
    """``sum_o w_o op_o(x)``; one op and no weights is a plain (derived) edge."""

    def __init__(self, ops: tuple[str, ...], channels: int, mix: str = "membrane") -> None:
        super().__init__()
        if mix not in MIX_MODES:
            raise SpikeSearchError(f"mix must be one of {MIX_MODES}, got {mix!r}")
        self.names = tuple(ops)
        self.ops = nn.ModuleList(EDGE_OPS.get(o).build(channels) for o in ops)
        # skip and none already carry spikes (or nothing); only synaptic ops get their own neuron
        self.fire = nn.ModuleList(
            dhs_lif(surrogate=f"dspike:{EDGE_OPS.get(o).b}") if mix == "spikes" and EDGE_OPS.get(o).kernel else nn.Identity()
            for o in ops)

    def forward(self, x: Tensor, weights: Tensor | None = None) -> Tensor:
        if weights is None:
            return self.fire[0](self.ops[0](x))
        return sum(w * f(op(x)) for w, op, f in zip(weights, self.ops, self.fire))
