"""``spikesearch search``: a budgeted search (spikesearch.search) over our SNASNet cells trained on a dataset
(``--space snasnet``) or over SpikeNAS-Bench read as a table (``--space spikenas-bench``). The Optuna study lives
in the run folder (study.journal, Optuna's journal storage; --storage names another); results.json names the
returned cell and the epochs spent; with ``--objectives acc,energy`` front.md / front.png hold the Pareto front
and its hypervolume."""
from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np
import optuna

from ..core.errors import SpikeSearchError
from ..nasbench.bench import DATASETS, read_bench, read_scores
from ..runs import RunRequest
from ..search import STRATEGIES, SearchConfig, search
from ..search.pareto import hypervolume, pareto_mask
from ..search.simulate import hv_reference, simulate
from ..search.space import SIGNALS
from ..search.strategies import AUTO, OBJECTIVES, new_study
from ..search.cells import CellSpace
from ..search.tabular import BenchSpace
from . import args as arg
from .snasnet import MODEL_DEFAULTS

# what a flag left out means in each space: the bench trains 100 epochs (its last-10 mean is the steadier pick);
# our cells train a few (the final epoch's validation accuracy)
SPACE_DEFAULTS = {"spikenas-bench": {"dataset": "cifar10", "final_signal": "val_acc_last10"},
                  "snasnet": {"dataset": "fmnist-small", "final_signal": "val_acc", "celltype": "backward",
                              "num_search": 100, "timestep": 5, "val_fraction": 0.1}}
SPACES = tuple(SPACE_DEFAULTS)
# the flags that only one space reads: given for the other, they are refused rather than ignored
BENCH_ONLY = ("bench_dir", "scores", "repeats")
CELLS_ONLY = ("data_dir", "celltype", "num_search", "epochs", "train_subset", "test_subset", "timestep", "val_fraction")
# a resume may spend another budget: the strategy replays, cells already trained are re-read (their rungs do not
# depend on the budget)
OVERRIDES = ("budget",)
# what --space snasnet does not expose: the snasnet command's defaults (recorded in results.json)
CELL_MODEL = MODEL_DEFAULTS


def fill_space_defaults(a: argparse.Namespace) -> None:
    for k, v in SPACE_DEFAULTS[a.space].items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    wrong = [f for f in (CELLS_ONLY if a.space == "spikenas-bench" else BENCH_ONLY) if getattr(a, f) not in (None, 0)]
    if wrong:
        raise SpikeSearchError(f"--space {a.space} does not read --{', --'.join(wrong)}")
    if a.space == "spikenas-bench" and a.dataset not in DATASETS:
        raise SpikeSearchError(f"SpikeNAS-Bench holds {', '.join(DATASETS)}; got --dataset {a.dataset}")


def _config(a: argparse.Namespace) -> SearchConfig:
    objectives = tuple(o for o in a.objectives.split(",") if o)
    cfg = SearchConfig(strategy=a.strategy, budget=a.budget, objectives=objectives, signal=a.signal,
                       final_signal=a.final_signal, prefilter=None if a.prefilter == "none" else a.prefilter,
                       prefilter_frac=a.prefilter_frac, warm_start=a.warm_start, eta=a.eta, rung_factor=a.rung_factor,
                       min_epochs=a.min_epochs, seed=a.seed)
    cfg.check()
    a.prefilter, a.eta = cfg.prefilter or "none", cfg.eta  # the run folder records what "auto" meant
    return cfg


def cmd_search(a: argparse.Namespace) -> dict:
    fill_space_defaults(a)
    cfg = _config(a)
    return (_search_bench if a.space == "spikenas-bench" else _search_cells)(a, cfg)


def _search_bench(a: argparse.Namespace, cfg: SearchConfig) -> dict:
    if not a.bench_dir:
        raise SpikeSearchError("--space spikenas-bench needs --bench_dir (a clone of tju-sun-lab/SpikeNAS-Bench)")
    if a.workers > 1 and (cfg.strategy != "random" or len(cfg.objectives) != 1):
        raise SpikeSearchError("--workers runs --strategy random with --objectives acc (a fixed plan); the other "
                               "strategies decide from each result and run in one process")
    scores = read_scores(a.scores) if a.scores else None
    request = RunRequest.from_args(a, a.name, a.runs_dir, inputs=[a.scores], overridable=OVERRIDES)
    request.check()
    table = read_bench(a.bench_dir, a.dataset)
    space = BenchSpace(table, scores)
    _check_budget(cfg, space.max_epochs)
    if cfg.prefilter:
        space.zero_cost(cfg.prefilter, space.candidates(np.random.default_rng(0))[:1])  # an unknown name fails here
    run = request.open(quiet=a.quiet)
    if table.report():
        run.log(table.report())
    if a.workers > 1 or (a.storage and cfg.strategy == "random"):
        res = _with_workers(a, cfg, space, a.storage or f"sqlite:///{run.file('study.db')}")
    else:
        # the table costs nothing to re-read: a resumed search starts its study again, same seed
        res = search(space, cfg, _study(cfg, a.storage or _journal(run.file("study.journal")), a.name, a.resume))
    if res.arch is None:
        raise SpikeSearchError(f"{cfg.strategy} trained no cell fully within --budget {cfg.budget}")
    out = {"space": a.space, "dataset": a.dataset, "strategy": cfg.strategy, "config": dataclasses.asdict(cfg),
           **space.describe(res.arch), "epochs_spent": res.epochs_spent, "logged_seconds_spent": res.seconds_spent,
           "trials": res.trials, "full_trainings": len(res.finals),
           "chosen_by": f"{cfg.final_signal} after {space.max_epochs} epochs (validation; never the test set)",
           "test_acc": space.truth(res.arch), "table_best_test_acc": float(space.test.max()),
           "regret": float(space.test.max()) - space.truth(res.arch), "skipped_logs": table.skipped}
    run.log(f"{cfg.strategy} on SpikeNAS-Bench {a.dataset}: cell {res.arch} after {res.epochs_spent} epochs "
            f"({len(res.finals)} full trainings, {res.trials} trials); its test accuracy {out['test_acc']:.2f} % "
            f"(table best {out['table_best_test_acc']:.2f} %)")
    if "energy" in cfg.objectives:
        out["front"] = _bench_front(run, space, res.front)
    if a.repeats:
        out["simulation"] = simulate(space, cfg, a.repeats, a.seed)
        run.log(f"{a.repeats} repeats (seeds {a.seed}..{a.seed + a.repeats - 1}): regret "
                f"{out['simulation']['regret_mean']:.3f} ± {out['simulation']['regret_sd']:.3f} points")
    run.save_json("results.json", out)
    return {"arch_id": out["arch_id"], "epochs_spent": res.epochs_spent, "regret": out["regret"]}


def _search_cells(a: argparse.Namespace, cfg: SearchConfig) -> dict:
    """Our SNASNet cells, trained on ``--dataset`` (search.cells): one process; the cells' folders make a
    ``--resume`` re-read what was trained."""
    from ..core.surrogate import make_surrogate
    from ..proxies import ScoreConfig
    from ..snasnet.network import macro_config
    from ..snasnet.parallel import SNASNetBuilder
    from ..train.pipeline import make_loaders
    from ..train.setup import pick_device, seed_everything
    from ..train.trainer import TrainConfig
    from .snasnet import PAPER_RECIPE, SEARCH_SCORES, SHORT_RECIPES, scoring_batches

    if a.workers > 1:
        raise SpikeSearchError("--space snasnet trains its cells in one process (--workers is for SpikeNAS-Bench)")
    if cfg.prefilter and cfg.prefilter != "params" and cfg.prefilter not in SEARCH_SCORES:
        raise SpikeSearchError(f"zero-cost score {cfg.prefilter!r}: 'params' or one of {', '.join(SEARCH_SCORES)}")
    recipe = SHORT_RECIPES.get(a.dataset, PAPER_RECIPE)
    a.epochs = a.epochs or recipe["epochs"]
    device = pick_device(a.device)
    _check_budget(cfg, a.epochs)
    request = RunRequest.from_args(a, a.name, a.runs_dir, overridable=OVERRIDES)
    request.check()
    seed_everything(a.seed)
    loaders = make_loaders(a.dataset, a.data_dir, CELL_MODEL["batch_size"], device, a.seed, a.train_subset,
                           a.test_subset, frames=a.timestep, split_by=a.event_split, val_fraction=a.val_fraction)
    if loaders.val is None:
        raise SpikeSearchError("the search ranks cells on a validation split: give --val_fraction above 0")
    make_surrogate(CELL_MODEL["surrogate"])
    build = SNASNetBuilder(a.celltype, macro_config(a.dataset), a.timestep, CELL_MODEL["tau"], CELL_MODEL["threshold"],
                           CELL_MODEL["surrogate"], str(device))
    train = TrainConfig(epochs=a.epochs, batch_size=CELL_MODEL["batch_size"], optimizer=recipe["optimizer"],
                        lr=recipe["learning_rate"], weight_decay=recipe["weight_decay"], seed=a.seed, eval_interval=1,
                        progress=False)
    score = ScoreConfig()
    batches = scoring_batches(loaders.train, score, a.seed) if cfg.prefilter not in (None, "params") else []
    run = request.open(quiet=a.quiet)
    run.started()  # each cell checks its own checkpoints against this run's settings (runs.Part)
    space = CellSpace(build, loaders, train, run, a.timestep, a.celltype, a.num_search, score, batches, a.seed,
                      energy_at_rungs="energy" in cfg.objectives)
    run.log(f"{cfg.strategy} over {a.celltype} SNASNet cells on {a.dataset} ({len(loaders.train.data)} train / "
            f"{len(loaders.val.data)} validation images; full training {a.epochs} epochs), budget {cfg.budget} epochs"
            + (f", pre-filtered to the top {cfg.prefilter_frac:.0%} of {a.num_search} by {cfg.prefilter}"
               if cfg.prefilter else ""))
    # a resume replays the strategy with its seed; each cell resumes from its folder (nothing trained twice)
    study = _study(cfg, a.storage or _journal(run.file("study.journal")), a.name, a.resume)
    t0 = time.perf_counter()
    res = search(space, cfg, study)
    wall = time.perf_counter() - t0  # of this process: a resumed search's replay, not the first run's training
    if res.arch is None:
        raise SpikeSearchError("no cell finished full training: every one diverged (cells/*/diverged.json)")
    test = space.truth(res.arch)
    out = {"space": a.space, "dataset": a.dataset, "celltype": a.celltype, "strategy": cfg.strategy,
           "config": dataclasses.asdict(cfg), "model": CELL_MODEL, "train": dataclasses.asdict(train),
           **space.describe(res.arch), "epochs_spent": res.epochs_spent,
           "training_seconds_spent": res.seconds_spent, "wall_seconds": wall, "trials": res.trials,
           "full_trainings": len(res.finals),
           "chosen_by": f"{cfg.final_signal} after {space.max_epochs} epochs (validation split; never the test set)",
           "test_acc": test, "finals": [{"cnt_mat": f["arch"], cfg.final_signal: f["acc"], "energy_msop": f["energy"],
                                         "test_acc": space.truth(f["arch"])} for f in res.finals]}
    run.log(f"{cfg.strategy}: cell {res.arch} after {res.epochs_spent} epochs ({len(res.finals)} full trainings, "
            f"{res.trials} trials, {wall:.0f} s); its test accuracy {test:.2f} % (read after the choice)")
    if "energy" in cfg.objectives:
        out["front"] = _cells_front(run, space, res)
    run.save_json("results.json", out)
    return {"cnt_mat": res.arch, "epochs_spent": res.epochs_spent}


def _check_budget(cfg: SearchConfig, full: int) -> None:
    if cfg.budget < full:
        raise SpikeSearchError(f"--budget {cfg.budget} pays for no full training ({full} epochs)")


def _study(cfg: SearchConfig, storage, name: str, resume: bool) -> optuna.Study:
    """This run's study. A resume starts it again (the strategy replays with its seed); only the study of this
    name is deleted, never another in a shared ``--storage``, and a new run refuses a name the storage holds."""
    if resume:
        try:
            optuna.delete_study(study_name=name, storage=storage)
        except KeyError:
            pass  # killed before its study was created
    try:
        return new_study(cfg, storage, name=name)
    except optuna.exceptions.DuplicatedStudyError:
        raise SpikeSearchError(f"the storage already holds a study named {name!r}: choose another --name, or "
                               "--resume this run") from None


def _with_workers(a: argparse.Namespace, cfg: SearchConfig, space: BenchSpace, url: str):
    """``--workers N`` processes on one RDB study (search.workers); the same command with the same ``--storage``
    URL on another machine joins it (the plan is enqueued once)."""
    import multiprocessing

    from ..search.workers import collect, plan, rdb_storage, work

    if not url.startswith(("sqlite:", "postgresql", "mysql")):
        raise SpikeSearchError(f"--workers needs an RDB storage URL (sqlite:///F, postgresql://...), got {url!r}")
    study = plan(cfg, space, rdb_storage(url), a.name)
    # fork: the children share the table already read; each opens its own connection to the storage
    procs = [multiprocessing.get_context("fork").Process(target=_worker, args=(url, a.name, space, cfg))
             for _ in range(a.workers - 1)]
    for p in procs:
        p.start()
    try:
        work(study, space, cfg)
    finally:
        for p in procs:
            p.join()
    return collect(study, space)


def _worker(url: str, name: str, space: BenchSpace, cfg: SearchConfig) -> None:
    from ..search.workers import rdb_storage, work

    work(optuna.load_study(study_name=name, storage=rdb_storage(url)), space, cfg)


def _journal(path) -> optuna.storages.BaseStorage:
    """Optuna's journal storage, an append-only file in the run folder: about 30 ms a trial on the 2-core test
    machine against 350 ms for SQLite (RDB storage commits every attribute), and safe for several processes."""
    from optuna.storages.journal import JournalFileBackend

    return optuna.storages.JournalStorage(JournalFileBackend(str(path)))


def _bench_front(run, space: BenchSpace, front: list[dict]) -> dict:
    """The front against every cell of the table: its hypervolume as a share of the true front's."""
    ref, true_hv = hv_reference(space)
    rows = [{"arch_id": f["arch"], "val_acc_last10": f["acc"], "test_acc": space.truth(f["arch"]), "energy": f["energy"]}
            for f in front]
    every = (np.array([space.energy(int(i)) for i in space.ids]), space.test, "every cell (test acc)")
    # the plot shows the accurate 95 % of the cells: the collapsed ones at chance would squash the front
    return _front(run, rows, "energy estimate (MSOP/image)", ref, true_hv, every,
                  ylim=(float(np.percentile(space.test, 5)) - 1, float(space.test.max()) + 0.5), true_front=True)


def _cells_front(run, space: CellSpace, res) -> dict:
    """Our cells have no table: the front among the fully trained cells, its hypervolume against chance
    accuracy and the most costly of them (the same reference for every search of one dataset and budget
    only when they trained the same costliest cell: compare hypervolumes with care)."""
    rows = [{"cnt_mat": f["arch"], "val_acc": f["acc"], "test_acc": space.truth(f["arch"]), "energy": f["energy"]}
            for f in res.front]
    energy = [f["energy"] for f in res.finals]
    every = (np.array(energy), np.array([space.truth(f["arch"]) for f in res.finals]), "every fully trained cell (test acc)")
    return _front(run, rows, "synaptic operations (MSOP/validation image, measured)",
                  (100 / space.loaders.info.num_classes, max(energy)), None, every)


def _front(run, rows: list[dict], energy_label: str, ref: tuple[float, float], true_hv: float | None,
           every: tuple, ylim: tuple | None = None, true_front: bool = False) -> dict:
    """front.md (the table and the hypervolume) and front.png (the front over ``every`` cell, and with
    ``true_front`` the front of all of them) from the front's ``rows`` (each with ``test_acc`` and ``energy``,
    read after the search chose)."""
    from ..measure.plots import _save, plt

    rows = sorted(rows, key=lambda r: r["energy"])
    acc, energy = [r["test_acc"] for r in rows], [r["energy"] for r in rows]
    hv = hypervolume(acc, energy, *ref)
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---:|" * len(cols)]
    lines += ["| " + " | ".join(f"{r[c]:.2f}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |" for r in rows]
    out = {"cells": rows, "hypervolume": hv, "reference": {"test_acc": ref[0], "energy": ref[1]}}
    share = ""
    if true_hv is not None:
        out["hypervolume_share"] = hv / true_hv if true_hv > 0 else float("nan")  # every cell at the reference
        share = f" = {100 * out['hypervolume_share']:.1f} % of the true front's"
    text = f"hypervolume {hv:.1f}{share} (reference: test accuracy {ref[0]:.2f} %, energy {ref[1]:.1f})"
    run.file("front.md").write_text("\n".join(lines) + f"\n\n{text}\n")
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.scatter(every[0], every[1], s=4, color="0.75", label=every[2])
    if true_front:
        on = pareto_mask(every[1], every[0])
        order = np.argsort(every[0][on])
        ax.step(every[0][on][order], every[1][on][order], where="post", color="0.2", ls="--", lw=1,
                label="true front (every cell)")
    ax.step(energy, acc, where="post", marker="o", color="tab:red", label="front found")
    ax.set_xlabel(energy_label)
    ax.set_ylabel("test accuracy (%)")
    if ylim:
        ax.set_ylim(*ylim)
    ax.legend(fontsize=7)
    _save(fig, run.file("front.png"))
    return out


def add_arguments(p: argparse.ArgumentParser, add_common) -> None:
    p.add_argument("--space", default="spikenas-bench", choices=SPACES,
                   help="snasnet: our cells, trained on --dataset; spikenas-bench: the benchmark's logs (--bench_dir)")
    p.add_argument("--bench_dir", default=None, help="a local clone of tju-sun-lab/SpikeNAS-Bench")
    p.add_argument("--dataset", default=None,
                   help=f"spikenas-bench: {', '.join(DATASETS)} (default cifar10); snasnet: any dataset (default "
                        "fmnist-small, bundled)")
    c = p.add_argument_group("--space snasnet")
    c.add_argument("--data_dir", default=None, help="dataset root (not needed for the bundled fmnist-small)")
    c.add_argument("--celltype", default=None, choices=["forward", "backward"], help="default backward")
    c.add_argument("--num_search", type=arg.positive_int, default=None,
                   help="candidate cells drawn for the pre-filter (default 100)")
    c.add_argument("--epochs", type=arg.positive_int, default=None,
                   help="full training (default: the snasnet command's recipe, 4 on fmnist-small)")
    c.add_argument("--timestep", type=arg.positive_int, default=None, help="default 5")
    c.add_argument("--train_subset", type=arg.positive_int, default=None, help="only the first N training images")
    c.add_argument("--test_subset", type=arg.positive_int, default=None)
    arg.add_validation(c)
    c.set_defaults(val_fraction=None)  # 0.1 for snasnet (SPACE_DEFAULTS); the bench space has no images
    p.add_argument("--strategy", default="sh", choices=STRATEGIES.names(),
                   help="sh (successive halving; the default, docs/search.md), hyperband, random, evolution, tpe, nsga2")
    p.add_argument("--objectives", default="acc", help=f"acc or acc,energy (of {', '.join(OBJECTIVES)})")
    p.add_argument("--budget", type=arg.positive_int, default=3000, help="training epochs, all trials together")
    p.add_argument("--signal", default="tse", choices=list(SIGNALS), help="what ranks the cells at a rung")
    p.add_argument("--final_signal", default=None, choices=list(SIGNALS),
                   help="what picks among fully trained cells (default: val_acc_last10 on SpikeNAS-Bench, val_acc on snasnet)")
    p.add_argument("--prefilter", default=AUTO,
                   help="params, none, or a zero-cost score: a column of --scores (SpikeNAS-Bench), one of the "
                        "snasnet command's --score names (snasnet); default params for --objectives acc, none for "
                        "acc,energy")
    p.add_argument("--prefilter_frac", type=arg.positive_float, default=0.2, help="the top fraction kept")
    p.add_argument("--warm_start", type=arg.nonneg_int, default=0,
                   help="enqueue the zero-cost score's N best cells first (tpe, nsga2, evolution)")
    p.add_argument("--scores", default=None, help="a 'nasbench proxies' run folder: its proxies.csv columns")
    p.add_argument("--eta", type=arg.positive_int, default=None,
                   help="successive halving keeps 1/eta per rung (default 4 for --objectives acc, 2 for acc,energy; sh "
                        "keeps more when its pool is used up before the budget; docs/search.md)")
    p.add_argument("--rung_factor", type=arg.positive_int, default=3, help="epochs grow by this factor per rung")
    p.add_argument("--min_epochs", type=arg.positive_int, default=1)
    p.add_argument("--repeats", type=arg.nonneg_int, default=0,
                   help="also simulate N repeats (seeds S..S+N-1) on the table and report the regret")
    p.add_argument("--storage", default=None,
                   help="an Optuna storage URL (sqlite:///F, postgresql://...); default: study.journal in the run folder")
    p.add_argument("--workers", type=arg.positive_int, default=1,
                   help="processes on one study (strategy random: a fixed plan; SQLite in the run folder unless "
                        "--storage); the same command with the same --storage on another machine joins it")
    p.add_argument("--seed", type=arg.seed, default=0)
    p.add_argument("--name", default="search")
    add_common(p)
    p.set_defaults(func=cmd_search)
