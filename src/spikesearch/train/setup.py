"""Process set-up before any work: the seed of every generator, the compute device."""
from __future__ import annotations

import random

import numpy as np
import torch

from ..core import distributed
from ..core.errors import SpikeSearchError


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(name: str = "auto") -> torch.device:
    """The compute device; under torchrun also joins the process group (see ``distributed``)."""
    if name == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    elif name.startswith("cuda") and not torch.cuda.is_available():
        raise SpikeSearchError(f"device {name!r} requested but no CUDA GPU is visible")
    else:
        device = torch.device(name)
    return distributed.join(device)
