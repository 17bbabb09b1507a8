"""``spikesearch export RUN_OR_CHECKPOINT --format nir -o net.nir``: rebuild the network a run folder trained
(``train``, ``snasnet``, ``dhs train``) or converted (``convert``) from its ``config.json`` and checkpoint, and
write it as NIR."""
from __future__ import annotations

import argparse
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..core.errors import SpikeSearchError
from ..core.registry import Registry
from ..data.datasets import DATASETS
from ..export.to_nir import nir_module, to_nir
from ..runs import atomic_write_bytes, check_output, read_json_object
from ..train.checkpoint import load_checkpoint, load_model_weights
from .convert import rebuild_converted

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


def _weights(model: torch.nn.Module, folder: Path, checkpoint: Path | None) -> torch.nn.Module:
    path = checkpoint or folder / "checkpoints" / "best.pt"
    load_model_weights(model, load_checkpoint(path), str(path))
    return model.eval()


def _train_run(cfg: dict, folder: Path, info) -> torch.nn.Module:
    from ..core.models import SpikingCNN
    from .args import TAU_ARGUMENT

    tau = {TAU_ARGUMENT[cfg["neuron"]]: cfg["tau"]} if cfg["neuron"] in TAU_ARGUMENT else {}
    return SpikingCNN(info.channels, info.num_classes, info.size, cfg["widths"], cfg["timestep"], cfg["neuron"],
                      surrogate=cfg["surrogate"], **tau)


def _snasnet_run(cfg: dict, folder: Path, info) -> torch.nn.Module:
    from ..snasnet.network import SNASNet, macro_config
    from ..snasnet.space import parse_cnt_mat

    results = folder / "results.json"
    cnt_mat = read_json_object(results)["cnt_mat"] if results.is_file() else cfg.get("cnt_mat")
    if not cnt_mat:
        raise SpikeSearchError(f"{folder}: the search has not picked a cell yet (no results.json)")
    return SNASNet(parse_cnt_mat(cnt_mat), cfg["celltype"], macro_config(cfg["dataset"], second_avgpooling=cfg["second_avgpooling"]),
                   cfg["timestep"], cfg["tau"], cfg["threshold"], cfg["surrogate"])


def _dhs_train_run(cfg: dict, folder: Path, info) -> torch.nn.Module:
    from ..dhs.genotype import Genotype
    from ..dhs.network import DHSConfig, DHSNet

    g = Genotype.load(folder / "genotype.json")
    saved = g.info.get("config", {})
    dcfg = DHSConfig(levels=saved.get("levels", max(g.path) + 1), mix=saved.get("mix", "membrane"),
                     stem_stride=cfg["stem_stride"], channels=cfg["train_channels"], timesteps=cfg["timestep"],
                     dgs=cfg.get("dgs", False))
    return DHSNet(dcfg, info.channels, info.num_classes, info.size, genotype=g)


@dataclass(frozen=True)
class RunKind:
    """How export gets a run's network back: ``build`` makes it from config.json (and the run's other files);
    a ``trained`` one then loads the checkpoint's weights (a convert run keeps none: it re-converts)."""

    build: Callable[[dict, Path, object], torch.nn.Module]
    trained: bool = True


# by config.json's command (and sub-command)
RUN_KINDS: Registry[RunKind] = Registry("exported run kind")
RUN_KINDS.add("train", RunKind(_train_run))
RUN_KINDS.add("snasnet", RunKind(_snasnet_run))
RUN_KINDS.add("dhs train", RunKind(_dhs_train_run))
RUN_KINDS.add("convert", RunKind(rebuild_converted, trained=False))


def rebuild(path: str | Path) -> tuple[torch.nn.Module, tuple[int, int, int]]:
    """The trained or converted network behind a run folder (or one of its checkpoints), and its input shape."""
    try:
        return _rebuild(Path(path))
    except (KeyError, TypeError, ValueError, AttributeError) as e:  # a config.json edited by hand
        raise SpikeSearchError(f"{path}: config.json does not describe a run this version wrote "
                               f"({type(e).__name__}: {e})"[:300]) from None


def _rebuild(path: Path) -> tuple[torch.nn.Module, tuple[int, int, int]]:
    folder = run_folder(path)
    cfg = read_json_object(folder / "config.json")
    info = DATASETS.get(cfg.get("dataset", "fmnist-small"))
    name = " ".join(str(k) for k in (cfg.get("command"), cfg.get("dhs_command")) if k)
    if name not in RUN_KINDS:
        raise SpikeSearchError(f"{folder} is a {name} run; exported are {', '.join(RUN_KINDS.names())} runs")
    kind = RUN_KINDS.get(name)
    model = kind.build(cfg, folder, info)
    if kind.trained:
        model = _weights(model, folder, path if path.is_file() else None)
    return model.eval(), (info.channels, info.size, info.size)


def _inputs(source: Path) -> list:
    """What an export reads: the run folder or checkpoint, and for a convert run its ANN file and data."""
    cfg = read_json_object(run_folder(source) / "config.json")
    read = ("model", "data") if cfg.get("command") == "convert" else ()
    return [source, *(cfg[k] for k in read if isinstance(cfg.get(k), str))]


def cmd_export(a: argparse.Namespace) -> dict:
    source = Path(a.source)
    out = check_output(a.output, "-o", a.overwrite, _inputs(source))  # before the (re)build: a refusal costs nothing
    model, shape = rebuild(source)
    buf = io.BytesIO()  # the whole file in memory first: a full disk then fails our write, not h5py's
    nir_module().write(buf, to_nir(model, shape))
    atomic_write_bytes(out, buf.getvalue())
    print(f"wrote {out} ({type(model).__name__}, input {shape[0]}x{shape[1]}x{shape[2]})")
    return {"nir": str(out)}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", help="a run folder of train, snasnet, dhs train or convert (or one of its checkpoints)")
    p.add_argument("--format", default="nir", choices=FORMATS)
    p.add_argument("-o", "--output", required=True, help="the file to write, e.g. net.nir")
    p.add_argument("--overwrite", action="store_true", help="replace the output file if it exists")
    p.set_defaults(func=cmd_export)
