"""``spikesearch search``: a budgeted search (spikesearch.search) over SpikeNAS-Bench read as a table. The
Optuna study lives in the run folder (study.journal, Optuna's journal storage; --storage names another); results.json names the returned cell and the epochs
spent; with ``--objectives acc,energy`` front.md / front.png hold the Pareto front and its hypervolume."""
from __future__ import annotations

import argparse
import dataclasses

import numpy as np
import optuna

from ..core.errors import SpikeSearchError
from ..nasbench.bench import DATASETS, read_bench, read_scores
from ..runs import RunRequest
from ..search import STRATEGIES, SearchConfig, search
from ..search.pareto import hypervolume
from ..search.simulate import hv_reference, simulate
from ..search.space import SIGNALS
from ..search.strategies import OBJECTIVES, new_study
from ..search.tabular import BenchSpace
from . import args as arg

SPACES = ("spikenas-bench",)


def _config(a: argparse.Namespace) -> SearchConfig:
    objectives = tuple(o for o in a.objectives.split(",") if o)
    cfg = SearchConfig(strategy=a.strategy, budget=a.budget, objectives=objectives, signal=a.signal,
                       final_signal=a.final_signal, prefilter=None if a.prefilter == "none" else a.prefilter,
                       prefilter_frac=a.prefilter_frac, warm_start=a.warm_start, eta=a.eta, rung_factor=a.rung_factor,
                       min_epochs=a.min_epochs, seed=a.seed)
    cfg.check()
    return cfg


def cmd_search(a: argparse.Namespace) -> dict:
    cfg = _config(a)
    if a.space == "spikenas-bench" and not a.bench_dir:
        raise SpikeSearchError("--space spikenas-bench needs --bench_dir (a clone of tju-sun-lab/SpikeNAS-Bench)")
    if a.workers > 1 and (cfg.strategy != "random" or len(cfg.objectives) != 1):
        raise SpikeSearchError("--workers runs --strategy random with --objectives acc (a fixed plan); the other "
                               "strategies decide from each result and run in one process")
    scores = read_scores(a.scores) if a.scores else None
    request = RunRequest.from_args(a, a.name, a.runs_dir, inputs=[a.scores])
    request.check()
    table = read_bench(a.bench_dir, a.dataset)
    space = BenchSpace(table, scores)
    if cfg.prefilter:
        space.zero_cost(cfg.prefilter, space.candidates(np.random.default_rng(0))[:1])  # an unknown name fails here
    run = request.open(quiet=a.quiet)
    if table.report():
        run.log(table.report())
    if a.workers > 1 or (a.storage and cfg.strategy == "random"):
        res = _with_workers(a, cfg, space, a.storage or f"sqlite:///{run.file('study.db')}")
    else:
        storage = a.storage or _journal(run.file("study.journal"))
        if a.resume:  # the table costs nothing to re-read: a resumed search starts its study again, same seed
            for summary in optuna.get_all_study_summaries(storage):
                optuna.delete_study(study_name=summary.study_name, storage=storage)
        res = search(space, cfg, new_study(cfg, storage, name=a.name))
    if res.arch is None:
        raise SpikeSearchError(f"--budget {cfg.budget} pays for no full training ({space.max_epochs} epochs)")
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
        out["front"] = _front(run, space, res.front)
    if a.repeats:
        out["simulation"] = simulate(space, cfg, a.repeats, a.seed)
        run.log(f"{a.repeats} repeats (seeds {a.seed}..{a.seed + a.repeats - 1}): regret "
                f"{out['simulation']['regret_mean']:.3f} ± {out['simulation']['regret_sd']:.3f} points")
    run.save_json("results.json", out)
    return {"arch_id": out["arch_id"], "epochs_spent": res.epochs_spent, "regret": out["regret"]}


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


def _front(run, space: BenchSpace, front: list[dict]) -> dict:
    from ..measure.plots import _save, plt

    rows = sorted(front, key=lambda f: f["energy"])
    (ref_acc, ref_e), true_hv = hv_reference(space)
    acc = [space.truth(f["arch"]) for f in rows]
    hv = hypervolume(acc, [f["energy"] for f in rows], ref_acc, ref_e)
    lines = ["| arch_id | validation acc, mean of last 10 epochs (%) | test acc (%) | energy estimate (MSOP/image) |",
             "|---:|---:|---:|---:|"]
    lines += [f"| {f['arch']} | {f['acc']:.2f} | {t:.2f} | {f['energy']:.1f} |" for f, t in zip(rows, acc)]
    share = hv / true_hv if true_hv > 0 else float("nan")  # every cell at the reference: no area to share
    run.file("front.md").write_text("\n".join(lines) + f"\n\nhypervolume {hv:.1f} = {100 * share:.1f} % of the "
                                    f"true front's (reference: accuracy {ref_acc:.2f} %, energy {ref_e:.1f})\n")
    fig, ax = plt.subplots(figsize=(5.5, 4))
    every = np.array([space.energy(int(i)) for i in space.ids])
    ax.scatter(every, space.test, s=2, color="0.8", label="every cell (test acc)")
    ax.step([f["energy"] for f in rows], acc, where="post", marker="o", color="tab:red", label="front found")
    ax.set_xlabel("energy estimate (million synaptic operations per image)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(ref_acc - 1, float(space.test.max()) + 0.5)
    ax.legend(fontsize=7)
    _save(fig, run.file("front.png"))
    return {"cells": [{"arch_id": f["arch"], "val_acc_last10": f["acc"], "test_acc": t, "energy": f["energy"]}
                      for f, t in zip(rows, acc)], "hypervolume": hv, "hypervolume_share": share}


def add_arguments(p: argparse.ArgumentParser, add_common) -> None:
    p.add_argument("--space", default="spikenas-bench", choices=SPACES)
    p.add_argument("--bench_dir", default=None, help="a local clone of tju-sun-lab/SpikeNAS-Bench")
    p.add_argument("--dataset", default="cifar10", choices=list(DATASETS))
    p.add_argument("--strategy", default="sh", choices=STRATEGIES.names(),
                   help="sh (successive halving; the default, docs/search.md), hyperband, random, evolution, tpe, nsga2")
    p.add_argument("--objectives", default="acc", help=f"acc or acc,energy (of {', '.join(OBJECTIVES)})")
    p.add_argument("--budget", type=arg.positive_int, default=3000, help="training epochs, all trials together")
    p.add_argument("--signal", default="tse", choices=list(SIGNALS), help="what ranks the cells at a rung")
    p.add_argument("--final_signal", default="val_acc_last10", choices=list(SIGNALS),
                   help="what picks among fully trained cells")
    p.add_argument("--prefilter", default="params", help="params, none, or a column of --scores (zero-cost)")
    p.add_argument("--prefilter_frac", type=arg.positive_float, default=0.2, help="the top fraction kept")
    p.add_argument("--warm_start", type=arg.nonneg_int, default=0,
                   help="enqueue the zero-cost score's N best cells first (tpe, nsga2, evolution)")
    p.add_argument("--scores", default=None, help="a 'nasbench proxies' run folder: its proxies.csv columns")
    p.add_argument("--eta", type=arg.positive_int, default=4, help="successive halving keeps 1/eta per rung")
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
