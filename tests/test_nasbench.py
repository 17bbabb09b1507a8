"""SpikeNAS-Bench: the reader on files written in its exact format, the id <-> cell map and the parameter counts
of its logs, and the two commands end to end on a small synthetic clone."""
import json

import numpy as np
import pytest
import torch

from spikesearch import SpikeSearchError
from spikesearch.cli.main import main
from spikesearch.nasbench import bench
from spikesearch.nasbench.bench import cell_of, id_of, parse_log, reaches_output
from spikesearch.measure.stats import kendall_tau_b
from spikesearch.nasbench.network import BenchNet


def write_log(root, arch_id, params, test_acc, epochs=12, seed=0):
    """A train_process.txt as SpikeNAS-Bench writes it."""
    rng = np.random.default_rng(seed + arch_id)
    folder = root / "data" / "CIFAR10" / str(arch_id)
    folder.mkdir(parents=True)
    rows = [f"{e:.3f}, {rng.uniform(20, 99):.3f}, {rng.uniform(0, 2):.3f}, {min(test_acc, 10 + 7 * e) - rng.uniform(0, 2):.3f}, "
            f"{rng.uniform(0, 2):.3f}" for e in range(epochs)]
    (folder / "train_process.txt").write_text(
        f"architecture id: {arch_id}\nmodel parameters: {params}\nepoch, train_acc, train_loss, val_acc, val_loss\n"
        + "\n".join(rows) + f"\ntest accuracy: {test_acc:.3f}\n"
        + "firing rate of layers: " + ", ".join(["0.100"] * 16) + "\nElapsed time: 2.0hour1.0minute3.0second\n")


def params_of(arch_id):  # the formula its logs follow: 17,179,620 + 738,048 per conv edge
    return 17_179_620 + 738_048 * int((cell_of(arch_id) >= 2).sum())


@pytest.fixture
def clone(tmp_path):
    root = tmp_path / "SpikeNAS-Bench"
    rng = np.random.default_rng(0)
    for arch_id in [0, 1, 7, 12617, 3906, 5000, 777, 15624, 2222, 9999, 424, 11111]:
        acc = 10.0 if not reaches_output(cell_of(arch_id)) else float(rng.uniform(80, 89))
        write_log(root, arch_id, params_of(arch_id), acc)
    return root


def test_ids_map_to_cells_as_the_benchmark_does():
    mat = cell_of(12617)  # base 5: 4 0 0 4 3 2, least significant digit on edge 0->1
    assert [mat[i, j] for i, j in bench.EDGES] == [2, 3, 4, 0, 0, 4]
    assert id_of(mat) == 12617 and all(id_of(cell_of(i)) == i for i in range(0, 15625, 97))
    assert not reaches_output(cell_of(0)) and reaches_output(cell_of(12617))
    assert sum(not reaches_output(cell_of(i)) for i in range(15625)) == 341  # exactly its 341 collapsed cells
    for arch_id in (1, 12617):  # the counts its logs state: 17,179,620 and 20,131,812
        assert sum(p.numel() for p in BenchNet(cell_of(arch_id)).parameters()) == params_of(arch_id)
    assert params_of(12617) == 20_131_812


def test_reader_checks_layout_and_lines(clone, tmp_path):
    records = bench.read_bench(clone)
    assert len(records) == 12 and records[0].test_acc == 10.0 and records[12617].params == 20_131_812
    assert records[777].val_at(10) == pytest.approx(records[777].val_acc[9])
    with pytest.raises(SpikeSearchError, match="not a SpikeNAS-Bench clone.*Expected layout"):
        bench.read_bench(tmp_path / "empty")
    log = clone / "data/CIFAR10/7/train_process.txt"
    lines = log.read_text().splitlines()
    lines[6] = "3.000, 55.100"  # a row cut short
    log.write_text("\n".join(lines))
    with pytest.raises(SpikeSearchError, match=r"7/train_process.txt:7: expected 'epoch, train_acc"):
        parse_log(log)


def test_proxies_and_search_commands(clone, tmp_path, capsys, monkeypatch):
    runs = tmp_path / "runs"
    argv = ["nasbench", "proxies", "--bench_dir", str(clone), "--sample", "8", "--width", "0.0625", "--batch", "8",
            "--repeats", "2", "--timestep", "2", "--inputs", "noise", "--runs_dir", str(runs), "--quiet"]
    assert main(argv) == 0
    res = json.loads((runs / "nasbench-proxies/results.json").read_text())
    for name in ("sahd", "sahd-sum", "naswot", "sahd-last", "firing", "params", "rank-ensemble"):
        assert -1 <= res["summary"][name]["all"]["kendall"] <= 1, name
    assert len((runs / "nasbench-proxies/proxies.csv").read_text().splitlines()) == 9
    assert (runs / "nasbench-proxies/proxies.png").is_file()

    from spikesearch.cli import nasbench as command

    # --init_seed changes the weights alone: same sample, same inputs; its default is --seed
    for init in ("0", "1"):
        assert main([*argv, "--init_seed", init, "--name", f"init{init}"]) == 0
    table = {k: json.loads((runs / k / "results.json").read_text())["table"] for k in ("nasbench-proxies", "init0", "init1")}
    assert table["init0"] == table["nasbench-proxies"]
    assert table["init1"]["params"] == table["init0"]["params"]
    assert table["init1"]["sahd"] != table["init0"]["sahd"]
    assert json.loads((runs / "nasbench-proxies/config.json").read_text())["init_seed"] == 0  # the default, resolved
    assert main([*argv, "--resume", "--init_seed", "1"]) == 2  # other weights would mix into the same CSV

    monkeypatch.setattr(command, "proxies", lambda *a, **k: pytest.fail("a resumed run rescored an architecture"))
    assert main([*argv, "--resume"]) == 0  # every row is in the CSV: nothing is scored again

    search = ["nasbench", "search", "--bench_dir", str(clone), "--runs_dir", str(runs), "--budget", "6", "--repeats", "4",
              "--quiet"]
    assert main([*search, "--proxy", "valacc10", "--name", "s1"]) == 0
    assert main([*search, "--proxy", "sahd", "--scores", str(runs / "nasbench-proxies"), "--name", "s2"]) == 0
    out = json.loads((runs / "s2/results.json").read_text())
    assert len(out["mean"]["strategy"]) == 6 and out["best"] <= 89
    assert main([*search, "--strategy", "evolution", "--proxy", "params", "--name", "s3"]) == 0
    capsys.readouterr()
    assert main([*search, "--proxy", "sahd", "--name", "s4"]) == 2
    assert "--scores" in capsys.readouterr().err


def test_networks_are_built_as_the_benchmark_trained_them_per_dataset():
    """Parameter counts its logs state: Tiny-ImageNet id 10938 (64 px, stride-2 stem, hidden 4096, 1000 outputs)
    75,934,056; CIFAR-100 id 11594 (500 outputs) 22,017,908."""
    assert sum(p.numel() for p in BenchNet(cell_of(10938), "tinyimagenet").parameters()) == 75_934_056
    assert sum(p.numel() for p in BenchNet(cell_of(11594), "cifar100").parameters()) == 22_017_908
    net = BenchNet(cell_of(12617), "tinyimagenet", timesteps=2, width=0.0625)
    assert net(torch.randn(2, 3, 64, 64)).shape == (2, 200)
    with pytest.raises(SpikeSearchError, match="takes 64 px images"):
        net(torch.randn(2, 3, 32, 32))
    from spikesearch.cli.nasbench import scoring_inputs

    for kind in ("noise", "fmnist"):
        xs, ys = scoring_inputs(kind, None, 4, 2, 0, size=64, classes=200)
        assert [x.shape for x in xs] == [(4, 3, 64, 64)] * 2 and all(y.shape == (4,) for y in ys)


def test_ties_are_broken_at_random_never_by_sample_order():
    """#params takes 7 values and the sample is in id order, which ranks accuracy: a tie broken by position
    would credit the proxy with the id's information."""
    from spikesearch.cli.nasbench import evaluate_proxy

    score = np.array([5.0, 5, 5, 5, 1, 1, 1, 1, 1, 1])
    acc = np.array([80.0, 81, 82, 90, 70, 71, 72, 73, 74, 75])
    out = evaluate_proxy(score, acc, top=0.2)  # k = 2: the top two by accuracy are cells 3 and 2
    assert out["pick_acc"] == pytest.approx(np.mean([80, 81, 82, 90]))  # any of the four tied at the top
    assert out["top_precision"] == pytest.approx(0.5)  # each of the 4 tied cells is taken with probability 2/4
    assert evaluate_proxy(score[::-1].copy(), acc[::-1].copy(), top=0.2) == out  # the order does not matter


def test_bootstrap_intervals_are_paired_and_bracket_the_estimate():
    from spikesearch.measure.stats import bootstrap, interval

    rng = np.random.default_rng(0)
    acc = rng.normal(size=200)
    good, weak = acc + rng.normal(scale=0.5, size=200), acc + rng.normal(scale=3, size=200)
    taus = {k: bootstrap(lambda i, v=v: kendall_tau_b(v[i], acc[i]), 200, 300, seed=1) for k, v in
            (("good", good), ("weak", weak), ("again", good))}
    lo, hi = interval(taus["good"])
    assert lo < kendall_tau_b(good, acc) < hi and hi - lo < 0.2
    assert interval(taus["good"] - taus["again"]) == (0.0, 0.0)  # the same resamples for every statistic
    assert interval(taus["good"] - taus["weak"])[0] > 0


def test_gradient_proxies_are_refused_with_one_batch_before_a_run_folder(clone, tmp_path, capsys):
    argv = ["nasbench", "proxies", "--bench_dir", str(clone), "--sample", "4", "--repeats", "1", "--runs_dir",
            str(tmp_path / "runs"), "--quiet"]
    assert main(argv) == 2
    assert "zico compare gradients across batches" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
