"""Candidate-level parallel scoring: the unique candidates of a random search are cut into shards and
scored by Ray tasks (``--ray-address``, or a local Ray when Ray is installed) or by local worker
processes. Workers rebuild each candidate from a picklable ``SNASNetBuilder`` and seed it from
(seed, cnt_mat) exactly as the serial search does, so the scores and the ranking are the same.

Results are taken back in submission order and written to the search CSV as soon as every candidate
before them is known, so a killed parallel search resumes from its CSV like a serial one.
"""
from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import time
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
from torch import Tensor

from ..core.errors import SpikeSearchError
from .network import SNASNet
from .search import Scorer, SearchConfig, score_candidate
from .space import format_cnt_mat

ShardResult = list[tuple[str, float, float]]  # (cnt_mat, score, seconds)


@dataclass(frozen=True)
class SNASNetBuilder:
    """Everything but the matrix that a SNASNet candidate needs; picklable, so workers can build candidates."""

    celltype: str
    macro: object  # network.MacroConfig
    timesteps: int
    tau: float
    threshold: float
    surrogate: str
    device: str = "cpu"

    def __call__(self, mat: np.ndarray) -> SNASNet:
        return SNASNet(mat, self.celltype, self.macro, self.timesteps, self.tau, self.threshold,
                       self.surrogate).to(self.device)


def score_shard(build: SNASNetBuilder, batches: list[Tensor], cfg: SearchConfig, keys: list[str]) -> ShardResult:
    batches = [b.to(build.device) for b in batches]  # they travel on the CPU; a no-op where they already are
    out = []
    for key in keys:
        t0 = time.perf_counter()
        score = score_candidate(build, batches, cfg, key)
        out.append((key, score, time.perf_counter() - t0))
    return out


# --- local processes ----------------------------------------------------------------------------------

_WORKER: dict = {}


def _die_with_parent() -> None:
    """Linux: the kernel sends this worker SIGKILL when its parent dies, even by SIGKILL (no orphans)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: the parent's terminate() on exit still stops the workers


def _init_process(build: SNASNetBuilder, batches: list[Tensor], cfg: SearchConfig, threads: int) -> None:
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent decides
    torch.set_num_threads(threads)
    _WORKER.update(build=build, batches=batches, cfg=cfg)


def _score_in_process(keys: list[str]) -> ShardResult:
    return score_shard(_WORKER["build"], _WORKER["batches"], _WORKER["cfg"], keys)


def _process_map(build, batches, cfg, shards: list[list[str]], workers: int) -> Iterator[ShardResult]:
    threads = max(1, (os.cpu_count() or 1) // workers)
    # spawn, not fork: a forked child inherits the parent's OpenMP pool, which can deadlock
    ctx = multiprocessing.get_context("spawn")
    pool = ctx.Pool(workers, initializer=_init_process, initargs=(build, batches, cfg, threads))
    try:
        yield from pool.imap(_score_in_process, shards)
        pool.close()
    finally:
        pool.terminate()  # on an error, Ctrl-C or SIGTERM too: no worker outlives the search
        pool.join()


# --- Ray ------------------------------------------------------------------------------------------------

def _ray_map(build, batches, cfg, shards: list[list[str]], workers: int, address: str | None) -> Iterator[ShardResult]:
    import ray

    started = not ray.is_initialized()
    if started:
        kwargs = {"address": address} if address else {"num_cpus": workers}
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False, **kwargs)
    try:
        shared = ray.put((build, batches, cfg))  # one copy of the scoring batches in the object store
        # GPU tasks each take a share of a GPU, so `workers` of them run on one card at once: scoring there is
        # bound by the host's kernel launches, which several processes overlap
        gpus = 1 / workers if torch.device(build.device).type == "cuda" else 0
        task = ray.remote(num_cpus=1, num_gpus=gpus)(_score_ray)
        refs = [task.remote(shared, shard) for shard in shards]
        for ref in refs:
            yield ray.get(ref)
    finally:
        if started:
            ray.shutdown()


def _score_ray(shared: tuple, keys: list[str]) -> ShardResult:
    build, batches, cfg = shared
    return score_shard(build, batches, cfg, keys)


def ray_available() -> bool:
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


BACKENDS = ("auto", "ray", "processes")


class WorkerPool:
    """``backend='auto'`` uses Ray when ``--ray-address`` is given or Ray is installed, else local processes."""

    def __init__(self, build: SNASNetBuilder, batches: list[Tensor], cfg: SearchConfig, workers: int,
                 backend: str = "auto", address: str | None = None, shards_per_worker: int = 4) -> None:
        if workers < 1:
            raise SpikeSearchError(f"--workers must be positive, got {workers}")
        if cfg.strategy != "random":
            raise SpikeSearchError(f"--workers scores a random search in parallel; {cfg.strategy!r} is sequential by nature")
        if backend not in BACKENDS:
            raise SpikeSearchError(f"parallel backend must be one of {BACKENDS}, got {backend!r}")
        if backend == "auto":
            backend = "ray" if address or ray_available() else "processes"
        if backend == "ray" and not ray_available():
            raise SpikeSearchError("Ray is not installed: pip install 'spikesearch[ray]', or use --parallel processes")
        if address and backend != "ray":
            raise SpikeSearchError("--ray-address needs the Ray backend")
        self.build, self.batches, self.cfg = build, [b.cpu() for b in batches], cfg
        self.workers, self.backend, self.address, self.shards_per_worker = workers, backend, address, shards_per_worker

    def _map(self, shards: list[list[str]]) -> Iterator[ShardResult]:
        if self.backend == "ray":
            return _ray_map(self.build, self.batches, self.cfg, shards, self.workers, self.address)
        return _process_map(self.build, self.batches, self.cfg, shards, self.workers)

    def search(self, mats: list[np.ndarray], scorer: Scorer) -> None:
        """Score ``mats`` (in this order, duplicates included) through ``scorer``, the unique new ones in parallel."""
        keys = [format_cnt_mat(m) for m in mats]
        todo = [k for k in dict.fromkeys(keys) if not scorer.knows(k)]
        size = max(1, -(-len(todo) // (self.workers * self.shards_per_worker)))
        shards = [todo[i:i + size] for i in range(0, len(todo), size)]
        done = 0

        def advance() -> int:
            i = done
            while i < len(mats) and scorer.knows(keys[i]):
                scorer(mats[i])
                i += 1
            return i

        done = advance()  # rows replayed from a resumed CSV
        if shards:
            with contextlib.closing(self._map(shards)) as results:  # closed at once on any error: workers stop
                for result in results:
                    scorer.computed.update({k: (s, secs) for k, s, secs in result})
                    done = advance()
        if done != len(mats):
            raise SpikeSearchError(f"parallel search ended with {len(mats) - done} candidates unscored")
