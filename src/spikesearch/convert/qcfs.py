"""QCFS activation (Bu et al., ICLR 2022): ``a = lam * clip(floor(z L / lam + 1/2) / L, 0, 1)`` with a
trainable per-layer ``lam`` and a straight-through floor. Converted with IF threshold ``lam`` and the
membrane starting at ``lam / 2``, its expected conversion error is zero, so a few timesteps suffice."""
from __future__ import annotations

import torch
from torch import Tensor, nn


class _FloorSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        return torch.floor(x)

    @staticmethod
    def backward(ctx, g: Tensor) -> Tensor:
        return g


class QCFS(nn.Module):
    def __init__(self, levels: int = 8, init_threshold: float = 8.0) -> None:
        super().__init__()
        self.levels = levels
        self.threshold = nn.Parameter(torch.tensor(float(init_threshold)))

    def forward(self, z: Tensor) -> Tensor:
        x = z / self.threshold
        x = _FloorSTE.apply(x * self.levels + 0.5) / self.levels
        return torch.clamp(x, 0, 1) * self.threshold

    def extra_repr(self) -> str:
        return f"levels={self.levels}, threshold={float(self.threshold):.4g}"
