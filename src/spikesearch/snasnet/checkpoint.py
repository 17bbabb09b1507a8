"""The official code's state-dict names mapped onto ours, so its published ``.pth.tar`` files
(``{'state_dict': ...}``, saved from ``search_snn.py``'s ``SNASNet``) load with ``--savemodel_pth``.

Official names: ``stem.{0,1}``, ``cell{1,2}.cell_architecture.K.{1,2}`` (forward edge K, a
``Sequential(LIF, Conv, BN)``), ``cell{1,2}.cell_architecture_back.K.{1,2}`` (backward edge K),
``downconv1.{0,2,3}``, ``last_act.0``, ``classifier.{1,3}``. Edge K follows the official loops:
forward ``for col in 1..3: for row < col`` and backward ``for col in 0..2: for row > col``, each edge
reading ``con_mat[row, col]`` (row = source, column = destination, as ``--cnt_mat``). Zero edges
(``ScaleLayer``), identities and average pools hold no tensors on either side.
"""
from __future__ import annotations

import re

from torch import Tensor

FORWARD_ORDER = [(row, col) for col in range(1, 4) for row in range(col)]
BACKWARD_ORDER = [(row, col) for col in range(3) for row in range(col + 1, 4)]
# official macro modules -> ours (the LIF in downconv1[1] and classifier[2] holds no tensors)
MACRO = {"downconv1.": "downconv.", "classifier.1.": "classifier.2.", "classifier.3.": "classifier.4."}
_EDGE = re.compile(r"^(cell[12])\.cell_architecture(_back)?\.(\d+)\.([12])\.(.+)$")


def is_official(state: dict) -> bool:
    return any(".cell_architecture" in k or k.startswith(("downconv1.", "module.downconv1.")) for k in state)


def from_official(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Official names -> ours; a name the map does not know is kept, so a mismatch is reported by name."""
    out = {}
    for key, value in state.items():
        key = key.removeprefix("module.")  # saved from DataParallel
        edge = _EDGE.match(key)
        if edge:
            cell, back, k, sub, rest = edge.groups()
            order = BACKWARD_ORDER if back else FORWARD_ORDER
            if int(k) < len(order):
                row, col = order[int(k)]
                out[f"{cell}.edges.{row}{col}.{int(sub) - 1}.{rest}"] = value  # official [0] is the edge's LIF
                continue
        prefix = next((p for p in MACRO if key.startswith(p)), None)
        out[MACRO[prefix] + key[len(prefix):] if prefix else key] = value
    return out


def state_of(checkpoint: dict) -> dict[str, Tensor]:
    """The weights of a checkpoint: ours (``model``), the official ``state_dict``, or a bare state dict."""
    state = checkpoint.get("state_dict", checkpoint.get("model", checkpoint))
    return from_official(state) if isinstance(state, dict) and is_official(state) else state
