"""Shared steps of every command: data and loaders, train-evaluate-report into the run folder."""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from ..data.datasets import DatasetInfo, hold_out, load_dataset
from ..data.loader import Augment, BatchLoader
from ..measure.plots import plot_spike_report, plot_training
from ..measure.spikes import SpikeCounter
from ..runs import Run
from .trainer import TrainConfig, Trainer, evaluate


class Loaders(NamedTuple):
    train: BatchLoader
    val: BatchLoader | None  # held out from the training images; None with a validation fraction of 0
    test: BatchLoader
    info: DatasetInfo


def make_loaders(dataset: str, data_dir: str | None, batch_size: int, device: torch.device, seed: int,
                 train_subset: int | None = None, test_subset: int | None = None, eval_batch_size: int = 256,
                 frames: int | None = None, split_by: str = "number", val_fraction: float = 0.0) -> Loaders:
    """Train (sharded under torchrun), validation and test loaders. The validation split is a seeded
    ``val_fraction`` of the ``train_subset`` images (see ``hold_out``); ``frames``/``split_by`` bin event datasets."""
    train, test, info = load_dataset(dataset, data_dir, frames, split_by)
    train, val = hold_out(train.subset(train_subset), val_fraction, seed)
    aug = Augment.for_dataset(info)
    return Loaders(BatchLoader(train, batch_size, aug, True, device, seed, shard=True),
                   None if val is None else BatchLoader(val, eval_batch_size, aug, False, device, seed),
                   BatchLoader(test.subset(test_subset), eval_batch_size, aug, False, device, seed), info)


def report(model: nn.Module, test: BatchLoader, run: Run, timesteps: int, title: str) -> dict:
    """Evaluate the test set, counting spikes/SOPs/energy in the same pass; write ``spikes.json`` and ``spikes.png``."""
    with SpikeCounter(model) as counter:
        loss, acc = evaluate(model, test)
    spikes = counter.report(len(test.data), timesteps)
    run.save_json("spikes.json", spikes)
    plot_spike_report(spikes, run.file("spikes.png"), title)
    run.log(f"test accuracy {100 * acc:.2f}% (loss {loss:.4f}); {spikes['spikes_per_image']:.4g} spikes/image, "
            f"firing rate {100 * spikes['mean_firing_rate']:.2f}%, {spikes['sops_per_image']:.4g} SOPs + "
            f"{spikes['macs_per_image']:.4g} MACs = {spikes['energy_uj_per_image']:.4g} µJ/image "
            f"(same net as ANN: {spikes['ann_equivalent_energy_uj_per_image']:.4g} µJ)")
    return {"test_acc": acc, "test_loss": loss, "spikes": {k: v for k, v in spikes.items() if k != "layers"}}


def train_and_report(model: nn.Module, loaders: Loaders, cfg: TrainConfig, run: Run, timesteps: int, title: str,
                     resume: bool = False, epoch_hooks=()) -> dict:
    """Train, then report the final model on the test set (spikes and energy included) beside the checkpoint
    the validation split chose (``best_*``)."""
    train, val, test = loaders.train, loaders.val, loaders.test
    n_params = sum(p.numel() for p in model.parameters())
    n_val = len(val.data) if val is not None else 0
    run.log(f"training {title}: {n_params:,} parameters, {len(train.data)} train / {n_val} validation / "
            f"{len(test.data)} test images, {cfg.epochs} epochs on {train.device}")
    summary = Trainer(model, train, test, cfg, run, epoch_hooks, val=val).fit(resume=resume)
    plot_training(summary["history"], run.file("training.png"), title)
    result = {"parameters": n_params, "train_images": len(train.data), "val_images": n_val,
              **{k: summary[k] for k in ("best_epoch", "best_val_acc", "best_test_acc")},
              **report(model, test, run, timesteps, title)}
    run.save_json("results.json", result)
    return result
