"""A conversion's networks rebuilt from files: the ANN from its model file, and the SNN of a ``convert`` run from
its folder (for export). ``spikesearch convert`` reads its ANN and its conversion settings through the same
functions, so a rebuilt SNN is the one the run converted."""
from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

from ..core.errors import SpikeSearchError
from ..data.datasets import DatasetInfo
from ..data.loader import BatchLoader
from ..runs import read_json_object
from ..train.checkpoint import load_checkpoint, load_model_weights
from ..train.pipeline import make_loaders
from .converter import ConvertConfig, SpikingNet, convert
from .finetune import FinetuneConfig, Unrolled
from .methods import resolve
from .vgg import VGG, VGGConfig


def load_vgg(path: str, flags: Mapping[str, Any], info: DatasetInfo) -> VGG:
    """Rebuild the ANN from the model file's metadata, or from the flags for a bare state dict."""
    ck = load_checkpoint(path)
    meta = ck.get("meta")
    if meta is None:
        meta = dict(arch=flags["arch"], num_classes=info.num_classes, in_channels=info.channels, image_size=info.size,
                    width=flags["width"], batchnorm=flags["batchnorm"], binary=flags["binary"],
                    activation=flags["activation"], levels=flags["levels"])
    cfg = VGGConfig.from_meta(meta, path)
    if cfg.arch != flags["arch"]:
        raise SpikeSearchError(f"{path} holds a {cfg.arch} model, but --arch is {flags['arch']}")
    if (cfg.in_channels, cfg.image_size, cfg.num_classes) != (info.channels, info.size, info.num_classes):
        raise SpikeSearchError(f"{path} is a model for {cfg.in_channels}x{cfg.image_size}x{cfg.image_size} images and "
                               f"{cfg.num_classes} classes; {flags['dataset']} has {info.channels}x{info.size}x{info.size} "
                               f"and {info.num_classes}")
    cfg.check_memory()
    model = VGG(cfg)
    state = ck.get("model", ck)
    if not isinstance(state, dict):
        raise SpikeSearchError(f"{path}: 'model' is a {type(state).__name__}, not a state dict")
    # checkpoints saved from DataParallel (as the official ones) carry 'module.' in their names
    state = {k.replace("module.", ""): v for k, v in state.items()}
    load_model_weights(model, state, path)
    return model


def file_sha256(path: str | Path) -> str:
    """The ANN file's digest, recorded at conversion: export re-converts from that file and must find it unchanged."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def convert_config(flags: Mapping[str, Any]) -> ConvertConfig:
    """The conversion a ``convert`` command line (or its recorded config.json) asks for."""
    return ConvertConfig(flags["percentile"], flags["channel_wise"], flags["v_init"], flags["method"], flags["presim"],
                         flags["calib_timesteps"], flags["calib_images"])


def finetune_config(flags: Mapping[str, Any]) -> FinetuneConfig:
    """The fine-tuning a ``convert`` command line (or config.json) asks for (``--finetune_<field>``; the timesteps
    default to ``--time``); none in a run from before it existed."""
    given = {f.name: flags[f"finetune_{f.name}"] for f in fields(FinetuneConfig)
             if flags.get(f"finetune_{f.name}") is not None}
    return FinetuneConfig(**{"timesteps": flags["time"], **given})


def held_out(flags: Mapping[str, Any]) -> float:
    """The validation fraction a conversion holds out of its training images: only a fine-tuning has one (it
    chooses the epoch), so the normalisation images of a plain conversion are the official ones."""
    return flags.get("val_fraction", 0.0) if flags.get("finetune_epochs") else 0.0


def rebuild_converted(cfg: Mapping[str, Any], folder: Path, info: DatasetInfo, finetuned: bool = True) -> SpikingNet:
    """The SNN a convert run made (for export). The conversion is deterministic, so it is done again from the ANN
    file and the normalisation images the run used, once the ANN file is found to be the one converted (its
    SHA-256, recorded in results.json) and the method exportable; a fine-tuned run then takes its trained weights
    from ``checkpoints/best.pt`` (the epoch validation chose; its SHA-256 recorded too), unless ``finetuned`` is
    False (the SNN it started from)."""
    results = folder / "results.json"
    if not results.is_file():
        raise SpikeSearchError(f"{folder}: the conversion has not finished (no results.json)")
    recorded = read_json_object(results).get("ann_sha256")
    if not recorded:
        raise SpikeSearchError(f"{folder}: results.json records no ANN checksum (a run from before checksums): "
                               "convert again to export")
    model = cfg["model"]
    if not Path(model).is_file():
        raise SpikeSearchError(f"{folder}: the ANN file it converted, {model}, no longer exists")
    if file_sha256(model) != recorded:
        raise SpikeSearchError(f"{folder}: the ANN file {model} has changed since it was converted (SHA-256 differs); "
                               "convert it again to export")
    tune = finetune_config(cfg)
    weights = folder / "checkpoints" / "best.pt"
    if tune.epochs and not weights.is_file():
        raise SpikeSearchError(f"{folder}: a fine-tuned conversion without its weights ({weights} is missing)")
    if tune.epochs and file_sha256(weights) != (read_json_object(results).get("finetuned") or {}).get("weights_sha256"):
        # e.g. a resumed fine-tuning stopped before its results: these are not the weights results.json measured
        raise SpikeSearchError(f"{folder}: {weights} is not the checkpoint results.json measured (SHA-256 differs); "
                               "rerun the conversion (--resume) to finish it")
    train = make_loaders(cfg["dataset"], cfg["data"], cfg["batch_size"], torch.device("cpu"), cfg["seed"], None,
                         cfg["eval_size"], eval_batch_size=cfg["batch_size"], frames=cfg["frames"],
                         split_by=cfg["event_split"], val_fraction=held_out(cfg)).train
    ann = load_vgg(model, cfg, info).eval()
    resolve(cfg["method"], ann.cfg.activation == "qcfs").check_exportable()  # before the conversion's minutes
    batches = [x for x, _ in BatchLoader(train.data.subset(cfg["norm"]), cfg["batch_size"], train.augment, False)]
    snn, _ = convert(ann, batches, convert_config(cfg))
    if not (tune.epochs and finetuned):
        return snn
    net = Unrolled(snn, tune.timesteps, ann.cfg.binary)  # the trained parameters' names, then plain weights
    load_model_weights(net, load_checkpoint(weights), str(weights))
    return net.baked()
