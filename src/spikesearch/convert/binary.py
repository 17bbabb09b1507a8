"""XNOR-style binary-weight layers (Rastegari et al. 2016, BWN): ``W_b = sign(W) * alpha`` with
``alpha = mean |W|`` per output filter, latent real weights, and a straight-through sign whose
gradient is cut where ``|W| > 1``. Differentiating ``sign(W) * mean|W|`` through that STE gives exactly
XNOR-Net-PyTorch's ``updateBinaryGradWeight`` rule (the alpha term plus the 1/n mean term)."""
from __future__ import annotations

import torch
from torch import Tensor, nn


class _SignSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w: Tensor) -> Tensor:
        ctx.save_for_backward(w)
        return torch.where(w >= 0, 1.0, -1.0).to(w.dtype)  # never 0: exactly two values per filter

    @staticmethod
    def backward(ctx, g: Tensor) -> Tensor:
        (w,) = ctx.saved_tensors
        return g * (w.abs() <= 1).to(g.dtype)


def binarize(w: Tensor) -> Tensor:
    alpha = w.abs().mean(dim=tuple(range(1, w.dim())), keepdim=True)
    return _SignSTE.apply(w) * alpha


class BinaryConv2d(nn.Conv2d):
    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, binarize(self.weight), self.bias)


class BinaryLinear(nn.Linear):
    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.linear(x, binarize(self.weight), self.bias)


def effective_weight(layer: nn.Module) -> Tensor:
    """The weight a layer actually applies (binarized for binary layers)."""
    w = layer.weight.detach()
    return binarize(w).detach() if isinstance(layer, (BinaryConv2d, BinaryLinear)) else w
