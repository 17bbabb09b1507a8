"""Data-parallel training under ``torchrun``: every command joins the process group that torchrun's
environment describes (gloo on CPU, NCCL on GPU); outside torchrun nothing here does anything.

Each rank trains on its own shard of every epoch's permutation (DistributedSampler's rule: drop the
tail so all ranks run the same number of batches, rank ``r`` takes positions ``r, r + world, ...``),
DDP averages the gradients, and only rank 0 writes the run folder. ``--batch_size`` is per process,
so ``torchrun --nproc_per_node 2 ... --batch_size 32`` steps like one process with a batch of 64.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist

from .errors import SpikeSearchError


def requested() -> bool:
    """True inside a torchrun launch with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank_world() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if active() else (0, 1)


def is_main() -> bool:
    return rank_world()[0] == 0


def join(device: torch.device) -> torch.device:
    """Join torchrun's process group once; returns this rank's device (``cuda:LOCAL_RANK`` on GPUs)."""
    if not requested() or active():
        return _local(device)
    if not dist.is_available():
        raise SpikeSearchError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    device = _local(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def _local(device: torch.device) -> torch.device:
    if device.type == "cuda" and requested():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def leave() -> None:
    if active():
        dist.destroy_process_group()


def all_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum ``values`` over ranks (identity when not distributed)."""
    if not active():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def barrier() -> None:
    if active():
        dist.barrier()
