"""The search layer over our SNASNet cells, trained for real on a small slice of the bundled data."""
import json

import numpy as np
import pytest
import torch

from spikesearch import SpikeSearchError
from spikesearch.cli.main import main
from spikesearch.runs import Run
from spikesearch.search import SearchConfig, search
from spikesearch.search.cells import CellSpace
from spikesearch.snasnet.network import macro_config
from spikesearch.snasnet.parallel import SNASNetBuilder
from spikesearch.snasnet.space import check_matrix, parse_cnt_mat
from spikesearch.train.pipeline import make_loaders
from spikesearch.train.trainer import TrainConfig

CELL = "0302 0030 3003 0000"


def _space(tmp_path, name, celltype="backward", epochs=2, lr=3e-3, wrap=lambda build: build):
    loaders = make_loaders("fmnist-small", None, 32, torch.device("cpu"), 0, train_subset=160, test_subset=100,
                           val_fraction=0.25)
    build = SNASNetBuilder(celltype, macro_config("fmnist-small"), 2, 4 / 3, 1.0, "atan:2", "cpu")
    train = TrainConfig(epochs=epochs, optimizer="adam", lr=lr, weight_decay=0.0, eval_interval=1, progress=False)
    run = Run(name, tmp_path, quiet=True)
    return CellSpace(wrap(build), loaders, train, run, timesteps=2, celltype=celltype, num_candidates=8), run


def poisoned(build):
    """Cells whose output is NaN: their loss is, at the first batch."""
    def make(mat):
        net = build(mat)
        net.register_forward_hook(lambda module, inputs, out: out * float("nan"))
        return net
    return make


@pytest.mark.parametrize("celltype", ["forward", "backward"])
def test_every_drawn_cell_encodes_and_decodes_to_itself(tmp_path, celltype):
    space, _ = _space(tmp_path, celltype, celltype)
    rng = np.random.default_rng(0)
    cells = space.candidates(rng) + [space.mutate(space.sample(rng), rng) for _ in range(30)]
    for cell in cells:
        check_matrix(parse_cnt_mat(cell), celltype)
        assert space.decode(space.encode(cell)) == cell
    choices = space.distributions()["pair_01"].choices
    assert len(choices) == (9 if celltype == "backward" else 5)
    # no input->output edge, or a node off every path: not a cell of the space
    assert space.decode({f"pair_{i}{j}": 0 for i, j in [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]}) is None
    assert space.decode({"pair_01": 3, "pair_02": 0, "pair_03": 3, "pair_12": 0, "pair_13": 0, "pair_23": 0}) is None


def test_a_rung_continues_the_lower_one_as_one_uninterrupted_training(tmp_path):
    steps, _ = _space(tmp_path, "steps")
    low = steps.evaluate(CELL, 1)
    high = steps.evaluate(CELL, 2)
    again = steps.evaluate(CELL, 2)  # reached already: read back, costs nothing
    whole, _ = _space(tmp_path, "whole")
    one_go = whole.evaluate(CELL, 2)
    assert (low.cost_epochs, high.cost_epochs, again.cost_epochs, one_go.cost_epochs) == (1, 1, 0, 2)
    assert high.signals == one_go.signals == again.signals
    assert high.signals["tse"] < low.signals["tse"]  # two epochs of training loss summed, not one
    a = torch.load(tmp_path / "steps/cells/0302-0030-3003-0000/checkpoints/last.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "whole/cells/0302-0030-3003-0000/checkpoints/last.pt", weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert low.energy is None and high.energy > 0  # measured at full training only unless asked per rung
    assert steps.truth(CELL) == whole.truth(CELL)


def test_a_cell_trained_under_other_settings_is_refused(tmp_path):
    first, run = _space(tmp_path, "s")
    first.evaluate(CELL, 1)
    run.close()
    other, _ = _space(tmp_path, "s2", lr=1e-3)
    other.run = Run("s", tmp_path, quiet=True, resume=True)
    with pytest.raises(SpikeSearchError, match="trained under other settings"):
        other.evaluate(CELL, 2)


def test_successive_halving_over_cells_spends_its_budget_and_returns_a_full_training(tmp_path):
    space, _ = _space(tmp_path, "sh")
    cfg = SearchConfig(strategy="sh", budget=6, prefilter="params", prefilter_frac=0.5, eta=2, rung_factor=2,
                       final_signal="val_acc", objectives=("acc", "energy"), seed=1)
    space.energy_at_rungs = True
    res = search(space, cfg)
    assert res.arch is not None and res.epochs_spent <= 6 and space.reached[res.arch] == 2
    assert res.front and all(f["energy"] > 0 for f in res.finals)
    assert res.arch in space.candidates(np.random.default_rng(1))  # the pool is the seeded candidates' top half


def _argv(runs, *extra):
    return ["search", "--space", "snasnet", "--train_subset", "200", "--test_subset", "100", "--val_fraction",
            "0.2", "--epochs", "2", "--timestep", "2", "--num_search", "6", "--budget", "6", "--eta", "2",
            "--rung_factor", "2", "--prefilter", "sahd", "--prefilter_frac", "0.5", "--runs_dir", str(runs),
            "--name", "s", "--quiet", "--threads", "1", *extra]


def test_search_command_resumes_without_training_a_cell_again(tmp_path, capsys):
    runs = tmp_path / "runs"
    assert main(_argv(runs)) == 0
    first = json.loads((runs / "s/results.json").read_text())
    assert first["epochs_spent"] <= 6 and first["full_trainings"] >= 1 and 0 <= first["test_acc"] <= 100
    assert "never the test set" in first["chosen_by"]
    ckpts = {p: p.read_bytes() for p in (runs / "s/cells").glob("*/checkpoints/last.pt")}
    assert len(ckpts) >= 2
    assert main(_argv(runs, "--resume")) == 0
    again = json.loads((runs / "s/results.json").read_text())
    assert {p: p.read_bytes() for p in (runs / "s/cells").glob("*/checkpoints/last.pt")} == ckpts  # nothing retrained
    assert (again["cnt_mat"], again["epochs_spent"], again["test_acc"]) == (first["cnt_mat"], first["epochs_spent"],
                                                                            first["test_acc"])
    capsys.readouterr()
    assert main(_argv(runs, "--resume", "--override", "epochs", "--epochs", "3")) == 2  # its cells trained for 2
    assert "epochs" in capsys.readouterr().err
    # another budget: the strategy replays, what was trained is re-read, the rest is trained
    assert main(_argv(runs, "--resume", "--override", "budget", "--budget", "8")) == 0
    more = json.loads((runs / "s/results.json").read_text())
    assert first["epochs_spent"] < more["epochs_spent"] <= 8
    kept = {p: p.read_bytes() for p in ckpts if p.is_file()}
    assert len(kept) == len(ckpts)


@pytest.mark.parametrize("extra, message", [
    (["--workers", "2"], "one process"),
    (["--bench_dir", "x"], "does not read --bench_dir"),
    (["--prefilter", "nope"], "zero-cost score 'nope'"),
    (["--val_fraction", "0"], "validation split"),
    (["--budget", "1"], "pays for no full training"),
    (["--strategy", "tpe", "--objectives", "acc,energy"], "single-objective"),
])
def test_search_command_refuses_what_the_cell_space_cannot_do(tmp_path, capsys, extra, message):
    assert main(_argv(tmp_path / "runs", *extra)) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()  # refused before the run folder is written


def test_a_diverging_cell_fails_alone_and_is_read_back_on_resume(tmp_path):
    space, _ = _space(tmp_path, "nan", wrap=poisoned)
    ev = space.evaluate(CELL, 2)
    assert ev.extra["diverged"].startswith("loss became") and ev.signals["val_acc"] == 0.0 and ev.energy == float("inf")
    folder = tmp_path / "nan/cells/0302-0030-3003-0000"
    assert json.loads((folder / "diverged.json").read_text())["epoch"] >= 1
    space.reset()
    assert space.evaluate(CELL, 2).extra["diverged"] == ev.extra["diverged"]  # not trained again
    res = search(space, SearchConfig(strategy="random", budget=2, prefilter=None, seed=0))
    assert res.arch is None and res.finals == [] and res.epochs_spent == 2  # every poisoned cell diverges


def test_bench_space_refuses_cell_flags(tmp_path, capsys):
    argv = ["search", "--bench_dir", str(tmp_path), "--epochs", "3", "--runs_dir", str(tmp_path / "r"), "--quiet"]
    assert main(argv) == 2
    assert "--space spikenas-bench does not read --epochs" in capsys.readouterr().err
