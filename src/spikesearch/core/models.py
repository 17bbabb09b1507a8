"""A small spiking CNN: the model behind ``spikesearch train`` and the README's five-line example."""
from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

from .errors import SpikeSearchError
from .neurons import SeqToANN, make_neuron


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

    def forward(self, x: Tensor) -> Tensor:
        x = repeat_input(x, self.timesteps, self.in_channels)
        return self.classifier(self.features(x)).mean(0)
