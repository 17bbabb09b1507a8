"""Faults and bad input: a SIGKILL mid-epoch loses nothing, a kill while saving leaves the last checkpoint
valid, and every bad input of docs/robustness.md ends in one clear line, a non-zero exit and an
untouched run folder."""
import csv
import dataclasses
import gzip
import hashlib
import os
import pickle
import signal
import struct
import subprocess
import sys
import time
from fractions import Fraction

import numpy as np
import pytest
import torch

from spikesearch import runs as run_module
from spikesearch.cli.main import main
from spikesearch.convert.vgg import VGG, VGGConfig
from spikesearch.train.checkpoint import load_checkpoint

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

def _idx(root, prefix, images, labels, gz=True):
    header = bytes([0, 0, 8, images.ndim]) + b"".join(int(v).to_bytes(4, "big") for v in images.shape)
    data = header + images.astype(np.uint8).tobytes()
    (root / f"{prefix}-images-idx3-ubyte{'.gz' if gz else ''}").write_bytes(gzip.compress(data) if gz else data)
    (root / f"{prefix}-labels-idx1-ubyte").write_bytes(bytes([0, 0, 8, 1]) + len(labels).to_bytes(4, "big")
                                                      + np.asarray(labels, np.uint8).tobytes())


def _fashion_mnist(size=28, labels=(0, 1, 2, 3)):
    def build(root):
        for prefix in ("train", "t10k"):
            _idx(root, prefix, np.zeros((len(labels), size, size)), labels)
    return build


def _truncated_fashion_mnist(root):
    for prefix, n in (("train", 4), ("t10k", 2)):
        header = bytes([0, 0, 8, 3]) + b"".join(int(v).to_bytes(4, "big") for v in (n, 28, 28))
        (root / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(header + bytes(n * 784 - 10)))
        (root / f"{prefix}-labels-idx1-ubyte").write_bytes(bytes([0, 0, 8, 1]) + n.to_bytes(4, "big") + bytes(n))


def _gz(content):
    def build(root):
        _fashion_mnist()(root)
        (root / "train-images-idx3-ubyte.gz").write_bytes(content((root / "train-images-idx3-ubyte.gz").read_bytes()))
    return build


def _truncated_nmnist(root):
    for split in ("Train", "Test"):
        (root / split / "0").mkdir(parents=True)
        (root / split / "0" / "a.bin").write_bytes(bytes(12))  # 2.4 events


def _nmnist_letter_folder(root):
    for split in ("Train", "Test"):
        (root / split / "cat").mkdir(parents=True)
        (root / split / "cat" / "a.bin").write_bytes(bytes(10))


def _gesture(event_bytes):
    """DVS128 Gesture whose polarity packets announce ``event_bytes``-byte events."""
    def build(root):
        root = root / "DvsGesture"
        root.mkdir()
        events = b"".join(struct.pack("<II", (x << 17) | (x << 2) | 3, 1000 + x)[:event_bytes] + bytes(max(0, event_bytes - 8))
                          for x in range(4))
        head = b"#!AER-DAT3.1\r\n#!END-HEADER\r\n" + struct.pack("<HHIIIIII", 1, 1, event_bytes, 4, 0, 4, 4, 4)
        for name in ("user01_led", "user02_led"):
            (root / f"{name}.aedat").write_bytes(head + events)
            (root / f"{name}_labels.csv").write_text("class,startTime_usec,endTime_usec\n1,1000,1004\n")
        (root / "trials_to_train.txt").write_text("user01_led.aedat\n")
        (root / "trials_to_test.txt").write_text("user02_led.aedat\n")
    return build


def _cifar10(batch=lambda d: d, meta=None):
    def build(root):
        folder = root / "cifar-10-batches-py"
        folder.mkdir()
        rng = np.random.default_rng(0)
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            d = {"data": rng.integers(0, 256, (4, 3072)).astype(np.uint8), "labels": [0, 1, 2, 3]}
            with open(folder / name, "wb") as f:
                pickle.dump(batch(d), f, protocol=2)
        with open(folder / "batches.meta", "wb") as f:
            pickle.dump(meta or {"label_names": [f"c{i}" for i in range(10)]}, f, protocol=2)
    return build


def _file(name, content):
    def build(root):
        path = root / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        elif isinstance(content, str):
            path.write_text(content)
        else:
            torch.save(content, path)
    return build


def _vgg_file(**meta):
    cfg = VGGConfig(width=0.0625)
    state = VGG(cfg).state_dict()
    return {"model": state, "meta": {**dataclasses.asdict(cfg), **meta}}


GENOTYPE = '{"cell": [[[0, "conv3x3"], [1, "skip"]]], "path": PATH, "nodes": NODES}'


def _genotype(path="[0, 1]", nodes="[]", text=None):
    return _file("g.json", text if text is not None else GENOTYPE.replace("PATH", path).replace("NODES", nodes))


CASES = {
    # id: (argv with DATA / KEEP / RUNS standing for paths, message, data builder)
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
    # issue 14: names and run folders
    "empty-name": (["train", "--name", ""], "not a plain folder name", None),
    "empty-exp-name": (["snasnet", "--exp_name", ""], "not a plain folder name", None),
    "empty-job-dir": (["train-ann", "--job-dir", ""], "--job-dir is empty", None),
    "escaping-name": (["train", "--name", "../../escape"], "not a plain folder name", None),
    "absolute-name": (["snasnet", "--exp_name", "/tmp/elsewhere"], "not a plain folder name", None),
    "hidden-name": (["dhs", "search", "--name", ".x"], "not a plain folder name", None),
    "resume-typo": (["train", "--resume"], "nothing to resume", None),
    "override-without-resume": (["train", "--override", "lr"], "--override only applies with --resume", None),
    "resume-and-overwrite": (["train", "--resume", "--overwrite"], "give one of them", None),
    "results-file-missing-folder": (["convert", "--model", "DATA/m.pt", "--results-file", "DATA/no/such/r.csv"],
                                    "does not exist", _file("m.pt", _vgg_file())),
    # issue 14: numbers
    "seed-negative": (["train", "--seed", "-1"], "a seed is an integer in 0..4294967295", None),
    "seed-huge": (["snasnet", "--seed", str(2**70)], "a seed is an integer", None),
    "lr-nan": (["train", "--lr", "nan"], "must be a finite number", None),
    "lr-zero": (["snasnet", "--learning_rate", "0"], "must be > 0", None),
    "width-nan": (["train-ann", "--width", "nan"], "must be a finite number", None),
    "width-huge": (["train-ann", "--width", "40"], "width must be a number in (0, 4.0]", None),
    "device-tpu": (["train", "--device", "tpu"], "not a device", None),
    "device-meta": (["snasnet", "--device", "meta"], "not a device", None),
    "surrogate-alpha-nan": (["train", "--surrogate", "atan:nan"], "alpha must be a finite number > 0", None),
    "v-init-nan": (["convert", "--v-init", "nan"], "must be a finite number", None),
    "taus-nan": (["dhs", "search", "--taus", "nan"], "must be a finite number", None),
    "tau-below-one": (["train", "--tau", "0.5"], "time constant must be > 1", None),
    "threshold-negative": (["snasnet", "--threshold", "-1"], "must be > 0", None),
    "percentile-zero": (["convert", "--percentile", "0"], "a percentile is in (0, 100]", None),
    "percentile-101": (["convert", "--percentile", "101"], "a percentile is in (0, 100]", None),
    "momentum-above-one": (["snasnet", "--momentum", "1.5"], "must be in [0, 1]", None),
    "stem-stride-huge": (["dhs", "search", "--stem_stride", str(10**12)], "stem stride", None),
    # issue 14: dataset contents
    "cifar-fewer-labels": (["train", "--dataset", "cifar10", "--data_dir", "DATA"], "4 images but 3 labels",
                           _cifar10(lambda d: {**d, "labels": d["labels"][:3]})),
    "cifar-float-pixels": (["train", "--dataset", "cifar10", "--data_dir", "DATA"], "uint8 pixels, got float64",
                           _cifar10(lambda d: {**d, "data": d["data"].astype(np.float64)})),
    "cifar-label-out-of-range": (["train", "--dataset", "cifar10", "--data_dir", "DATA"], "labels span 0..10",
                                 _cifar10(lambda d: {**d, "labels": [0, 1, 2, 10]})),
    "cifar-string-labels": (["train", "--dataset", "cifar10", "--data_dir", "DATA"], "integer class indices",
                            _cifar10(lambda d: {**d, "labels": ["cat"] * 4})),
    "cifar-bad-meta": (["train", "--dataset", "cifar10", "--data_dir", "DATA"], "must list 10 class names",
                       _cifar10(meta={"label_names": [1, 2]})),
    "idx-wrong-size": (["train", "--dataset", "fashion-mnist", "--data_dir", "DATA"], "expected uint8 N x 1 x 28 x 28",
                       _fashion_mnist(size=32)),
    "idx-label-out-of-range": (["train", "--dataset", "fashion-mnist", "--data_dir", "DATA"], "labels span 0..12",
                               _fashion_mnist(labels=(0, 1, 2, 12))),
    "fake-gz": (["train", "--dataset", "fashion-mnist", "--data_dir", "DATA"], "cannot read",
                _gz(lambda data: b"not a gzip file at all")),
    "truncated-gz": (["train", "--dataset", "fashion-mnist", "--data_dir", "DATA"], "cannot read", _gz(lambda data: data[:-30])),
    "nmnist-letter-folder": (["train", "--dataset", "nmnist", "--data_dir", "DATA"], "does not end in a digit",
                             _nmnist_letter_folder),
    "gesture-4-byte-events": (["train", "--dataset", "dvsgesture", "--data_dir", "DATA"], "4-byte events", _gesture(4)),
    "gesture-6-byte-events": (["train", "--dataset", "dvsgesture", "--data_dir", "DATA"], "6-byte events", _gesture(6)),
    # issue 14: model files and genotypes
    "zero-byte-checkpoint": (["convert", "--model", "DATA/m.pt"], "cannot load checkpoint", _file("m.pt", b"")),
    "tensor-checkpoint": (["convert", "--model", "DATA/m.pt"], "holds a Tensor", _file("m.pt", torch.zeros(3))),
    "list-checkpoint": (["snasnet", "--cnt_mat", "cifar100_bw", "--savemodel_pth", "DATA/m.pt"], "holds a list",
                        _file("m.pt", [1, 2])),
    "model-meta-width-40": (["convert", "--model", "DATA/m.pt"], "width must be a number in (0, 4.0]",
                            _file("m.pt", _vgg_file(width=40.0))),
    "model-meta-string-classes": (["convert", "--model", "DATA/m.pt"], "num_classes must be a positive integer",
                                  _file("m.pt", _vgg_file(num_classes="10"))),
    "genotype-path-fraction": (["dhs", "train", "--genotype", "DATA/g.json"], "a path level must be an integer, got 1.9",
                               _genotype(path="[0, 1.9]")),
    "genotype-tau-nan": (["dhs", "train", "--genotype", "DATA/g.json"], "NaN is not a number",
                         _genotype(nodes='[[{"kind": "lif", "tau": NaN}], [{"kind": "lif"}]]')),
    "genotype-tau-string": (["dhs", "train", "--genotype", "DATA/g.json"], "tau must be a finite number",
                            _genotype(nodes='[[{"kind": "lif", "tau": "2"}], [{"kind": "lif"}]]')),
    "genotype-cell-not-a-list": (["dhs", "train", "--genotype", "DATA/g.json"], "cell must be a list",
                                 _genotype(text='{"cell": "abc", "path": [0]}')),
    "genotype-deeply-nested": (["dhs", "train", "--genotype", "DATA/g.json"], "RecursionError",
                               _genotype(text="[" * 100000 + "]" * 100000)),
    "genotype-stem-stride-fraction": (["dhs", "train", "--genotype", "DATA/g.json"], "info.config must map",
                                      _genotype(text=GENOTYPE.replace("PATH", "[0]").replace("NODES", "[]")[:-1]
                                                + ', "info": {"config": {"stem_stride": 1.9}}}')),
    # issue 27: names, bounds, weights, load errors, data, DHS edge cases
    "name-not-utf8": (["train", "--name", os.fsdecode(b"run-\xff")], "is not valid UTF-8", None),
    "name-300-chars": (["snasnet", "--exp_name", "n" * 300], "longer than a folder name may be", None),
    "time-huge": (["convert", "--time", "1000000000"], "must be in 1..10000", None),
    "nan-weights": (["convert", "--model", "DATA/m.pt"], "NaN or infinite values in features.0.weight",
                    _file("m.pt", {**_vgg_file(), "model": {k: torch.full_like(v, float("nan")) if v.is_floating_point()
                                                            else v for k, v in _vgg_file()["model"].items()}})),
    "object-in-checkpoint": (["convert", "--model", "DATA/m.pt"], "holds a Python object (fractions.Fraction)",
                             _file("m.pt", {"model": Fraction(1, 3)})),
    "nir-file-as-checkpoint": (["snasnet", "--cnt_mat", "cifar100_bw", "--savemodel_pth", "DATA/m.pt"],
                               "is not a PyTorch checkpoint", _file("m.pt", b"\x89HDF\r\n\x1a\n" + bytes(600))),
    "cifar-meta-not-a-list": (["train", "--dataset", "cifar10", "--data_dir", "DATA"], "must list 10 class names",
                              _cifar10(meta={"label_names": 5})),
    "genotype-all-none": (["dhs", "train", "--genotype", "DATA/g.json"], "has only 'none' edges",
                          _genotype(text='{"cell": [[[0, "none"], [1, "none"]]], "path": [0, 1]}')),
    "dhs-search-ops-none": (["dhs", "search", "--ops", "none"], "an op other than 'none'", None),
    "dhs-derive-random-ops-none": (["dhs", "derive", "--random", "--ops", "none"], "an op other than 'none'", None),
    "dhs-derive-from-a-train-checkpoint": (["dhs", "derive", "--search", "KEEP"], "is not a dhs search result", None),
}
NAME_FLAGS = ("--name", "--exp_name", "--job-dir", "--job_dir")
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
def test_bad_input_is_one_clear_line_and_damages_nothing(case, kept, tmp_path, capsys, monkeypatch):
    argv, msg, make_data = CASES[case]
    runs, data, cwd = kept / "runs", tmp_path / "data", tmp_path / "cwd"
    data.mkdir()
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # an empty --job-dir once wrote here
    if make_data:
        make_data(data)
    subst = {"DATA": str(data), "KEEP": str(runs / "keep/checkpoints/last.pt"), "RUNS": str(runs)}
    argv = [next((a.replace(k, v) for k, v in subst.items() if k in a), a) for a in argv]
    command = argv[0]
    opts = [] if any(f in argv for f in NAME_FLAGS) else [o.replace("RUNS", str(runs)) for o in RUN_OPTION[command]]
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
    assert "weights_only" not in err[0]  # torch's advice to load a refused file unsafely is never passed on
    assert snapshot(runs / "keep") == before
    assert sorted(p.name for p in runs.iterdir()) == ["keep"]  # a failed command writes nothing,
    assert not any(cwd.iterdir()) and not (kept.parent / "escape").exists()  # here or elsewhere


def test_unwritable_run_folder_is_one_clear_line(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert main(["train", "--runs_dir", str(tmp_path / "file"), "--epochs", "1", "--train_subset", "64", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot write the run folder" in err[0]


def test_cifar_batches_pickled_with_bytes_keys_are_read(tmp_path):
    from spikesearch.data.datasets import load_dataset

    _cifar10(lambda d: {k.encode(): v for k, v in d.items()},
             meta={b"label_names": [f"c{i}".encode() for i in range(10)]})(tmp_path)
    train, test, _ = load_dataset("cifar10", str(tmp_path))
    assert len(train) == 20 and len(test) == 4 and train.classes[3] == "c3"
    assert train.labels.tolist()[:4] == [0, 1, 2, 3]
