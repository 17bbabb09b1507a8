import csv

import numpy as np
import pytest
import torch

from spikesearch import SpikeSearchError
from spikesearch.cli.main import main
from spikesearch.core.neurons import LIF, reset
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
from spikesearch.proxies import hamming_kernel
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
    b1, b2 = _batches(2, 16)
    alone = [score_model(net, [b], ScoreConfig()) for b in (b1, b2)]
    assert score_model(net, [b1, b2], ScoreConfig()) == pytest.approx(sum(alone) / 2, rel=1e-12)
    # the official code's carried state (membranes from b1 into b2) is a different number
    carried = ScoreConfig(reset=False)
    assert score_model(net, [b1, b2], carried) != pytest.approx(sum(alone) / 2, rel=1e-6)
    assert score_model(net, [b1], carried) == pytest.approx(alone[0], rel=1e-12)


def _official_hook_kernel(out: torch.Tensor) -> np.ndarray:
    """``model_snn.find_best_neuroncell.computing_K_eachtime`` (final version, alpha 0.5, rate times N), float32."""
    out = out.reshape(out.size(0), -1)
    batch, neuron_num = out.size()
    x = (out > 0).float()
    full_matrix = torch.ones((batch, batch)) * neuron_num
    sparsity = (x.sum(1) / neuron_num).unsqueeze(1)
    norm_K = (sparsity @ (1 - sparsity.t())) + ((1 - sparsity) @ sparsity.t())
    rescale_factor = torch.div(0.5 * torch.ones((batch, batch)), norm_K * neuron_num + 1e-3)
    K1_0 = x @ (1 - x.t())
    K0_1 = (1 - x) @ x.t()
    return (full_matrix - rescale_factor * (K0_1 + K1_0)).numpy()


def test_official_score_is_the_official_hook_arithmetic():
    """--score_official: each neuron call's kernel exactly as the official hook builds it (float32), summed
    into a float64 numpy matrix, divided by the number of hook calls, numpy slogdet, mean over the batches;
    checked on the very spike maps the scorer saw."""
    torch.manual_seed(0)
    net = SNASNet(parse_cnt_mat("0303 0030 2002 0200"), "backward", timesteps=3)
    xs = _batches(2, 32)
    seen: list[list] = []
    net.register_forward_pre_hook(lambda m, a: seen.append([]))
    for m in net.modules():
        if isinstance(m, LIF):  # one shared LIF stands for getattr(m, "score_weight", 1) official edge LIFs
            m.register_forward_hook(lambda m, i, out: seen[-1].extend([out.detach().clone()] * getattr(m, "score_weight", 1)))
    ours = score_model(net, xs, ScoreConfig(dropout=True, reset=False, kernel_dtype="float32"))
    official = []
    for calls in seen:
        K = np.zeros((32, 32))
        for out in calls:
            K = K + _official_hook_kernel(out)
        official.append(np.linalg.slogdet(K / len(calls))[1])
    assert ours == pytest.approx(float(np.mean(official)), rel=1e-10)  # float64 sums in another order
    seen.clear()
    float64 = score_model(net, xs, ScoreConfig(dropout=True, reset=False))
    assert float64 != ours and float64 == pytest.approx(ours, rel=1e-3)  # float32 rounding moves the score a little


def test_score_dropout_and_official_switches():
    from argparse import Namespace

    from spikesearch.cli.snasnet import score_config

    base = dict(score="sahd", score_alpha=0.5, score_norm="rate", score_aggregate="mean", score_batch=64, score_repeats=2,
                score_augment=False)
    assert score_config(Namespace(**base, score_dropout=None, score_official=False)) == ScoreConfig()
    assert score_config(Namespace(**base, score_dropout="on", score_official=False)).dropout
    off = score_config(Namespace(**base, score_dropout=None, score_official=True))
    assert (off.dropout, off.reset, off.kernel_dtype) == (True, False, "float32")
    with pytest.raises(SpikeSearchError, match="dropout on"):
        score_config(Namespace(**base, score_dropout="off", score_official=True))
    torch.manual_seed(0)
    net = SNASNet(parse_cnt_mat("cifar100_bw"), "backward", timesteps=3)
    torch.nn.init.normal_(net.classifier[2].weight, 0, 0.2)  # a classifier LIF that fires, so its dropout counts
    xs = _batches(1, 16)
    assert score_model(net, xs, ScoreConfig(dropout=True)) != pytest.approx(score_model(net, xs, ScoreConfig()))


def test_named_scores_set_the_kernel_and_the_aggregate():
    from spikesearch.cli.main import build_parser
    from spikesearch.cli.snasnet import fill_recipe, score_config

    def resolved(*flags: str) -> ScoreConfig:
        a = build_parser().parse_args(["snasnet", *flags])
        fill_recipe(a)
        return score_config(a)

    assert resolved() == ScoreConfig()  # the default is the official SAHD
    assert (resolved("--score", "sahd-sum").normalise, resolved("--score", "sahd-sum").aggregate) == ("rate", "sum")
    assert (resolved("--score", "naswot").normalise, resolved("--score", "naswot").aggregate) == ("none", "sum")
    assert resolved("--score", "naswot", "--score_norm", "rate").normalise == "rate"  # an explicit flag refines it
    with pytest.raises(SystemExit):
        resolved("--score", "synflow")


def test_scheduler_step_is_the_official_step_schedule():
    from argparse import Namespace

    from spikesearch.cli.snasnet import train_config
    from spikesearch.train.trainer import OPTIMIZERS, SCHEDULERS

    a = Namespace(epochs=300, batch_size=32, optimizer="sgd", learning_rate=0.1, momentum=0.9, weight_decay=5e-4,
                  scheduler="step", seed=0, val_interval=20, quiet=True)
    cfg = train_config(a)
    opt = OPTIMIZERS.get(cfg.optimizer)(torch.nn.Linear(1, 1).parameters(), cfg)
    sched = SCHEDULERS.get(cfg.scheduler)(opt, cfg)
    lrs = []
    for _ in range(300):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[149] == pytest.approx(0.1) and lrs[150] == pytest.approx(0.01)
    assert lrs[224] == pytest.approx(0.01) and lrs[225] == pytest.approx(0.001) and lrs[299] == pytest.approx(0.001)


def official_state_dict(mat, macro, celltype="backward", seed=0):
    """Names and shapes as the official ``SNASNet`` / ``Neuronal_Cell_backward`` hold them: every edge is an
    entry of ``cell_architecture`` (forward, ``for col in 1..3: for row < col``) or ``cell_architecture_back``
    (``for col in 0..2: for row > col``), a conv edge being ``Sequential(LIFNode, Conv2d, BatchNorm2d)``."""
    g = torch.Generator().manual_seed(seed)
    sd = {}

    def t(*shape):
        return torch.randn(*shape, generator=g)

    def bn(prefix, c):
        sd.update({f"{prefix}.weight": t(c), f"{prefix}.bias": t(c), f"{prefix}.running_mean": t(c),
                   f"{prefix}.running_var": t(c).abs() + 0.5, f"{prefix}.num_batches_tracked": torch.tensor(11)})

    sd["stem.0.weight"] = t(macro.c1, macro.in_channels, 3, 3)
    bn("stem.1", macro.c1)
    loops = {"cell_architecture": [(r, c) for c in range(1, 4) for r in range(c)],
             "cell_architecture_back": [(r, c) for c in range(3) for r in range(c + 1, 4)] if celltype == "backward" else []}
    for cell, ch in (("cell1", macro.c1), ("cell2", macro.c2)):
        for name, edges in loops.items():
            for k, (row, col) in enumerate(edges):
                op = int(mat[row, col])
                if op in (2, 3):
                    sd[f"{cell}.{name}.{k}.1.weight"] = t(ch, ch, 1 if op == 2 else 3, 1 if op == 2 else 3)
                    bn(f"{cell}.{name}.{k}.2", ch)
    bn("downconv1.0", macro.c1)
    sd["downconv1.2.weight"] = t(macro.c2, macro.c1, 3, 3)
    bn("downconv1.3", macro.c2)
    bn("last_act.0", macro.c2)
    sd["classifier.1.weight"] = t(macro.hidden, macro.c2 * macro.feature_size ** 2)
    sd["classifier.3.weight"] = t(macro.out_neurons, macro.hidden)
    sd["classifier.3.bias"] = t(macro.out_neurons)
    return sd


@pytest.mark.parametrize("name,dataset,pool,tensors", [("cifar100_bw", "cifar100", 2, 85), ("cifar10_bw", "cifar10", 4, 97)])
def test_official_checkpoints_load(name, dataset, pool, tensors):
    from spikesearch.snasnet.checkpoint import state_of
    from spikesearch.train.checkpoint import load_model_weights

    mat, macro = parse_cnt_mat(name), macro_config(dataset, second_avgpooling=pool)
    official = official_state_dict(mat, macro)
    assert len(official) == tensors
    net = SNASNet(mat, "backward", macro)
    load_model_weights(net, state_of({"state_dict": {f"module.{k}": v for k, v in official.items()}}), name)
    ours = net.state_dict()
    assert torch.equal(ours["cell1.edges.20.0.weight"], official["cell1.cell_architecture_back.1.1.weight"])
    assert torch.equal(ours["cell2.edges.23.1.running_var"], official["cell2.cell_architecture.5.2.running_var"])
    assert torch.equal(ours["classifier.2.weight"], official["classifier.1.weight"])
    assert torch.equal(ours["downconv.3.bias"], official["downconv1.3.bias"])


def test_cpu_scoring_kernels_match_torch_ops_and_ignore_the_thread_count(monkeypatch):
    """CPU scoring runs channels-last with the popcount Gram, fixed-order BatchNorm statistics and the compiled
    LIF step: the score equals the torch-ops path to float rounding, is the same number for one or two
    threads (the search promises serial == parallel), and leaves the model's parameters contiguous."""
    from spikesearch.core import kernels

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
    ckpt = tmp_path / "save_cifar100_bw.pth.tar"  # as the official code saves it: {'state_dict': official names}
    torch.save({"state_dict": official_state_dict(parse_cnt_mat("0302 0030 3003 0000"), macro_config("cifar100"))}, ckpt)
    official_eval = ["--dataset", "cifar100", "--cnt_mat", "0302", "0030", "3003", "0000", "--savemodel_pth",
                     str(ckpt), "--celltype", "backward"]
    assert main(["snasnet", *official_eval, *extra, "--exp_name", "eval"]) == 0
    assert "test accuracy:" in capsys.readouterr().out
