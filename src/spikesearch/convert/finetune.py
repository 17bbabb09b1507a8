"""Spike-based fine-tuning of a converted SNN (hybrid conversion, Rathi et al., ICLR 2020): the route to 0/1 spikes
within a point or two of the ANN at T = 4-8, where no training-free method here gets there (docs/conversion.md).

The SNN keeps its conversion neurons (IF, threshold 1, reset by subtraction, the method's initial membrane) and
its weights and biases are trained through them: BPTT over T one-step timesteps from the converted weights, with
the neuron's box-shaped surrogate gradient one threshold wide (``methods.ConvertedIF``), cross-entropy on the mean
output current, by the shared ``Trainer`` (so the epoch is chosen on the validation split and a run resumes).
A binary-weight ANN's binary layers train only one scale per output channel: their signs stay fixed, so every
filter still holds two values +-alpha and the SNN stays a binary-weight network.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ..core.errors import SpikeSearchError
from ..train.trainer import TrainConfig
from .converter import SpikingNet
from .methods import BINARY, Method


@dataclass
class FinetuneConfig:
    epochs: int = 0  # 0: no fine-tuning, the training-free conversion
    timesteps: int = 4  # the T trained at (BPTT through every step)
    lr: float = 3e-4
    batch_size: int = 64

    def validate(self) -> None:
        if self.epochs < 0 or self.timesteps <= 0 or self.batch_size <= 0 or not self.lr > 0:
            raise SpikeSearchError("fine-tuning: epochs must be >= 0, timesteps, batch size and lr positive")

    def train_config(self, seed: int, progress: bool) -> TrainConfig:
        """Adam on a cosine schedule down to 0, no weight decay; AMP off, so training sees the arithmetic the
        SNN is evaluated and exported in."""
        return TrainConfig(epochs=self.epochs, batch_size=self.batch_size, optimizer="adam", lr=self.lr,
                           weight_decay=0.0, scheduler="cosine", eta_min_ratio=0.0, amp=False, seed=seed,
                           progress=progress)


def check_method(method: Method, one_step: bool) -> None:
    """Fine-tuning trains what is run afterwards: 0/1 IF neurons propagated one step at a time, nothing decided at
    run time."""
    if method.spikes != BINARY:
        raise SpikeSearchError(f"--finetune_epochs trains 0/1 IF neurons; --method {method.name} emits {method.spikes} "
                               "spikes: use qcfs, percentile or calibrate")
    if method.presim:
        raise SpikeSearchError(f"--finetune_epochs cannot train --method {method.name}: its masks are decided at run "
                               "time, after uncounted steps; use qcfs, percentile or calibrate")
    if not one_step:
        raise SpikeSearchError("--finetune_epochs trains one-step propagation: add --one-step")


class _ChannelScale(nn.Module):
    """weight = the fixed binary weight x a trainable per-output-channel scale."""

    def __init__(self, channels: int, dims: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(channels))
        self.shape = (-1,) + (1,) * (dims - 1)

    def forward(self, w: Tensor) -> Tensor:
        return w * self.scale.view(self.shape)


class Unrolled(nn.Module):
    """The converted SNN as a classifier the trainer can fit: ``timesteps`` one-step timesteps from its initial
    state (event frames replayed, step t reading frame t mod F, as ``SpikingNet.simulate``), the mean output
    current. With ``binary``, the binary layers (all weighted layers but the first and the last) train only
    their per-channel scales."""

    def __init__(self, snn: SpikingNet, timesteps: int, binary: bool) -> None:
        super().__init__()
        self.snn, self.timesteps = snn, timesteps
        weighted = [m for m in snn.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        if binary:
            for m in weighted[1:-1]:
                m.weight.requires_grad_(False)
                parametrize.register_parametrization(m, "weight", _ChannelScale(m.weight.shape[0], m.weight.dim()),
                                                     unsafe=True)
                m.parametrizations.weight.original.requires_grad_(False)

    def forward(self, x: Tensor) -> Tensor:
        frames = x if x.dim() == 5 else x.unsqueeze(0)
        return sum(self.snn.step(frames[t % len(frames)]) for t in range(self.timesteps)) / self.timesteps

    def baked(self) -> SpikingNet:
        """The SNN with its trained weights as plain tensors (a binary layer's scale multiplied in)."""
        for m in self.snn.modules():
            if parametrize.is_parametrized(m):
                parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)
        for p in self.snn.parameters():
            p.requires_grad_(False)
        return self.snn
