"""A small spiking CNN: the model behind ``spikesearch train`` and the README's five-line example."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, Sequence

from torch import Tensor, nn

from .errors import SpikeSearchError
from .neurons import SeqToANN, make_neuron

# the neuron keyword a run's ``tau`` sets (a LIF's fixed tau, a PLIF's initial one); IF has none
TAU_ARGUMENT = {"lif": "tau", "plif": "init_tau"}


class DataShape(Protocol):
    """What sizes a network to its data (``data.datasets.DatasetInfo`` is one; core cannot import it)."""

    @property
    def channels(self) -> int: ...

    @property
    def num_classes(self) -> int: ...

    @property
    def size(self) -> int: ...


def repeat_input(x: Tensor, timesteps: int, channels: int) -> Tensor:
    """Direct encoding: a static image ``[B, C, H, W]`` becomes ``[T, B, C, H, W]``; an already
    time-resolved input ``[T, B, C, H, W]`` (event frames) passes through."""
    if x.dim() == 4:
        if x.shape[1] != channels:
            raise SpikeSearchError(f"expected {channels}-channel images [B, {channels}, H, W], got shape {tuple(x.shape)}")
        return x.unsqueeze(0).expand(timesteps, *x.shape)
    if x.dim() == 5 and x.shape[2] == channels:
        return x
    raise SpikeSearchError(f"expected input [B, {channels}, H, W] or [T, B, {channels}, H, W], got shape {tuple(x.shape)}")


class SpikingCNN(nn.Module):
    """conv3x3-BN-neuron-avgpool blocks, then a linear readout averaged over T (multi-step throughout)."""

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        image_size: int = 28,
        widths: Sequence[int] = (32, 64),
        timesteps: int = 4,
        neuron: str = "lif",
        **neuron_kw,
    ) -> None:
        super().__init__()
        if timesteps <= 0:
            raise SpikeSearchError(f"timesteps must be positive, got {timesteps}")
        self.timesteps, self.in_channels = timesteps, in_channels
        layers: list[nn.Module] = []
        c, size = in_channels, image_size
        for w in widths:
            layers += [SeqToANN(nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w)),
                       make_neuron(neuron, step_mode="m", **neuron_kw), SeqToANN(nn.AvgPool2d(2))]
            c, size = w, size // 2
        self.features = nn.Sequential(*layers)
        self.classifier = SeqToANN(nn.Flatten(), nn.Linear(c * size * size, num_classes))

    @classmethod
    def from_run(cls, cfg: Mapping[str, Any], folder: Path, info: DataShape) -> "SpikingCNN":
        """The network of a ``train`` run from its config (``folder`` holds nothing more it needs): ``spikesearch
        train`` builds it here and export rebuilds it here, so the exported network is the trained one."""
        tau = {TAU_ARGUMENT[cfg["neuron"]]: cfg["tau"]} if cfg["neuron"] in TAU_ARGUMENT else {}
        return cls(info.channels, info.num_classes, info.size, cfg["widths"], cfg["timestep"], cfg["neuron"],
                   surrogate=cfg["surrogate"], **tau)

    def forward(self, x: Tensor) -> Tensor:
        x = repeat_input(x, self.timesteps, self.in_channels)
        return self.classifier(self.features(x)).mean(0)
