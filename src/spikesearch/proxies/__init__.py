"""Zero-cost scores of spiking networks at initialisation, in one table (``SCORES``): used by the SNASNet search
and by the SpikeNAS-Bench evaluation alike."""
from .spikes import Kernel, Recording, SpikeRecorder, gram, hamming_kernels, scoring_layout
from .table import (
    CUSTOM,
    NEEDS,
    SCORES,
    Score,
    ScoreConfig,
    combine,
    evaluate,
    hamming_kernel,
    per_model_scores,
    sample_scores,
    score_model,
    seeded,
)

__all__ = ["CUSTOM", "NEEDS", "SCORES", "Kernel", "Recording", "Score", "ScoreConfig", "SpikeRecorder", "combine",
           "evaluate", "gram", "hamming_kernel", "hamming_kernels", "per_model_scores", "sample_scores",
           "score_model", "scoring_layout", "seeded"]
