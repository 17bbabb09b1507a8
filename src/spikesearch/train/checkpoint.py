"""Checkpoint I/O: safe loading, weights named layer by layer on mismatch, and the RNG state a resume restores."""
from __future__ import annotations

import contextlib
import pickle
import random
import re
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..core.errors import SpikeSearchError


def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": (np_state[0], np_state[1].tolist(), *np_state[2:])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(tuple(v if not isinstance(v, list) else tuple(v) for v in state["python"]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Load a checkpoint with ``weights_only=True`` (tensors and plain containers only, no code); anything
    but a dict at the top level (a bare tensor, a list, an empty or foreign file) is one clear error."""
    path = Path(path)
    if not path.is_file():
        raise SpikeSearchError(f"checkpoint {path} does not exist" if not path.exists() else f"checkpoint {path} is not a file")
    try:
        ck = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types for truncated or foreign files
        raise SpikeSearchError(f"cannot load checkpoint {path}: {_load_error(e)}") from None
    if not isinstance(ck, dict):
        raise SpikeSearchError(f"{path} is not a checkpoint: it holds a {type(ck).__name__}, not a dict of tensors")
    return ck


def _load_error(e: Exception) -> str:
    """torch's reason without its advice: it suggests ``weights_only=False``, which would run whatever code a
    hostile file holds, and is wrong for a file that is no checkpoint at all (a NIR/HDF5 file, a text file)."""
    text = str(e)
    if isinstance(e, pickle.UnpicklingError) or "weights_only" in text:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        if found:
            return (f"it holds a Python object ({found.group(1)}), not only tensors and plain containers; such files "
                    "are never loaded, since loading them could run code")
        return "it is not a PyTorch checkpoint of tensors and plain containers (saved with torch.save)"
    return next(iter(text.splitlines()), "") or type(e).__name__


@contextlib.contextmanager
def resumable(path: Path):
    """Turn the errors of restoring a checkpoint's optimiser/RNG/loader state into one clear line."""
    try:
        yield
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as e:
        raise SpikeSearchError(f"{path} is not a resumable checkpoint of this run ({type(e).__name__}: "
                               f"{next(iter(str(e).splitlines()), '')})") from None


def load_model_weights(model: nn.Module, state: dict, source: str) -> None:
    """Load a state dict, naming every mismatched layer instead of torch's long traceback."""
    state = state.get("model", state)
    # a module's extra state (e.g. a DGS temperature) is a plain value; everything else must be a tensor
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) or str(k).endswith("._extra_state")
                                              for k, v in state.items()):
        raise SpikeSearchError(f"{source} does not hold a state dict of tensors")
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shape = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
             if k in state and isinstance(v, torch.Tensor) and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or shape:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch (file vs model)", shape)):
            if items:
                parts.append(f"{label}: {', '.join(items[:6])}{' ...' if len(items) > 6 else ''}")
        raise SpikeSearchError(f"{source} does not match this architecture; " + "; ".join(parts))
    broken = [k for k, v in state.items() if isinstance(v, torch.Tensor) and v.is_floating_point()
              and not bool(torch.isfinite(v).all())]
    if broken:
        raise SpikeSearchError(f"{source} holds NaN or infinite values in {', '.join(broken[:4])}"
                               f"{' ...' if len(broken) > 4 else ''}: a network with them computes nothing meaningful")
    model.load_state_dict(state)
