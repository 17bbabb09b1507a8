"""A trained ground truth for the backward (temporal feedback) space, which SpikeNAS-Bench does not have.

Samples ``--cells`` distinct cells of our backward space exactly as the search does, trains each with
``--seeds`` training seeds through ``spikesearch snasnet --cnt_mat ...`` (the bundled data by default, or
``--dataset fashion-mnist`` where Debian's ``dataset-fashion-mnist`` is installed), and reports:

- the noise floor: Kendall's tau-b between the accuracy rankings of every pair of training seeds (a proxy
  cannot be judged more precisely than the ground truth agrees with itself);
- each training-free proxy (``nasbench.proxies``: sahd = the search's default score, same batches, same
  weights seeded from (seed, cnt_mat)) against the mean accuracy over the seeds: Kendall, Spearman, and the
  accuracy of its pick, each at the last epoch and at the best epoch;
- the same for the number of backward edges (structure, not a proxy), and every proxy's Kendall tau with it:
  a proxy that rewards feedback is measured against what feedback does to accuracy at this budget.

Resumable: every training is a run folder under ``--out``; finished ones are read back, interrupted ones
continue with ``--resume``. Runs on a lent GPU with ``--device cuda``.

    python benchmarks/ground_truth.py --cells 20 --seeds 2 --epochs 4 --out runs/bench/ground_truth
"""
from __future__ import annotations

import argparse
import itertools
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
from cli_runs import finished_run

from spikesearch.cli.main import build_parser
from spikesearch.cli.nasbench import evaluate_proxy, finite
from spikesearch.cli.snasnet import fill_recipe, score_config, scoring_batches
from spikesearch.measure.stats import kendall_tau_b
from spikesearch.nasbench.proxies import ENSEMBLES, proxies
from spikesearch.proxies import combine, per_model_scores, seeded
from spikesearch.snasnet.network import macro_config
from spikesearch.snasnet.parallel import SNASNetBuilder
from spikesearch.snasnet.space import format_cnt_mat, parse_cnt_mat, sample_matrix
from spikesearch.train.pipeline import make_loaders


def sample_cells(n: int, seed: int) -> list[str]:
    """``n`` distinct backward cells, drawn as the search draws them."""
    rng, cells = np.random.default_rng(seed), []
    while len(cells) < n:
        spec = format_cnt_mat(sample_matrix(rng, "backward"))
        if spec not in cells:
            cells.append(spec)
    return cells


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", type=int, default=20)
    ap.add_argument("--seeds", type=int, default=2, help="training seeds per cell (>= 2 for the noise floor)")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--dataset", default="fmnist-small")
    ap.add_argument("--data_dir", default=None)
    ap.add_argument("--train_subset", type=int, default=None, help="train on the first N images only (smoke runs)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0, help="cell sample and scoring seed")
    ap.add_argument("--out", type=Path, default=Path("runs/bench/ground_truth"))
    a = ap.parse_args()
    t0 = time.perf_counter()
    common = ["--dataset", a.dataset, "--epochs", str(a.epochs), "--device", a.device]
    if a.data_dir:
        common += ["--data_dir", a.data_dir]
    if a.train_subset:
        common += ["--train_subset", str(a.train_subset)]
    cells = sample_cells(a.cells, a.seed)
    results = [[finished_run(["snasnet", *common, "--cnt_mat", *cell.split(), "--seed", str(s)],
                             a.out / f"{cell.replace(' ', '_')}_s{s}", "--exp_name") for s in range(a.seeds)]
               for cell in cells]
    # the last epoch's accuracy, and the best epoch's (test accuracy swings between epochs: docs/snasnet.md)
    truths = {key: np.array([[r[key] for r in runs] for runs in results]) for key in ("test_acc", "best_test_acc")}

    # the search's own scoring setup, from the same parser and defaults
    args = build_parser().parse_args(["snasnet", *common, "--seed", str(a.seed)])
    fill_recipe(args)
    device = torch.device(a.device)
    train, _, _, _ = make_loaders(args.dataset, args.data_dir, args.batch_size, device, args.seed, None, None,
                                  frames=args.timestep)
    batches = scoring_batches(train, score_config(args), args.seed)
    build = SNASNetBuilder("backward", macro_config(args.dataset), args.timestep, args.tau, args.threshold,
                           args.surrogate, str(device))
    names = tuple(per_model_scores(labels=False))  # the scoring batches come without labels here
    scores = [proxies(seeded(lambda: build(parse_cnt_mat(cell)), a.seed, cell), batches, names) for cell in cells]
    table = {p: np.array([s[p] for s in scores]) for p in names}
    table.update({name: combine(name, table) for name in ENSEMBLES})
    # structure, not a zero-cost proxy: what the proxies are measured against (docs/snasnet.md)
    backward = np.array([np.count_nonzero(np.tril(parse_cnt_mat(c), -1)) for c in cells])
    table["fewer backward edges"] = -backward
    with_backward = {name: kendall_tau_b(finite(score), backward) for name, score in table.items()}

    lines = [f"`python benchmarks/ground_truth.py --cells {a.cells} --seeds {a.seeds} --epochs {a.epochs} --dataset "
             f"{a.dataset}" + (f" --train_subset {a.train_subset}" if a.train_subset else "") + f"` ({platform.machine()}, "
             f"{torch.get_num_threads()} threads, {a.device}, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}, "
             f"{time.perf_counter() - t0:.0f} s this call)"]
    summary = {}
    for key, acc in truths.items():
        mean = acc.mean(1)
        floor = [kendall_tau_b(acc[:, i], acc[:, j]) for i, j in itertools.combinations(range(a.seeds), 2)]
        lines += ["", f"**{key}**: {a.cells} backward cells, {100 * mean.min():.1f}–{100 * mean.max():.1f} % (mean over "
                  f"{a.seeds} seeds); noise floor, Kendall tau between training seeds: "
                  + (", ".join(f"{t:.3f}" for t in floor) if floor else "n/a (one seed)"), "",
                  "| proxy | Kendall tau | Spearman | pick's accuracy (%) | Kendall tau with #backward edges |",
                  "|---|---:|---:|---:|---:|"]
        summary[key] = {"noise_floor_tau": floor, "proxies": {}}
        for name, score in table.items():
            r = evaluate_proxy(score, mean)
            summary[key]["proxies"][name] = r
            lines.append(f"| {name} | {r['kendall']:.3f} | {r['spearman']:.3f} | {100 * r['pick_acc']:.1f} | "
                         f"{with_backward[name]:.3f} |")
        lines.append(f"| best cell (oracle) | 1 | 1 | {100 * mean.max():.1f} | |")
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "table.md").write_text("\n".join(lines) + "\n")
    (a.out / "ground_truth.json").write_text(json.dumps(
        {"cells": cells, **{k: v.tolist() for k, v in truths.items()}, "summary": summary,
         "proxies": {k: v.tolist() for k, v in table.items()}, "tau_with_backward_edges": with_backward}, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
