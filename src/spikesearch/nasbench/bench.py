"""Reading a local SpikeNAS-Bench clone (Sun et al., IEEE TAI 2025; ``tju-sun-lab/SpikeNAS-Bench``, no licence:
read from the user's clone, never copied).

Layout: ``BENCH/data/CIFAR10/<id>/train_process.txt`` for ids 0..15624 (``CIFAR100``, ``TinyImagenet``: subsets).
Each file: ``architecture id: N``, ``model parameters: P``, a header, one ``epoch, train_acc, train_loss,
val_acc, val_loss`` row per epoch (100, or 200 for 690 of them; Tiny-ImageNet adds top-5 columns and ends in
``test top1: X, test tpo5: Y``), ``test accuracy: X``, the layers' firing rates and the training time. An id is a cell: its 6 base-5 digits, least significant first, are the ops of the forward
edges 0->1, 0->2, 0->3, 1->2, 1->3, 2->3 (0 zero, 1 identity, 2/3/4 LIF with threshold 0.5/1.0/1.5 -> conv3x3 ->
BN), as the repository's ``NAS/utils.get_cntmat_3``; the matrix is trained as it is, unpruned.
"""
from __future__ import annotations

import math
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


# The 15 LIF layers whose firing rates a log lists, in its order (``module_name`` of the benchmark's
# train_all_networks.py: a cell's edges in its module order 0->1, 0->2, 1->2, 0->3, 1->3, 2->3), with the number of
# neurons per timestep and the synapses each spike drives (its fan-out), per dataset; T = 5 timesteps.
CELL_EDGE_ORDER = [(0, 1), (0, 2), (1, 2), (0, 3), (1, 3), (2, 3)]
TIMESTEPS = 5
_FINAL = {"cifar10": (1024, 100), "cifar100": (1024, 500), "tinyimagenet": (4096, 1000)}  # classifier widths
FIRING_LAYERS = [f"cell1 {i}->{j}" for i, j in CELL_EDGE_ORDER] + [f"cell2 {i}->{j}" for i, j in CELL_EDGE_ORDER] + [
    "downconv1", "last_act", "classifier"]


def layer_synapses(dataset: str) -> list[tuple[int, int]]:
    """(neurons, fan-out) of each FIRING_LAYERS layer: a cell-1 LIF (128 x 32 x 32; Tiny-ImageNet's stride-2 stem
    gives the same size) drives a 3x3 conv to 128 channels, a cell-2 LIF (256 x 16 x 16) one to 256, downconv1's
    LIF (128 x 32 x 32) a 3x3 conv to 256, last_act's (256 x 16 x 16) the first linear layer through a 2x2
    average pool, the classifier's LIF the output layer."""
    hidden, out = _FINAL[dataset]
    cell1, cell2 = (128 * 32 * 32, 9 * 128), (256 * 16 * 16, 9 * 256)
    return [cell1] * 6 + [cell2] * 6 + [(128 * 32 * 32, 9 * 256), (256 * 16 * 16, hidden), (hidden, out)]


def energy_estimate(rec: "Record", dataset: str) -> float:
    """Estimated synaptic operations per image, in millions: each logged firing rate (spikes per neuron per
    timestep, on the test set after training) x the layer's neurons x its fan-out x T. An estimate: it ignores
    borders of the 3x3 convolutions, the non-spiking stem and the pooled (non-binary) input of the first linear
    layer, which are the same for every cell; the rates are layer averages, not per-neuron counts."""
    if rec.firing is None:
        raise SpikeSearchError(f"SpikeNAS-Bench {dataset} id {rec.arch_id}: its log has no firing rates")
    return TIMESTEPS * sum(max(r, 0.0) * n * f for r, (n, f) in zip(rec.firing, layer_synapses(dataset))) / 1e6


def rate_sum(rec: "Record", dataset: str) -> float:
    """The sum of the logged firing rates (an absent layer's -1 counts 0): the cruder energy estimate that issue 24's
    hypervolume figures used, kept to compare with them."""
    if rec.firing is None:
        raise SpikeSearchError(f"SpikeNAS-Bench {dataset} id {rec.arch_id}: its log has no firing rates")
    return float(sum(max(r, 0.0) for r in rec.firing))


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


def fed_nodes(mat: np.ndarray) -> set[int]:
    """The nodes a path of non-zero edges leads to from node 0 (the cell's input), node 0 included."""
    reach = {0}
    for _ in range(3):
        reach |= {j for i, j in EDGES if i in reach and mat[i, j]}
    return reach


def reaches_output(mat: np.ndarray) -> bool:
    """Whether any path of non-zero edges leads from node 0 to node 3 (the others train at chance)."""
    return 3 in fed_nodes(mat)


@dataclass
class Record:
    arch_id: int
    params: int
    test_acc: float  # %
    val_acc: list[float] = field(default_factory=list)  # per epoch, %
    train_loss: list[float] = field(default_factory=list)  # per epoch
    firing: list[float] | None = None  # the 15 monitored LIF layers (FIRING_LAYERS), -1 where the layer is absent
    seconds: float | None = None  # the logged training time

    @property
    def epochs(self) -> int:
        return len(self.val_acc)

    def val_at(self, epoch: int) -> float:
        """Validation accuracy after ``epoch`` epochs (1-based; the early-stopping baseline)."""
        return self.val_acc[min(epoch, len(self.val_acc)) - 1]


class Bench(dict):
    """The usable records of one dataset of a clone, by id, and what was left out: ``skipped`` maps a folder
    name to the reason (a log without per-epoch rows, a log labelled with another id); ``missing`` counts the ids
    of a complete table (CIFAR-10) that have no folder."""

    def __init__(self, records: dict[int, Record], dataset: str, skipped: dict[str, str], missing: int = 0):
        super().__init__(records)
        self.dataset, self.skipped, self.missing = dataset, skipped, missing

    def report(self) -> str:
        """One line on what was read and left out (empty when nothing was)."""
        if not self.skipped and not self.missing:
            return ""
        kinds: dict[str, int] = {}
        for why in self.skipped.values():
            kinds[why] = kinds.get(why, 0) + 1
        parts = [f"{n} {why}" for why, n in sorted(kinds.items())]
        if self.missing:
            parts.append(f"{self.missing} of the {NUM_ARCHS} ids have no folder (an incomplete clone: a seeded "
                         "sample differs from a complete clone's)")
        return f"SpikeNAS-Bench {self.dataset}: {len(self)} records read; skipped " + "; ".join(parts)


_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")
_ELAPSED = re.compile(r"([\d.]+)hour([\d.]+)minute([\d.]+)second")
NEEDED = ("epoch", "train_loss", "val_acc")
NO_EPOCH_ROWS = "logs without per-epoch rows"
MISLABELLED = "logs labelled with another id than their folder"


class _Unusable(Exception):
    """A log in the benchmark's format that cannot serve as a record (skipped and reported, not an error)."""

    def __init__(self, why: str, arch_id: int):
        super().__init__(why)
        self.arch_id = arch_id


def parse_log(path: Path) -> Record:
    """One ``train_process.txt`` (CIFAR's 5-column rows or Tiny-ImageNet's 7 with top-5 columns, found by the
    header); a malformed line or an out-of-range value is one clear error naming the file and line."""
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
    columns = [c.strip() for c in lines[2].split(",")]
    if any(c not in columns for c in NEEDED):
        raise fail(2, f"a header naming {', '.join(NEEDED)} (got {lines[2][:60]!r})")
    at = {c: columns.index(c) for c in columns}
    rec = Record(arch_id, params, math.nan)
    epochs: list[float] = []
    for n, line in enumerate(lines[3:], 3):
        if line.startswith("test"):
            nums = _NUMBER.findall(line.split(":", 1)[-1].split(",")[0])  # "test top1: X, test tpo5: Y"
            if not nums:
                raise fail(n, f"no number in {line[:40]!r}")
            rec.test_acc = _percent(float(nums[0]), lambda w: fail(n, w))
            tail = lines[n + 1:]
            break
        nums = _NUMBER.findall(line)
        if len(nums) != len(columns) or len(line.split(",")) != len(columns):
            raise fail(n, f"expected {lines[2].strip()!r} ({len(columns)} numbers), got {line[:60]!r}")
        row = [float(x) for x in nums]
        epochs.append(row[at["epoch"]])
        rec.val_acc.append(_percent(row[at["val_acc"]], lambda w: fail(n, w)))
        loss = row[at["train_loss"]]
        if not math.isfinite(loss) or loss < 0:
            raise fail(n, f"a training loss must be finite and >= 0, got {loss}")
        rec.train_loss.append(loss)
    else:
        raise fail(len(lines) - 1, "no 'test accuracy:' line (an unfinished run?)")
    for k, line in enumerate(tail, n + 1):
        if line.startswith("firing rate of layers:"):
            rates = [float(x) for x in _NUMBER.findall(line.split(":", 1)[1])]
            if any(not (r == -1 or 0 <= r <= 1) for r in rates) or len(rates) < len(FIRING_LAYERS):
                raise fail(k, f"{len(FIRING_LAYERS)} firing rates in [0, 1] (or -1 for an absent layer) expected")
            rec.firing = rates[:len(FIRING_LAYERS)]
        elif (m := _ELAPSED.search(line)) is not None:
            rec.seconds = 3600 * float(m[1]) + 60 * float(m[2]) + float(m[3])
    if epochs != list(range(len(epochs))):
        # 97 Tiny-ImageNet logs hold only the last epoch's row: no fidelity to read below full training
        raise _Unusable(NO_EPOCH_ROWS, arch_id)
    return rec


def _percent(x: float, fail) -> float:
    if not 0 <= x <= 100:
        raise fail(f"an accuracy must lie in [0, 100] %, got {x}")
    return x


def bench_root(bench_dir: str | Path, dataset: str = "cifar10") -> Path:
    if dataset not in DATASETS:
        raise SpikeSearchError(f"SpikeNAS-Bench holds {', '.join(DATASETS)}; got {dataset!r}")
    root = Path(bench_dir) / "data" / DATASETS[dataset]
    if not root.is_dir():
        raise SpikeSearchError(f"{bench_dir} is not a SpikeNAS-Bench clone: no {root}. Expected layout: {LAYOUT}")
    return root


def read_bench(bench_dir: str | Path, dataset: str = "cifar10") -> Bench:
    """Every usable trained architecture of ``dataset`` in the clone, by id. A log without per-epoch rows, or
    labelled with another id than its folder's (one Tiny-ImageNet folder), is skipped and listed in
    ``Bench.skipped``; a malformed one is an error."""
    root = bench_root(bench_dir, dataset)
    out, skipped = {}, {}
    for folder in sorted(root.iterdir()):
        if not folder.name.isdigit():
            continue
        log = folder / "train_process.txt"
        if not log.is_file():
            raise SpikeSearchError(f"{folder} has no train_process.txt. Expected layout: {LAYOUT}")
        try:
            rec = parse_log(log)
        except _Unusable as why:
            skipped[folder.name] = MISLABELLED if why.arch_id != int(folder.name) else str(why)
            continue
        if rec.arch_id != int(folder.name):
            skipped[folder.name] = MISLABELLED
            continue
        out[rec.arch_id] = rec
    if not out:
        raise SpikeSearchError(f"{root} holds no usable <id>/train_process.txt. Expected layout: {LAYOUT}")
    # only CIFAR-10 is a complete table; the others are subsets whose id lists the clone alone defines
    missing = NUM_ARCHS - len(out) - len(skipped) if dataset == "cifar10" else 0
    return Bench(out, dataset, skipped, missing)


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


def read_scores(folder: str | Path, names: list[str] | None = None) -> dict[str, dict[int, float]]:
    """The zero-cost columns of a ``nasbench proxies`` run's proxies.csv (all but id, test_acc and seconds, or
    ``names``), by id. A torn or non-numeric row is one error naming the line (a NaN or inf score is kept: the
    proxy could not score that cell)."""
    import csv

    path = Path(folder) / "proxies.csv"
    if not path.is_file():
        raise SpikeSearchError(f"--scores {folder}: no proxies.csv (run 'spikesearch nasbench proxies' first)")
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows or "id" not in rows[0]:
        raise SpikeSearchError(f"{path}: no header with an 'id' column")
    header = rows[0]
    cols = [c for c in header if c not in ("id", "test_acc", "seconds")] if names is None else names
    missing = [c for c in cols if c not in header]
    if missing:
        raise SpikeSearchError(f"--scores {folder}: proxies.csv holds no column {missing[0]!r} (it holds "
                               f"{', '.join(c for c in header if c not in ('id', 'test_acc', 'seconds'))})")
    out: dict[str, dict[int, float]] = {c: {} for c in cols}
    for n, row in enumerate(rows[1:], 2):
        try:
            if len(row) != len(header):
                raise ValueError(f"{len(row)} fields, the header has {len(header)}")
            arch = int(row[header.index("id")])
            for c in cols:
                out[c][arch] = float(row[header.index(c)])
        except ValueError as e:
            raise SpikeSearchError(f"{path}:{n}: a torn or non-numeric row ({e})") from None
    return out
