"""The SNASNet cell search space: 4x4 connection matrices, the ``--cnt_mat`` notation, sampling and the
sanity filter (Kim et al., ECCV 2022; official ``model_snn.connection_matrix_gen``).

Row = source node, column = destination node. The upper triangle holds forward edges (evaluated in the
same timestep); the lower triangle holds backward edges, whose output reaches the earlier node one
timestep later. Entries are op codes, see ``OP_NAMES``.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..core.errors import SpikeSearchError

NUM_NODES = 4
OP_NAMES = {0: "none", 1: "skip", 2: "conv1x1", 3: "conv3x3", 4: "avgpool"}
NUM_OPS = len(OP_NAMES)
CELLTYPES = ("forward", "backward")

PUBLISHED = {
    "cifar100_bw": ("0302 0030 3003 0000", "backward"),  # CIFAR-100 checkpoint in the official README
    "cifar10_bw": ("0303 0030 2002 0200", "backward"),  # CIFAR-10, run with --second_avgpooling 4
}


def format_cnt_mat(mat: np.ndarray) -> str:
    return " ".join("".join(str(int(v)) for v in row) for row in mat)


def _tokens(spec: str | Sequence) -> list[str]:
    # argparse with the official ``type=list, nargs='+'`` yields lists of characters; accept those,
    # plain strings, one space-separated string, and the published names.
    if isinstance(spec, str):
        spec = spec.split()
    return ["".join(t) if not isinstance(t, str) else t for t in spec]


def parse_cnt_mat(spec: str | Sequence) -> np.ndarray:
    """``"0302 0030 3003 0000"`` (or its 4 tokens, or a published name) -> 4x4 int matrix.

    Only the notation is checked here; ``check_matrix`` applies the search space's rules."""
    toks = _tokens(spec)
    if len(toks) == 1 and toks[0] in PUBLISHED:
        toks = PUBLISHED[toks[0]][0].split()
    if len(toks) != NUM_NODES:
        raise SpikeSearchError(
            f"--cnt_mat needs {NUM_NODES} rows of {NUM_NODES} digits, e.g. '0302 0030 3003 0000'; got {len(toks)} "
            f"token(s): {' '.join(toks)!r} (published names: {', '.join(PUBLISHED)})")
    for i, t in enumerate(toks):
        if len(t) != NUM_NODES or not t.isdigit():
            raise SpikeSearchError(f"--cnt_mat row {i} is {t!r}: each row must be exactly {NUM_NODES} digits")
        bad = [c for c in t if int(c) >= NUM_OPS]
        if bad:
            raise SpikeSearchError(
                f"--cnt_mat row {i} is {t!r}: op code {bad[0]} is not one of "
                + ", ".join(f"{k}={v}" for k, v in OP_NAMES.items()))
    return np.array([[int(c) for c in t] for t in toks], dtype=np.int64)


def prune(mat: np.ndarray) -> np.ndarray:
    """The official sanity filter's pruning: remove nodes 0..2 that cannot reach node 3 and nodes 1..3
    not reachable from node 0 (paths may use backward edges), both judged on the unpruned matrix."""
    a = (mat != 0).astype(np.int64)
    np.fill_diagonal(a, 0)
    reach = a + a @ a + a @ a @ a + a @ a @ a @ a
    out = mat.copy()
    for i in range(NUM_NODES - 1):
        if reach[i, NUM_NODES - 1] == 0:
            out[i, :] = 0
            out[:, i] = 0
    for j in range(1, NUM_NODES):
        if reach[0, j] == 0:
            out[j, :] = 0
            out[:, j] = 0
    return out


def check_celltype(celltype: str) -> str:
    if celltype not in CELLTYPES:
        raise SpikeSearchError(f"--celltype must be one of {', '.join(CELLTYPES)}, got {celltype!r}")
    return celltype


def restrict(mat: np.ndarray, celltype: str) -> np.ndarray:
    """A forward cell has no backward edges: its lower triangle is ignored (zeroed)."""
    check_celltype(celltype)
    return np.triu(mat, 1) if celltype == "forward" else mat


def check_matrix(mat: np.ndarray, celltype: str) -> np.ndarray:
    """Validate a user-given matrix against the space's rules and return it (restricted to celltype)."""
    if np.any(np.diag(mat)):
        raise SpikeSearchError(f"cnt_mat {format_cnt_mat(mat)}: diagonal entries must be 0 (no self-edges)")
    mat = restrict(mat, celltype)
    if mat[0, NUM_NODES - 1] == 0:
        raise SpikeSearchError(
            f"cnt_mat {format_cnt_mat(mat)}: the search space requires a direct input->output edge "
            f"(row 0, column 3 must be non-zero)")
    pruned = prune(mat)
    if not np.array_equal(pruned, mat):
        dead = sorted({int(n) for n in np.argwhere(pruned != mat).ravel()} - {0, NUM_NODES - 1})
        raise SpikeSearchError(
            f"cnt_mat {format_cnt_mat(mat)}: node(s) {dead} are disconnected (not on a path from node 0 to "
            f"node 3); the filter would prune them to {format_cnt_mat(pruned)}")
    return mat


def sample_matrix(rng: np.random.Generator, celltype: str) -> np.ndarray:
    """Draw one candidate exactly as the official code does, with its rejection loop."""
    check_celltype(celltype)
    iu = np.triu_indices(NUM_NODES, 1)
    while True:
        mat = np.zeros((NUM_NODES, NUM_NODES), dtype=np.int64)
        ops = rng.integers(0, NUM_OPS, size=len(iu[0]))
        if celltype == "forward":
            mat[iu] = ops
        else:
            # per node pair a fair coin picks the forward edge i->j or the backward edge j->i
            forward = rng.integers(0, 2, size=len(iu[0])).astype(bool)
            mat[iu[0][forward], iu[1][forward]] = ops[forward]
            mat[iu[1][~forward], iu[0][~forward]] = ops[~forward]
        mat = prune(mat)
        if mat[0, NUM_NODES - 1] != 0:
            return mat


def mutate_matrix(mat: np.ndarray, rng: np.random.Generator, celltype: str) -> np.ndarray:
    """Change one node pair's edge (op and, for backward cells, direction) to a different valid state."""
    iu = list(zip(*np.triu_indices(NUM_NODES, 1)))
    while True:
        child = mat.copy()
        i, j = iu[rng.integers(len(iu))]
        op = int(rng.integers(0, NUM_OPS))
        backward = celltype == "backward" and bool(rng.integers(0, 2))
        child[i, j] = child[j, i] = 0
        if backward:
            child[j, i] = op
        else:
            child[i, j] = op
        child = prune(child)
        if child[0, NUM_NODES - 1] != 0 and not np.array_equal(child, mat):
            return child


def describe(mat: np.ndarray) -> list[str]:
    """Human-readable edges: ``0->1 conv3x3``, ``2->0 conv3x3 (backward, t-1)``."""
    out = []
    for i in range(NUM_NODES):
        for j in range(NUM_NODES):
            if i != j and mat[i, j]:
                out.append(f"{i}->{j} {OP_NAMES[int(mat[i, j])]}" + (" (backward, t-1)" if i > j else ""))
    return out
