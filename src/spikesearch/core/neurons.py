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

from . import kernels
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
    fused = True  # multi-step through _FusedSequence where possible (set False to compare with the step loop)

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
        if not (math.isfinite(v_threshold) and v_threshold > 0):
            raise SpikeSearchError(f"neuron threshold must be a finite number > 0, got {v_threshold}")
        for name, v in (("v_reset", v_reset), ("v_init", v_init)):
            if v is not None and not math.isfinite(v):
                raise SpikeSearchError(f"neuron {name} must be finite, got {v}")
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
        coeffs = self.linear_charge()
        if (coeffs is not None and not torch.is_grad_enabled()
                and kernels.cpu_usable(x, *([v] if isinstance(v, Tensor) else []))):
            s, self.v = kernels.neuron_step(x, v, *coeffs, self.v_threshold, self.v_reset)  # no graph to build
            return s
        h = self.charge(x, v)
        s = self.surrogate(h - self.v_threshold)
        s_r = s.detach() if self.detach_reset else s
        if self.v_reset is None:
            self.v = h - s_r * self.v_threshold
        else:
            self.v = h * (1 - s_r) + self.v_reset * s_r
        return s

    def linear_charge(self) -> tuple[float, float, float] | None:
        """``(a, b, c)`` with ``H = a V + b X + c`` when those are constants (not learned); else None."""
        return None

    def multi_step(self, x_seq: Tensor) -> Tensor:
        coeffs = self.linear_charge()
        # the fused kernel drops the gradient through the reset (detach_reset) and into a carried-over
        # state, and is written for the registry's fixed surrogates; anything else takes the autograd loop
        if (not self.fused or coeffs is None or not self.detach_reset or type(self.surrogate) is not Surrogate
                or isinstance(self.v, Tensor)):
            return torch.stack([self.single_step(x) for x in x_seq])
        out, self.v = _FusedSequence.apply(x_seq, coeffs, float(self.v), self.v_threshold, self.v_reset,
                                           self.surrogate.shape, self.surrogate.alpha)
        return out

    def forward(self, x: Tensor) -> Tensor:
        if self.step_mode == "m":
            if x.dim() < 2:
                raise SpikeSearchError(f"multi-step input must be [T, B, ...], got shape {tuple(x.shape)}")
            return self.multi_step(x)
        return self.single_step(x)

    def extra_repr(self) -> str:
        reset = "soft" if self.v_reset is None else f"hard({self.v_reset})"
        return f"v_th={self.v_threshold}, reset={reset}, detach_reset={self.detach_reset}, step_mode={self.step_mode}"


class _FusedSequence(torch.autograd.Function):
    """A whole sequence of a neuron with linear charge ``H = a V + b X + c`` in one autograd node.

    Saves only the pre-spike membranes ``H[t]`` (one tensor) instead of the handful of intermediates
    per timestep that the op-by-op loop keeps, and runs forward and backward without building a graph.
    Backward, with the reset detached: dL/dH[t] = dL/dS[t] g(H[t] - V_th) + dL/dV[t] dV[t]/dH[t], where
    dV/dH = 1 - S (hard reset) or 1 (soft); dL/dX[t] = b dL/dH[t]; dL/dV[t-1] = a dL/dH[t].
    """

    @staticmethod
    def forward(ctx, x_seq, coeffs, v0, v_th, v_reset, shape, alpha):
        a, b, c = coeffs
        ctx.params = (a, b, v_th, v_reset, shape, alpha)
        if kernels.usable(x_seq):  # float32 on the CPU (C) or CUDA (Triton): one compiled pass
            hs, spikes, v = kernels.lif_forward(x_seq, a, b, c, v0, v_th, v_reset)
            ctx.save_for_backward(hs)
            ctx.mark_non_differentiable(v)
            return spikes, v
        # everything that does not depend on the membrane is done once for all T, not per step
        drive = x_seq * b + c if (b != 1 or c) else x_seq
        v = torch.full_like(x_seq[0], v0)
        hs = torch.empty_like(x_seq)
        for t in range(x_seq.shape[0]):
            h = torch.add(drive[t], v, alpha=a)
            fired = h >= v_th
            v = h.masked_fill(fired, v_reset) if v_reset is not None else h - fired.to(h.dtype) * v_th
            hs[t] = h
        ctx.save_for_backward(hs)
        ctx.mark_non_differentiable(v)
        return (hs >= v_th).to(x_seq.dtype), v

    @staticmethod
    def backward(ctx, grad_out, _grad_v):
        (hs,) = ctx.saved_tensors
        a, b, v_th, v_reset, shape, alpha = ctx.params
        # the compiled pass is not differentiable: a backward that is itself differentiated (create_graph,
        # the DGS hypergradient) takes the torch ops below
        if not torch.is_grad_enabled() and kernels.usable(hs, grad_out):
            hard = v_reset is not None
            if shape.name == "atan":  # the default surrogate is computed inside the kernel
                grad_x = kernels.lif_backward(grad_out, hs, a, b, v_th, hard, atan_alpha=alpha)
            else:
                grad_x = kernels.lif_backward(grad_out, hs, a, b, v_th, hard, sg=shape.grad(hs - v_th, alpha))
            return grad_x, None, None, None, None, None, None
        # step by step on purpose: T-sized temporaries cost fresh pages on every call, step-sized ones are
        # reused. No in-place or out= ops: under create_graph (the DGS hypergradient) this backward is itself
        # differentiated, and it is linear in grad_out, which is all that needs.
        grads = []
        gv = torch.zeros_like(hs[0])
        for t in range(hs.shape[0] - 1, -1, -1):
            x = hs[t] - v_th
            gh = grad_out[t] * shape.grad(x, alpha)
            gh = gh + gv if v_reset is None else torch.addcmul(gh, gv, (x < 0).to(gh.dtype))
            grads.append(gh * b)
            gv = gh * a
        return torch.stack(grads[::-1]), None, None, None, None, None, None


@NEURONS.register("if")
class IF(BaseNode):
    """Integrate-and-fire: no leak. With ``v_reset=None`` this is the ANN->SNN conversion neuron."""

    def charge(self, x: Tensor, v: Tensor | float) -> Tensor:
        return v + x

    def linear_charge(self) -> tuple[float, float, float]:
        return 1.0, 1.0, 0.0


@NEURONS.register("lif")
class LIF(BaseNode):
    def __init__(self, tau: float = 2.0, decay_input: bool = True, **kw) -> None:
        super().__init__(**kw)
        if not (math.isfinite(tau) and tau > 1.0):
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

    def linear_charge(self) -> tuple[float, float, float] | None:
        k = self.decay()
        if isinstance(k, Tensor):
            return None
        rest = 0.0 if self.v_reset is None else self.v_reset
        return (1 - k, k, k * rest) if self.decay_input else (1 - k, 1.0, k * rest)

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
