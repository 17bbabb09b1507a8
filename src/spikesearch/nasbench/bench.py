"""Reading a local SpikeNAS-Bench clone (Sun et al., IEEE TAI 2025; ``tju-sun-lab/SpikeNAS-Bench``, no licence:
read from the user's clone, never copied).

Layout: ``BENCH/data/CIFAR10/<id>/train_process.txt`` for ids 0..15624 (``CIFAR100``, ``TinyImagenet``: subsets).
Each file: ``architecture id: N``, ``model parameters: P``, a header, one ``epoch, train_acc, train_loss,
val_acc, val_loss`` row per epoch (100, or 200 for 690 of them), ``test accuracy: X``, the layers' firing rates and
the training time. An id is a cell: its 6 base-5 digits, least significant first, are the ops of the forward
edges 0->1, 0->2, 0->3, 1->2, 1->3, 2->3 (0 zero, 1 identity, 2/3/4 LIF with threshold 0.5/1.0/1.5 -> conv3x3 ->
BN), as the repository's ``NAS/utils.get_cntmat_3``; the matrix is trained as it is, unpruned.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.errors import SpikeSearchError

EDGES = [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
NUM_ARCHS = 5 ** len(EDGES)
DATASETS = {"cifar10": "CIFAR10", "cifar100": "CIFAR100", "tinyimagenet": "TinyImagenet"}
LAYOUT = "BENCH/data/{CIFAR10,CIFAR100,TinyImagenet}/<id>/train_process.txt (a clone of tju-sun-lab/SpikeNAS-Bench)"
CLASSES = {"cifar10": 10, "cifar100": 100, "tinyimagenet": 200}  # a collapsed network scores 100 / classes %


def cell_of(arch_id: int) -> np.ndarray:
    """The 4x4 op matrix of an id (row = source, column = destination)."""
    if not 0 <= arch_id < NUM_ARCHS:
        raise SpikeSearchError(f"SpikeNAS-Bench ids are 0..{NUM_ARCHS - 1}, got {arch_id}")
    mat = np.zeros((4, 4), dtype=np.int64)
    for i, j in EDGES:
        mat[i, j] = arch_id % 5
        arch_id //= 5
    return mat


def id_of(mat: np.ndarray) -> int:
    return int(sum(int(mat[i, j]) * 5 ** k for k, (i, j) in enumerate(EDGES)))


def reaches_output(mat: np.ndarray) -> bool:
    """Whether any path of non-zero edges leads from node 0 to node 3 (the others train at chance)."""
    reach = {0}
    for _ in range(3):
        reach |= {j for i, j in EDGES if i in reach and mat[i, j]}
    return 3 in reach


@dataclass
class Record:
    arch_id: int
    params: int
    test_acc: float  # %
    val_acc: list[float] = field(default_factory=list)  # per epoch, %

    def val_at(self, epoch: int) -> float:
        """Validation accuracy after ``epoch`` epochs (1-based; the early-stopping baseline)."""
        return self.val_acc[min(epoch, len(self.val_acc)) - 1]


_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def parse_log(path: Path) -> Record:
    """One ``train_process.txt``; a malformed line is one clear error naming the file and line."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise SpikeSearchError(f"cannot read {path}: {getattr(e, 'strerror', None) or e}") from None

    def fail(n: int, what: str) -> SpikeSearchError:
        return SpikeSearchError(f"{path}:{n + 1}: {what} (SpikeNAS-Bench's train_process.txt format)")

    if len(lines) < 4 or not lines[0].startswith("architecture id:") or not lines[1].startswith("model parameters:"):
        raise fail(0, "expected 'architecture id: N' and 'model parameters: P' on the first two lines")
    try:
        arch_id, params = int(lines[0].split(":")[1]), int(lines[1].split(":")[1])
    except ValueError:
        raise fail(0, "the id and parameter count must be integers") from None
    val, test = [], None
    for n, line in enumerate(lines[3:], 3):
        if line.startswith("test accuracy:"):
            nums = _NUMBER.findall(line)
            if not nums:
                raise fail(n, "no number after 'test accuracy:'")
            test = float(nums[0])
            break
        nums = _NUMBER.findall(line)
        if len(nums) != 5:
            raise fail(n, f"expected 'epoch, train_acc, train_loss, val_acc, val_loss', got {line[:60]!r}")
        val.append(float(nums[3]))
    if test is None:
        raise fail(len(lines) - 1, "no 'test accuracy:' line (an unfinished run?)")
    return Record(arch_id, params, test, val)


def bench_root(bench_dir: str | Path, dataset: str = "cifar10") -> Path:
    if dataset not in DATASETS:
        raise SpikeSearchError(f"SpikeNAS-Bench holds {', '.join(DATASETS)}; got {dataset!r}")
    root = Path(bench_dir) / "data" / DATASETS[dataset]
    if not root.is_dir():
        raise SpikeSearchError(f"{bench_dir} is not a SpikeNAS-Bench clone: no {root}. Expected layout: {LAYOUT}")
    return root


def read_bench(bench_dir: str | Path, dataset: str = "cifar10") -> dict[int, Record]:
    """Every trained architecture of ``dataset`` in the clone, by id (its folder name must match the id in it)."""
    root = bench_root(bench_dir, dataset)
    out = {}
    for folder in root.iterdir():
        if not folder.name.isdigit():
            continue
        log = folder / "train_process.txt"
        if not log.is_file():
            raise SpikeSearchError(f"{folder} has no train_process.txt. Expected layout: {LAYOUT}")
        rec = parse_log(log)
        if rec.arch_id != int(folder.name):
            raise SpikeSearchError(f"{log}: architecture id {rec.arch_id} in folder {folder.name}")
        out[rec.arch_id] = rec
    if not out:
        raise SpikeSearchError(f"{root} holds no <id>/train_process.txt. Expected layout: {LAYOUT}")
    return out


def stratified_sample(records: dict[int, Record], n: int, seed: int, strata: int = 10) -> list[int]:
    """``n`` ids drawn evenly from ``strata`` bands of test accuracy (seeded), so that a sample of a few
    hundred covers the whole range, collapsed networks included in proportion."""
    ids = sorted(records, key=lambda i: (records[i].test_acc, i))
    rng = np.random.default_rng(seed)
    bands = np.array_split(np.array(ids), strata)
    take = np.array_split(np.arange(min(n, len(ids))), strata)
    out: list[int] = []
    for band, share in zip(bands, take):
        out += rng.choice(band, size=min(len(share), len(band)), replace=False).tolist()
    return sorted(out)
