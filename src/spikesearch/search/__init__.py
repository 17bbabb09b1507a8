"""One search layer over several spaces: a ``Space`` (our SNASNet cells, SpikeNAS-Bench read as a table) and
strategies (random, regularised evolution, TPE, NSGA-II, successive halving, Hyperband) that run on an Optuna
study, with an epoch budget, fidelities, zero-cost pre-filters and accuracy-vs-energy objectives."""
from .space import Evaluation, Space
from .strategies import STRATEGIES, SearchConfig, SearchResult, search

__all__ = ["Evaluation", "Space", "STRATEGIES", "SearchConfig", "SearchResult", "search"]
