"""What a forward pass's spike maps give the zero-cost scores: one Gram matrix per neuron call (the Hamming
kernels of SAHD and NASWOT, firing rates) and the sample-wise spike patterns of SWAP.

For every neuron output at every timestep, spikes are flattened to ``x`` of shape [B, N] and give

    d_H(i, j) = #{n : x_in != x_jn} = n_i + n_j - 2 x_i.x_j            (one Gram matrix per call)
    E(i, j)   = N (r_i (1 - r_j) + (1 - r_i) r_j),  r_i = n_i / N       (expected d_H at those rates)
    K(i, j)   = N - alpha d_H(i, j) / (E(i, j) + 1e-3)                  (SAHD, official final code)

``normalise='none'`` gives the NASWOT kernel ``N - d_H``; ``'january'`` the first release's E without
the factor N. The per-call kernels are averaged (official code, ``aggregate='mean'``) or summed (the
paper's formula, ``'sum'``), weighted by each neuron's ``score_weight`` (one shared module standing for
several identical edge neurons). Kernels never leave the device.

On the CPU a candidate is scored channels-last (oneDNN's convolutions and pools are 2-5x faster than
NCHW at these widths), its BatchNorm statistics summed in a fixed order (``core/batchnorm.py``) and its Gram
matrices counted with popcounts on packed spikes (``core.kernels.spike_gram``): every reduction is exact or
independent of the thread count, so a score is the same number in any process.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor, nn

from ..core import kernels
from ..core.errors import SpikeSearchError
from ..core.neurons import BaseNode

NORMALISATIONS = ("rate", "january", "none")
AGGREGATES = ("mean", "sum")
KERNEL_DTYPES = {"float64": torch.float64, "float32": torch.float32}
CPU_KERNEL_CHUNK = 4
PATTERN_BITS = 63  # samples one int64 holds as a pattern (the sign bit is left alone)


@dataclass(frozen=True)
class Kernel:
    """A Hamming kernel over the recorded neuron calls. ``layers``: only the calls of the last ``layers``
    neuron modules (in module order), None for all."""
    normalise: str = "rate"
    aggregate: str = "mean"
    alpha: float = 0.5
    layers: int | None = None

    def validate(self) -> None:
        if self.normalise not in NORMALISATIONS:
            raise SpikeSearchError(f"score normalisation must be one of {NORMALISATIONS}, got {self.normalise!r}")
        if self.aggregate not in AGGREGATES:
            raise SpikeSearchError(f"score aggregation must be one of {AGGREGATES}, got {self.aggregate!r}")

    def canonical(self) -> "Kernel":
        """The same kernel with the settings that do not change it fixed: without rate normalisation alpha
        never enters (``N - d_H``), so two such kernels that differ in alpha are one kernel."""
        return replace(self, alpha=0.0) if self.normalise == "none" else self


def gram(x: Tensor) -> Tensor:
    """``x @ x.T`` of one spike map [B, ...] of exact zeros and ones (flattened per sample), as every neuron
    here emits: integer counts, exact in float32 below 2^24 features. Its diagonal holds each sample's
    spike count. On the CPU the counts are popcounts of packed spikes (about 6x faster than the matmul)."""
    if kernels.gram_usable(x):
        return kernels.spike_gram(x)
    x = x.flatten(1).to(torch.float32)  # a no-op for float32 spikes; half-precision counts would not be exact
    return x @ x.T


def hamming_kernels(grams: Tensor, n_feat: Tensor, kernel: Kernel, dtype: torch.dtype = torch.float64) -> Tensor:
    """Kernels [C, B, B] of C spike maps from their Gram matrices [C, B, B] and feature counts [C], formed in
    ``dtype`` (float64; float32 as the official hook) and returned in float64 for the sum."""
    grams, n = grams.to(dtype), n_feat.to(dtype=dtype, device=grams.device)[:, None, None]
    ones = grams.diagonal(dim1=1, dim2=2)
    d_h = ones[:, :, None] + ones[:, None, :] - 2 * grams
    if kernel.normalise == "none":
        return (n - d_h).double()
    r = ones / n[:, :, 0]
    expected = r[:, :, None] * (1 - r[:, None, :]) + (1 - r[:, :, None]) * r[:, None, :]
    if kernel.normalise == "rate":
        expected = expected * n
    rescale = kernel.alpha / (expected + 1e-3)  # the official hook's order of operations (matters in float32)
    return (n - rescale * d_h).double()


def spike_patterns(x: Tensor, samples: int) -> Tensor:
    """SWAP's sample-wise activation patterns of one spike map [B, ...]: for every feature, the spikes of the
    first ``samples`` samples (all of a smaller batch) read as one integer (bit i = sample i), [N] int64."""
    if not 1 <= samples <= PATTERN_BITS:
        raise SpikeSearchError(f"spike patterns hold 1..{PATTERN_BITS} samples, got {samples}")
    samples = min(samples, x.shape[0])
    bits = x[:samples].flatten(1).ne(0).to(torch.int64)  # [S, N]
    weights = torch.ones(samples, dtype=torch.int64, device=x.device) << torch.arange(samples, device=x.device)
    return (bits * weights[:, None]).sum(0)


@dataclass
class Recording:
    """What one forward pass left: per neuron call (one per timestep) its Gram matrix, feature count, weight
    and the index of the neuron module that made it; the distinct spike patterns of the spatial calls."""
    grams: list[Tensor] = field(default_factory=list)
    n_feat: list[int] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    owners: list[int] = field(default_factory=list)
    patterns: list[Tensor] = field(default_factory=list)
    modules: int = 0

    def check(self) -> None:
        if not self.owners:
            raise SpikeSearchError("the model has no spiking neurons to score")

    def kernel(self, kernel: Kernel, dtype: torch.dtype = torch.float64) -> Tensor:
        """The weighted kernel [B, B] (float64) over the calls ``kernel.layers`` selects."""
        self.check()
        keep = [k for k, o in enumerate(self.owners) if kernel.layers is None or o >= self.modules - kernel.layers]
        grams = torch.stack([self.grams[k] for k in keep])
        n_feat = torch.tensor([self.n_feat[k] for k in keep])
        w = torch.tensor([self.weights[k] for k in keep], dtype=torch.float64, device=grams.device)
        # all at once on a GPU (launches are what cost there); on the CPU a few at a time, so that the
        # float64 temporaries stay in cache: 45 kernels of 256 x 256 took 54 ms at once, 15 ms four at a time
        step = len(grams) if grams.is_cuda else CPU_KERNEL_CHUNK
        parts = [torch.tensordot(w[i:i + step], hamming_kernels(grams[i:i + step], n_feat[i:i + step], kernel, dtype), dims=1)
                 for i in range(0, len(grams), step)]
        total = sum(parts[1:], parts[0])
        return total / w.sum() if kernel.aggregate == "mean" else total


class SpikeRecorder:
    """Forward hooks on every neuron that fill a ``Recording`` while the model runs: Gram matrices (a matmul
    kept on the device; popcounts on the CPU) when ``grams``, the spike patterns of the first
    ``pattern_samples`` samples of every spatial map (SWAP counts conv feature maps only) when that is set."""

    def __init__(self, model: nn.Module, grams: bool = True, pattern_samples: int = 0) -> None:
        self.record = Recording()
        self.want_grams, self.pattern_samples = grams, pattern_samples
        neurons = [m for m in model.modules() if isinstance(m, BaseNode)]
        self.record.modules = len(neurons)
        self.handles = [m.register_forward_hook(self._hook(k)) for k, m in enumerate(neurons)]

    def _hook(self, index: int):
        def hook(module: BaseNode, _inp, out: Tensor) -> None:
            w = float(getattr(module, "score_weight", 1))
            steps = out if module.step_mode == "m" else out.unsqueeze(0)
            for s in steps:
                if self.want_grams:
                    self.record.grams.append(gram(s))
                if self.pattern_samples and s.dim() == 4:
                    # the call's distinct patterns only: their union is all SWAP needs, at a fraction of the memory
                    self.record.patterns.append(torch.unique(spike_patterns(s, self.pattern_samples)))
                self.record.n_feat.append(s[0].numel())
                self.record.weights.append(w)
                self.record.owners.append(index)
        return hook

    def remove(self) -> Recording:
        for h in self.handles:
            h.remove()
        return self.record


@contextmanager
def scoring_layout(model: nn.Module, batches: list[Tensor]) -> Iterator[list[Tensor]]:
    """Image batches on the CPU, and the model with them, go channels-last for the block (the fast layout for
    oneDNN at these widths); the model's parameters return to the contiguous format after it. Only with the
    compiled library: without its fixed-order statistics, channels-last BatchNorm depends on the thread count."""
    if kernels.library() is None or not all(x.device.type == "cpu" and x.dim() == 4 for x in batches):
        yield batches
        return
    model.to(memory_format=torch.channels_last)
    try:
        yield [x.contiguous(memory_format=torch.channels_last) for x in batches]
    finally:
        model.to(memory_format=torch.contiguous_format)
