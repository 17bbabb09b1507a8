"""Every zero-cost score in one table, ``SCORES``: a frozen record per name saying what it needs, how it is
computed and which way is better. ``snasnet`` ranks its candidates by one entry, ``nasbench proxies`` measures
them all; neither tests a score's name, both read its record.

``ScoreConfig`` is a scoring run: which score, its kernel (for the Hamming-kernel scores: a named score fixes
normalisation, aggregation and alpha; lower-level settings that change them make the score ``custom``, and
``name`` says so) and the procedure (batches, dropout, state reset between batches, kernel precision).
``evaluate`` computes any set of scores of one model from one forward pass per batch (plus a backward pass per
batch when a gradient score is asked for).
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from functools import partial
from typing import Callable

import numpy as np
import torch
from torch import Tensor, nn

from ..core.errors import SpikeSearchError
from ..core.neurons import BaseNode, Stateful, TimeSharedDropout, reset
from ..core.registry import Registry
from ..measure.stats import ranks
from .gradients import zico
from .spikes import KERNEL_DTYPES, Kernel, Recording, SpikeRecorder, gram, hamming_kernels, scoring_layout

CUSTOM = "custom"  # a Hamming kernel no named score defines
SWAP_SAMPLES = 16  # the official SWAP code's --input_samples


@dataclass(frozen=True)
class Need:
    """What a score needs to be computed, which decides the pass that computes it."""
    what: str
    forward: bool = False  # from a forward pass's Recording, per batch, averaged over the batches
    labels: bool = False  # a backward pass per batch, with a label tensor per batch
    per_model: bool = True  # False: formed from other scores over a sample of models


NEEDS = {
    "model": Need("the model alone (no inputs)"),
    "grams": Need("one forward pass per batch: every neuron call's spike Gram matrix", forward=True),
    "patterns": Need("one forward pass per batch: the sample-wise spike patterns of every spatial map", forward=True),
    "gradients": Need("a forward and backward pass per batch, with labels", labels=True),
    "sample": Need("the member scores over a sample of models", per_model=False),
}


@dataclass(frozen=True)
class Score:
    """One zero-cost score. ``compute``'s arguments follow ``needs``: model -> (model); grams, patterns ->
    (Recording, ScoreConfig) per batch; gradients -> (model, batches, labels, before_batch); sample ->
    ({member: scores over the sample})."""
    name: str
    needs: str
    summary: str
    compute: Callable = field(compare=False)
    higher_is_better: bool = True
    kernel: Kernel | None = None
    members: tuple[str, ...] = ()

    @property
    def need(self) -> Need:
        return NEEDS[self.needs]


def _logdet(rec: Recording, cfg: "ScoreConfig", kernel: Kernel) -> Tensor:
    return torch.linalg.slogdet(rec.kernel(kernel, KERNEL_DTYPES[cfg.kernel_dtype]))[1]


def kernel_score(name: str, kernel: Kernel, summary: str) -> Score:
    return Score(name, "grams", summary, partial(_logdet, kernel=kernel), kernel=kernel)


def _firing(rec: Recording, cfg: "ScoreConfig") -> Tensor:
    rec.check()
    grams = torch.stack(rec.grams)
    n = torch.tensor(rec.n_feat, dtype=torch.float64, device=grams.device)
    w = torch.tensor(rec.weights, dtype=torch.float64, device=grams.device)
    rates = grams.diagonal(dim1=1, dim2=2).double().mean(1) / n
    return (rates * w).sum() / w.sum()


def _swap(rec: Recording, cfg: "ScoreConfig") -> Tensor:
    if not rec.patterns:
        raise SpikeSearchError("SWAP counts the patterns of spatial spike maps: the model has no spiking conv layer")
    return torch.tensor(float(torch.unique(torch.cat(rec.patterns)).numel()), dtype=torch.float64)


def _params(model: nn.Module) -> float:
    return float(sum(p.numel() for p in model.parameters()))


def _mean_rank(table: dict[str, np.ndarray], members: tuple[str, ...]) -> np.ndarray:
    return np.mean([ranks(table[m]) for m in members], axis=0)


SCORES: Registry[Score] = Registry("zero-cost score")
for _score in (
    kernel_score("sahd", Kernel("rate", "mean"),
                 "SAHD as the official SNASNet code: rate-normalised Hamming kernel, mean over neuron calls, log|det|"),
    kernel_score("sahd-sum", Kernel("rate", "sum"), "SAHD as the paper's formula: the kernels summed over neuron calls"),
    kernel_score("naswot", Kernel("none", "sum"), "NASWOT on spikes (Mellor et al. 2021): N - d_H summed over calls, log|det|"),
    kernel_score("sahd-last", Kernel("rate", "mean", layers=2), "SAHD of the last two neuron modules only"),
    Score("firing", "grams", "mean firing rate of all neuron calls at initialisation", _firing),
    Score("swap", "patterns", f"SWAP (Peng et al., ICLR 2024) on spikes: distinct sample-wise spike patterns of the first "
          f"{SWAP_SAMPLES} samples over every (timestep, neuron) of the spatial spike maps", _swap),
    Score("zico", "gradients", "ZiCo (Li et al., ICLR 2023): sum over conv/linear layers of log sum |mean grad| / std "
          "grad across batches, surrogate gradients through time", zico),
    Score("params", "model", "number of parameters", _params),
    Score("rank-ensemble", "sample", "mean rank of sahd, naswot and params over the sample", _mean_rank,
          members=("sahd", "naswot", "params")),
):
    SCORES.add(_score.name, _score)


def per_model_scores(labels: bool = True) -> list[str]:
    """The names ``evaluate`` computes for one model (without those needing labels when ``labels`` is False)."""
    return [n for n in SCORES if SCORES.get(n).need.per_model and (labels or not SCORES.get(n).need.labels)]


def sample_scores() -> dict[str, tuple[str, ...]]:
    """The scores formed over a sample, with their members."""
    return {n: SCORES.get(n).members for n in SCORES if not SCORES.get(n).need.per_model}


def combine(name: str, table: dict[str, np.ndarray]) -> np.ndarray:
    """A sample score (``needs='sample'``) from its members' scores over the sample."""
    score = SCORES.get(name)
    return score.compute(table, score.members)


@dataclass
class ScoreConfig:
    """How candidates are scored. ``alpha``, ``normalise``, ``aggregate`` left None take the named score's kernel."""
    score: str = "sahd"
    alpha: float | None = None
    normalise: str | None = None
    aggregate: str | None = None
    batch_size: int = 64  # official: 256, hard-coded
    repeats: int = 2  # official: 2 batches, score = mean of their log-dets
    augment: bool = False  # official: augmented training batches
    dropout: bool = False  # official: on (train mode)
    reset: bool = True  # official: off (membranes and dropout masks carried from one scoring batch to the next)
    kernel_dtype: str = "float64"  # official: each call's kernel in float32, summed in float64

    def __post_init__(self) -> None:
        named = SCORES.get(self.score).kernel
        if named is None:
            given = [k for k in ("alpha", "normalise", "aggregate") if getattr(self, k) is not None]
            if given:
                raise SpikeSearchError(f"score {self.score!r} has no Hamming kernel: its {', '.join(given)} cannot be set")
            return
        for k in ("alpha", "normalise", "aggregate"):
            if getattr(self, k) is None:
                setattr(self, k, getattr(named, k))

    def validate(self) -> None:
        if self.kernel is not None:
            self.kernel.validate()
        if self.batch_size < 2 or self.repeats < 1:
            raise SpikeSearchError("scoring needs batch_size >= 2 and repeats >= 1")
        if self.kernel_dtype not in KERNEL_DTYPES:
            raise SpikeSearchError(f"kernel dtype must be one of {tuple(KERNEL_DTYPES)}, got {self.kernel_dtype!r}")

    @property
    def kernel(self) -> Kernel | None:
        named = SCORES.get(self.score).kernel
        if named is None:
            return None
        return Kernel(self.normalise, self.aggregate, self.alpha, named.layers)

    @property
    def name(self) -> str:
        """The score these settings compute: ``score`` itself, the named score whose kernel they give when
        lower-level settings changed it, or ``custom``."""
        kernel = self.kernel
        if kernel is None or kernel.canonical() == SCORES.get(self.score).kernel.canonical():
            return self.score
        same = [n for n in SCORES if SCORES.get(n).kernel is not None and SCORES.get(n).kernel.canonical() == kernel.canonical()]
        return same[0] if same else CUSTOM

    def record(self, name: str) -> Score:
        """The table's record of ``name``; ``custom`` is this config's own kernel."""
        if name == CUSTOM and self.name == CUSTOM:
            return kernel_score(CUSTOM, self.kernel, "a Hamming kernel of the given settings")
        return SCORES.get(name)


def hamming_kernel(x: Tensor, cfg: ScoreConfig) -> Tensor:
    """Kernel [B, B] of one spike map ``x`` [B, ...] (float64) with ``cfg``'s kernel."""
    return hamming_kernels(gram(x)[None], torch.tensor([x[0].numel()]), cfg.kernel, KERNEL_DTYPES[cfg.kernel_dtype])[0]


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
def _forward_scores(model: nn.Module, batches: list[Tensor], cfg: ScoreConfig, scores: dict[str, Score]) -> dict[str, float]:
    grams = any(s.needs == "grams" for s in scores.values())
    samples = SWAP_SAMPLES if any(s.needs == "patterns" for s in scores.values()) else 0
    per_batch: dict[str, list[Tensor]] = {n: [] for n in scores}
    for i, x in enumerate(batches):
        _reset_between_batches(model, i == 0, cfg)
        recorder = SpikeRecorder(model, grams=grams, pattern_samples=samples)
        try:
            model(x)
        finally:
            rec = recorder.remove()
        for n, s in scores.items():
            per_batch[n].append(torch.as_tensor(s.compute(rec, cfg)))
    # one host sync per score and candidate
    return {n: float(torch.stack([v.to(torch.float64) for v in vals]).mean()) for n, vals in per_batch.items()}


def evaluate(model: nn.Module, batches: list[Tensor], cfg: ScoreConfig, names: tuple[str, ...] | None = None,
             labels: list[Tensor] | None = None) -> dict[str, float]:
    """The scores ``names`` (default: the one ``cfg`` names) of ``model`` at its current weights, in train mode
    (batch statistics) with dropout off unless ``cfg.dropout``; state reset before every batch unless
    ``cfg.reset`` is off (the official code carried membrane potentials and dropout masks from one batch into
    the next). Gradient scores need one label tensor per batch."""
    cfg.validate()
    chosen = {n: cfg.record(n) for n in (names or (cfg.name,))}
    for n, s in chosen.items():
        if not s.need.per_model:
            raise SpikeSearchError(f"score {n!r} is formed over a sample of models, not computed for one")
        if s.need.labels and labels is None:
            raise SpikeSearchError(f"score {n!r} needs labels for its scoring batches")
    out = {n: s.compute(model) for n, s in chosen.items() if s.needs == "model"}
    forward = {n: s for n, s in chosen.items() if s.need.forward}
    backward = {n: s for n, s in chosen.items() if s.need.labels}
    if forward or backward:
        model.train()
        for m in model.modules():
            if isinstance(m, (nn.Dropout, TimeSharedDropout)) and not cfg.dropout:
                m.eval()
        try:
            with scoring_layout(model, batches) as xs:
                if forward:
                    out.update(_forward_scores(model, xs, cfg, forward))
                for n, s in backward.items():
                    out[n] = s.compute(model, xs, labels, lambda i: _reset_between_batches(model, i == 0, cfg))
        finally:
            reset(model)
    return {n: out[n] for n in chosen}


def score_model(model: nn.Module, batches: list[Tensor], cfg: ScoreConfig) -> float:
    """The one score ``cfg`` names (mean over ``batches`` for the forward scores)."""
    return evaluate(model, batches, cfg)[cfg.name]


def seeded(build: Callable[[], nn.Module], seed: int, key: str) -> nn.Module:
    """A network with weights seeded from (seed, key): the same initialisation in any process and order."""
    torch.manual_seed(zlib.crc32(f"{seed}:{key}".encode()))
    return build()
