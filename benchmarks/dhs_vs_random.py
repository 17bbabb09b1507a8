"""Does the SpikeDHS search beat random genotypes from the same space? One search, ``--random`` random
genotypes, and every genotype retrained with ``--seeds`` training seeds; reports mean +- standard
deviation (over the seeds) of test accuracy, spikes and energy per image. Resumable: finished runs are
read back, not redone.

    python benchmarks/dhs_vs_random.py --random 3 --seeds 3 --out runs/bench/dhs_vs_random
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from cli_runs import finished_run

from spikesearch.cli.main import main as cli


def mean_sd(values: list[float], scale: float = 1.0, fmt: str = ".1f") -> str:
    m = statistics.mean(values) * scale
    sd = statistics.stdev(values) * scale if len(values) > 1 else 0.0
    return f"{m:{fmt}} ± {sd:{fmt}}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--random", type=int, default=3, help="random genotypes (seeds 0..N-1)")
    ap.add_argument("--seeds", type=int, default=3, help="training seeds per genotype")
    ap.add_argument("--search_args", default="", help="extra flags for dhs search, e.g. '--dgs --tps'")
    ap.add_argument("--out", type=Path, default=Path("runs/bench/dhs_vs_random"))
    a = ap.parse_args()
    t0 = time.perf_counter()
    search = a.out / "search"
    finished_run(["dhs", "search", *a.search_args.split()], search)
    genotypes = {"searched": search / "genotype.json"}
    for s in range(a.random):
        folder = a.out / f"random{s}"
        if not (folder / "genotype.json").is_file():
            assert cli(["dhs", "derive", "--random", "--seed", str(s), "--runs_dir", str(a.out), "--name", folder.name,
                        "--quiet"]) == 0
        genotypes[f"random seed {s}"] = folder / "genotype.json"
    lines = ["| genotype | path | params | test acc (%) | spikes / image | energy / image (µJ) | ANN equivalent (µJ) |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for name, g in genotypes.items():
        results = [finished_run(["dhs", "train", "--genotype", str(g), "--seed", str(s), "--stem_stride", "2"],
                       a.out / f"train_{name.replace(' ', '_')}_s{s}") for s in range(a.seeds)]
        path = json.loads(g.read_text())["path"]
        lines.append(f"| {name} | {path} | {results[0]['parameters']:,} | "
                     f"{mean_sd([r['test_acc'] for r in results], 100)} | "
                     f"{mean_sd([r['spikes']['spikes_per_image'] for r in results], 1e-3, '.1f')} k | "
                     f"{mean_sd([r['spikes']['energy_uj_per_image'] for r in results], 1, '.2f')} | "
                     f"{results[0]['spikes']['ann_equivalent_energy_uj_per_image']:.2f} |")
    head = [f"`python benchmarks/dhs_vs_random.py --random {a.random} --seeds {a.seeds}"
            + (f" --search_args '{a.search_args}'" if a.search_args else "") + "` "
            f"({platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
            f"{time.strftime('%Y-%m-%d')}, {time.perf_counter() - t0:.0f} s this call); mean ± sd over {a.seeds} "
            "training seeds", ""]
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "table.md").write_text("\n".join(head + lines) + "\n")
    print("\n".join(head + lines))


if __name__ == "__main__":
    main()
