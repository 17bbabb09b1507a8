"""XNOR-style binary-weight layers (Rastegari et al. 2016, BWN) trained as the B-SNN repository trains them,
through XNOR-Net-PyTorch's ``BinOp``:

- before every training forward the latent real weights are **mean-centred** over the input channels of each
  filter (``meancenterConvParams``) and **clamped to [-1, 1]** (``clampConvParams``), in place, so the stored
  latent weights stay centred and bounded;
- the forward uses ``W_b = sign(W) * alpha`` with ``alpha = mean |W|`` per output filter
  (``binarizeConvParams``);
- the backward is ``updateBinaryGradWeight``: with ``n`` weights per filter and ``C`` input channels,
  ``dL/dW = (alpha * g * 1[|W| <= 1] + sign(W) * sum(g * sign(W)) / n) * (1 - 1/C) * n`` (the mean-centring's
  Jacobian taken as the factor ``1 - 1/C`` and the ``1/n`` of the mean undone by ``* n``).

``tests/test_convert.py`` checks the gradient against a transcription of ``updateBinaryGradWeight``.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


def _filter_dims(w: Tensor) -> tuple[int, ...]:
    return tuple(range(1, w.dim()))


class _XnorWeight(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w: Tensor) -> Tensor:
        alpha = w.abs().mean(dim=_filter_dims(w), keepdim=True)
        ctx.save_for_backward(w, alpha)
        return torch.where(w >= 0, 1.0, -1.0).to(w.dtype) * alpha  # never 0: exactly two values per filter

    @staticmethod
    def backward(ctx, g: Tensor) -> Tensor:
        w, alpha = ctx.saved_tensors
        n, c = w[0].numel(), w.shape[1]
        sign = torch.where(w >= 0, 1.0, -1.0).to(g.dtype)
        through_sign = alpha * g * (w.abs() <= 1).to(g.dtype)
        through_alpha = sign * (g * sign).sum(dim=_filter_dims(w), keepdim=True) / n
        return (through_sign + through_alpha) * (1.0 - 1.0 / c) * n


def binarize(w: Tensor) -> Tensor:
    return _XnorWeight.apply(w)


@torch.no_grad()
def project_(w: Tensor) -> None:
    """BinOp's ``meancenterConvParams`` and ``clampConvParams`` on the latent weights, in place."""
    w.sub_(w.mean(dim=1, keepdim=True)).clamp_(-1.0, 1.0)


def projected(w: Tensor) -> Tensor:
    """``project_`` out of place: what BinOp's ``binarization()`` makes of the weights before a test pass too."""
    return (w - w.mean(dim=1, keepdim=True)).clamp(-1.0, 1.0)


def _binary_weight(layer: nn.Module) -> Tensor:
    """Training projects the latent weights in place (they stay centred and bounded, as BinOp keeps them);
    evaluation, conversion and export binarize the projection of what is stored (the weights after the last
    optimizer step, or a loaded file) without changing it: the same weights a training pass would apply."""
    if layer.training:
        project_(layer.weight)
        return binarize(layer.weight)
    return binarize(projected(layer.weight))


class BinaryConv2d(nn.Conv2d):
    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, _binary_weight(self), self.bias)


class BinaryLinear(nn.Linear):
    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.linear(x, _binary_weight(self), self.bias)


def effective_weight(layer: nn.Module) -> Tensor:
    """The weight a layer actually applies at inference (the projection binarized, for binary layers)."""
    w = layer.weight.detach()
    return binarize(projected(w)).detach() if isinstance(layer, (BinaryConv2d, BinaryLinear)) else w
