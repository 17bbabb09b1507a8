"""Faults and bad input: a SIGKILL mid-epoch loses nothing, a kill while saving leaves the last checkpoint
valid, and every bad input of docs/robustness.md ends in one clear line, a non-zero exit and an
untouched run folder."""
import csv
import hashlib
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from spikesearch import run as run_module
from spikesearch.cli import main
from spikesearch.trainer import load_checkpoint

TRAIN = ["--epochs", "3", "--train_subset", "1536", "--test_subset", "128", "--widths", "8", "16", "--threads", "1",
         "--quiet", "--seed", "5"]


def spikesearch(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "spikesearch", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, **kw)


def rows(path):
    with open(path) as f:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)]


def test_sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run(tmp_path):
    whole = spikesearch("train", "--name", "whole", "--runs_dir", str(tmp_path), *TRAIN)
    killed = spikesearch("train", "--name", "killed", "--runs_dir", str(tmp_path), *TRAIN)
    metrics = tmp_path / "killed" / "metrics.csv"
    deadline = time.time() + 240
    while not (metrics.is_file() and len(rows(metrics)) >= 1):  # epoch 1 is done and checkpointed
        assert killed.poll() is None and time.time() < deadline, "training ended before it could be killed"
        time.sleep(0.05)
    time.sleep(0.5)  # well into epoch 2
    killed.send_signal(signal.SIGKILL)
    assert killed.wait() == -signal.SIGKILL
    assert len(rows(metrics)) == 1, "the kill should land in epoch 2"
    assert load_checkpoint(tmp_path / "killed/checkpoints/last.pt")["epoch"] == 0

    resumed = spikesearch("train", "--name", "killed", "--runs_dir", str(tmp_path), "--resume", *TRAIN)
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
    assert whole.wait(timeout=300) == 0, whole.stderr.read()
    assert "resumed from" in (tmp_path / "killed/log.txt").read_text()
    # no epoch redone or lost, and the same numbers bit for bit
    assert [r["epoch"] for r in rows(metrics)] == ["1", "2", "3"]
    assert rows(metrics) == rows(tmp_path / "whole/metrics.csv")
    a = load_checkpoint(tmp_path / "whole/checkpoints/last.pt")["model"]
    b = load_checkpoint(tmp_path / "killed/checkpoints/last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_kill_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    argv = ["train", "--name", "s", "--runs_dir", str(tmp_path), "--train_subset", "128", "--test_subset", "64",
            "--widths", "8", "16", "--quiet"]
    assert main([*argv, "--epochs", "1"]) == 0
    last = tmp_path / "s/checkpoints/last.pt"
    before = last.read_bytes()

    def killed_mid_write(fd):
        raise KeyboardInterrupt  # what the process sees when stopped between writing the bytes and renaming

    monkeypatch.setattr(run_module.os, "fsync", killed_mid_write)
    assert main([*argv, "--epochs", "2", "--resume", "--override", "epochs"]) == 130
    assert last.read_bytes() == before and load_checkpoint(last)["epoch"] == 0
    assert not [p for p in last.parent.iterdir() if p.name.startswith(".")]  # no half-written file left over


# --- the bad-input table (docs/robustness.md) ---------------------------------------------------------

def _truncated_fashion_mnist(root):
    import gzip

    import numpy as np

    for prefix, n in (("train", 4), ("t10k", 2)):
        header = bytes([0, 0, 8, 3]) + b"".join(int(v).to_bytes(4, "big") for v in (n, 28, 28))
        (root / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(header + bytes(n * 784 - 10)))
        (root / f"{prefix}-labels-idx1-ubyte").write_bytes(bytes([0, 0, 8, 1]) + n.to_bytes(4, "big") + np.zeros(n, np.uint8).tobytes())


def _truncated_nmnist(root):
    for split in ("Train", "Test"):
        (root / split / "0").mkdir(parents=True)
        (root / split / "0" / "a.bin").write_bytes(bytes(12))  # 2.4 events


CASES = {
    # id: (argv with RUN standing for the run folder option, message, data builder)
    "cnt_mat-length": (["snasnet", "--cnt_mat", "0302", "0030"], "needs 4 rows", None),
    "cnt_mat-digits": (["snasnet", "--cnt_mat", "0302", "0030", "30a3", "0000"], "exactly 4 digits", None),
    "cnt_mat-opcode": (["snasnet", "--cnt_mat", "0302", "0030", "3005", "0000"], "op code 5", None),
    "cnt_mat-no-path-to-output": (["snasnet", "--cnt_mat", "0300", "0000", "0000", "0000"], "input->output", None),
    "cnt_mat-direct-edge-only": (["snasnet", "--cnt_mat", "0300", "0030", "3003", "0000"], "direct input->output", None),
    "unknown-dataset": (["train", "--dataset", "svhn"], "unknown dataset 'svhn'", None),
    "unknown-snasnet-dataset": (["snasnet", "--dataset", "svhn"], "no SNASNet preset", None),
    "unknown-arch": (["train-ann", "--arch", "vgg99"], "invalid choice: 'vgg99'", None),
    "unknown-surrogate": (["train", "--surrogate", "nope"], "unknown surrogate", None),
    "unknown-neuron": (["train", "--neuron", "hodgkin"], "invalid choice: 'hodgkin'", None),
    "missing-dataset": (["train", "--dataset", "cifar10", "--data_dir", "DATA"], "Expected layout", None),
    "truncated-idx": (["train", "--dataset", "fashion-mnist", "--data_dir", "DATA"], "truncated IDX", _truncated_fashion_mnist),
    "truncated-events": (["train", "--dataset", "nmnist", "--data_dir", "DATA", "--epochs", "1"], "truncated N-MNIST",
                         _truncated_nmnist),
    "missing-checkpoint": (["convert", "--model", "DATA/none.pt"], "does not exist", None),
    "missing-saved-model": (["snasnet", "--cnt_mat", "cifar100_bw", "--savemodel_pth", "DATA/none.pt"], "does not exist", None),
    "unknown-snasnet-surrogate": (["snasnet", "--surrogate", "nope", "--cnt_mat", "cifar100_bw"], "unknown surrogate", None),
    "other-architecture-checkpoint": (["snasnet", "--cnt_mat", "cifar100_bw", "--savemodel_pth", "KEEP"],
                                      "does not match this architecture", None),
    "zero-timesteps": (["train", "--timestep", "0"], "must be positive", None),
    "negative-epochs": (["snasnet", "--epochs", "-1"], "must be positive", None),
    "zero-batch": (["train-ann", "--batch_size", "0"], "must be positive", None),
    "non-integer": (["snasnet", "--num_search", "x"], "is not an integer", None),
    "workers-with-evolution": (["snasnet", "--strategy", "evolution", "--workers", "2", "--num_search", "2"], "sequential", None),
    "nothing-to-search": (["dhs", "search", "--no_cell_search", "--no_layer_search"], "nothing to search", None),
    "missing-genotype": (["dhs", "train", "--genotype", "DATA/g.json"], "genotype file", None),
}
RUN_OPTION = {"snasnet": ["--exp_name", "fresh"], "train": ["--name", "fresh"], "dhs": ["--name", "fresh"],
              "train-ann": ["--job_dir", "RUNS/fresh"], "convert": ["--job_dir", "RUNS/fresh"]}


@pytest.fixture(scope="module")
def kept(tmp_path_factory):
    """A finished run whose files no failing command may touch."""
    root = tmp_path_factory.mktemp("kept")
    assert main(["train", "--name", "keep", "--runs_dir", str(root / "runs"), "--epochs", "1", "--train_subset", "128",
                 "--test_subset", "64", "--widths", "8", "16", "--quiet"]) == 0
    return root


def snapshot(folder):
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_clear_line_and_damages_nothing(case, kept, tmp_path, capsys):
    argv, msg, make_data = CASES[case]
    runs, data = kept / "runs", tmp_path / "data"
    data.mkdir()
    if make_data:
        make_data(data)
    subst = {"DATA": str(data), "KEEP": str(runs / "keep/checkpoints/last.pt"), "RUNS": str(runs)}
    argv = [next((a.replace(k, v) for k, v in subst.items() if k in a), a) for a in argv]
    command = argv[0]
    opts = [o.replace("RUNS", str(runs)) for o in RUN_OPTION[command]]
    if command not in ("train-ann", "convert"):
        opts += ["--runs_dir", str(runs)]
    if command == "convert" and "--model" not in argv:
        opts += ["--model", str(data / "none.pt")]
    before = snapshot(runs / "keep")
    capsys.readouterr()
    try:
        code = main([*argv, *opts, "--quiet"])
    except SystemExit as e:  # argparse
        code = e.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("spikesearch") and "error:" in err[0] and msg in err[0], err
    assert snapshot(runs / "keep") == before
    assert not (runs / "fresh").exists()  # a failed command writes nothing


def test_unwritable_run_folder_is_one_clear_line(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert main(["train", "--runs_dir", str(tmp_path / "file"), "--epochs", "1", "--train_subset", "64", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot write the run folder" in err[0]
