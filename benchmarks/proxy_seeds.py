"""How much does a zero-cost proxy's verdict depend on the weights it was scored with? The same SpikeNAS-Bench
sample scored at initialisation with ``--init_seeds`` weight seeds (same cells, same inputs; ``nasbench proxies
--init_seed K``), then per proxy: Kendall tau against the benchmark's test accuracy for each weight seed (mean
± sd), the agreement of the seeds' rankings with each other (mean pairwise Kendall tau between the score
vectors), and the tau of the mean rank over the seeds (what scoring every candidate with several
initialisations would buy). Resumable: every weight seed is a run folder under ``--out``.

    python benchmarks/proxy_seeds.py --bench_dir SpikeNAS-Bench --sample 300 --inputs noise --init_seeds 3
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

from spikesearch.cli.nasbench import INPUTS, evaluate_proxy, finite
from spikesearch.measure.stats import kendall_tau_b, ranks
from spikesearch.nasbench.proxies import ENSEMBLES, PROXIES


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bench_dir", required=True)
    ap.add_argument("--sample", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0, help="sample and input seed (shared by every weight seed)")
    ap.add_argument("--init_seeds", type=int, default=3, help="weight seeds 0..N-1")
    ap.add_argument("--inputs", default="noise", choices=INPUTS)
    ap.add_argument("--width", type=float, default=0.125)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=Path("runs/bench/proxy_seeds"))
    a = ap.parse_args()
    if a.init_seeds < 2:
        ap.error("--init_seeds must be >= 2: the point is how the seeds differ")
    t0 = time.perf_counter()
    common = ["nasbench", "proxies", "--bench_dir", a.bench_dir, "--sample", str(a.sample), "--seed", str(a.seed),
              "--inputs", a.inputs, "--width", str(a.width)] + (["--threads", str(a.threads)] if a.threads else [])
    runs = [finished_run([*common, "--init_seed", str(k)], a.out / f"{a.inputs}_init{k}") for k in range(a.init_seeds)]
    acc = np.array(runs[0]["acc"])
    if any(r["acc"] != runs[0]["acc"] for r in runs):
        raise SystemExit("the weight seeds' runs scored different samples")

    lines = [f"`python benchmarks/proxy_seeds.py --bench_dir {a.bench_dir} --sample {a.sample} --seed {a.seed} --inputs "
             f"{a.inputs} --init_seeds {a.init_seeds} --width {a.width:g}` ({platform.machine()}, "
             f"{torch.get_num_threads()} threads, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}, "
             f"{time.perf_counter() - t0:.0f} s this call)", "",
             f"{len(acc)} SpikeNAS-Bench architectures, {a.inputs} inputs, weight seeds 0..{a.init_seeds - 1}; Kendall tau "
             "against CIFAR-10 test accuracy", "",
             "| proxy | tau per weight seed | mean ± sd | seeds agree (tau between their scores) | tau of the mean rank |",
             "|---|---|---:|---:|---:|"]
    summary = {}
    for name in [*PROXIES, *ENSEMBLES]:
        scores = [finite(r["table"][name]) for r in runs]
        taus = [evaluate_proxy(s, acc)["kendall"] for s in scores]
        agree = [kendall_tau_b(x, y) for x, y in itertools.combinations(scores, 2)]
        pooled = evaluate_proxy(np.mean([ranks(s) for s in scores], axis=0), acc)["kendall"]
        summary[name] = {"tau": taus, "agreement": agree, "tau_mean_rank": pooled}
        lines.append(f"| {name} | {', '.join(f'{t:.3f}' for t in taus)} | {np.mean(taus):.3f} ± {np.std(taus, ddof=1):.3f} | "
                     f"{np.mean(agree):.3f} | {pooled:.3f} |")
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / f"table_{a.inputs}.md").write_text("\n".join(lines) + "\n")
    (a.out / f"proxy_seeds_{a.inputs}.json").write_text(json.dumps(summary, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
