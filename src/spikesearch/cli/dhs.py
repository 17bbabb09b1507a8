"""``spikesearch dhs search|derive|train``: differentiable search, discretisation to an editable
genotype JSON, and retraining of a genotype through the shared trainer."""
from __future__ import annotations

import argparse
import io
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np
import torch

from ..core.errors import SpikeSearchError
from ..data.datasets import load_dataset
from ..data.loader import Augment
from ..dhs.genotype import Genotype, genotype_summary, random_genotype
from ..dhs.network import DHSConfig, DHSNet
from ..dhs.plots import plot_evolution, plot_genotype
from ..dhs.search import SearchConfig, derive, dgs_during_training, run_search
from ..runs import Run, RunRequest, atomic_write_bytes
from ..train.checkpoint import load_checkpoint, load_model_weights
from ..train.pipeline import make_loaders, train_and_report
from ..train.setup import pick_device, seed_everything
from ..train.trainer import TrainConfig, overridable
from . import args as arg

# Search and retrain settings. "paper" is SpikeDHS's CIFAR recipe (8 layers x 4 levels, T=6, 50 search
# epochs at lr 0.4 / batch 100; retrain C=48, SGD 0.025, batch 50, 100 epochs). "small" fits the bundled
# set on two CPU cores: a stride-2 stem, 4 layers x 3 levels, T=4, 3 search epochs, a short Adam retrain
# like SNASNet's demo recipe so the two pillars compare on equal training.
PRESETS = {
    "paper": {"layers": 8, "levels": 4, "channels": 8, "timestep": 6, "stem_stride": 1, "epochs": 50, "batch_size": 100,
              "lr": 0.4, "arch_lr": 1e-3, "train_channels": 48, "train_epochs": 100, "train_batch_size": 50,
              "optimizer": "sgd", "train_lr": 0.025, "weight_decay": 3e-4},
    "small": {"layers": 4, "levels": 3, "channels": 8, "timestep": 4, "stem_stride": 2, "epochs": 3, "batch_size": 64,
              "lr": 0.1, "arch_lr": 6e-3, "train_channels": 16, "train_epochs": 4, "train_batch_size": 64,
              "optimizer": "adam", "train_lr": 3e-3, "weight_decay": 0.0},
}
SMALL_DATASETS = ("fmnist-small",)
# dhs train's flags a resume re-plans (flag -> TrainConfig field); dhs search re-plans none
TRAIN_OVERRIDES = overridable({"train_epochs": "epochs", "train_lr": "lr", "optimizer": "optimizer",
                               "weight_decay": "weight_decay", "train_batch_size": "batch_size"})


def fill_preset(a: argparse.Namespace) -> None:
    preset = PRESETS[a.preset if a.preset != "auto" else ("small" if a.dataset in SMALL_DATASETS else "paper")]
    for k, v in preset.items():
        if getattr(a, k, "absent") is None:
            setattr(a, k, v)


def _model_config(a: argparse.Namespace) -> DHSConfig:
    return DHSConfig(layers=a.layers, levels=a.levels, channels=a.channels, timesteps=a.timestep, stem_stride=a.stem_stride,
                     ops=tuple(a.ops.split(",")), mix=a.mix, search_cell=not a.no_cell_search,
                     search_layer=not a.no_layer_search, dgs=a.dgs, tps=a.tps, hns=a.hns,
                     taus=tuple(a.taus), b_init=a.b_init, top_k=a.top_k)


def _save_genotype(g: Genotype, cfg: DHSConfig, run: Run, title: str) -> Path:
    g.info.setdefault("config", {k: v for k, v in asdict(cfg).items() if k in ("levels", "mix", "stem_stride", "timesteps", "channels")})
    path = g.save(run.file("genotype.json"))
    plot_genotype(g, cfg.levels, run.file("genotype.png"), title)
    run.log(f"genotype {genotype_summary(g)} -> {path}")
    return path


def cmd_search(a: argparse.Namespace) -> dict:
    fill_preset(a)
    device = pick_device(a.device)
    request = RunRequest.from_args(a, a.name, a.runs_dir)
    request.check()
    seed_everything(a.seed)
    cfg = _model_config(a)
    train, _, info = load_dataset(a.dataset, a.data_dir, cfg.timesteps, a.event_split)
    if not (cfg.search_cell or cfg.search_layer or cfg.dgs or cfg.tps or cfg.hns):
        raise SpikeSearchError("nothing to search: every one of cell, layer, DGS, TPS and HNS search is off")
    model = DHSNet(cfg, info.channels, info.num_classes, info.size).to(device)
    run = request.open()  # only after the inputs checked out: a failed command writes nothing
    scfg = SearchConfig(epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, arch_lr=a.arch_lr, energy_weight=a.energy_weight,
                        arch_start_epoch=a.arch_start_epoch, dgs_steps=a.dgs_steps, dgs_every=a.dgs_every, seed=a.seed)
    searched = [n for n, on in (("cell", cfg.search_cell), ("layer", cfg.search_layer), ("DGS", cfg.dgs),
                                ("TPS", cfg.tps), ("HNS", cfg.hns)) if on]
    run.log(f"SpikeDHS search ({', '.join(searched)}) on {a.dataset}: {len(model.cells)} cells in the trellis, "
            f"{sum(p.numel() for p in model.weight_parameters()):,} weights, "
            f"{sum(p.numel() for p in model.arch_parameters()):,} architecture parameters, {scfg.epochs} epochs on {device}")
    history = run_search(model, train.subset(a.train_subset), Augment.for_dataset(info), scfg, run, device, not a.quiet,
                         resume=run.resumed)
    buf = io.BytesIO()
    torch.save({"config": asdict(cfg), "model": model.state_dict(), "shape": [info.channels, info.num_classes, info.size]},
               buf)  # each DGS b rides in the state dict (DGSSurrogate's extra state)
    atomic_write_bytes(run.file("search.pt"), buf.getvalue())
    g = derive(model, {"source": f"dhs search on {a.dataset}", "searched": searched})
    labels = [c.label() for c in cfg.neuron_choices()]
    plot_evolution(history, cfg.ops, run.file("evolution.png"), labels)
    path = _save_genotype(g, cfg, run, f"derived by SpikeDHS search on {a.dataset}")
    result = {"genotype": str(path), "search_seconds": sum(h.get("seconds", 0) for h in history),
              "final": {k: history[-1][k] for k in ("train_acc", "val_acc", "energy_ratio")}, **genotype_summary(g)}
    run.save_json("results.json", result)
    run.log(f"search took {result['search_seconds']:.0f}s; retrain with: spikesearch dhs train --genotype {path}")
    return result


def load_search(path: str | Path, device: torch.device) -> DHSNet:
    ckpt = load_checkpoint(Path(path) / "search.pt" if Path(path).is_dir() else path, device)
    cfg_d, shape = ckpt.get("config"), ckpt.get("shape")
    if not isinstance(cfg_d, dict) or "ops" not in cfg_d or not isinstance(shape, list) or len(shape) != 3:
        raise SpikeSearchError(f"{path} is not a dhs search result (search.pt with the search space and input shape): "
                               "give a 'dhs search' run folder")
    cfg = DHSConfig(**{f.name: cfg_d[f.name] for f in fields(DHSConfig) if f.name in cfg_d})
    cfg.ops, cfg.taus = tuple(cfg.ops), tuple(cfg.taus)
    model = DHSNet(cfg, *shape).to(device)
    load_model_weights(model, ckpt, str(path))
    return model


def cmd_derive(a: argparse.Namespace) -> dict:
    request = RunRequest.from_args(a, a.name, a.runs_dir, inputs=[a.search])
    request.check()
    if a.random:
        rng = np.random.default_rng(a.seed)
        small = PRESETS["small"]
        cfg = DHSConfig(layers=a.layers or small["layers"], levels=a.levels or small["levels"], ops=tuple(a.ops.split(",")),
                        top_k=a.top_k, stem_stride=a.stem_stride or small["stem_stride"])
        cfg.validate()
        g = random_genotype(cfg.ops, cfg.steps, cfg.layers, cfg.levels, rng, cfg.top_k)
        g.info["seed"] = a.seed
        title = f"random genotype (seed {a.seed})"
    else:
        if not a.search:
            raise SpikeSearchError("give --search RUN_DIR (a dhs search run folder) or --random")
        model = load_search(a.search, torch.device("cpu"))
        model.cfg.top_k = a.top_k
        cfg = model.cfg
        g = derive(model, {"source": f"derived from {a.search}", "top_k": a.top_k})
        title = f"derived from {a.search} (top {a.top_k} edges per node)"
    run = request.open(quiet=a.quiet)
    path = _save_genotype(g, cfg, run, title)
    return {"genotype": str(path), **genotype_summary(g)}


def _saved_config(g: Genotype, source: str) -> dict:
    """The search settings a genotype records (``info.config``), type-checked: the file is hand-editable."""
    saved = g.info.get("config", {})
    kinds = {"levels": int, "stem_stride": int, "timesteps": int, "channels": int, "mix": str}
    if not isinstance(saved, dict) or any(k in saved and (type(saved[k]) is not t) for k, t in kinds.items()):
        raise SpikeSearchError(f"genotype file {source}: info.config must map "
                               + ", ".join(f"{k} to {t.__name__}" for k, t in kinds.items()) + f"; got {saved!r}"[:300])
    return saved


def cmd_train(a: argparse.Namespace) -> dict:
    g = Genotype.load(a.genotype)
    saved = _saved_config(g, a.genotype)
    if a.stem_stride is None and "stem_stride" in saved:  # the genotype's own stem beats the preset's
        a.stem_stride = saved["stem_stride"]
    fill_preset(a)
    device = pick_device(a.device)
    request = RunRequest.from_args(a, a.name, a.runs_dir, inputs=[a.genotype], overridable=TRAIN_OVERRIDES)
    request.check()
    seed_everything(a.seed)
    cfg = DHSConfig.for_genotype(g, request.config)
    loaders = make_loaders(a.dataset, a.data_dir, a.train_batch_size, device, a.seed, a.train_subset, a.test_subset,
                           frames=cfg.timesteps, split_by=a.event_split, val_fraction=a.val_fraction)
    info = loaders.info
    model = DHSNet(cfg, info.channels, info.num_classes, info.size, genotype=g).to(device)
    run = request.open()  # only after the inputs checked out: a failed command writes nothing
    kept = run.file("genotype.json")
    if run.resumed and kept.is_file():  # the run's copy is what it trained; a resume writes nothing before its state
        if Genotype.load(kept).to_json() != g.to_json():
            raise SpikeSearchError(f"--genotype {a.genotype} is no longer the genotype {run.path} trains ({kept}): "
                                   "a resume continues the same network; start a new run")
    else:
        g.save(kept)
        plot_genotype(g, cfg.levels, run.file("genotype.png"), f"genotype {a.genotype}")
    tcfg = TrainConfig(epochs=a.train_epochs, batch_size=a.train_batch_size, optimizer=a.optimizer, lr=a.train_lr,
                       weight_decay=a.weight_decay, seed=a.seed, progress=not a.quiet)
    result = {"genotype": genotype_summary(g), "channels": cfg.channels, "timesteps": cfg.timesteps}
    hooks = [dgs_during_training(model, a.dgs_every, a.dgs_steps)] if a.dgs else []
    result.update(train_and_report(model, loaders, tcfg, run, cfg.timesteps,
                                   f"SpikeDHS genotype on {a.dataset} (C={cfg.channels}, T={cfg.timesteps})",
                                   resume=run.resumed, epoch_hooks=hooks))
    run.save_json("results.json", result)
    return result


def add_arguments(p: argparse.ArgumentParser, add_common) -> None:
    sub = p.add_subparsers(dest="dhs_command", required=True)
    fmt = argparse.ArgumentDefaultsHelpFormatter

    def data(q: argparse.ArgumentParser) -> None:
        q.add_argument("--dataset", default="fmnist-small")
        q.add_argument("--data_dir", default=None)
        q.add_argument("--seed", type=arg.seed, default=0)
        q.add_argument("--train_subset", type=arg.positive_int, default=None)
        q.add_argument("--preset", default="auto", choices=["auto", *PRESETS], help="auto: small on fmnist-small, else paper")
        q.add_argument("--timestep", type=arg.positive_int, default=None)
        q.add_argument("--stem_stride", type=arg.positive_int, default=None)

    s = sub.add_parser("search", help="differentiable cell/layer/DGS/TPS/HNS search", formatter_class=fmt)
    s.add_argument("--name", default="dhs-search")
    data(s)
    g = s.add_argument_group("search space (None = preset)")
    g.add_argument("--layers", type=arg.positive_int, default=None)
    g.add_argument("--levels", type=arg.positive_int, default=None)
    g.add_argument("--channels", type=arg.positive_int, default=None)
    g.add_argument("--ops", default="skip,conv3x3,conv1x1,avgpool", help="comma list; paper: skip,conv3x3_b3,conv3x3_b5")
    g.add_argument("--mix", default="membrane", choices=["membrane", "spikes"])
    g.add_argument("--top_k", type=arg.positive_int, default=2, help="edges kept per node")
    g.add_argument("--no_cell_search", action="store_true", help="fix the cell to SpikeDHS's published CIFAR cell")
    g.add_argument("--no_layer_search", action="store_true", help="fix the path (evenly spread levels)")
    g.add_argument("--dgs", action="store_true", help="search each node's Dspike temperature b")
    g.add_argument("--tps", action="store_true", help="search each node's time constant among --taus")
    g.add_argument("--hns", action="store_true", help="let each node choose a ReLU (ANN) neuron instead")
    g.add_argument("--taus", type=arg.tau, nargs="+", default=[1.25, 2.0, 5.0])
    g.add_argument("--b_init", type=arg.positive_float, default=3.0)
    o = s.add_argument_group("optimisation (None = preset)")
    o.add_argument("--epochs", type=arg.positive_int, default=None)
    o.add_argument("--batch_size", type=arg.positive_int, default=None)
    o.add_argument("--lr", type=arg.positive_float, default=None)
    o.add_argument("--arch_lr", type=arg.positive_float, default=None)
    o.add_argument("--arch_start_epoch", type=arg.nonneg_int, default=0, help="weights-only epochs first (official: 0)")
    o.add_argument("--energy_weight", type=arg.nonneg_float, default=0.0, help="lambda of the expected-energy penalty")
    o.add_argument("--dgs_every", type=arg.positive_int, default=1)
    o.add_argument("--dgs_steps", type=arg.positive_int, default=4)
    add_common(s)
    s.set_defaults(func=cmd_search)

    d = sub.add_parser("derive", help="re-derive a genotype from a search run, or draw a random one", formatter_class=fmt)
    d.add_argument("--name", default="dhs-derive")
    d.add_argument("--search", default=None, help="a dhs search run folder (holds search.pt)")
    d.add_argument("--top_k", type=arg.positive_int, default=2)
    d.add_argument("--random", action="store_true", help="a uniform random genotype from the same space")
    d.add_argument("--seed", type=arg.seed, default=0)
    d.add_argument("--layers", type=arg.positive_int, default=None)
    d.add_argument("--levels", type=arg.positive_int, default=None)
    d.add_argument("--stem_stride", type=arg.positive_int, default=None)
    d.add_argument("--ops", default="skip,conv3x3,conv1x1,avgpool")
    d.add_argument("--runs_dir", default="runs")
    d.add_argument("--quiet", action="store_true")
    arg.add_run_flags(d, resume=False)
    d.set_defaults(func=cmd_derive)

    t = sub.add_parser("train", help="train a genotype from scratch and report accuracy, spikes, energy", formatter_class=fmt)
    t.add_argument("--genotype", required=True, help="genotype.json from dhs search or derive (editable)")
    t.add_argument("--name", default="dhs-train")
    data(t)
    t.add_argument("--train_channels", "--channels", dest="train_channels", type=arg.positive_int, default=None)
    t.add_argument("--train_epochs", "--epochs", dest="train_epochs", type=arg.positive_int, default=None)
    t.add_argument("--train_batch_size", "--batch_size", dest="train_batch_size", type=arg.positive_int, default=None)
    t.add_argument("--optimizer", default=None, choices=["sgd", "adam"])
    t.add_argument("--train_lr", "--lr", dest="train_lr", type=arg.positive_float, default=None)
    t.add_argument("--weight_decay", type=arg.nonneg_float, default=None)
    t.add_argument("--test_subset", type=arg.positive_int, default=None)
    t.add_argument("--dgs", action="store_true",
                   help="keep searching each node's surrogate temperature b while training (official train.py --use_DGS)")
    t.add_argument("--dgs_every", type=arg.positive_int, default=5, help="epochs between DGS phases (official: 5)")
    t.add_argument("--dgs_steps", type=arg.positive_int, default=20, help="hypergradient steps per DGS phase")
    arg.add_validation(t)
    add_common(t)
    t.set_defaults(func=cmd_train)
