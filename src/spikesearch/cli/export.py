"""``spikesearch export RUN_OR_CHECKPOINT --format nir -o net.nir``: rebuild the network a run folder trained
(``train``, ``snasnet``, ``dhs train``) or converted (``convert``) from its ``config.json`` and checkpoint, and
write it as NIR."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ..core.errors import SpikeSearchError
from ..data.datasets import DATASETS
from ..export.to_nir import write_nir
from ..train.checkpoint import load_checkpoint, load_model_weights

FORMATS = ("nir",)


def run_folder(path: Path) -> Path:
    """The run folder of ``path``: itself, or the folder a checkpoint ``RUN/checkpoints/X.pt`` lies in."""
    if path.is_dir():
        folder = path
    elif path.is_file() and path.parent.name == "checkpoints":
        folder = path.parent.parent
    else:
        raise SpikeSearchError(f"{path} is neither a run folder nor a run's checkpoints/*.pt")
    if not (folder / "config.json").is_file():
        raise SpikeSearchError(f"{folder} holds no config.json: not a spikesearch run folder")
    return folder


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SpikeSearchError(f"cannot read {path}: {e}") from None


def _weights(model: torch.nn.Module, folder: Path, checkpoint: Path | None) -> torch.nn.Module:
    path = checkpoint or folder / "checkpoints" / "best.pt"
    load_model_weights(model, load_checkpoint(path), str(path))
    return model.eval()


def rebuild(path: str | Path) -> tuple[torch.nn.Module, tuple[int, int, int]]:
    """The trained or converted network behind a run folder (or one of its checkpoints), and its input shape."""
    path = Path(path)
    folder = run_folder(path)
    checkpoint = path if path.is_file() else None
    cfg = _read_json(folder / "config.json")
    info = DATASETS.get(cfg.get("dataset", "fmnist-small"))
    shape = (info.channels, info.size, info.size)
    command = cfg.get("command")
    if command == "train":
        from ..core.models import SpikingCNN
        from .args import TAU_ARGUMENT

        tau = {TAU_ARGUMENT[cfg["neuron"]]: cfg["tau"]} if cfg["neuron"] in TAU_ARGUMENT else {}
        model = SpikingCNN(info.channels, info.num_classes, info.size, cfg["widths"], cfg["timestep"], cfg["neuron"],
                           surrogate=cfg["surrogate"], **tau)
        return _weights(model, folder, checkpoint), shape
    if command == "snasnet":
        from ..snasnet.network import SNASNet, macro_config
        from ..snasnet.space import parse_cnt_mat

        results = folder / "results.json"
        cnt_mat = _read_json(results)["cnt_mat"] if results.is_file() else cfg.get("cnt_mat")
        if not cnt_mat:
            raise SpikeSearchError(f"{folder}: the search has not picked a cell yet (no results.json)")
        model = SNASNet(parse_cnt_mat(cnt_mat), cfg["celltype"], macro_config(cfg["dataset"], second_avgpooling=cfg["second_avgpooling"]),
                        cfg["timestep"], cfg["tau"], cfg["threshold"], cfg["surrogate"])
        return _weights(model, folder, checkpoint), shape
    if command == "dhs" and cfg.get("dhs_command") == "train":
        from ..dhs.genotype import Genotype
        from ..dhs.network import DHSConfig, DHSNet

        g = Genotype.load(folder / "genotype.json")
        saved = g.info.get("config", {})
        dcfg = DHSConfig(levels=saved.get("levels", max(g.path) + 1), mix=saved.get("mix", "membrane"),
                         stem_stride=cfg["stem_stride"], channels=cfg["train_channels"], timesteps=cfg["timestep"],
                         dgs=cfg.get("dgs", False))
        return _weights(DHSNet(dcfg, info.channels, info.num_classes, info.size, genotype=g), folder, checkpoint), shape
    if command == "convert":
        return _reconvert(cfg, folder), shape
    raise SpikeSearchError(f"{folder} is a {command} {cfg.get('dhs_command') or ''} run; exported are train, snasnet, "
                           "dhs train and convert runs")


def _reconvert(cfg: dict, folder: Path) -> torch.nn.Module:
    """A convert run keeps no SNN weights: the conversion is deterministic, so it is done again from the ANN
    file and the normalisation images the run used, once the ANN file is found to be the one converted (its
    SHA-256, recorded in results.json)."""
    from argparse import Namespace

    from ..convert.converter import ConvertConfig, convert
    from ..convert.methods import resolve
    from ..data.loader import BatchLoader
    from ..train.pipeline import make_loaders
    from .convert import file_sha256, load_vgg

    results = folder / "results.json"
    if not results.is_file():
        raise SpikeSearchError(f"{folder}: the conversion has not finished (no results.json)")
    recorded = _read_json(results).get("ann_sha256")
    if not recorded:
        raise SpikeSearchError(f"{folder}: results.json records no ANN checksum (a run from before checksums): "
                               "convert again to export")
    a = Namespace(**cfg)
    if not Path(a.model).is_file():
        raise SpikeSearchError(f"{folder}: the ANN file it converted, {a.model}, no longer exists")
    if file_sha256(a.model) != recorded:
        raise SpikeSearchError(f"{folder}: the ANN file {a.model} has changed since it was converted (SHA-256 differs); "
                               "convert it again to export")
    train, _, info = make_loaders(a.dataset, a.data, a.batch_size, torch.device("cpu"), a.seed, None, a.eval_size,
                                  eval_batch_size=a.batch_size, frames=a.frames, split_by=a.event_split)
    ann = load_vgg(a.model, a, info).eval()
    resolve(a.method, ann.cfg.activation == "qcfs").check_exportable()  # before the conversion's minutes
    batches = [x for x, _ in BatchLoader(train.data.subset(a.norm), a.batch_size, train.augment, False)]
    snn, _ = convert(ann, batches, ConvertConfig(a.percentile, a.channel_wise, a.v_init, a.method, a.presim,
                                                 a.calib_timesteps, a.calib_images))
    return snn.eval()


def cmd_export(a: argparse.Namespace) -> dict:
    model, shape = rebuild(a.source)
    out = Path(a.output)
    if out.exists() and not a.overwrite:
        raise SpikeSearchError(f"{out} exists: --overwrite replaces it")
    if not out.parent.is_dir():
        raise SpikeSearchError(f"-o {out}: folder {out.parent} does not exist")
    path = write_nir(model, out, shape)
    print(f"wrote {path} ({type(model).__name__}, input {shape[0]}x{shape[1]}x{shape[2]})")
    return {"nir": str(path)}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", help="a run folder of train, snasnet, dhs train or convert (or one of its checkpoints)")
    p.add_argument("--format", default="nir", choices=FORMATS)
    p.add_argument("-o", "--output", required=True, help="the file to write, e.g. net.nir")
    p.add_argument("--overwrite", action="store_true", help="replace the output file if it exists")
    p.set_defaults(func=cmd_export)
