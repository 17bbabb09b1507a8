"""Batches on the compute device with augmentation as tensor ops (random crop with zero padding,
horizontal flip, per-dataset normalisation), driven by one seeded generator so runs repeat exactly.

In-memory sets are indexed directly (no worker processes: a 5000-image set is one tensor); file-backed
sets go through a ``DataLoader`` that only decodes, and are augmented on the device afterwards.
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch import Tensor

from ..core import distributed
from ..core.errors import SpikeSearchError
from .datasets import DatasetInfo, FileImageSet, ImageSet


class Augment:
    """``scale`` maps stored values to [0, 1] before normalising: 255 for uint8 images, 1 for event counts."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], crop_padding: int = 0, flip: bool = False,
                 scale: float = 255.0) -> None:
        self.mean, self.std, self.crop_padding, self.flip, self.scale = mean, std, crop_padding, flip, scale

    @classmethod
    def for_dataset(cls, info: DatasetInfo) -> "Augment":
        return cls(info.mean, info.std, info.crop_padding, info.flip, 1.0 if info.events else 255.0)

    def normalise(self, x: Tensor) -> Tensor:
        mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        return (x.float() / self.scale - mean) / std

    def __call__(self, x: Tensor, train: bool, generator: torch.Generator | None = None) -> Tensor:
        if x.dim() == 5:  # event frames [B, T, 2, H, W] -> the models' time-major [T, B, 2, H, W]
            return self.normalise(x).transpose(0, 1)
        if train and self.crop_padding:
            x = self.random_crop(x, generator)
        x = self.normalise(x)
        if train and self.flip:
            flip = torch.rand(x.shape[0], device=x.device, generator=generator) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
        return x

    def random_crop(self, x: Tensor, generator: torch.Generator | None) -> Tensor:
        """Zero-pad the raw pixels by ``crop_padding`` and cut an HxW window per sample (torchvision's
        ``RandomCrop(size, padding)`` order: the border is black before normalisation)."""
        b, c, h, w = x.shape
        p = self.crop_padding
        padded = torch.nn.functional.pad(x, (p, p, p, p))
        oy = torch.randint(0, 2 * p + 1, (b,), device=x.device, generator=generator)
        ox = torch.randint(0, 2 * p + 1, (b,), device=x.device, generator=generator)
        rows = (oy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
        cols = (ox[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
        batch = torch.arange(b, device=x.device)[:, None, None, None]
        chan = torch.arange(c, device=x.device)[None, :, None, None]
        return padded[batch, chan, rows, cols]


class BatchLoader:
    """Iterate ``(images, labels)`` on ``device``; ``len()`` is the number of batches."""

    def __init__(
        self,
        data: ImageSet | FileImageSet,
        batch_size: int,
        augment: Augment,
        train: bool,
        device: torch.device | str = "cpu",
        seed: int = 0,
        num_workers: int = 2,
        shard: bool = False,
    ) -> None:
        if batch_size <= 0:
            raise SpikeSearchError(f"batch size must be positive, got {batch_size}")
        if len(data) == 0:
            raise SpikeSearchError("dataset is empty")
        self.data, self.batch_size, self.augment, self.train = data, batch_size, augment, train
        self.device = torch.device(device)
        self.num_workers = num_workers
        # under torchrun a training loader yields only this rank's share (see ``distributed``)
        self.rank, self.world = distributed.rank_world() if shard else (0, 1)
        # The generator lives on the device so crops/flips are drawn there; its state is checkpointed.
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)

    def __len__(self) -> int:
        return (len(self.data) // self.world + self.batch_size - 1) // self.batch_size

    def _order(self) -> Tensor:
        if not self.train:
            order = torch.arange(len(self.data))
        else:  # every rank draws the same permutation from the same generator state
            order = torch.randperm(len(self.data), generator=self.generator, device=self.device).cpu()
        return order[: len(order) - len(order) % self.world][self.rank::self.world]

    def _raw_batches(self, order: Tensor) -> Iterator[tuple[Tensor, Tensor]]:
        if isinstance(self.data, ImageSet):
            for i in range(0, len(order), self.batch_size):
                idx = order[i:i + self.batch_size]
                yield self.data.images[idx], self.data.labels[idx]
            return
        loader = torch.utils.data.DataLoader(
            torch.utils.data.Subset(self.data, order.tolist()), batch_size=self.batch_size,
            shuffle=False, num_workers=self.num_workers)
        try:
            yield from loader
        except SpikeSearchError as e:  # from a worker: its message is the last line of the wrapped traceback
            lines = [line for line in str(e).splitlines() if line.strip()]
            raise SpikeSearchError(lines[-1].split("SpikeSearchError: ", 1)[-1]) from None

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        for x, y in self._raw_batches(self._order()):
            x = x.to(self.device, non_blocking=True)
            yield self.augment(x, self.train, self.generator), y.to(self.device, non_blocking=True)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
