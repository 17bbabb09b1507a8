"""``spikesearch export RUN_OR_CHECKPOINT --format nir -o net.nir``: rebuild the network a run folder trained
(``train``, ``snasnet``, ``dhs train``) or converted (``convert``) from its ``config.json`` and checkpoint, and
write it as NIR."""
from __future__ import annotations

import argparse
import io
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..convert.rebuild import rebuild_converted
from ..core.errors import SpikeSearchError
from ..core.models import SpikingCNN
from ..core.registry import Registry
from ..data.datasets import DATASETS, DatasetInfo
from ..dhs.network import DHSNet
from ..export.to_nir import nir_module, to_nir
from ..runs import atomic_write_bytes, check_output, command_of, read_json_object
from ..snasnet.network import SNASNet
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


def _weights(model: torch.nn.Module, folder: Path, checkpoint: Path | None) -> torch.nn.Module:
    path = checkpoint or folder / "checkpoints" / "best.pt"
    load_model_weights(model, load_checkpoint(path), str(path))
    return model.eval()


@dataclass(frozen=True)
class RunKind:
    """How export gets a run's network back: ``build`` (the model family's own hook) makes it from config.json and
    the run's other files; a ``trained`` one then loads the checkpoint's weights (a convert run keeps none: it
    re-converts); ``reads`` names the config keys of the files outside the run folder that the build reads."""

    build: Callable[[Mapping[str, Any], Path, DatasetInfo], torch.nn.Module]
    trained: bool = True
    reads: tuple[str, ...] = ()


# by config.json's command (runs.command_of)
RUN_KINDS: Registry[RunKind] = Registry("exported run kind")
RUN_KINDS.add("train", RunKind(SpikingCNN.from_run))
RUN_KINDS.add("snasnet", RunKind(SNASNet.from_run))
RUN_KINDS.add("dhs train", RunKind(DHSNet.from_run))
RUN_KINDS.add("convert", RunKind(rebuild_converted, trained=False, reads=("model", "data")))


def _kind(folder: Path, cfg: dict) -> RunKind:
    name = command_of(cfg)
    if name not in RUN_KINDS:
        raise SpikeSearchError(f"{folder} is a {name or 'Python API'} run; exported are {', '.join(RUN_KINDS.names())} runs")
    return RUN_KINDS.get(name)


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
    kind = _kind(folder, cfg)
    info = DATASETS.get(cfg.get("dataset", "fmnist-small"))
    model = kind.build(cfg, folder, info)
    if kind.trained:
        model = _weights(model, folder, path if path.is_file() else None)
    return model.eval(), (info.channels, info.size, info.size)


def _inputs(source: Path) -> list:
    """What an export reads: the run folder or checkpoint, and the files its kind's build reads (a convert run's
    ANN file and data)."""
    folder = run_folder(source)
    cfg = read_json_object(folder / "config.json")
    return [source, *(cfg[k] for k in _kind(folder, cfg).reads if isinstance(cfg.get(k), str))]


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
    p.add_argument("source", help=f"a run folder of {', '.join(RUN_KINDS.names())} (or one of its checkpoints)")
    p.add_argument("--format", default="nir", choices=FORMATS)
    p.add_argument("-o", "--output", required=True, help="the file to write, e.g. net.nir")
    p.add_argument("--overwrite", action="store_true", help="replace the output file if it exists")
    p.set_defaults(func=cmd_export)
