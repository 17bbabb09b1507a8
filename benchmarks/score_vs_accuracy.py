"""Does the training-free score predict accuracy? Kendall tau of score vs trained accuracy.

Samples ``--archs`` distinct cells from the SNASNet space, scores each at initialisation four ways
(SAHD mean = official code, SAHD sum = paper, plain Hamming = NASWOT-style, parameter count as the
baseline), trains each briefly on the bundled data with the same recipe and seed, and reports the
Kendall tau-b of every score against test accuracy. Writes a CSV and a markdown table.

    python benchmarks/score_vs_accuracy.py --archs 20 --epochs 2 --train_subset 2000
"""
from __future__ import annotations

import argparse
import csv
import platform
import time
import zlib
from pathlib import Path

import numpy as np
import torch

from spikesearch.pipeline import make_loaders
from spikesearch.run import Run
from spikesearch.snasnet import (
    ScoreConfig,
    SNASNet,
    format_cnt_mat,
    macro_config,
    sample_matrix,
    score_model,
)
from spikesearch.snasnet.command import scoring_batches
from spikesearch.stats import kendall_tau_b
from spikesearch.trainer import TrainConfig, Trainer, seed_everything

SCORES = {
    "SAHD mean (official code)": ScoreConfig(aggregate="mean"),
    "SAHD sum (paper)": ScoreConfig(aggregate="sum"),
    "plain Hamming (NASWOT)": ScoreConfig(normalise="none", aggregate="sum"),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", type=int, default=20)
    ap.add_argument("--celltype", default="backward")
    ap.add_argument("--dataset", default="fmnist-small")
    ap.add_argument("--data_dir", default=None)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--train_subset", type=int, default=2000)
    ap.add_argument("--timestep", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("runs/bench_score_vs_accuracy"))
    a = ap.parse_args()
    torch.set_num_threads(2)
    device = torch.device("cpu")
    train, test, _ = make_loaders(a.dataset, a.data_dir, 64, device, a.seed, a.train_subset, None)
    macro = macro_config(a.dataset)
    rng = np.random.default_rng(a.seed)
    mats: dict[str, np.ndarray] = {}
    while len(mats) < a.archs:
        m = sample_matrix(rng, a.celltype)
        mats.setdefault(format_cnt_mat(m), m)
    batches = scoring_batches(train, ScoreConfig(), a.seed)
    a.out.mkdir(parents=True, exist_ok=True)
    rows = []
    t_start = time.time()
    for i, (key, mat) in enumerate(mats.items()):
        row = {"cnt_mat": key}
        for name, cfg in SCORES.items():
            torch.manual_seed(zlib.crc32(f"{a.seed}:{key}".encode()))
            row[name] = score_model(SNASNet(mat, a.celltype, macro, a.timestep), batches, cfg)
        seed_everything(a.seed)
        model = SNASNet(mat, a.celltype, macro, a.timestep)
        row["parameters"] = sum(p.numel() for p in model.parameters())
        cfg = TrainConfig(epochs=a.epochs, optimizer="adam", lr=3e-3, weight_decay=0.0, seed=a.seed, progress=False)
        train.generator.manual_seed(a.seed)
        result = Trainer(model, train, test, cfg, Run(f"arch{i:03d}", a.out, quiet=True, overwrite=True)).fit()
        row["test_acc"] = result["final_test_acc"]
        rows.append(row)
        print(f"[{i + 1}/{len(mats)}] {key}  acc {100 * row['test_acc']:.2f}%  "
              + "  ".join(f"{k.split(' (')[0]} {row[k]:.3f}" for k in SCORES), flush=True)
    with open(a.out / "scores.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    acc = np.array([r["test_acc"] for r in rows])
    lines = [f"| score | Kendall tau-b vs test accuracy ({len(rows)} archs) |", "|---|---|"]
    for name in [*SCORES, "parameters"]:
        lines.append(f"| {name} | {kendall_tau_b(np.array([r[name] for r in rows], dtype=float), acc):+.3f} |")
    lines += ["", f"Accuracy range {100 * acc.min():.1f}-{100 * acc.max():.1f}% "
              f"(mean {100 * acc.mean():.1f}%); {a.celltype} cells, {a.dataset} {a.train_subset} train images, "
              f"{a.epochs} epochs Adam 3e-3, T={a.timestep}; {time.time() - t_start:.0f} s on "
              f"{platform.machine()} ({torch.get_num_threads()} threads), torch {torch.__version__}."]
    table = "\n".join(lines)
    (a.out / "table.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
