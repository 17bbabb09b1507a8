"""Search over the SNASNet space with the training-free score: random search (the paper) or
regularized aging evolution (Real et al. 2019, beyond the paper). Each candidate is built with
weights seeded from (seed, matrix), so a score does not depend on evaluation order; duplicates are
scored once; every candidate is appended to a CSV that a resumed search replays instead of rescoring."""
from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from torch import Tensor, nn
from tqdm import tqdm

from ..core.errors import SpikeSearchError
from ..core.registry import Registry
from ..proxies import ScoreConfig, score_model, seeded
from ..runs import CsvLog
from .space import format_cnt_mat, mutate_matrix, parse_cnt_mat, sample_matrix

CSV_FIELDS = ["index", "cnt_mat", "score", "seconds", "duplicate"]


@dataclass
class SearchConfig:
    num_search: int = 5000
    celltype: str = "backward"
    strategy: str = "random"
    seed: int = 0
    population: int = 50  # evolution
    tournament: int = 10  # evolution
    score: ScoreConfig = field(default_factory=ScoreConfig)


@dataclass
class Candidate:
    index: int
    cnt_mat: str
    score: float
    seconds: float
    duplicate: bool


def score_candidate(build: Callable[[np.ndarray], nn.Module], batches: list[Tensor], cfg: SearchConfig,
                    key: str) -> float:
    """Score one candidate with weights seeded from (seed, cnt_mat): the same number in any process, in any order."""
    return score_model(seeded(lambda: build(parse_cnt_mat(key)), cfg.seed, key), batches, cfg.score)


def check_row(row: dict) -> None:
    """A ``search.csv`` row as this module writes it; ``ValueError`` names what is wrong."""
    try:
        parse_cnt_mat(row["cnt_mat"])
    except SpikeSearchError as e:
        raise ValueError(f"cnt_mat: {e}") from None
    int(row["index"])
    for key in ("score", "seconds"):
        if not math.isfinite(float(row[key])):
            raise ValueError(f"{key} is {row[key]}")
    if row["duplicate"] not in ("True", "False"):
        raise ValueError(f"duplicate is {row['duplicate']!r}, not True or False")


class Scorer:
    """Scores matrices with a cache (duplicates and resumed rows cost nothing) and appends each to the CSV
    (``run.CsvLog``: rows written whole; a torn last row from a crash is dropped and reported to ``note``).
    ``computed`` holds scores that workers produced elsewhere (``parallel``); they are logged as if scored here."""

    def __init__(self, build: Callable[[np.ndarray], nn.Module], batches: list[Tensor], cfg: SearchConfig,
                 csv_path: Path | None, progress: bool = True, note: Callable[[str], None] = print) -> None:
        self.build, self.batches, self.cfg, self.csv_path = build, batches, cfg, csv_path
        self.cache: dict[str, float] = {}
        self.computed: dict[str, tuple[float, float]] = {}
        self.history: list[Candidate] = []
        self.csv = CsvLog(csv_path, CSV_FIELDS, check_row) if csv_path is not None else None
        self.replay: list[dict] = self.csv.rows[:] if self.csv is not None else []
        if self.csv is not None and self.csv.dropped:
            note(f"{csv_path}: dropped a torn last row {self.csv.dropped[:60]!r} (a write cut short); it is scored again")
        for row in self.replay:
            self.cache.setdefault(row["cnt_mat"], float(row["score"]))
        self.bar = tqdm(total=cfg.num_search, desc="scoring", disable=not progress, dynamic_ncols=True)

    def __call__(self, mat: np.ndarray) -> float:
        key = format_cnt_mat(mat)
        idx = len(self.history)
        if idx < len(self.replay):
            row = self.replay[idx]
            if row["cnt_mat"] != key:
                raise SpikeSearchError(f"{self.csv_path} was written by a different search (row {idx + 1} is "
                                       f"{row['cnt_mat']}, this search drew {key}); use a new --exp_name")
            cand = Candidate(idx, key, float(row["score"]), float(row["seconds"]), row["duplicate"] == "True")
        else:
            t0 = time.perf_counter()
            duplicate = key in self.cache
            seconds = 0.0
            if not duplicate:
                if key in self.computed:
                    self.cache[key], seconds = self.computed.pop(key)
                else:
                    self.cache[key] = score_candidate(self.build, self.batches, self.cfg, key)
            cand = Candidate(idx, key, self.cache[key], seconds or time.perf_counter() - t0, duplicate)
            self._append(cand)
        self.history.append(cand)
        self.bar.update(1)
        best = max(self.history, key=lambda c: c.score)
        self.bar.set_postfix(best=f"{best.score:.2f}", unique=len(self.cache))
        return cand.score

    def knows(self, key: str) -> bool:
        return key in self.cache or key in self.computed

    def _append(self, c: Candidate) -> None:
        if self.csv is not None:
            self.csv.append([c.index, c.cnt_mat, repr(c.score), f"{c.seconds:.4f}", c.duplicate])

    def close(self) -> None:
        self.bar.close()
        if self.csv is not None:
            self.csv.close()


# strategy(cfg, rng, score) draws cfg.num_search matrices and calls score(mat) on each
STRATEGIES: Registry[Callable[..., None]] = Registry("search strategy")


@STRATEGIES.register("random")
def random_search(cfg: SearchConfig, rng: np.random.Generator, score: Callable[[np.ndarray], float]) -> None:
    for mat in draw_random(cfg, rng):
        score(mat)


@STRATEGIES.register("evolution")
def regularized_evolution(cfg: SearchConfig, rng: np.random.Generator, score: Callable[[np.ndarray], float]) -> None:
    population: deque[tuple[np.ndarray, float]] = deque()
    for _ in range(cfg.num_search):
        if len(population) < cfg.population:
            mat = sample_matrix(rng, cfg.celltype)
        else:
            picks = rng.choice(len(population), size=min(cfg.tournament, len(population)), replace=False)
            parent = max((population[i] for i in picks), key=lambda p: p[1])[0]
            mat = mutate_matrix(parent, rng, cfg.celltype)
        population.append((mat, score(mat)))
        if len(population) > cfg.population:
            population.popleft()  # aging: the oldest dies, not the worst


def draw_random(cfg: SearchConfig, rng: np.random.Generator) -> list[np.ndarray]:
    """The matrices ``random_search`` visits, drawn up front (for scoring them in parallel)."""
    return [sample_matrix(rng, cfg.celltype) for _ in range(cfg.num_search)]


def run_search(build: Callable[[np.ndarray], nn.Module], batches: list[Tensor], cfg: SearchConfig,
               csv_path: Path | None = None, progress: bool = True, pool=None,
               note: Callable[[str], None] = print) -> list[Candidate]:
    """Score ``cfg.num_search`` candidates; returns them in evaluation order. With a ``pool``
    (``parallel.WorkerPool``) the unique candidates of a random search are scored by its workers."""
    if cfg.num_search <= 0:
        raise SpikeSearchError(f"--num_search must be positive, got {cfg.num_search}")
    strategy = STRATEGIES.get(cfg.strategy)
    cfg.score.validate()
    scorer = Scorer(build, batches, cfg, csv_path, progress, note)
    try:
        if pool is None:
            strategy(cfg, np.random.default_rng(cfg.seed), scorer)
        else:
            pool.search(draw_random(cfg, np.random.default_rng(cfg.seed)), scorer)
    finally:
        scorer.close()
    return scorer.history


def ranking(history: list[Candidate]) -> list[Candidate]:
    """Unique candidates, best score first (ties broken by first appearance)."""
    seen: dict[str, Candidate] = {}
    for c in history:
        seen.setdefault(c.cnt_mat, c)
    return sorted(seen.values(), key=lambda c: (-c.score, c.index))


def best_matrix(history: list[Candidate]) -> np.ndarray:
    return parse_cnt_mat(ranking(history)[0].cnt_mat)
