"""Surrogate gradients for the Heaviside spike function.

Forward is always ``H(x) = 1[x >= 0]`` with ``x = v - v_threshold``; backward replaces ``H'`` with a
smooth or box-shaped ``g(x; alpha)``. Every shape here integrates to 1 over x, and ``alpha`` is a
sharpness (larger = narrower, taller): the formulas follow spikingjelly's ``surrogate`` module so that
models trained here and there agree.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from .errors import SpikeSearchError
from .registry import Registry


@dataclass(frozen=True)
class SurrogateShape:
    name: str
    default_alpha: float
    grad: Callable[[Tensor, float | Tensor], Tensor]
    primitive: Callable[[Tensor, float | Tensor], Tensor]  # smooth stand-in for H, used by tests/plots
    formula: str


SURROGATES: Registry[SurrogateShape] = Registry("surrogate")


def _atan_grad(x, a):
    return (a / 2) / (1 + (math.pi / 2 * a * x) ** 2)


def _atan_prim(x, a):
    return torch.atan(math.pi / 2 * a * x) / math.pi + 0.5


def _sigmoid_grad(x, a):
    s = torch.sigmoid(a * x)
    return a * s * (1 - s)


def _sigmoid_prim(x, a):
    return torch.sigmoid(a * x)


def _triangle_grad(x, a):
    return torch.clamp(a - a * a * x.abs(), min=0)


def _triangle_prim(x, a):
    ax = torch.clamp(a * x, -1, 1)
    return torch.where(ax < 0, 0.5 * (ax + 1) ** 2, 1 - 0.5 * (1 - ax) ** 2)


def _rect_grad(x, a):
    return a * (x.abs() < 0.5 / a).to(x.dtype)


def _rect_prim(x, a):
    return torch.clamp(a * x + 0.5, 0, 1)


def _erf_grad(x, a):
    return a / math.sqrt(math.pi) * torch.exp(-((a * x) ** 2))


def _erf_prim(x, a):
    return 0.5 * torch.erfc(-a * x)


# Dspike (Li et al., NeurIPS 2021), SpikeDHS's family: a tanh window of half-width 0.5 around the
# threshold, with temperature ``a`` (its ``b``) setting how peaked it is; the window does not scale with a.
def _dspike_grad(x, a):
    inside = (x.abs() < 0.5).to(x.dtype)
    return inside * a / (2 * math.tanh(a / 2)) * (1 - torch.tanh(a * x) ** 2)


def _dspike_prim(x, a):
    return torch.clamp(torch.tanh(a * x) / (2 * math.tanh(a / 2)) + 0.5, 0, 1)


for _shape in (
    SurrogateShape("atan", 2.0, _atan_grad, _atan_prim, "alpha/2 / (1 + (pi/2*alpha*x)^2)"),
    SurrogateShape("sigmoid", 4.0, _sigmoid_grad, _sigmoid_prim, "alpha*s*(1-s), s = sigmoid(alpha*x)"),
    SurrogateShape("triangle", 1.0, _triangle_grad, _triangle_prim, "max(0, alpha - alpha^2*|x|)"),
    SurrogateShape("rectangular", 1.0, _rect_grad, _rect_prim, "alpha * 1[|x| < 1/(2*alpha)]"),
    SurrogateShape("erf", 2.0, _erf_grad, _erf_prim, "alpha/sqrt(pi) * exp(-(alpha*x)^2)"),
    SurrogateShape("dspike", 3.0, _dspike_grad, _dspike_prim, "alpha/(2 tanh(alpha/2)) * (1 - tanh^2(alpha*x)), |x| < 0.5"),
):
    SURROGATES.add(_shape.name, _shape)
SURROGATES.add("piecewise", SURROGATES.get("triangle"))


class _Spike(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, shape: SurrogateShape, alpha: float) -> Tensor:
        ctx.save_for_backward(x)
        ctx.shape, ctx.alpha = shape, alpha
        return (x >= 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        (x,) = ctx.saved_tensors
        return grad_out * ctx.shape.grad(x, ctx.alpha), None, None


class Surrogate(torch.nn.Module):
    """Heaviside forward, ``shape`` gradient backward. ``Surrogate('atan', alpha=2.0)(v - v_th)``."""

    def __init__(self, name: str = "atan", alpha: float | None = None) -> None:
        super().__init__()
        self.shape = SURROGATES.get(name)
        self.alpha = float(self.shape.default_alpha if alpha is None else alpha)
        if self.alpha <= 0:
            raise ValueError(f"surrogate alpha must be > 0, got {self.alpha}")

    def forward(self, x: Tensor) -> Tensor:
        return _Spike.apply(x, self.shape, self.alpha)

    def extra_repr(self) -> str:
        return f"{self.shape.name}, alpha={self.alpha}"


def make_surrogate(spec: "str | Surrogate | None") -> Surrogate:
    """Accept a name, ``name:alpha`` (``atan:2``), or a ready module."""
    if isinstance(spec, Surrogate):
        return spec
    if spec is None:
        return Surrogate()
    name, _, alpha = spec.partition(":")
    try:
        value = float(alpha) if alpha else None
    except ValueError:
        raise SpikeSearchError(f"surrogate {spec!r}: alpha after ':' must be a number") from None
    if value is not None and not (math.isfinite(value) and value > 0):
        raise SpikeSearchError(f"surrogate {spec!r}: alpha must be a finite number > 0")
    return Surrogate(name, value)
