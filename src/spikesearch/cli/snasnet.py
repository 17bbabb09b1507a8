"""``spikesearch snasnet``: search -> train -> evaluate, or evaluate a saved model (official flags)."""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from ..core.errors import SpikeSearchError
from ..core.surrogate import make_surrogate
from ..runs import Run, RunRequest
from ..snasnet.checkpoint import state_of
from ..snasnet.network import macro_config
from ..snasnet.parallel import BACKENDS, SNASNetBuilder, WorkerPool
from ..snasnet.plots import plot_cell, plot_scores
from ..proxies import ScoreConfig, per_model_scores
from ..proxies.spikes import AGGREGATES, NORMALISATIONS
from ..snasnet.search import SearchConfig, ranking, run_search
from ..snasnet.space import PUBLISHED, check_matrix, describe, format_cnt_mat, parse_cnt_mat
from ..train.checkpoint import load_checkpoint, load_model_weights
from ..train.pipeline import make_loaders, report, train_and_report
from ..train.setup import pick_device, seed_everything
from ..train.trainer import SCHEDULERS, TrainConfig, overridable
from . import args as arg

# The paper's recipe (SGD 0.1, momentum 0.9, weight decay 5e-4, cosine to 0.001, 300 epochs) is the
# default for real benchmarks. The bundled set gets a short recipe: with the paper's N(0, 0.01)
# classifier init the hidden LIF layer is silent at first, and SGD needs tens of epochs to wake it,
# while Adam does so in one. Any flag given on the command line overrides the recipe.
PAPER_RECIPE = {"optimizer": "sgd", "learning_rate": 0.1, "weight_decay": 5e-4, "epochs": 300}
SHORT_RECIPES = {
    "fmnist-small": {"optimizer": "adam", "learning_rate": 3e-3, "weight_decay": 0.0, "epochs": 4},
    "fashion-mnist": {"optimizer": "adam", "learning_rate": 2e-3, "weight_decay": 0.0, "epochs": 20},
}

# the official flags' defaults for the network and its batches (``search --space snasnet`` trains with them too)
MODEL_DEFAULTS = {"tau": 4 / 3, "threshold": 1.0, "surrogate": "atan:2", "batch_size": 64}

# the search scores each candidate on unlabelled batches: every per-model score that needs no labels
SEARCH_SCORES = per_model_scores(labels=False)


def fill_recipe(a: argparse.Namespace) -> None:
    """Fill the settings left to the dataset's recipe, and resolve the score: ``--score`` names an entry of
    ``proxies.SCORES``; ``--score_norm``, ``--score_aggregate`` and ``--score_alpha`` left out take its kernel's,
    and given ones that change the kernel rename it to the named score they compute, or ``custom``, so that
    config.json never carries a name the run did not compute (``score_given`` keeps the flag as typed). They are
    refused for a score without a kernel."""
    for k, v in SHORT_RECIPES.get(a.dataset, PAPER_RECIPE).items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    a.score_given = getattr(a, "score_given", a.score)
    cfg = score_config(a)
    a.score, a.score_norm, a.score_aggregate, a.score_alpha = cfg.name, cfg.normalise, cfg.aggregate, cfg.alpha


# the training flags a resume re-plans (flag -> TrainConfig field, see train_config); the cell, the search
# and its score are refused: the cell the run trains, and the rows it ranked, depend on them
OVERRIDES = overridable({"epochs": "epochs", "learning_rate": "lr", "optimizer": "optimizer", "scheduler": "scheduler",
                         "weight_decay": "weight_decay", "momentum": "momentum", "val_interval": "eval_interval",
                         "batch_size": "batch_size"})


def train_config(a: argparse.Namespace) -> TrainConfig:
    return TrainConfig(epochs=a.epochs, batch_size=a.batch_size, optimizer=a.optimizer, lr=a.learning_rate,
                       momentum=a.momentum, weight_decay=a.weight_decay, scheduler=a.scheduler, gamma=0.1, seed=a.seed,
                       eval_interval=a.val_interval, progress=not a.quiet)


def score_config(a: argparse.Namespace) -> ScoreConfig:
    """``--score_official`` is the official hook's arithmetic: dropout on, no state reset between the scoring
    batches, per-call kernels in float32 (summed in float64 as the hook's numpy accumulator does)."""
    if a.score_official and a.score_dropout == "off":
        raise SpikeSearchError("--score_official scores with dropout on; drop --score_dropout off")
    official = dict(dropout=True, reset=False, kernel_dtype="float32") if a.score_official else {}
    cfg = ScoreConfig(**{"score": getattr(a, "score_given", a.score), "alpha": a.score_alpha,
                         "normalise": a.score_norm, "aggregate": a.score_aggregate, "batch_size": a.score_batch,
                         "repeats": a.score_repeats, "augment": a.score_augment, "dropout": a.score_dropout == "on",
                         **official})
    cfg.validate()
    return cfg


def scoring_batches(loader, cfg: ScoreConfig, seed: int) -> list[torch.Tensor]:
    """``repeats`` fixed batches drawn with their own seed (augmented only if asked)."""
    g = torch.Generator().manual_seed(seed)
    data = loader.data
    need = cfg.batch_size * cfg.repeats
    if len(data) < need:
        raise SpikeSearchError(f"scoring needs {need} training images ({cfg.repeats} x {cfg.batch_size}), have {len(data)}")
    idx = torch.randperm(len(data), generator=g)[:need]
    images = torch.stack([data[int(i)][0] for i in idx]).to(loader.device)
    gen = torch.Generator(device=loader.device).manual_seed(seed)
    return [loader.augment(chunk, cfg.augment, gen) for chunk in images.split(cfg.batch_size)]


def print_table(ranked, k: int, run: Run) -> None:
    run.log(f"top {min(k, len(ranked))} of {len(ranked)} unique candidates:")
    run.log(f"{'rank':>4}  {'cnt_mat':<19}  {'score':>10}  edges")
    for r, c in enumerate(ranked[:k], 1):
        run.log(f"{r:>4}  {c.cnt_mat:<19}  {c.score:>10.3f}  {', '.join(describe(parse_cnt_mat(c.cnt_mat)))}")


def run_snasnet(a: argparse.Namespace) -> dict:
    device = pick_device(a.device)
    seed_everything(a.seed)
    fill_recipe(a)
    request = RunRequest.from_args(a, a.exp_name, a.runs_dir, inputs=[a.savemodel_pth], overridable=OVERRIDES)
    request.check()
    macro = macro_config(a.dataset, second_avgpooling=a.second_avgpooling)
    make_surrogate(a.surrogate)  # a bad name fails here, before anything is written
    loaders = make_loaders(a.dataset, a.data_dir, a.batch_size, device, a.seed, a.train_subset, a.test_subset,
                           frames=a.timestep, split_by=a.event_split, val_fraction=a.val_fraction)
    train, test = loaders.train, loaders.test
    given = parse_cnt_mat(a.cnt_mat) if a.cnt_mat else None
    mat = check_matrix(given, a.celltype) if given is not None else None
    if a.ray_address and not a.workers:
        raise SpikeSearchError("--ray-address needs --workers N (how many candidate shards run at once)")
    build = SNASNetBuilder(a.celltype, macro, a.timestep, a.tau, a.threshold, a.surrogate, str(device))
    if mat is None:
        score_cfg = score_config(a)
        cfg = SearchConfig(num_search=a.num_search, celltype=a.celltype, strategy=a.strategy, seed=a.seed, score=score_cfg)
        batches = scoring_batches(train, score_cfg, a.seed)
        pool = None
        if a.workers:  # on the command's device: CPU workers share the cores out, GPU workers share the GPU
            pool = WorkerPool(build, batches, cfg, a.workers, a.parallel, a.ray_address)
    model = None
    if a.savemodel_pth:
        if mat is None:
            raise SpikeSearchError("--savemodel_pth evaluates a given cell: add its --cnt_mat")
        model = build(mat)
        load_model_weights(model, state_of(load_checkpoint(a.savemodel_pth, device)), a.savemodel_pth)
    run = request.open()  # only after the inputs checked out: a failed command writes nothing

    result: dict = {"dataset": a.dataset, "celltype": a.celltype, "timesteps": a.timestep}
    if mat is not None:
        if a.celltype == "forward" and np.any(np.tril(given, -1)):
            run.log(f"note: --celltype forward ignores the backward (lower-triangle) entries of {format_cnt_mat(given)}")
    else:
        run.log(f"searching {a.num_search} {a.celltype} candidates ({a.strategy}) on {a.dataset}, "
                f"{score_cfg.repeats} fixed batches of {score_cfg.batch_size}"
                + (f", {a.workers} {pool.backend} workers" if pool else ""))
        if not (run.path / "checkpoints" / "last.pt").is_file():
            run.started()  # the search is what resumes; once training has a checkpoint, Trainer.resume restores it
        t0 = time.perf_counter()
        history = run_search(build, batches, cfg, run.file("search.csv"), progress=not a.quiet, pool=pool, note=run.log)
        wall = time.perf_counter() - t0  # with workers, candidates overlap: throughput is per wall-clock second
        ranked = ranking(history)
        print_table(ranked, a.top_k, run)
        mat = parse_cnt_mat(ranked[0].cnt_mat)
        plot_scores(history, run.file("search_scores.png"))
        result["search"] = {"candidates": len(history), "unique": len(ranked),
                            "scoring_seconds": sum(c.seconds for c in history), "wall_seconds": wall,
                            "workers": a.workers or 1, "candidates_per_second": len(history) / max(wall, 1e-9),
                            "best": ranked[0].cnt_mat, "best_score": ranked[0].score}
        run.log(f"best cell: --cnt_mat {ranked[0].cnt_mat} (score {ranked[0].score:.3f}); "
                f"{len(history) / max(wall, 1e-9):.2f} candidates/s")
    result["cnt_mat"] = format_cnt_mat(mat)
    title = f"SNASNet {format_cnt_mat(mat)} ({a.celltype}) on {a.dataset}"
    if model is not None:
        result.update(report(model, test, run, a.timestep, title))
    elif not a.search_only:
        seed_everything(a.seed)
        model = build(mat)
        result.update(train_and_report(model, loaders, train_config(a), run, a.timestep, title, resume=run.resumed))
    # after the work: a resumed run writes nothing before its checkpoint is restored (Run.started)
    plot_cell(mat, run.file("cell.png"), f"{a.celltype} cell  --cnt_mat {format_cnt_mat(mat)}")
    run.save_json("results.json", result)
    return result


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("official SNASNet flags (config.py)")
    g.add_argument("--exp_name", default="snasnet", help="run name: results go to RUNS_DIR/EXP_NAME")
    g.add_argument("--data_dir", default=None, help="dataset root (not needed for the bundled fmnist-small)")
    g.add_argument("--dataset", default="fmnist-small", help="fmnist-small (bundled), fashion-mnist, cifar10, cifar100, tinyimagenet")
    g.add_argument("--seed", type=arg.seed, default=1234)
    g.add_argument("--timestep", type=arg.positive_int, default=5)
    g.add_argument("--batch_size", type=arg.positive_int, default=MODEL_DEFAULTS["batch_size"])
    g.add_argument("--epochs", type=arg.positive_int, default=None, help="default: 300 (paper); 4 on fmnist-small")
    g.add_argument("--tau", type=arg.tau, default=MODEL_DEFAULTS["tau"])
    g.add_argument("--threshold", type=arg.positive_float, default=MODEL_DEFAULTS["threshold"])
    g.add_argument("--celltype", default="backward", choices=["forward", "backward"])
    g.add_argument("--second_avgpooling", type=arg.positive_int, default=2, help="pooling size after cell 2")
    g.add_argument("--optimizer", default=None, choices=["sgd", "adam"], help="default: sgd (paper); adam on fmnist-small")
    g.add_argument("--scheduler", default="cosine", choices=SCHEDULERS.names(), help=arg.SCHEDULER_HELP)
    g.add_argument("--learning_rate", type=arg.positive_float, default=None, help="default: 0.1 (paper); 3e-3 on fmnist-small")
    g.add_argument("--momentum", type=arg.fraction, default=0.9)
    g.add_argument("--weight-decay", "--weight_decay", dest="weight_decay", type=arg.nonneg_float, default=None,
                   help="default: 5e-4 (paper), actually applied (the official code passed it into SGD's "
                        "dampening slot); 0 on fmnist-small")
    g.add_argument("--val_interval", type=arg.positive_int, default=1, help="evaluate every N epochs (official: 20)")
    g.add_argument("--num_search", type=arg.positive_int, default=5000)
    g.add_argument("--cnt_mat", nargs="+", default=None,
                   help="skip the search: 4 rows of 4 op digits, e.g. 0302 0030 3003 0000, or one of " + ", ".join(PUBLISHED))
    g.add_argument("--savemodel_pth", default=None, help="evaluate this checkpoint instead of training")
    s = p.add_argument_group("search options")
    s.add_argument("--strategy", default="random", choices=["random", "evolution"])
    s.add_argument("--score_batch", type=arg.positive_int, default=64, help="images per scoring batch (official: 256)")
    s.add_argument("--score_repeats", type=arg.positive_int, default=2)
    s.add_argument("--score", default="sahd", choices=SEARCH_SCORES,
                   help="an entry of the zero-cost table (docs/proxies.md measures each on SpikeNAS-Bench): sahd: SAHD "
                        "as the official code (default); sahd-sum: the paper's sum over LIF layers; naswot: plain "
                        "Hamming kernel; swap: distinct spike patterns. config.json names what was computed: "
                        "kernel flags that change a named kernel make it another named score or 'custom'")
    s.add_argument("--score_aggregate", default=None, choices=list(AGGREGATES),
                   help="over LIF layers; default from --score (mean: official code; sum: paper)")
    s.add_argument("--score_norm", default=None, choices=list(NORMALISATIONS),
                   help="default from --score (rate: official; none = plain Hamming, NASWOT)")
    s.add_argument("--score_alpha", type=arg.nonneg_float, default=None, help="default from --score (0.5)")
    s.add_argument("--score_augment", action="store_true", help="score on augmented batches (official behaviour)")
    s.add_argument("--score_dropout", default=None, choices=["on", "off"],
                   help="the classifier's dropout while scoring (default off; official: on; see docs/snasnet.md)")
    s.add_argument("--score_official", action="store_true",
                   help="the official hook's arithmetic: dropout on, no reset between the scoring batches, float32 "
                        "kernels (with --score_batch 256 --score_augment: the official procedure in full)")
    s.add_argument("--top_k", type=arg.positive_int, default=10)
    s.add_argument("--workers", type=arg.positive_int, default=None,
                   help="score candidate shards in parallel (random search): Ray tasks or local processes")
    s.add_argument("--parallel", default="auto", choices=BACKENDS,
                   help="auto: Ray if --ray-address is given or Ray is installed, else local processes")
    s.add_argument("--ray-address", "--ray_address", dest="ray_address", default=None,
                   help="connect to this Ray cluster (e.g. ray://head:10001 or auto) instead of starting a local one")
    s.add_argument("--search_only", action="store_true")
    o = p.add_argument_group("run options")
    o.add_argument("--surrogate", default=MODEL_DEFAULTS["surrogate"], help="name[:alpha], e.g. atan:2, sigmoid:4, triangle:1")
    o.add_argument("--train_subset", type=arg.positive_int, default=None, help="use only the first N training images")
    o.add_argument("--test_subset", type=arg.positive_int, default=None)
    arg.add_validation(o)
