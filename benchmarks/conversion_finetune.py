"""The table of conversion + spike-based fine-tuning runs (``spikesearch convert ... --finetune_epochs N``), from
their run folders: per run the ANN, the converted and the fine-tuned SNN's test accuracy at T = 1 / 2 / 4 / 8, the
gap to the ANN at T = 4 and 8 and the epoch validation chose; then mean +- sd over the runs (sd over seeds, ddof 1).

    spikesearch convert --job-dir runs/ft_s0 --model ANN.pt --method qcfs --one-step --time 8 \\
        --finetune_epochs 20 --finetune_timesteps 4 --seed 0 ...       # likewise seeds 1, 2
    python benchmarks/conversion_finetune.py runs/ft_s0 runs/ft_s1 runs/ft_s2
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

T_SHOWN = (1, 2, 4, 8)


def _mean_sd(values: list[float], sign: str = "") -> str:
    """Percent, mean +- sd over the runs (``sign`` "+" for gaps)."""
    return f"{100 * statistics.mean(values):{sign}.1f}" + (f" ± {100 * statistics.stdev(values):.1f}" if len(values) > 1 else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path, help="convert run folders with --finetune_epochs")
    a = ap.parse_args()
    rows, anns, gaps4, gaps8 = [], [], [], []  # rows: fine-tuned accuracy per timestep
    print("| run (seed) | method | ANN | converted T = 4 / 8 | fine-tuned T = 1 / 2 / 4 / 8 (epoch) | gap at T = 4 / 8 |")
    print("|---|---|---|---|---|---|")
    for run in a.runs:
        res = json.loads((run / "results.json").read_text())
        cfg = json.loads((run / "config.json").read_text())
        ft = res["finetuned"]
        if ft is None:
            raise SystemExit(f"{run} is a conversion without fine-tuning")
        conv = ft["converted_accuracy"]
        acc = [float(line.split(",")[1]) for line in (run / "accuracy_per_timestep.csv").read_text().splitlines()[1:]]
        if len(acc) < max(T_SHOWN):
            raise SystemExit(f"{run} simulated T = {len(acc)}; the table needs --time >= {max(T_SHOWN)}")
        ann = res["ann_acc"]
        anns.append(ann)
        gaps4.append(ann - acc[3])
        gaps8.append(ann - acc[7])
        print(f"| {run.name} ({cfg['seed']}) | {res['method']}, fine-tuned at T = {ft['timesteps']} | {100 * ann:.2f} | "
              f"{100 * conv[3]:.1f} / {100 * conv[7]:.1f} | " + " / ".join(f"{100 * acc[t - 1]:.1f}" for t in T_SHOWN)
              + f" ({ft['best_epoch']}/{ft['epochs']}) | {100 * gaps4[-1]:+.1f} / {100 * gaps8[-1]:+.1f} |")
        rows.append(acc)
    print(f"| mean ± sd over {len(rows)} | | {_mean_sd(anns)} | | – / – / {_mean_sd([r[3] for r in rows])} / "
          f"{_mean_sd([r[7] for r in rows])} | {_mean_sd(gaps4, '+')} / {_mean_sd(gaps8, '+')} |")


if __name__ == "__main__":
    main()
