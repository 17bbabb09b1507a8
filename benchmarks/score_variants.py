"""How much each departure from the official scoring arithmetic moves the SNASNet ranking.

The official hook (``model_snn.find_best_neuroncell``) scores with dropout on (train mode), carries membranes
and dropout masks from the first scoring batch into the second (no reset since July 2022), and builds each
call's kernel in float32. ``spikesearch snasnet`` scores with dropout off, state reset before every batch and
float64 kernels by default; ``--score_official`` switches all three back. This script scores the same
candidates (same weights, same batches) under each variant and reports the rank agreement with the official
arithmetic, whether the best cell is the same, the score change from float32 kernels, and the score shift from
dropout grouped by the number of LIF modules the official code would hook.

    python benchmarks/score_variants.py --candidates 40 --batch 32 --out runs/bench/score_variants
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from spikesearch.data.datasets import load_dataset
from spikesearch.data.loader import Augment
from spikesearch.measure.stats import kendall_tau_b, spearman, top_k_overlap
from spikesearch.snasnet.network import macro_config
from spikesearch.snasnet.parallel import SNASNetBuilder
from spikesearch.proxies import ScoreConfig
from spikesearch.snasnet.search import SearchConfig, draw_random, score_candidate
from spikesearch.snasnet.space import format_cnt_mat, parse_cnt_mat

OFFICIAL = ScoreConfig(dropout=True, reset=False, kernel_dtype="float32")
VARIANTS = {
    "official arithmetic (--score_official)": OFFICIAL,
    "ours: dropout off, reset, float64 (default)": ScoreConfig(),
    "official but dropout off": replace(OFFICIAL, dropout=False),
    "official but reset between batches": replace(OFFICIAL, reset=True),
    "official but float64 kernels": replace(OFFICIAL, kernel_dtype="float64"),
    "ours but dropout on": ScoreConfig(dropout=True),
}


def hooked_lifs(build, key: str) -> int:
    """LIF modules the official code hooks: one per spiking edge of both cells, plus 3 macro LIFs."""
    net = build(parse_cnt_mat(key))
    return int(sum(getattr(m, "score_weight", 1) for m in net.modules() if hasattr(m, "v_threshold")))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--candidates", type=int, default=40)
    ap.add_argument("--batch", type=int, nargs="+", default=[32, 256], help="scoring batch sizes (official 256)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("runs/bench/score_variants"))
    a = ap.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    train, _, info = load_dataset("fmnist-small")
    augment = Augment.for_dataset(info)
    build = SNASNetBuilder("backward", macro_config("fmnist-small"), 5, 4 / 3, 1.0, "atan:2")
    cfg = SearchConfig(num_search=20 * a.candidates, seed=a.seed)
    keys = list(dict.fromkeys(format_cnt_mat(m) for m in draw_random(cfg, np.random.default_rng(a.seed))))[:a.candidates]
    lifs = {k: hooked_lifs(build, k) for k in keys}
    lines = [f"# Scoring variants vs the official arithmetic ({len(keys)} backward cells, fmnist-small preset, T=5)", "",
             f"`python benchmarks/score_variants.py --candidates {a.candidates} --batch {' '.join(map(str, a.batch))}`; "
             f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
             f"{time.strftime('%Y-%m-%d')}", ""]
    record: dict = {"keys": keys, "lifs": lifs, "batches": {}}
    for batch in a.batch:
        g = torch.Generator().manual_seed(a.seed)
        idx = torch.randperm(len(train), generator=g)[: batch * a.repeats]
        images = torch.stack([train[int(i)][0] for i in idx])
        batches = [augment(chunk, False) for chunk in images.split(batch)]
        scores, seconds = {}, {}
        for name, score in VARIANTS.items():
            t0 = time.perf_counter()
            scores[name] = [score_candidate(build, batches, replace(cfg, score=replace(score, batch_size=batch)), k) for k in keys]
            seconds[name] = time.perf_counter() - t0
        ref = np.array(scores[next(iter(VARIANTS))])
        lines += [f"## batch {batch}", "", "| variant | Spearman vs official | Kendall vs official | same best | top-5 overlap | s |",
                  "|---|---|---|---|---|---|"]
        for name, s in scores.items():
            s = np.array(s)
            lines.append(f"| {name} | {spearman(s, ref):.4f} | {kendall_tau_b(s, ref):.4f} | "
                         f"{'yes' if int(np.argmax(s)) == int(np.argmax(ref)) else 'no'} | {top_k_overlap(s, ref, 5):.1f} | "
                         f"{seconds[name]:.0f} |")
        f32 = np.abs(ref - np.array(scores["official but float64 kernels"]))
        lines += ["", f"float32 vs float64 kernels (official otherwise): mean |score change| {f32.mean():.4f}, "
                  f"max {f32.max():.4f}; official best `{keys[int(np.argmax(ref))]}`, ours "
                  f"`{keys[int(np.argmax(scores['ours: dropout off, reset, float64 (default)']))]}`", ""]
        shift = defaultdict(list)
        for k, on, off in zip(keys, scores["ours but dropout on"], scores["ours: dropout off, reset, float64 (default)"]):
            shift[lifs[k]].append(on - off)
        lines += ["| hooked LIF modules | cells | mean score change from dropout (on - off) |", "|---|---|---|"]
        lines += [f"| {n} | {len(v)} | {np.mean(v):+.3f} |" for n, v in sorted(shift.items())]
        lines.append("")
        record["batches"][batch] = {"scores": scores, "seconds": seconds}
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "table.md").write_text("\n".join(lines) + "\n")
    (a.out / "scores.json").write_text(json.dumps(record, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
