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


@torch.no_grad()
def init_thresholds(model: nn.Module, x: Tensor, percentile: float = 99.9) -> list[float]:
    """Start every QCFS threshold at the ``percentile`` of its layer's positive pre-activations on ``x``
    (in train mode, so BatchNorm uses batch statistics).

    A fixed initial lam (8 in the QCFS code, tuned for SGD at lr 0.1 over 300 epochs) barely moves under
    Adam in a short run; if it sits far above the pre-activations the ANN uses one or two of its L
    levels and the SNN's finer rate code no longer matches it. Layers are set in forward order, each
    seeing the already calibrated layers before it."""
    def pre_hook(m: QCFS, inp):
        z = inp[0].detach().flatten()
        z = z[z > 0]
        if z.numel():
            if z.numel() > 1_000_000:  # torch.quantile's input limit; a seeded sample is plenty
                z = z[torch.randperm(z.numel(), generator=torch.Generator().manual_seed(0))[:1_000_000].to(z.device)]
            m.threshold.fill_(float(torch.quantile(z.float(), percentile / 100)))

    layers = [m for m in model.modules() if isinstance(m, QCFS)]
    handles = [m.register_forward_pre_hook(pre_hook) for m in layers]
    was_training = model.training
    # train mode so BatchNorm normalises with batch statistics (its running stats are still the
    # identity at init), dropout off so the percentiles are not inflated
    model.train()
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.eval()
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return [float(m.threshold) for m in layers]
