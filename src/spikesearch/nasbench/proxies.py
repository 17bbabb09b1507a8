"""The zero-cost scores of ``proxies.SCORES`` as the SpikeNAS-Bench evaluation computes them: every
per-model score from one forward pass per scoring batch (plus a backward pass per batch for the gradient
scores), in train mode with dropout off, state reset before every batch, float64 kernels; the sample scores
(``rank-ensemble``) are formed from the others over the scored sample."""
from __future__ import annotations

from torch import Tensor, nn

from ..proxies import ScoreConfig, evaluate, per_model_scores, sample_scores

PROCEDURE = ScoreConfig()
PROXIES = tuple(per_model_scores())
ENSEMBLES = sample_scores()


def proxies(model: nn.Module, batches: list[Tensor], names: tuple[str, ...] = PROXIES,
            labels: list[Tensor] | None = None) -> dict[str, float]:
    """The named scores of ``model`` at its current weights."""
    return evaluate(model, batches, PROCEDURE, names, labels)
