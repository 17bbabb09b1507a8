"""Training-free score: log|det| of a (sparsity-aware) Hamming kernel of LIF spike patterns.

For every LIF output at every timestep, spikes are flattened to ``x`` of shape [B, N] and give

    d_H(i, j) = #{n : x_in != x_jn} = n_i + n_j - 2 x_i.x_j            (one Gram matrix per call)
    E(i, j)   = N (r_i (1 - r_j) + (1 - r_i) r_j),  r_i = n_i / N       (expected d_H at those rates)
    K(i, j)   = N - alpha d_H(i, j) / (E(i, j) + 1e-3)                  (SAHD, official final code)

``normalise='none'`` gives the NASWOT kernel ``N - d_H``; ``'january'`` the first release's E without
the factor N. The per-call kernels are averaged (official code, ``aggregate='mean'``) or summed (the
paper's formula, ``'sum'``), and the score is ``log|det K|`` in float64. Kernels never leave the
device. BatchNorm uses batch statistics as in the official search; dropout is off by default so the
score depends on the architecture and the batch only (and is invariant to the batch's order).

On the CPU a candidate is scored channels-last (oneDNN's convolutions and pools are 2-5x faster than
NCHW at these widths), its BatchNorm statistics summed in a fixed order (``batchnorm.py``) and its Gram
matrices counted with popcounts on packed spikes (``kernels.spike_gram``): every reduction is exact or
independent of the thread count, so a score is the same number in any process.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..core import kernels
from ..core.errors import SpikeSearchError
from ..core.neurons import BaseNode, Stateful, TimeSharedDropout, reset

NORMALISATIONS = ("rate", "january", "none")
KERNEL_DTYPES = {"float64": torch.float64, "float32": torch.float32}
AGGREGATES = ("mean", "sum")
CPU_KERNEL_CHUNK = 4


@dataclass
class ScoreConfig:
    alpha: float = 0.5
    normalise: str = "rate"
    aggregate: str = "mean"
    batch_size: int = 64  # official: 256, hard-coded
    repeats: int = 2  # official: 2 batches, score = mean of their log-dets
    augment: bool = False  # official: augmented training batches
    dropout: bool = False  # official: on (train mode)
    reset: bool = True  # official: off (membranes and dropout masks carried from one scoring batch to the next)
    kernel_dtype: str = "float64"  # official: each call's kernel in float32, summed in float64

    def validate(self) -> None:
        if self.normalise not in NORMALISATIONS:
            raise SpikeSearchError(f"score normalisation must be one of {NORMALISATIONS}, got {self.normalise!r}")
        if self.aggregate not in AGGREGATES:
            raise SpikeSearchError(f"score aggregation must be one of {AGGREGATES}, got {self.aggregate!r}")
        if self.batch_size < 2 or self.repeats < 1:
            raise SpikeSearchError("scoring needs batch_size >= 2 and repeats >= 1")
        if self.kernel_dtype not in KERNEL_DTYPES:
            raise SpikeSearchError(f"kernel dtype must be one of {tuple(KERNEL_DTYPES)}, got {self.kernel_dtype!r}")


def gram(x: Tensor) -> Tensor:
    """``x @ x.T`` of one spike map [B, ...] of exact zeros and ones (flattened per sample), as every neuron
    here emits: integer counts, exact in float32 below 2^24 features. Its diagonal holds each sample's
    spike count. On the CPU the counts are popcounts of packed spikes (about 6x faster than the matmul)."""
    if kernels.gram_usable(x):
        return kernels.spike_gram(x)
    x = x.flatten(1).to(torch.float32)  # a no-op for float32 spikes; half-precision counts would not be exact
    return x @ x.T


def hamming_kernels(grams: Tensor, n_feat: Tensor, cfg: ScoreConfig) -> Tensor:
    """Kernels [C, B, B] of C spike maps from their Gram matrices [C, B, B] and feature counts [C], formed in
    ``cfg.kernel_dtype`` (float64; float32 as the official hook) and returned in float64 for the sum."""
    dtype = KERNEL_DTYPES[cfg.kernel_dtype]
    grams, n = grams.to(dtype), n_feat.to(dtype=dtype, device=grams.device)[:, None, None]
    ones = grams.diagonal(dim1=1, dim2=2)
    d_h = ones[:, :, None] + ones[:, None, :] - 2 * grams
    if cfg.normalise == "none":
        return (n - d_h).double()
    r = ones / n[:, :, 0]
    expected = r[:, :, None] * (1 - r[:, None, :]) + (1 - r[:, :, None]) * r[:, None, :]
    if cfg.normalise == "rate":
        expected = expected * n
    rescale = cfg.alpha / (expected + 1e-3)  # the official hook's order of operations (matters in float32)
    return (n - rescale * d_h).double()


def hamming_kernel(x: Tensor, cfg: ScoreConfig) -> Tensor:
    """Kernel [B, B] of one spike map ``x`` [B, ...] (float64)."""
    return hamming_kernels(gram(x)[None], torch.tensor([x[0].numel()]), cfg)[0]


class KernelHooks:
    """Accumulate the weighted kernel over every neuron call while a model runs.

    Each call costs its Gram matrix (a matmul kept on the device; popcounts on the CPU); the kernels are
    formed in ``result``, for all calls at once on a GPU, where scoring is bound by kernel launches and the
    dozen elementwise ops of a kernel per call were half of them."""

    def __init__(self, model: nn.Module, cfg: ScoreConfig) -> None:
        self.cfg, self.handles = cfg, []
        self.grams: list[Tensor] = []
        self.n_feat: list[int] = []
        self.weights: list[float] = []
        for m in model.modules():
            if isinstance(m, BaseNode):
                self.handles.append(m.register_forward_hook(self._hook))

    def _hook(self, module: BaseNode, _inp, out: Tensor) -> None:
        w = float(getattr(module, "score_weight", 1))
        steps = out if module.step_mode == "m" else out.unsqueeze(0)
        for s in steps:
            self.grams.append(gram(s))
            self.n_feat.append(s[0].numel())
            self.weights.append(w)

    def remove(self) -> None:
        for h in self.handles:
            h.remove()

    def result(self) -> Tensor:
        if not self.grams:
            raise SpikeSearchError("the model has no spiking neurons to score")
        grams, n_feat = torch.stack(self.grams), torch.tensor(self.n_feat)
        w = torch.tensor(self.weights, dtype=torch.float64, device=grams.device)
        # all at once on a GPU (launches are what cost there); on the CPU a few at a time, so that the
        # float64 temporaries stay in cache: 45 kernels of 256 x 256 took 54 ms at once, 15 ms four at a time
        step = len(grams) if grams.is_cuda else CPU_KERNEL_CHUNK
        parts = [torch.tensordot(w[i:i + step], hamming_kernels(grams[i:i + step], n_feat[i:i + step], self.cfg), dims=1)
                 for i in range(0, len(grams), step)]
        kernel = sum(parts[1:], parts[0])
        return kernel / w.sum() if self.cfg.aggregate == "mean" else kernel


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


def _reset_between_batches(model: nn.Module, first: bool, cfg: ScoreConfig) -> None:
    """Everything before the first batch; before the others everything with ``cfg.reset``, else (the
    official code since July 2022) only what its forward clears itself: the cells' feedback buffers, not
    the membranes or the dropout masks."""
    if first or cfg.reset:
        reset(model)
        return
    for m in model.modules():
        if isinstance(m, Stateful) and not isinstance(m, (BaseNode, TimeSharedDropout)):
            m.reset_state()


@torch.inference_mode()
def score_model(model: nn.Module, batches: list[Tensor], cfg: ScoreConfig) -> float:
    """Mean over ``batches`` of log|det K|. State is reset before every pass unless ``cfg.reset`` is off
    (the official code carried membrane potentials and dropout masks from one batch into the next)."""
    cfg.validate()
    model.train()
    for m in model.modules():
        if isinstance(m, TimeSharedDropout) and not cfg.dropout:
            m.eval()
    found = []
    try:
        with scoring_layout(model, batches) as batches:
            for i, x in enumerate(batches):
                _reset_between_batches(model, i == 0, cfg)
                hooks = KernelHooks(model, cfg)
                try:
                    model(x)
                finally:
                    hooks.remove()
                found.append(hooks.result())
    finally:
        reset(model)
    return float(torch.linalg.slogdet(torch.stack(found))[1].mean())  # one host sync per candidate
