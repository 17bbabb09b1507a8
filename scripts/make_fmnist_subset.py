"""Cut the bundled stratified Fashion-MNIST subset from Debian's ``dataset-fashion-mnist``.

    apt-get install -y dataset-fashion-mnist
    python scripts/make_fmnist_subset.py            # writes src/spikesearch/data/bundled/fashion_mnist_small.npz

Takes the first ``--train-per-class`` / ``--test-per-class`` images of every class after a seeded
shuffle, so the subset is balanced and reproducible.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from spikesearch.data.datasets import read_idx

SRC = Path("/usr/share/datasets/fashion-mnist")
DST = Path(__file__).resolve().parents[1] / "src/spikesearch/data/bundled/fashion_mnist_small.npz"


def stratified(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    picks = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in np.unique(labels)]
    return rng.permutation(np.concatenate(picks))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", type=Path, default=SRC)
    ap.add_argument("--out", type=Path, default=DST)
    ap.add_argument("--train-per-class", type=int, default=500)
    ap.add_argument("--test-per-class", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    rng = np.random.default_rng(a.seed)
    out = {}
    for split, prefix, per_class in (("train", "train", a.train_per_class), ("test", "t10k", a.test_per_class)):
        x = read_idx(a.src / f"{prefix}-images-idx3-ubyte.gz")
        y = read_idx(a.src / f"{prefix}-labels-idx1-ubyte.gz")
        idx = stratified(y, per_class, rng)
        out[f"x_{split}"], out[f"y_{split}"] = x[idx], y[idx]
    np.savez_compressed(a.out, **out)
    print(f"wrote {a.out} ({a.out.stat().st_size:,} B): " + ", ".join(f"{k} {v.shape}" for k, v in out.items()))


if __name__ == "__main__":
    main()
