"""``spikesearch nasbench proxies|search``: training-free proxies evaluated against SpikeNAS-Bench's trained
accuracies, and NAS strategies simulated on its table."""
from __future__ import annotations

import argparse
import textwrap
import time
from collections import deque
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..core.errors import SpikeSearchError
from ..data.datasets import load_dataset
from ..data.loader import Augment
from ..measure.stats import bootstrap, interval, kendall_tau_b, spearman
from ..nasbench.bench import (
    CLASSES,
    DATASETS,
    EDGES,
    Record,
    cell_of,
    id_of,
    reaches_output,
    read_bench,
    read_scores,
    stratified_sample,
)
from ..nasbench.network import GEOMETRIES, BenchNet
from ..nasbench.proxies import ENSEMBLES, PROXIES, proxies
from ..proxies import SCORES, combine, seeded
from ..runs import CsvLog, RunRequest
from ..train.setup import pick_device, seed_everything
from . import args as arg

INPUTS = ("fmnist", "noise", "cifar10")
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def scoring_inputs(kind: str, data_dir: str | None, batch: int, repeats: int, seed: int, size: int = 32,
                   classes: int = 10) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """``repeats`` batches of 3 x ``size`` x ``size`` inputs and their labels: the bundled Fashion-MNIST padded to
    32 px and repeated over the 3 channels, Gaussian noise (with labels drawn uniformly over ``classes``), or
    CIFAR-10 images from ``--data_dir`` (normalised with CIFAR-10's statistics); 32 px images are enlarged to
    ``size`` by repeating pixels (Tiny-ImageNet's cells take 64 px)."""
    g = torch.Generator().manual_seed(seed)
    n = batch * repeats
    if kind == "noise":
        x = torch.randn(n, 3, size, size, generator=g)
        return list(x.split(batch)), list(torch.randint(0, classes, (n,), generator=g).split(batch))
    if kind == "cifar10":
        if data_dir is None:
            raise SpikeSearchError("--inputs cifar10 needs --data_dir (the CIFAR-10 python batches)")
        train, _, _ = load_dataset("cifar10", data_dir)
        pick = torch.randperm(len(train), generator=g)[:n]
        x = train.images[pick].float() / 255
        mean, std = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1), torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
        x = (x - mean) / std
    else:
        train, _, info = load_dataset("fmnist-small")
        pick = torch.randperm(len(train), generator=g)[:n]
        x = Augment.for_dataset(info)(train.images[pick], False)
        x = F.pad(x, (2, 2, 2, 2), value=float(x.min())).expand(-1, 3, -1, -1)
    x = F.interpolate(x, size=size, mode="nearest") if size != x.shape[-1] else x
    return list(x.contiguous().split(batch)), list(train.labels[pick].long().split(batch))


def finite(score: np.ndarray) -> np.ndarray:
    """Unscorable architectures (a singular kernel's log-det is -inf, a silent network's NaN) rank last."""
    score = np.asarray(score, dtype=float)
    ok = np.isfinite(score)
    low = score[ok].min() - 1 if ok.any() else 0.0
    return np.where(ok, score, low)


def top_precision(score: np.ndarray, acc: np.ndarray, k: int) -> float:
    """Of the top ``k`` by ``score``, the expected fraction in the top ``k`` by accuracy when ties in the score are
    broken at random (a cell tied at the cut is picked with probability slots left / cells tied): never by the
    order of the sample, which is the id order, and the id ranks accuracy."""
    best = set(np.argsort(-acc, kind="mergesort")[:k].tolist())
    cut = np.sort(score)[::-1][k - 1]
    above, tied = score > cut, score == cut
    chance = np.where(above, 1.0, np.where(tied, (k - above.sum()) / tied.sum(), 0.0))
    return float(sum(chance[i] for i in best) / k)


def evaluate_proxy(score: np.ndarray, acc: np.ndarray, top: float = 0.1) -> dict[str, float]:
    """Kendall tau-b, Spearman, top-k precision (of the top ``top`` fraction by the proxy, how many are in the top
    fraction by accuracy) and the test accuracy of the proxy's pick (the mean over cells tied at the top: a random
    tie-break's expected pick)."""
    k = max(1, int(round(top * len(acc))))
    score = finite(score)
    return {"kendall": kendall_tau_b(score, acc), "spearman": spearman(score, acc),
            "top_precision": top_precision(score, acc, k), "pick_acc": float(acc[score == score.max()].mean())}


BOOTSTRAP_REPS = 1000
BASELINE = "params"  # the zero-cost baseline to beat: the benchmark's own (tau 0.391 over all 15,625 cells)


def _table(ids: list[int], rows: dict[int, dict], records: dict[int, Record], names: list[str],
           seed: int = 0) -> tuple[list[str], dict]:
    acc = np.array([records[i].test_acc for i in ids])
    live = np.array([reaches_output(cell_of(i)) for i in ids])
    table = {n: np.array([rows[i][n] for i in ids]) for n in names}
    for name, members in ENSEMBLES.items():
        if all(m in table for m in members):
            table[name] = combine(name, table)
    # a lower-is-better score is ranked by its negation; the early-stopping column is an accuracy
    signed = {n: v if n not in SCORES or SCORES.get(n).higher_is_better else -v for n, v in table.items()}
    table["val acc @ epoch 10 (early stopping, not zero-cost)"] = signed["val acc @ epoch 10 (early stopping, not zero-cost)"] = \
        np.array([records[i].val_at(10) for i in ids])
    # paired bootstrap over the cells: the same resamples for every proxy, so differences are paired
    taus = {n: bootstrap(lambda idx, v=finite(v): kendall_tau_b(v[idx], acc[idx]), len(ids), BOOTSTRAP_REPS, seed)
            for n, v in signed.items()}
    lines = [f"| proxy | Kendall tau [95 % CI] | tau - {BASELINE} [95 % CI] | Spearman | top-10% precision | pick's test acc | "
             "Kendall tau, no collapsed | pick, no collapsed |", "|---|---|---|---|---|---|---|---|"]
    summary = {}
    base = kendall_tau_b(finite(signed[BASELINE]), acc) if BASELINE in signed else None
    for name, score in signed.items():
        all_ = evaluate_proxy(score, acc)
        alive = evaluate_proxy(score[live], acc[live])
        all_["kendall_ci"] = ci = interval(taus[name])
        delta = "–"
        if base is not None:
            all_["minus_baseline"], all_["minus_baseline_ci"] = all_["kendall"] - base, interval(taus[name] - taus[BASELINE])
            delta = f"{all_['minus_baseline']:+.3f} [{all_['minus_baseline_ci'][0]:+.3f}, {all_['minus_baseline_ci'][1]:+.3f}]"
        summary[name] = {"all": all_, "without_collapsed": alive}
        lines.append(f"| {name} | {all_['kendall']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}] | {delta} | {all_['spearman']:.3f} | "
                     f"{all_['top_precision']:.2f} | {all_['pick_acc']:.2f} | {alive['kendall']:.3f} | {alive['pick_acc']:.2f} |")
    return lines, {"summary": summary, "table": {k: v.tolist() for k, v in table.items()}, "acc": acc.tolist(),
                   "collapsed": (~live).tolist(), "bootstrap": {"reps": BOOTSTRAP_REPS, "seed": seed, "level": 0.95}}


def cmd_proxies(a: argparse.Namespace) -> dict:
    names = [n for n in a.proxies.split(",") if n]
    unknown = [n for n in names if n not in PROXIES]
    if unknown or not names:
        raise SpikeSearchError(f"unknown proxies {unknown}; choose from {', '.join(PROXIES)}")
    across = [n for n in names if SCORES.get(n).need.labels]
    if across and a.repeats < 2:
        raise SpikeSearchError(f"{', '.join(across)} compare gradients across batches: use --repeats 2 or more, or "
                               "leave them out of --proxies")
    records = read_bench(a.bench_dir, a.dataset)
    device = pick_device(a.device)
    if a.init_seed is None:  # resolved before the run's config is recorded: config.json names the weight seed
        a.init_seed = a.seed
    request = RunRequest.from_args(a, a.name, a.runs_dir)
    request.check()
    seed_everything(a.seed)
    ids = stratified_sample(records, a.sample, a.seed)
    geometry = GEOMETRIES[a.dataset]
    images, labels = scoring_inputs(a.inputs, a.data_dir, a.batch, a.repeats, a.seed, geometry.image_size, geometry.classes)
    batches, labels = [b.to(device) for b in images], [y.to(device) for y in labels]
    run = request.open()
    log = CsvLog(run.file("proxies.csv"), ["id", "test_acc", *names, "seconds"])
    run.started()
    done = {int(r["id"]): {n: float(r[n]) for n in names} for r in log.rows}
    run.log(f"SpikeNAS-Bench {a.dataset}: {len(records)} trained architectures; scoring {len(ids)} ({len(done)} done) with "
            f"{', '.join(names)} on {a.inputs} inputs, {a.repeats} batches of {a.batch}, width {a.width:g}, T={a.timestep}")
    try:
        for k, i in enumerate(ids):
            if i in done:
                continue
            t0 = time.perf_counter()
            net = seeded(lambda: BenchNet(cell_of(i), a.dataset, timesteps=a.timestep, width=a.width).to(device), a.init_seed, str(i))
            values = proxies(net, batches, tuple(names), labels)
            done[i] = values
            log.append([i, records[i].test_acc, *[repr(values[n]) for n in names], f"{time.perf_counter() - t0:.2f}"])
            if not a.quiet and (k + 1) % 10 == 0:
                print(f"  {k + 1}/{len(ids)} scored", flush=True)
    finally:
        log.close()
    lines, result = _table(ids, done, records, names, a.seed)
    chance = sum(not reaches_output(cell_of(i)) for i in ids)
    head = (f"{len(ids)} SpikeNAS-Bench {a.dataset} architectures (stratified by test accuracy, seed {a.seed}; {chance} "
            f"collapsed to chance {100 / CLASSES[a.dataset]:g} %), proxies at initialisation on {a.inputs} inputs "
            f"({a.repeats} x {a.batch}, {geometry.image_size} px), weight seed {a.init_seed}, network width {a.width:g}, "
            f"T={a.timestep}; 95 % intervals: {BOOTSTRAP_REPS} paired bootstrap resamples of the cells")
    run.save_json("results.json", {"header": head, **result})
    (run.file("table.md")).write_text(head + "\n\n" + "\n".join(lines) + "\n")
    plot_proxies(result, run.file("proxies.png"), head)
    for line in lines:
        run.log(line)
    return {"architectures": len(ids), **{k: v["all"]["kendall"] for k, v in result["summary"].items()}}


def plot_proxies(result: dict, path: Path, title: str) -> Path:
    from ..measure.plots import _save, plt

    names = list(result["table"])
    acc = np.array(result["acc"])
    collapsed = np.array(result["collapsed"])
    cols = min(3, len(names))
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    # the y axis spans the trained cells only (a 10 % point would squash 80-90 % into a line); the collapsed
    # cells are drawn on the bottom edge, where they are in rank terms
    lo, hi = (acc[~collapsed].min(), acc[~collapsed].max()) if (~collapsed).any() else (0.0, 100.0)
    pad = 0.04 * max(hi - lo, 1.0)
    for ax, name in zip(axes.flat, names):
        x = np.array(result["table"][name])
        s = result["summary"][name]["all"]
        ax.scatter(x[~collapsed], acc[~collapsed], s=8, alpha=0.6, label="trained")
        ax.scatter(x[collapsed], np.full(collapsed.sum(), lo - pad), s=14, marker="v", color="tab:red",
                   label="no path to the output (10 %)")
        ax.set_ylim(lo - 2 * pad, hi + pad)
        ax.ticklabel_format(axis="x", style="sci", scilimits=(-3, 4))
        ax.set_title(f"{name[:44]}\ntau {s['kendall']:.3f}, Spearman {s['spearman']:.3f}", fontsize=8)
        ax.set_xlabel("proxy")
        ax.set_ylabel("test accuracy (%)")
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(textwrap.fill(title, 150), fontsize=8)
    return _save(fig, path)


# signals the table gives for every cell; the others are columns of a 'nasbench proxies' run (--scores)
TABLE_PROXIES: dict[str, Callable[[Record], float]] = {"params": lambda r: float(r.params),
                                                      "valacc10": lambda r: r.val_at(10)}


def _free_proxy(name: str, records: dict[int, Record], scores: dict[int, float] | None):
    if name in TABLE_PROXIES:
        signal = TABLE_PROXIES[name]
        return lambda i: signal(records[i])
    if name == "random":
        return None
    if scores is None:
        raise SpikeSearchError(f"--proxy {name} needs --scores RUN (a 'nasbench proxies' run holding {name})")
    return lambda i: scores[i]


def cmd_search(a: argparse.Namespace) -> dict:
    """NASLib-style simulation: each repeat spends ``budget`` proxy evaluations with the strategy and reports the
    test accuracy of the architecture it would pick, after every budget step; random choice and the table's best
    are the references."""
    records = read_bench(a.bench_dir, a.dataset)
    request = RunRequest.from_args(a, a.name, a.runs_dir)
    request.check()
    scores = read_scores(a.scores, [a.proxy])[a.proxy] if a.scores and a.proxy not in (*TABLE_PROXIES, "random") else None
    proxy = _free_proxy(a.proxy, records, scores)
    space = sorted(scores) if scores is not None and a.proxy not in (*TABLE_PROXIES, "random") else sorted(records)
    if a.strategy == "evolution" and proxy is not None and scores is not None and a.proxy not in TABLE_PROXIES:
        raise SpikeSearchError("--strategy evolution mutates cells anywhere in the space: use a proxy the table "
                               "gives for every cell (params, valacc10) or random search over a scored sample")
    space = [i for i in space if i in records]  # a scored cell whose log the reader skipped is not drawn
    rng = np.random.default_rng(a.seed)
    curves = {"strategy": [], "random": []}
    for _ in range(a.repeats):
        picked = _evolution(records, proxy, a.budget, rng) if a.strategy == "evolution" and proxy else \
            _random_search(space, proxy, a.budget, rng)
        curves["strategy"].append([records[i].test_acc for i in picked])
        sample = rng.choice(space, size=a.budget, replace=len(space) < a.budget)
        curves["random"].append([float(np.mean([records[int(i)].test_acc for i in sample[:b + 1]])) for b in range(a.budget)])
    best = max(records[i].test_acc for i in space)
    run = request.open()
    if records.report():
        run.log(records.report())
    mean = {k: np.mean(v, axis=0) for k, v in curves.items()}
    sd = {k: np.std(v, axis=0) for k, v in curves.items()}
    marks = sorted({b for b in (1, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000) if b <= a.budget} | {a.budget})
    lines = [f"| budget | {a.strategy} + {a.proxy} (mean ± sd) | random choice (expected) | table best |", "|---|---|---|---|"]
    lines += [f"| {b} | {mean['strategy'][b - 1]:.2f} ± {sd['strategy'][b - 1]:.2f} | {mean['random'][b - 1]:.2f} | {best:.2f} |"
              for b in marks]
    head = (f"{a.strategy} search with proxy {a.proxy} on SpikeNAS-Bench {a.dataset} ({len(space)} architectures to draw "
            f"from), {a.repeats} repeats, seed {a.seed}")
    run.save_json("results.json", {"header": head, "mean": {k: v.tolist() for k, v in mean.items()},
                                   "sd": {k: v.tolist() for k, v in sd.items()}, "best": best})
    run.file("table.md").write_text(head + "\n\n" + "\n".join(lines) + "\n")
    plot_search(mean, sd, best, run.file("search.png"), head)
    for line in lines:
        run.log(line)
    return {"final_acc": float(mean["strategy"][-1]), "random_acc": float(mean["random"][-1]), "best": best}


def _random_search(space: list[int], proxy, budget: int, rng: np.random.Generator) -> list[int]:
    """After each evaluation, the architecture the proxy ranks best so far (a random one without a proxy)."""
    draws = rng.choice(space, size=budget, replace=len(space) < budget)
    picked, best, best_score = [], None, -np.inf
    for i in map(int, draws):
        score = proxy(i) if proxy else rng.random()
        if best is None or score > best_score:  # an unscorable (-inf, NaN) first draw is still a pick
            best, best_score = i, score
        picked.append(best)
    return picked


def _evolution(records: dict[int, Record], proxy, budget: int, rng: np.random.Generator, population: int = 20,
               tournament: int = 5) -> list[int]:
    """Regularised (aging) evolution with the proxy as fitness: mutate one edge's op of a tournament's winner."""
    ids = sorted(records)
    pop: deque[tuple[int, float]] = deque()
    picked, best, best_score = [], None, -np.inf
    for _ in range(budget):
        if len(pop) < population:
            i = int(rng.choice(ids))
        else:
            parent = max((pop[k] for k in rng.choice(len(pop), size=tournament, replace=False)), key=lambda p: p[1])[0]
            mat = cell_of(parent)
            e = EDGES[int(rng.integers(len(EDGES)))]
            mat[e] = (mat[e] + int(rng.integers(1, 5))) % 5
            i = id_of(mat)
            if i not in records:
                i = parent
        score = proxy(i)
        pop.append((i, score))
        if len(pop) > population:
            pop.popleft()
        if best is None or score > best_score:
            best, best_score = i, score
        picked.append(best)
    return picked


def plot_search(mean: dict, sd: dict, best: float, path: Path, title: str) -> Path:
    from ..measure.plots import _save, plt

    fig, ax = plt.subplots(figsize=(6.4, 4))
    x = np.arange(1, len(mean["strategy"]) + 1)
    for key, label in (("strategy", "search"), ("random", "random choice")):
        ax.plot(x, mean[key], label=label)
        ax.fill_between(x, mean[key] - sd[key], mean[key] + sd[key], alpha=0.2)
    ax.axhline(best, color="k", ls="--", lw=1, label=f"table best {best:.2f}")
    ax.set_xscale("log")
    ax.set_xlabel("architectures evaluated")
    ax.set_ylabel("test accuracy of the pick (%)")
    ax.legend(fontsize=8)
    ax.set_title(title[:110], fontsize=8)
    return _save(fig, path)


def add_arguments(p: argparse.ArgumentParser, add_common) -> None:
    sub = p.add_subparsers(dest="nasbench_command", required=True)
    fmt = argparse.ArgumentDefaultsHelpFormatter

    def common(q: argparse.ArgumentParser, name: str) -> None:
        q.add_argument("--bench_dir", required=True, help="a local clone of tju-sun-lab/SpikeNAS-Bench")
        q.add_argument("--dataset", default="cifar10", choices=list(DATASETS))
        q.add_argument("--seed", type=arg.seed, default=0)
        q.add_argument("--name", default=name)
        add_common(q)

    pr = sub.add_parser("proxies", help="score a stratified sample at initialisation; Kendall tau etc. vs trained accuracy",
                        formatter_class=fmt)
    common(pr, "nasbench-proxies")
    pr.add_argument("--proxies", default=",".join(PROXIES),
                    help=f"comma list of {', '.join(PROXIES)} (docs/proxies.md: each one's definition and measured tau)")
    pr.add_argument("--sample", type=arg.positive_int, default=300)
    pr.add_argument("--inputs", default="fmnist", choices=INPUTS, help="what the proxies see (CIFAR images need --data_dir)")
    pr.add_argument("--data_dir", default=None)
    pr.add_argument("--batch", type=arg.positive_int, default=64)
    pr.add_argument("--repeats", type=arg.positive_int, default=2)
    pr.add_argument("--timestep", type=arg.positive_int, default=5)
    pr.add_argument("--width", type=arg.positive_float, default=1.0, help="channel multiplier of the bench network")
    pr.add_argument("--init_seed", type=arg.seed, default=None,
                    help="weights seeded from (init_seed, id); default --seed. Varies the initialisation alone: same "
                         "sample, same inputs")
    pr.set_defaults(func=cmd_proxies)

    se = sub.add_parser("search", help="simulate random search or evolution with a proxy on the table", formatter_class=fmt)
    common(se, "nasbench-search")
    se.add_argument("--strategy", default="random", choices=["random", "evolution"])
    se.add_argument("--proxy", default="params", help="params, valacc10, random, or a column of --scores")
    se.add_argument("--scores", default=None, help="a 'nasbench proxies' run folder (its proxies.csv)")
    se.add_argument("--budget", type=arg.positive_int, default=100)
    se.add_argument("--repeats", type=arg.positive_int, default=20)
    se.set_defaults(func=cmd_search)
