"""ZiCo (Li et al., ICLR 2023, "Zero-shot NAS via inverse coefficient of variation on gradients") on a
spiking network: its gradients flow through the surrogate of every neuron, over all timesteps.

For every Conv2d and Linear weight tensor ``theta_l``, the gradient of the cross-entropy loss is taken on each
scoring batch b separately (zeroed in between) and

    ZiCo = sum_l log( sum_{theta in theta_l, sigma_theta > 0} E_b[|g_theta|] / sigma_theta )

with E_b the mean over batches and sigma the population standard deviation (numpy's default) over batches;
a layer whose sum is 0 adds nothing. This is the paper's Eq. 3 and the official ``compute_zico.caculate_zico``.
The official search loop (``evolution_search.py`` with ``getzico``) does not zero the gradients between its
two batches, so its second "sample" is g1 + g2; the paper, NASLib and AZ-NAS take per-batch gradients, as here.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.errors import SpikeSearchError


def layer_gradients(model: nn.Module) -> list[Tensor]:
    """The flattened weight gradient of every Conv2d and Linear module, in module order (float64)."""
    out = []
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            g = m.weight.grad
            out.append(torch.zeros(m.weight.numel(), dtype=torch.float64, device=m.weight.device) if g is None
                       else g.detach().flatten().double())
    return out


def zico_statistic(per_batch: list[list[Tensor]]) -> float:
    """ZiCo from per-batch layer gradients: ``per_batch[b][l]`` is layer l's gradient on batch b."""
    if len(per_batch) < 2:
        raise SpikeSearchError("ZiCo compares gradients across batches: it needs at least 2 scoring batches")
    total = 0.0
    for layer in zip(*per_batch):
        g = torch.stack(layer)  # [batches, params]
        std = g.std(0, unbiased=False)
        keep = std > 0
        ratio = float((g.abs().mean(0)[keep] / std[keep]).sum())
        if ratio > 0:
            total += math.log(ratio)
    return total


def zico(model: nn.Module, batches: list[Tensor], labels: list[Tensor], before_batch) -> float:
    """ZiCo of ``model`` (in the mode the caller set) on ``batches`` with their ``labels``; ``before_batch(i)``
    resets the model's state as the caller's scoring procedure does."""
    if labels is None or len(labels) != len(batches):
        raise SpikeSearchError("ZiCo needs one label tensor per scoring batch (it differentiates the loss)")
    per_batch = []
    with torch.enable_grad():
        for i, (x, y) in enumerate(zip(batches, labels)):
            before_batch(i)
            model.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y.to(x.device)).backward()
            per_batch.append(layer_gradients(model))
    model.zero_grad(set_to_none=True)
    return zico_statistic(per_batch)
