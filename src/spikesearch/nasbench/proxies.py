"""Training-free proxies of an architecture's trained accuracy, computed at initialisation.

One forward pass per scoring batch records every LIF call's spike Gram matrix (``snasnet.score.KernelHooks``);
every Hamming-kernel proxy is then formed from the same Gram matrices:

- ``sahd``: SAHD as the official SNASNet code (rate-normalised kernel, mean over LIF calls, log|det|);
- ``sahd-sum``: the paper's formula (sum over calls);
- ``naswot``: plain Hamming kernel ``N - d_H`` summed over calls (Mellor et al. 2021 on spikes);
- ``sahd-last``: SAHD of the last two LIF layers only (the layers nearest the readout);
- ``firing``: mean firing rate of all LIF calls (a spike-count measure);
- ``params``: the parameter count (no forward pass);
and, formed from the others over a sample, ``rank-ensemble`` (mean rank of sahd, naswot and params).
"""
from __future__ import annotations

import zlib
from typing import Callable

import numpy as np
import torch
from torch import Tensor, nn

from ..core.neurons import BaseNode, TimeSharedDropout, reset
from ..measure.stats import ranks
from ..snasnet.score import KernelHooks, ScoreConfig, hamming_kernels, scoring_layout

FORWARD_PROXIES = ("sahd", "sahd-sum", "naswot", "sahd-last", "firing")
PROXIES = (*FORWARD_PROXIES, "params")
ENSEMBLES = {"rank-ensemble": ("sahd", "naswot", "params")}
SAHD = ScoreConfig(normalise="rate", aggregate="mean")


def _kernel(grams: Tensor, n: Tensor, w: Tensor, cfg: ScoreConfig) -> Tensor:
    k = torch.tensordot(w, hamming_kernels(grams, n, cfg), dims=1)
    return k / w.sum() if cfg.aggregate == "mean" else k


@torch.inference_mode()
def proxies(model: nn.Module, batches: list[Tensor], names: tuple[str, ...] = PROXIES) -> dict[str, float]:
    """The named proxies of ``model`` (train mode, dropout off, state reset before every batch, as our SAHD)."""
    out: dict[str, float] = {}
    if "params" in names:
        out["params"] = float(sum(p.numel() for p in model.parameters()))
    wanted = [n for n in names if n in FORWARD_PROXIES]
    if not wanted:
        return out
    model.train()
    for m in model.modules():
        if isinstance(m, (nn.Dropout, TimeSharedDropout)):
            m.eval()
    neurons = [m for m in model.modules() if isinstance(m, BaseNode)]
    last = set(map(id, neurons[-2:]))
    per_batch: dict[str, list[float]] = {n: [] for n in wanted}
    with scoring_layout(model, batches) as batches:
        for x in batches:
            reset(model)
            hooks = KernelHooks(model, SAHD)
            owners: list[int] = []
            for m in neurons:  # which module made each recorded call (for sahd-last)
                m._proxy_handle = m.register_forward_hook(
                    lambda mod, i, o: owners.extend([id(mod)] * (o.shape[0] if mod.step_mode == "m" else 1)))
            try:
                model(x)
            finally:
                hooks.remove()
                for m in neurons:
                    m._proxy_handle.remove()
            grams, n = torch.stack(hooks.grams), torch.tensor(hooks.n_feat)
            w = torch.tensor(hooks.weights, dtype=torch.float64, device=grams.device)
            if "sahd" in wanted:
                per_batch["sahd"].append(torch.linalg.slogdet(_kernel(grams, n, w, SAHD))[1])
            if "sahd-sum" in wanted:
                per_batch["sahd-sum"].append(torch.linalg.slogdet(_kernel(grams, n, w, ScoreConfig(aggregate="sum")))[1])
            if "naswot" in wanted:
                cfg = ScoreConfig(normalise="none", aggregate="sum")
                per_batch["naswot"].append(torch.linalg.slogdet(_kernel(grams, n, w, cfg))[1])
            if "sahd-last" in wanted:
                keep = torch.tensor([o in last for o in owners], device=grams.device)
                per_batch["sahd-last"].append(torch.linalg.slogdet(_kernel(grams[keep], n[keep.cpu()], w[keep], SAHD))[1])
            if "firing" in wanted:
                rates = grams.diagonal(dim1=1, dim2=2).double().mean(1) / n.double().to(grams.device)
                per_batch["firing"].append((rates * w).sum() / w.sum())
    out.update({k: float(torch.stack([torch.as_tensor(v) for v in vals]).double().mean()) for k, vals in per_batch.items()})
    return out


def seeded(build: Callable[[], nn.Module], seed: int, key: str) -> nn.Module:
    """A network with weights seeded from (seed, key): the same initialisation in any process and order."""
    torch.manual_seed(zlib.crc32(f"{seed}:{key}".encode()))
    return build()


def ensemble(table: dict[str, np.ndarray], members: tuple[str, ...]) -> np.ndarray:
    """Mean rank of the member proxies over a sample (each higher-is-better)."""
    return np.mean([ranks(table[m]) for m in members], axis=0)
