import csv

import numpy as np
import pytest
import torch

from spikesearch import SpikeSearchError
from spikesearch.cli import main
from spikesearch.neurons import LIF, reset
from spikesearch.snasnet import (
    PUBLISHED,
    ScoreConfig,
    SearchConfig,
    SNASCell,
    SNASNet,
    check_matrix,
    format_cnt_mat,
    macro_config,
    parse_cnt_mat,
    ranking,
    run_search,
    sample_matrix,
    score_model,
)
from spikesearch.snasnet.score import hamming_kernel
from spikesearch.snasnet.space import mutate_matrix, prune


def test_cnt_mat_official_notation():
    mat = parse_cnt_mat(["0302", "0030", "3003", "0000"])
    assert format_cnt_mat(mat) == "0302 0030 3003 0000"
    assert mat[2, 0] == 3 and mat[0, 3] == 2
    # argparse's official type=list turns each token into a list of characters
    assert np.array_equal(parse_cnt_mat([list("0302"), list("0030"), list("3003"), list("0000")]), mat)
    assert np.array_equal(parse_cnt_mat("cifar100_bw"), mat)
    for name, (spec, celltype) in PUBLISHED.items():
        check_matrix(parse_cnt_mat(spec), celltype)


@pytest.mark.parametrize("spec,msg", [
    ("0302 0030 3003", "4 rows"),
    ("0302 0030 3003 0000 0000", "4 rows"),
    ("032 0030 3003 0000", "exactly 4 digits"),
    ("0302 0030 30a3 0000", "exactly 4 digits"),
    ("0302 0030 3005 0000", "op code 5"),
])
def test_cnt_mat_notation_errors(spec, msg):
    with pytest.raises(SpikeSearchError, match=msg):
        parse_cnt_mat(spec)


@pytest.mark.parametrize("spec,msg", [
    ("0300 0030 3003 0000", "direct input->output"),
    ("0303 0000 0000 0000", "disconnected"),  # node 1 has an input but no path to node 3
    ("1303 0030 3003 0000", "diagonal"),
])
def test_cnt_mat_filter_errors(spec, msg):
    with pytest.raises(SpikeSearchError, match=msg):
        check_matrix(parse_cnt_mat(spec), "backward")


def test_forward_celltype_ignores_lower_triangle():
    mat = check_matrix(parse_cnt_mat("0302 0030 3003 0000"), "forward")
    assert format_cnt_mat(mat) == "0302 0030 0003 0000"


@pytest.mark.parametrize("celltype", ["forward", "backward"])
def test_sampling_obeys_filter(celltype):
    rng = np.random.default_rng(0)
    for _ in range(300):
        m = sample_matrix(rng, celltype)
        assert m[0, 3] != 0 and np.array_equal(prune(m), m) and not np.diag(m).any()
        if celltype == "forward":
            assert not np.tril(m).any()
        else:
            assert not np.any((np.triu(m, 1) != 0) & (np.tril(m, -1).T != 0))  # one direction per pair
        child = mutate_matrix(m, rng, celltype)
        assert child[0, 3] != 0 and not np.array_equal(child, m)


def _cell(spec):
    return SNASCell(2, parse_cnt_mat(spec), lambda: LIF(tau=4 / 3))


def _node0_inputs(cell, x, steps):
    """What node 0 holds at each step: the input of its LIF, or of its skip edge 0->1."""
    seen = []
    probe = cell.lifs["0"] if "0" in cell.lifs else cell.edges["01"]
    h = probe.register_forward_hook(lambda m, inp, out: seen.append(inp[0].clone()))
    for _ in range(steps):
        cell(x)
    h.remove()
    return seen


def test_backward_edge_reaches_node0_one_step_later():
    # 0->1 skip, 1->2 skip, 2->3 skip, 0->3 avgpool; with and without the backward skip 2->0
    x = torch.rand(1, 2, 4, 4)
    fwd = _node0_inputs(_cell("0104 0010 0001 0000"), x, 3)
    bwd = _node0_inputs(_cell("0104 0010 1001 0000"), x, 3)
    assert torch.equal(fwd[0], x) and torch.equal(bwd[0], x)  # at t the feedback is not there yet
    assert torch.equal(bwd[1], x + x)  # at t+1 node 0 gets node 2's value from t (= x)
    assert torch.equal(bwd[2], x + 2 * x)
    assert all(torch.equal(f, x) for f in fwd)


def test_backward_conv_edge_feeds_spikes_of_node2():
    torch.manual_seed(0)
    cell = _cell("0304 0030 3003 0000")  # 2->0 conv3x3 (the published CIFAR-100 feedback edge)
    x = torch.rand(1, 2, 4, 4) * 3
    seen = _node0_inputs(cell, x, 2)
    assert torch.equal(seen[0], x)
    assert not torch.equal(seen[1], x)
    reset(cell)
    assert torch.equal(_node0_inputs(cell, x, 1)[0], x)


def test_shared_node_lif_stands_for_every_edge_lif():
    cell = _cell("0332 0030 3003 0000")
    # node 0 has three conv edges (0->1, 0->2 conv3x3; 0->3 conv1x1) -> one LIF weighted 3
    assert cell.lifs["0"].score_weight == 3 and cell.lifs["2"].score_weight == 2
    assert "1" in cell.lifs and "3" not in cell.lifs


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def test_published_parameter_counts():
    c100 = SNASNet(parse_cnt_mat("cifar100_bw"), "backward", macro_config("cifar100"))
    c10 = SNASNet(parse_cnt_mat("cifar10_bw"), "backward", macro_config("cifar10", second_avgpooling=4))
    assert n_params(c100) / 1e6 == pytest.approx(20.63, abs=0.01)
    assert n_params(c10) / 1e6 == pytest.approx(19.52, abs=0.01)


def test_zero_edges_cost_nothing():
    dense = SNASNet(parse_cnt_mat("0333 0033 0003 0000"), "backward")
    sparse = SNASNet(parse_cnt_mat("0003 0000 0000 0000"), "backward")
    assert len(sparse.cell1.edges) == 1 and len(dense.cell1.edges) == 6
    assert n_params(dense) > n_params(sparse)


def test_forward_pass_shapes_and_bad_input():
    net = SNASNet(parse_cnt_mat("cifar100_bw"), "backward", timesteps=2)
    assert net(torch.randn(3, 1, 28, 28)).shape == (3, 10)
    reset(net)
    assert net(torch.randn(2, 3, 1, 28, 28)).shape == (3, 10)  # event frames [T, B, C, H, W]
    with pytest.raises(SpikeSearchError, match="expected 1-channel"):
        net(torch.randn(3, 3, 28, 28))
    with pytest.raises(SpikeSearchError, match="28px"):
        reset(net)
        net(torch.randn(3, 1, 32, 32))


def test_hamming_kernel_matches_brute_force():
    x = (torch.rand(6, 50) < 0.3).float()
    cfg = ScoreConfig()
    k = hamming_kernel(x, cfg)
    xn = x.numpy().astype(bool)
    n = xn.shape[1]
    for i in range(6):
        for j in range(6):
            d = np.sum(xn[i] != xn[j])
            ri, rj = xn[i].mean(), xn[j].mean()
            e = n * (ri * (1 - rj) + (1 - ri) * rj)
            assert float(k[i, j]) == pytest.approx(n - 0.5 * d / (e + 1e-3))
            assert float(hamming_kernel(x, ScoreConfig(normalise="none"))[i, j]) == n - d


def _batches(n=2, b=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, 1, 28, 28, generator=g) for _ in range(n)]


def test_score_invariant_to_sample_order():
    torch.manual_seed(0)
    net = SNASNet(parse_cnt_mat("cifar100_bw"), "backward", timesteps=3)
    (x,) = _batches(1, 24)
    perm = torch.randperm(24)
    a, b = score_model(net, [x], ScoreConfig()), score_model(net, [x[perm]], ScoreConfig())
    assert a == pytest.approx(b, rel=1e-9, abs=1e-6)
    assert score_model(net, [x], ScoreConfig(aggregate="sum")) != pytest.approx(a)


def test_score_resets_state_between_batches():
    torch.manual_seed(0)
    net = SNASNet(parse_cnt_mat("cifar100_bw"), "backward", timesteps=3)
    xs = _batches(2, 16)
    assert score_model(net, xs, ScoreConfig()) == pytest.approx(score_model(net, xs, ScoreConfig()))


def test_cpu_scoring_kernels_match_torch_ops_and_ignore_the_thread_count(monkeypatch):
    """CPU scoring runs channels-last with the popcount Gram, fixed-order BatchNorm statistics and the compiled
    LIF step: the score equals the torch-ops path to float rounding, is the same number for one or two
    threads (the search promises serial == parallel), and leaves the model's parameters contiguous."""
    from spikesearch import kernels

    if kernels.library() is None:
        pytest.skip("no C compiler")
    torch.manual_seed(0)
    net = SNASNet(parse_cnt_mat("cifar100_bw"), "backward", timesteps=3)
    xs = _batches(2, 64)
    runs = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        runs.append(score_model(net, xs, ScoreConfig()))
    assert runs[0] == runs[1]
    assert all(p.is_contiguous() for p in net.parameters())
    monkeypatch.setattr(kernels, "library", lambda: None)
    # float64 BatchNorm statistics against torch's float32 ones flip a few spikes near threshold
    assert runs[1] == pytest.approx(score_model(net, xs, ScoreConfig()), rel=1e-3)


def _search(tmp_path=None, n=8, seed=0, strategy="random"):
    cfg = SearchConfig(num_search=n, seed=seed, strategy=strategy, population=4, tournament=2,
                       score=ScoreConfig(batch_size=16))
    csv_path = None if tmp_path is None else tmp_path / "search.csv"
    return run_search(lambda m: SNASNet(m, "backward", timesteps=2), _batches(2, 16), cfg, csv_path, progress=False)


def test_seeded_search_repeats_its_ranking():
    a, b = ranking(_search()), ranking(_search())
    assert [(c.cnt_mat, c.score) for c in a] == [(c.cnt_mat, c.score) for c in b]
    assert [c.cnt_mat for c in ranking(_search(seed=1))] != [c.cnt_mat for c in a]


def test_evolution_strategy_runs_and_mutates():
    hist = _search(n=10, strategy="evolution")
    assert len(hist) == 10 and len({c.cnt_mat for c in hist}) > 4


def test_search_csv_resume_replays_without_rescoring(tmp_path, monkeypatch):
    full = _search(n=8)
    _search(tmp_path, n=4)
    import spikesearch.snasnet.search as search_mod

    calls = []
    real = search_mod.score_model
    monkeypatch.setattr(search_mod, "score_model", lambda *a: calls.append(1) or real(*a))
    resumed = _search(tmp_path, n=8)
    assert [(c.cnt_mat, c.score) for c in resumed] == [(c.cnt_mat, c.score) for c in full]
    assert len(calls) == len({c.cnt_mat for c in full[4:]} - {c.cnt_mat for c in full[:4]})
    rows = list(csv.DictReader(open(tmp_path / "search.csv")))
    assert [r["cnt_mat"] for r in rows] == [c.cnt_mat for c in full]


def test_duplicates_scored_once(monkeypatch):
    import spikesearch.snasnet.search as search_mod

    rng_mats = [parse_cnt_mat("0003 0000 0000 0000")] * 3
    monkeypatch.setattr(search_mod, "sample_matrix", lambda rng, celltype: rng_mats.pop())
    calls = []
    real = search_mod.score_model
    monkeypatch.setattr(search_mod, "score_model", lambda *a: calls.append(1) or real(*a))
    hist = _search(n=3)
    assert len(calls) == 1 and [c.duplicate for c in hist] == [False, True, True]


def test_cli_search_train_evaluate_and_saved_model(tmp_path, capsys):
    common = ["--runs_dir", str(tmp_path), "--timestep", "2", "--train_subset", "256", "--test_subset", "128",
              "--quiet"]
    assert main(["snasnet", "--exp_name", "s", "--num_search", "3", "--score_batch", "16", "--epochs", "1",
                 "--optimizer", "adam", "--learning_rate", "0.003", *common]) == 0
    out = capsys.readouterr().out
    assert "test accuracy:" in out and "top 3" in out
    run = tmp_path / "s"
    for f in ("search.csv", "search_scores.png", "cell.png", "training.png", "spikes.png", "spikes.json",
              "results.json", "config.json", "checkpoints/best.pt"):
        assert (run / f).is_file(), f
    import json
    res = json.loads((run / "results.json").read_text())
    assert main(["snasnet", "--exp_name", "e", "--cnt_mat", *res["cnt_mat"].split(), "--celltype", "backward",
                 "--savemodel_pth", str(run / "checkpoints/best.pt"), *common]) == 0
    res_eval = json.loads((tmp_path / "e/results.json").read_text())
    assert res_eval["test_acc"] == pytest.approx(res["best_test_acc"])


def _tiny_cifar100(root, n_train=8, n_test=4):
    import pickle

    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("test", n_test)):
        d = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "fine_labels": list(range(n)),
             "coarse_labels": [0] * n}
        with open(root / split, "wb") as f:
            pickle.dump(d, f, protocol=2)


def test_official_command_forms_run_as_written(tmp_path, capsys):
    """search_snn.py's two README commands, with spikesearch snasnet in front, on a synthetic CIFAR-100
    (full-size network; search cut to 2 candidates on 4-image batches to stay fast)."""
    _tiny_cifar100(tmp_path)
    extra = ["--data_dir", str(tmp_path), "--runs_dir", str(tmp_path / "runs"), "--quiet"]
    official_search = ["--exp_name", "cifar100_backward", "--dataset", "cifar100", "--celltype", "backward",
                       "--batch_size", "32", "--num_search", "5000"]
    assert main(["snasnet", *official_search, *extra, "--num_search", "2", "--score_batch", "4",
                 "--score_repeats", "1", "--search_only"]) == 0
    assert len((tmp_path / "runs/cifar100_backward/search.csv").read_text().splitlines()) == 3
    torch.manual_seed(0)
    ckpt = tmp_path / "save_cifar100_bw.pth.tar"
    torch.save(SNASNet(parse_cnt_mat("0302 0030 3003 0000"), "backward", macro_config("cifar100")).state_dict(), ckpt)
    official_eval = ["--dataset", "cifar100", "--cnt_mat", "0302", "0030", "3003", "0000", "--savemodel_pth",
                     str(ckpt), "--celltype", "backward"]
    assert main(["snasnet", *official_eval, *extra, "--exp_name", "eval"]) == 0
    assert "test accuracy:" in capsys.readouterr().out
