"""Our SNASNet cell space (forward or backward cells) for the search layer, trained for real.

The fidelities: a zero-cost score at initialisation (the pre-filter), k training epochs that continue from the
cell's checkpoint at the lower rung, and full training. Every rung runs on the learning-rate schedule planned for
full training (``Trainer.fit(until=k)``), so a cell promoted to full training ends exactly as one trained fully
in one go. Each cell trains in its own folder of the run (``cells/<cnt_mat>/``: checkpoints, metrics.csv,
log.txt, energy.json), so a search run again on the same folder (``--resume``) re-reads what was trained instead
of training it again. The signals come from the validation split; the test set is read only by ``truth``, after
the search has chosen. Energy is measured, not estimated: the synaptic operations per image (SpikeCounter) on
the validation images at the rung's epoch."""
from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Callable, Hashable

import numpy as np
import optuna
from torch import nn

from ..core.errors import Diverged, SpikeSearchError
from ..measure.spikes import SpikeCounter
from ..proxies import ScoreConfig, score_model, seeded
from ..runs import Part, Run, atomic_write_bytes, dump_json
from ..snasnet.space import NUM_NODES, NUM_OPS, format_cnt_mat, mutate_matrix, parse_cnt_mat, prune, sample_matrix
from ..train.pipeline import Loaders
from ..train.trainer import TrainConfig, Trainer, evaluate
from .space import Evaluation, Space

PAIRS = [(int(i), int(j)) for i, j in zip(*np.triu_indices(NUM_NODES, 1))]


def _pair(i: int, j: int) -> str:
    return f"pair_{i}{j}"


class CellSpace(Space):
    """SNASNet cells of one ``celltype``. A cell is its ``--cnt_mat`` string; as Optuna parameters, one per node
    pair i<j: 0 no edge, 1-4 the forward edge i->j's operation, and in backward cells 5-8 the backward edge
    j->i's operation 1-4 (a pair holds one edge, as the official sampler draws them). Parameters that do not give
    a cell of the space (a node off every input-output path, no input->output edge) decode to None."""

    name = "snasnet"

    def __init__(self, build: Callable[[np.ndarray], nn.Module], loaders: Loaders, train: TrainConfig, run: Run,
                 timesteps: int, celltype: str = "backward", num_candidates: int = 100,
                 score: ScoreConfig | None = None, batches: list | None = None, seed: int = 0,
                 energy_at_rungs: bool = False) -> None:
        if loaders.val is None:
            raise SpikeSearchError("the search ranks cells on a validation split: give --val_fraction above 0")
        if train.eval_interval != 1:
            raise SpikeSearchError("the search reads a cell's validation accuracy at every rung: eval_interval must be 1")
        self.build, self.loaders, self.train, self.run = build, loaders, train, run
        self.timesteps, self.celltype, self.num_candidates = timesteps, celltype, num_candidates
        self.score, self.batches, self.seed, self.energy_at_rungs = score or ScoreConfig(), batches or [], seed, energy_at_rungs
        self.max_epochs = train.epochs
        self.reached: dict[Hashable, int] = {}
        self._zero_cost: dict[tuple[str, str], float] = {}
        self._truth: dict[str, float] = {}
        self.choices = tuple(range(NUM_OPS + (NUM_OPS - 1 if celltype == "backward" else 0)))
        self._first_order = loaders.train.state_dict()  # every cell starts on the same batch order

    # --- the encoding ----------------------------------------------------------------------------------
    def distributions(self) -> dict[str, optuna.distributions.CategoricalDistribution]:
        return {_pair(i, j): optuna.distributions.CategoricalDistribution(self.choices) for i, j in PAIRS}

    def encode(self, arch: Hashable) -> dict[str, Any]:
        mat = parse_cnt_mat(arch)
        return {_pair(i, j): int(mat[i, j]) if mat[i, j] else (NUM_OPS - 1 + int(mat[j, i]) if mat[j, i] else 0)
                for i, j in PAIRS}

    def decode(self, params: dict[str, Any]) -> Hashable | None:
        mat = np.zeros((NUM_NODES, NUM_NODES), dtype=np.int64)
        for i, j in PAIRS:
            v = int(params[_pair(i, j)])
            if v >= NUM_OPS:
                mat[j, i] = v - (NUM_OPS - 1)
            else:
                mat[i, j] = v
        if mat[0, NUM_NODES - 1] == 0 or not np.array_equal(prune(mat), mat):
            return None
        return format_cnt_mat(mat)

    def sample(self, rng: np.random.Generator, pool: list[Hashable] | None = None) -> Hashable:
        if pool is not None:
            return pool[int(rng.integers(len(pool)))]
        return format_cnt_mat(sample_matrix(rng, self.celltype))

    def mutate(self, arch: Hashable, rng: np.random.Generator) -> Hashable:
        return format_cnt_mat(mutate_matrix(parse_cnt_mat(arch), rng, self.celltype))

    def candidates(self, rng: np.random.Generator) -> list[Hashable]:
        """``num_candidates`` distinct cells drawn as the official sampler draws them (seeded by ``rng``)."""
        seen: dict[str, None] = {}
        for _ in range(50 * self.num_candidates):
            seen.setdefault(format_cnt_mat(sample_matrix(rng, self.celltype)), None)
            if len(seen) == self.num_candidates:
                break
        return list(seen)

    def _fresh(self, arch: str) -> nn.Module:
        """The cell at initialisation, weights seeded from (seed, cell): the same in any process and order."""
        return seeded(lambda: self.build(parse_cnt_mat(arch)), self.seed, arch)

    def zero_cost(self, name: str, archs: list[Hashable]) -> np.ndarray:
        """``params`` (the trainable parameters) or a per-model score of ``proxies.SCORES`` on the fixed scoring
        batches, weights seeded from (seed, cell) as ``spikesearch snasnet`` scores them."""
        out = []
        for arch in archs:
            if (name, arch) not in self._zero_cost:
                model = self._fresh(arch)
                if name == "params":
                    value = float(sum(p.numel() for p in model.parameters()))
                else:
                    if not self.batches:
                        raise SpikeSearchError(f"zero-cost score {name!r} needs scoring batches")
                    value = score_model(model, self.batches, ScoreConfig(**{**dataclasses.asdict(self.score), "score": name,
                                        "alpha": None, "normalise": None, "aggregate": None}))
                self._zero_cost[(name, arch)] = value
            out.append(self._zero_cost[(name, arch)])
        return np.array(out, dtype=float)

    # --- training --------------------------------------------------------------------------------------
    def _trainer(self, arch: str) -> Trainer:
        part = Part(self.run, f"cells/{arch.replace(' ', '-')}", {
            "cnt_mat": arch, "celltype": self.celltype, "seed": self.seed, "train": dataclasses.asdict(self.train),
            "model": self._model_record(), "images": {k: len(getattr(self.loaders, k).data) for k in ("train", "val")}})
        model = self._fresh(arch)
        trainer = Trainer(model, self.loaders.train, None, self.train, part, val=self.loaders.val)
        if trainer.resume_path.is_file():
            trainer.resume()  # its weights, optimiser, schedule, RNG and batch order at the rung it reached
        else:
            self.loaders.train.load_state_dict(self._first_order)
        return trainer

    def _model_record(self) -> dict | str:
        """What builds the cells, as a cell folder records it: not the device (a resume may move to another)."""
        if dataclasses.is_dataclass(self.build):
            return {k: v for k, v in dataclasses.asdict(self.build).items() if k != "device"}
        return repr(self.build)

    def evaluate(self, arch: Hashable, epochs: int) -> Evaluation:
        e = min(int(epochs), self.max_epochs)
        before = self.reached.get(arch, 0)
        self.reached[arch] = max(before, e)
        trainer = self._trainer(arch)
        failed = trainer.run.file("diverged.json")
        if not failed.is_file() and trainer.start_epoch < e:
            try:
                trainer.fit(until=e)
            except Diverged as err:  # one cell's failure, not the search's: kept, so a resume reads it back
                atomic_write_bytes(failed, dump_json({"epoch": len(trainer.history) + 1, "error": str(err)}))
        if failed.is_file():
            # ranked last at any rung (its energy too), never a final (Ledger.complete); charged as asked
            return Evaluation(e, {"val_acc": 0.0, "val_acc_last10": 0.0, "tse": -math.inf}, max(0, e - before),
                              float(sum(h["seconds"] for h in trainer.history[before:e])), math.inf,
                              {"diverged": json.loads(failed.read_text())["error"]})
        hist = trainer.history[:e]
        val = [100 * h["val_acc"] for h in hist]
        signals = {"val_acc": val[-1], "val_acc_last10": float(np.mean(val[-10:])),
                   "tse": -float(sum(h["train_loss"] for h in hist))}
        energy = self._energy(trainer, e) if self.energy_at_rungs or e == self.max_epochs else None
        return Evaluation(e, signals, max(0, e - before), float(sum(h["seconds"] for h in hist[before:e])), energy)

    def _energy(self, trainer: Trainer, epoch: int) -> float:
        """Millions of synaptic operations per validation image at ``epoch``, measured once and kept in the cell's
        energy.json (a later rung's checkpoint no longer holds that epoch's weights)."""
        path = trainer.run.file("energy.json")
        known = json.loads(path.read_text()) if path.is_file() else {}
        if str(epoch) not in known:
            if trainer.start_epoch != epoch:
                raise SpikeSearchError(f"{path} lacks epoch {epoch} and the checkpoint is at epoch "
                                       f"{trainer.start_epoch}: the cell folder was changed; start a new run")
            with SpikeCounter(trainer.model) as counter:
                evaluate(trainer.model, self.loaders.val)
            known[str(epoch)] = counter.report(len(self.loaders.val.data), self.timesteps)["sops_per_image"] / 1e6
            atomic_write_bytes(path, dump_json(known))
        return float(known[str(epoch)])

    def truth(self, arch: Hashable) -> float | None:
        """The test accuracy (%) of the fully trained cell, once the search has chosen; None if it never got there."""
        if self.reached.get(arch, 0) < self.max_epochs:
            return None
        if arch not in self._truth:
            trainer = self._trainer(arch)
            self._truth[arch] = 100 * evaluate(trainer.model, self.loaders.test)[1]
        return self._truth[arch]

    def describe(self, arch: Hashable) -> dict[str, Any]:
        return {"cnt_mat": arch}

    def reset(self) -> None:
        self.reached.clear()
