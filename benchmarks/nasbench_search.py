"""Search simulations on SpikeNAS-Bench, every proxy in one plot: random search guided by each training-free
proxy of a ``nasbench proxies`` run (over the architectures it scored), by #params and by 10-epoch validation
accuracy (over the whole table), against random choice and the table's best.

    spikesearch nasbench proxies --bench_dir B --sample 300 --seed 0 --width 0.125 --inputs noise --name nasbench-proxies
    python benchmarks/nasbench_search.py --bench_dir B --scores runs/nasbench-proxies --budget 100 --repeats 100
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from spikesearch.cli.main import main as cli
from spikesearch.measure.plots import _save, plt
from spikesearch.nasbench.proxies import PROXIES

TABLE = ("params", "valacc10")  # given by the benchmark's logs for every cell: drawn from the whole table
SCORED = tuple(n for n in PROXIES if n not in TABLE)  # the zero-cost table's scores of the proxies run's sample


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bench_dir", required=True)
    ap.add_argument("--scores", type=Path, default=Path("runs/nasbench-proxies"))
    ap.add_argument("--budget", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=100)
    ap.add_argument("--out", type=Path, default=Path("runs/bench/nasbench_search"))
    a = ap.parse_args()
    results = {}
    for proxy in (*SCORED, *TABLE):
        name = f"search_{proxy}"
        args = ["nasbench", "search", "--bench_dir", a.bench_dir, "--proxy", proxy, "--budget", str(a.budget),
                "--repeats", str(a.repeats), "--runs_dir", str(a.out), "--name", name, "--quiet", "--overwrite"]
        if proxy in SCORED:
            args += ["--scores", str(a.scores)]
        if cli(args) != 0:
            raise SystemExit(f"failed: spikesearch {' '.join(args)}")
        results[proxy] = json.loads((a.out / name / "results.json").read_text())

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), sharey=True)
    x = np.arange(1, a.budget + 1)
    for ax, group, where in ((axes[0], SCORED, f"the {a.scores.name} sample"), (axes[1], TABLE, "all 15,625 cells")):
        for proxy in group:
            ax.plot(x, results[proxy]["mean"]["strategy"], label=proxy)
        ref = results[group[0]]
        ax.plot(x, ref["mean"]["random"], color="grey", ls=":", label="random choice")
        ax.axhline(ref["best"], color="k", ls="--", lw=1, label=f"table best {ref['best']:.2f}")
        ax.set_xscale("log")
        ax.set_xlabel("architectures evaluated")
        ax.set_title(f"random search over {where}, mean of {a.repeats} repeats", fontsize=9)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("test accuracy of the pick (%)")
    axes[0].set_ylim(84, max(r["best"] for r in results.values()) + 0.3)
    _save(fig, a.out / "search.png")

    marks = [b for b in (10, 100, 1000) if b <= a.budget]
    lines = ["| proxy | drawn from | " + " | ".join(f"pick after {b} (mean ± sd)" for b in marks) + " | random choice | table best |",
             "|---|---|" + "---|" * len(marks) + "---|---|"]
    for proxy, r in results.items():
        m, sd = r["mean"]["strategy"], r["sd"]["strategy"]
        lines.append(f"| {proxy} | {'scored sample' if proxy in SCORED else 'whole table'} | "
                     + " | ".join(f"{m[b - 1]:.2f} ± {sd[b - 1]:.2f}" for b in marks)
                     + f" | {np.mean(r['mean']['random']):.2f} | {r['best']:.2f} |")
    head = (f"`python benchmarks/nasbench_search.py --scores {a.scores} --budget {a.budget} --repeats {a.repeats}` "
            f"({time.strftime('%Y-%m-%d')})")
    (a.out / "table.md").write_text(head + "\n\n" + "\n".join(lines) + "\n")
    print(head + "\n\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
