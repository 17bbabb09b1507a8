"""Scale-out paths on CPU: candidate shards on local processes and on a local two-CPU Ray, and DDP training
under torchrun with two gloo processes."""
import csv
import os
import subprocess
import sys

import pytest
import torch

from spikesearch import SpikeSearchError
from spikesearch.cli.main import main
from spikesearch.cli.snasnet import scoring_batches
from spikesearch.snasnet.network import macro_config
from spikesearch.snasnet.parallel import SNASNetBuilder, WorkerPool
from spikesearch.snasnet.score import ScoreConfig
from spikesearch.snasnet.search import SearchConfig, ranking, run_search
from spikesearch.train.pipeline import make_loaders


@pytest.fixture(scope="module")
def setup():
    train, _, _, _ = make_loaders("fmnist-small", None, 64, torch.device("cpu"), 0, 256, 64)
    cfg = SearchConfig(num_search=12, seed=3, score=ScoreConfig(batch_size=16, repeats=1))
    build = SNASNetBuilder("backward", macro_config("fmnist-small"), 5, 4 / 3, 1.0, "atan:2")
    batches = scoring_batches(train, cfg.score, cfg.seed)
    serial = run_search(build, batches, cfg, progress=False)
    return build, batches, cfg, serial


def scores(history):
    return [(c.cnt_mat, c.score, c.duplicate) for c in history]


@pytest.mark.parametrize("backend", ["processes", "ray"])
def test_parallel_search_gives_the_serial_ranking(setup, backend, tmp_path):
    if backend == "ray":
        pytest.importorskip("ray")
    build, batches, cfg, serial = setup
    pool = WorkerPool(build, batches, cfg, workers=2, backend=backend, shards_per_worker=2)
    history = run_search(build, batches, cfg, tmp_path / "search.csv", progress=False, pool=pool)
    assert scores(history) == scores(serial)
    assert [c.cnt_mat for c in ranking(history)] == [c.cnt_mat for c in ranking(serial)]
    with open(tmp_path / "search.csv") as f:
        assert [r["cnt_mat"] for r in csv.DictReader(f)] == [c.cnt_mat for c in serial]


def test_parallel_search_resumes_from_its_csv(setup, tmp_path, monkeypatch):
    build, batches, cfg, serial = setup
    path = tmp_path / "search.csv"
    run_search(build, batches, SearchConfig(**{**cfg.__dict__, "num_search": 5}), path, progress=False)
    scored = []
    monkeypatch.setattr("spikesearch.snasnet.parallel.WorkerPool._map",
                        lambda self, shards: (scored.extend(shards) or (r for r in [[(k, 0.0, 1.0) for k in s] for s in shards])))
    pool = WorkerPool(build, batches, cfg, workers=2, backend="processes")
    history = run_search(build, batches, cfg, path, progress=False, pool=pool)
    first5 = {c.cnt_mat for c in serial[:5]}
    assert not first5 & {k for s in scored for k in s}  # the replayed rows are not sent to workers again
    assert scores(history[:5]) == scores(serial[:5])


def test_workers_refuse_sequential_strategies_and_bad_backends(setup):
    build, batches, cfg, _ = setup
    with pytest.raises(SpikeSearchError, match="sequential"):
        WorkerPool(build, batches, SearchConfig(**{**cfg.__dict__, "strategy": "evolution"}), 2, "processes")
    with pytest.raises(SpikeSearchError, match="--ray-address needs the Ray backend"):
        WorkerPool(build, batches, cfg, 2, "processes", address="auto")


def test_cli_workers_flag(tmp_path, capsys):
    argv = ["snasnet", "--runs_dir", str(tmp_path), "--exp_name", "w", "--num_search", "4", "--score_batch", "16",
            "--score_repeats", "1", "--search_only", "--quiet", "--workers", "2", "--parallel", "processes"]
    assert main(argv) == 0
    assert "2 processes workers" in (tmp_path / "w/log.txt").read_text()
    assert main(["snasnet", "--runs_dir", str(tmp_path), "--ray-address", "auto", "--num_search", "2"]) == 2
    assert "needs --workers" in capsys.readouterr().err


def _train(tmp_path, name, batch, nproc=None):
    args = ["train", "--name", name, "--runs_dir", str(tmp_path), "--epochs", "2", "--batch_size", str(batch),
            "--train_subset", "512", "--test_subset", "128", "--widths", "8", "16", "--quiet", "--threads", "1"]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] if nproc else [sys.executable]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([*launcher, "-m", "spikesearch", *args], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    with open(tmp_path / name / "metrics.csv") as f:
        return list(csv.DictReader(f)), out.stdout


def test_torchrun_two_gloo_processes_match_one_process_with_doubled_batch(tmp_path):
    ddp, stdout = _train(tmp_path, "ddp", 32, nproc=2)
    single, _ = _train(tmp_path, "single", 64)
    assert stdout.count("run folder:") == 1  # rank 0 alone reports
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir()) == sorted(p.name for p in (tmp_path / "single").iterdir())
    for a, b in zip(ddp, single):
        # the same gradient step on the same 64 images; BN statistics over 32 and other crops make the noise
        assert float(a["train_loss"]) == pytest.approx(float(b["train_loss"]), rel=0.03)
        assert float(a["lr"]) == float(b["lr"])
    assert float(ddp[1]["train_loss"]) < float(ddp[0]["train_loss"])
