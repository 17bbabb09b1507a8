"""Spiking neurons (IF, LIF, PLIF), time-shared dropout, and the one ``reset(model)`` for all state.

Every neuron runs either one timestep per call (``step_mode='s'``, input ``[B, ...]``) or a whole
sequence (``step_mode='m'``, input ``[T, B, ...]``). The update equations are spikingjelly's, so
``LIF(tau=4/3)`` here is the neuron SNASNet was published with:

    charge  H[t] = V[t-1] + (X[t] - (V[t-1] - V_reset)) / tau        (decay_input=True)
            H[t] = V[t-1] - (V[t-1] - V_reset) / tau + X[t]          (decay_input=False)
    fire    S[t] = Heaviside(H[t] - V_th)                             (surrogate gradient backward)
    reset   V[t] = H[t] (1 - S[t]) + V_reset S[t]                     (hard, v_reset a number)
            V[t] = H[t] - V_th S[t]                                   (soft, v_reset=None)

IF is ``H = V + X``. PLIF learns ``1/tau = sigmoid(w)``. With ``detach_reset`` the reset term does not
carry gradient (the published SNASNet setting).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .errors import SpikeSearchError
from .registry import Registry
from .surrogate import Surrogate, make_surrogate

NEURONS: Registry[type["BaseNode"]] = Registry("neuron")


class Stateful:
    """Mixin for modules that keep state across timesteps; ``reset(model)`` clears all of it."""

    def reset_state(self) -> None:
        raise NotImplementedError


def reset(model: nn.Module) -> None:
    """Clear every membrane potential, feedback buffer and time-shared dropout mask in ``model``."""
    for m in model.modules():
        if isinstance(m, Stateful):
            m.reset_state()


def _check_step_mode(step_mode: str) -> str:
    if step_mode not in ("s", "m"):
        raise SpikeSearchError(f"step_mode must be 's' (single step) or 'm' (multi step), got {step_mode!r}")
    return step_mode


class BaseNode(nn.Module, Stateful):
    def __init__(
        self,
        v_threshold: float = 1.0,
        v_reset: float | None = 0.0,
        surrogate: "str | Surrogate | None" = "atan",
        detach_reset: bool = True,
        step_mode: str = "s",
        v_init: float | None = None,
    ) -> None:
        super().__init__()
        self.v_threshold = float(v_threshold)
        self.v_reset = None if v_reset is None else float(v_reset)
        self.surrogate = make_surrogate(surrogate)
        self.detach_reset = detach_reset
        self.step_mode = _check_step_mode(step_mode)
        # membrane at t=0: the reset value unless set (QCFS conversion starts at half threshold)
        self.v_init = float(v_init) if v_init is not None else (0.0 if v_reset is None else float(v_reset))
        self.v: Tensor | float = self.v_init

    def reset_state(self) -> None:
        self.v = self.v_init

    def charge(self, x: Tensor, v: Tensor | float) -> Tensor:
        raise NotImplementedError

    def single_step(self, x: Tensor) -> Tensor:
        v = self.v
        if isinstance(v, Tensor) and v.shape != x.shape:
            raise SpikeSearchError(
                f"{type(self).__name__}: input shape {tuple(x.shape)} differs from the stored state "
                f"{tuple(v.shape)}; call spikesearch.reset(model) between batches"
            )
        h = self.charge(x, v)
        s = self.surrogate(h - self.v_threshold)
        s_r = s.detach() if self.detach_reset else s
        if self.v_reset is None:
            self.v = h - s_r * self.v_threshold
        else:
            self.v = h * (1 - s_r) + self.v_reset * s_r
        return s

    def multi_step(self, x_seq: Tensor) -> Tensor:
        return torch.stack([self.single_step(x) for x in x_seq])

    def forward(self, x: Tensor) -> Tensor:
        if self.step_mode == "m":
            if x.dim() < 2:
                raise SpikeSearchError(f"multi-step input must be [T, B, ...], got shape {tuple(x.shape)}")
            return self.multi_step(x)
        return self.single_step(x)

    def extra_repr(self) -> str:
        reset = "soft" if self.v_reset is None else f"hard({self.v_reset})"
        return f"v_th={self.v_threshold}, reset={reset}, detach_reset={self.detach_reset}, step_mode={self.step_mode}"


@NEURONS.register("if")
class IF(BaseNode):
    """Integrate-and-fire: no leak. With ``v_reset=None`` this is the ANN->SNN conversion neuron."""

    def charge(self, x: Tensor, v: Tensor | float) -> Tensor:
        return v + x


@NEURONS.register("lif")
class LIF(BaseNode):
    def __init__(self, tau: float = 2.0, decay_input: bool = True, **kw) -> None:
        super().__init__(**kw)
        if tau <= 1.0:
            raise SpikeSearchError(f"LIF tau must be > 1 (1/tau is a decay fraction), got {tau}")
        self.tau = float(tau)
        self.decay_input = decay_input

    def decay(self) -> Tensor | float:
        return 1.0 / self.tau

    def charge(self, x: Tensor, v: Tensor | float) -> Tensor:
        k = self.decay()
        rest = 0.0 if self.v_reset is None else self.v_reset
        if self.decay_input:
            return v + (x - (v - rest)) * k
        return v - (v - rest) * k + x

    def extra_repr(self) -> str:
        return f"tau={self.tau:.4g}, decay_input={self.decay_input}, " + super().extra_repr()


@NEURONS.register("plif")
class PLIF(LIF):
    """Parametric LIF (Fang et al. 2021): ``1/tau = sigmoid(w)`` is learned, ``w`` starts at ``-log(tau0-1)``."""

    def __init__(self, init_tau: float = 2.0, **kw) -> None:
        super().__init__(tau=init_tau, **kw)
        self.w = nn.Parameter(torch.tensor(-math.log(init_tau - 1.0)))

    def decay(self) -> Tensor:
        return torch.sigmoid(self.w)

    @property
    def learned_tau(self) -> float:
        return float(1.0 / torch.sigmoid(self.w.detach()))


def make_neuron(name: str, **kw) -> BaseNode:
    return NEURONS.get(name)(**kw)


class SeqToANN(nn.Module):
    """Apply a stateless module to ``[T, B, ...]`` by folding T into the batch (one big conv, not T small ones)."""

    def __init__(self, *modules: nn.Module) -> None:
        super().__init__()
        self.module = modules[0] if len(modules) == 1 else nn.Sequential(*modules)

    def forward(self, x_seq: Tensor) -> Tensor:
        y = self.module(x_seq.flatten(0, 1))
        return y.view(x_seq.shape[0], x_seq.shape[1], *y.shape[1:])


class TimeSharedDropout(nn.Module, Stateful):
    """Dropout whose mask is drawn once per sample and reused at every timestep until ``reset``
    (spikingjelly's ``layer.Dropout``): a neuron dropped at t=0 stays dropped for the whole sequence."""

    def __init__(self, p: float = 0.5, step_mode: str = "s") -> None:
        super().__init__()
        if not 0 <= p < 1:
            raise SpikeSearchError(f"dropout p must be in [0, 1), got {p}")
        self.p = p
        self.step_mode = _check_step_mode(step_mode)
        self.mask: Tensor | None = None

    def reset_state(self) -> None:
        self.mask = None

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0:
            return x
        shape = x.shape[1:] if self.step_mode == "m" else x.shape
        if self.mask is None or self.mask.shape != shape:
            self.mask = torch.bernoulli(torch.full(shape, 1 - self.p, device=x.device, dtype=x.dtype)) / (1 - self.p)
        return x * self.mask
