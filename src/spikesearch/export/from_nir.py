"""NIR graphs -> a module that runs them step by step (``from_nir``).

Every node becomes a callable on one timestep's ``[B, ...]`` tensors; a node's input is the sum of what its
source nodes produced in the same step, except that a ``Delay`` hands on what it received ``delay / dt`` steps
before, which is how recurrent graphs (SNASNet's feedback, reset by subtraction) close their loops. A cycle
without a ``Delay`` is refused. Neuron nodes become our neurons, their parameters read from the graph (tau, r,
v_leak, thresholds, resets) and the graph's ``dt`` (``metadata['dt']``, or the ``dt`` argument). Our own
``metadata['spikesearch']`` is never preferred to the graph: it only gives a LIF's time constant back the float64
digits the graph's float32 storage rounded off, where the graph's value is that one rounded (a changed graph
is read as changed), and says whether a ``Threshold`` fires at ``>=`` (ours) or at NIR's ``>``.
"""
from __future__ import annotations

from collections import deque
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.errors import SpikeSearchError
from ..core.neurons import IF, LIF, reset
from .to_nir import DT, nir_module


def _t(a) -> Tensor:
    return torch.as_tensor(np.asarray(a, dtype=np.float32))


def _scalar(a, what: str, name: str) -> float:
    a = np.asarray(a, dtype=np.float64)
    if a.size and not np.all(a == a.flat[0]):
        raise SpikeSearchError(f"NIR node {name}: per-neuron {what} differ; only uniform values are supported")
    return float(a.flat[0]) if a.size else 0.0


class _Scaled(nn.Module):
    """A neuron whose input is first multiplied by ``gain`` (NIR's resistance times the Euler step)."""

    def __init__(self, gain: float, neuron: nn.Module) -> None:
        super().__init__()
        self.gain, self.neuron = gain, neuron

    def forward(self, x: Tensor) -> Tensor:
        return self.neuron(x if self.gain == 1.0 else x * self.gain)


class _Integrator(nn.Module):
    """``I`` (v += dt r x, output v) and ``LI`` (v += dt / tau (v_leak - v + r x), output v)."""

    def __init__(self, gain: float, leak: float = 0.0, v_leak: float = 0.0) -> None:
        super().__init__()
        self.gain, self.leak, self.v_leak, self.v = gain, leak, v_leak, 0.0

    def reset_state(self) -> None:
        self.v = 0.0

    def forward(self, x: Tensor) -> Tensor:
        self.v = self.v + self.leak * (self.v_leak - self.v) + self.gain * x
        return self.v


class _Threshold(nn.Module):
    def __init__(self, threshold: float, inclusive: bool) -> None:
        super().__init__()
        self.threshold, self.inclusive = threshold, inclusive

    def forward(self, x: Tensor) -> Tensor:
        return ((x >= self.threshold) if self.inclusive else (x > self.threshold)).to(x.dtype)


class _Apply(nn.Module):
    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x)


def _exact(value: float, recorded) -> float:
    """``value`` read from the graph, or ``recorded`` where the two agree to float32's precision (the graph's
    dtype): the graph decides, the record restores the digits float32 lost."""
    if isinstance(recorded, (int, float)) and abs(value - recorded) <= np.finfo(np.float32).eps * abs(recorded):
        return float(recorded)
    return value


def _layer(name: str, node, dt: float) -> nn.Module:
    """One NIR node as a module on ``[B, ...]``."""
    nir = nir_module()
    ours = (node.metadata or {}).get("spikesearch", {}) if hasattr(node, "metadata") else {}
    if isinstance(node, (nir.Input, nir.Output)):
        return nn.Identity()
    if isinstance(node, (nir.Affine, nir.Linear)):
        w = _t(node.weight)
        lin = nn.Linear(w.shape[1], w.shape[0], bias=isinstance(node, nir.Affine))
        with torch.no_grad():
            lin.weight.copy_(w)
            if isinstance(node, nir.Affine):
                lin.bias.copy_(_t(node.bias))
        return lin
    if isinstance(node, nir.Conv2d):
        w = _t(node.weight)
        conv = nn.Conv2d(w.shape[1] * node.groups, w.shape[0], tuple(w.shape[2:]), stride=node.stride,
                         padding=node.padding, dilation=node.dilation, groups=node.groups)
        with torch.no_grad():
            conv.weight.copy_(w)
            conv.bias.copy_(_t(node.bias))
        return conv
    if isinstance(node, (nir.AvgPool2d, nir.SumPool2d)):
        k, s, p = (tuple(int(v) for v in np.atleast_1d(a)) for a in (node.kernel_size, node.stride, node.padding))
        divisor = 1 if isinstance(node, nir.SumPool2d) else None
        return _Apply(lambda x: F.avg_pool2d(x, k, s, p, divisor_override=divisor))
    if isinstance(node, nir.Flatten):
        start = node.start_dim + 1 if node.start_dim >= 0 else node.start_dim
        end = node.end_dim + 1 if node.end_dim >= 0 else node.end_dim
        return _Apply(lambda x: x.flatten(start, end))
    if isinstance(node, nir.Scale):
        scale = _t(node.scale)
        return _Apply(lambda x: x * scale.to(x.device))
    if isinstance(node, nir.IF):
        th, vr = _scalar(node.v_threshold, "thresholds", name), _scalar(node.v_reset, "resets", name)
        return _Scaled(_scalar(node.r, "resistances", name) * dt, IF(v_threshold=th, v_reset=vr))
    if isinstance(node, nir.LIF):
        th, vr = _scalar(node.v_threshold, "thresholds", name), _scalar(node.v_reset, "resets", name)
        if _scalar(node.v_leak, "leak potentials", name) != vr:
            raise SpikeSearchError(f"NIR node {name}: a LIF whose leak potential differs from its reset is not supported")
        tau = _exact(_scalar(node.tau, "time constants", name) / dt, ours.get("tau"))
        r = _scalar(node.r, "resistances", name)
        if r == 1.0:  # v += (v_leak - v + x) / tau: ours with the input decayed
            return LIF(tau=tau, decay_input=True, v_threshold=th, v_reset=vr)
        # v += (v_leak - v) / tau + (r / tau) x: ours without input decay, the input scaled by r / tau (1 for ours)
        gain = 1.0 if np.float32(r) == np.float32(tau) else r / tau
        return _Scaled(gain, LIF(tau=tau, decay_input=False, v_threshold=th, v_reset=vr))
    if isinstance(node, nir.I):
        return _Integrator(_scalar(node.r, "resistances", name) * dt)
    if isinstance(node, nir.LI):
        tau = _scalar(node.tau, "time constants", name)
        return _Integrator(_scalar(node.r, "resistances", name) * dt / tau, dt / tau, _scalar(node.v_leak, "leaks", name))
    if isinstance(node, nir.Threshold):
        return _Threshold(_scalar(node.threshold, "thresholds", name), ours.get("fires_at") == ">=")
    raise SpikeSearchError(f"NIR node {name}: {type(node).__name__} is not supported by from_nir (supported: Input, "
                           "Output, Affine, Linear, Conv2d, AvgPool2d, SumPool2d, Flatten, Scale, Delay, IF, LIF, I, LI, "
                           "Threshold)")


class NIRNet(nn.Module):
    """A NIR graph run step by step. ``forward(x)`` takes ``[T, B, ...]`` (or ``[B, ...]`` with ``timesteps``,
    the same input each step) and returns the output node's value at every step, ``[T, B, ...]``."""

    def __init__(self, graph) -> None:
        super().__init__()
        nir = nir_module()
        self.graph = graph
        self.dt = float(np.asarray((graph.metadata or {}).get("dt", DT)))
        inputs = [n for n, v in graph.nodes.items() if isinstance(v, nir.Input)]
        outputs = [n for n, v in graph.nodes.items() if isinstance(v, nir.Output)]
        if len(inputs) != 1 or len(outputs) != 1:
            raise SpikeSearchError(f"from_nir runs graphs with one input and one output node, got {inputs} and {outputs}")
        self.input, self.output = inputs[0], outputs[0]
        self.delays = {n: max(1, round(float(np.max(v.delay)) / self.dt)) for n, v in graph.nodes.items()
                       if isinstance(v, nir.Delay)}
        self.layers = nn.ModuleDict({n.replace(".", "_"): _layer(n, v, self.dt) for n, v in graph.nodes.items()
                                     if n not in self.delays})
        self.sources: dict[str, list[str]] = {n: [] for n in graph.nodes}
        for src, dst in graph.edges:
            if src not in graph.nodes or dst not in graph.nodes:
                raise SpikeSearchError(f"NIR edge {src} -> {dst} names a node the graph does not have")
            self.sources[dst].append(src)
        self.order = self._order()
        self.queues: dict[str, deque] = {}
        self.trace: dict[str, list[Tensor]] | None = None

    def _order(self) -> list[str]:
        """Topological order of the nodes, a Delay's outgoing edges left out (they carry the past)."""
        pending = {n: sum(s not in self.delays for s in srcs) for n, srcs in self.sources.items() if n not in self.delays}
        users: dict[str, list[str]] = {n: [] for n in self.sources}
        for dst, srcs in self.sources.items():
            for s in srcs:
                users[s].append(dst)
        ready = [n for n, k in pending.items() if k == 0]
        order = []
        while ready:
            n = ready.pop()
            order.append(n)
            for u in users[n]:
                if u in pending:
                    pending[u] -= 1
                    if pending[u] == 0:
                        ready.append(u)
        if len(order) != len(pending):
            stuck = sorted(set(pending) - set(order))[:5]
            raise SpikeSearchError(f"the NIR graph has a cycle without a Delay through {', '.join(stuck)}")
        return order

    def reset_state(self) -> None:
        reset(self)
        for m in self.modules():
            if isinstance(m, _Integrator):
                m.reset_state()
        self.queues = {d: deque() for d in self.delays}

    def step(self, x: Tensor) -> Tensor:
        values: dict[str, Tensor | None] = {}
        for d, n in self.delays.items():
            q = self.queues[d]
            values[d] = q.popleft() if len(q) >= n else None
        for n in self.order:
            if n == self.input:
                inp = x
            else:
                parts = [values[s] for s in self.sources[n] if values.get(s) is not None]
                inp = sum(parts[1:], parts[0]) if parts else None
            values[n] = None if inp is None else self.layers[n.replace(".", "_")](inp)
            if self.trace is not None and values[n] is not None:
                self.trace.setdefault(n, []).append(values[n])
        for d in self.delays:
            parts = [values[s] for s in self.sources[d] if values.get(s) is not None]
            self.queues[d].append(sum(parts[1:], parts[0]) if parts else None)
        if values[self.output] is None:
            raise SpikeSearchError("the NIR graph's output received nothing this step")
        return values[self.output]

    @torch.no_grad()
    def forward(self, x: Tensor, timesteps: int | None = None) -> Tensor:
        self.reset_state()
        steps = x if timesteps is None else x.unsqueeze(0).expand(timesteps, *x.shape)
        return torch.stack([self.step(xt) for xt in steps])


def from_nir(graph_or_path, dt: float | None = None) -> NIRNet:
    """A module running a NIR graph (a ``nir.NIRGraph`` or a path to a ``.nir`` file)."""
    nir = nir_module()
    graph = graph_or_path
    if isinstance(graph_or_path, (str, Path)):
        path = Path(graph_or_path)
        if not path.is_file():
            raise SpikeSearchError(f"NIR file {path} does not exist")
        try:
            graph = nir.read(str(path))
        except Exception as e:  # h5py and nir raise several types for foreign or damaged files
            raise SpikeSearchError(f"cannot read NIR file {path}: {next(iter(str(e).splitlines()), type(e).__name__)}") from None
    if dt is not None:
        graph.metadata = {**(graph.metadata or {}), "dt": dt}
    return NIRNet(graph)
