import itertools
import json
import math

import numpy as np
import pytest
import torch

from spikesearch import SpikeSearchError
from spikesearch.cli.main import main
from spikesearch.core.neurons import reset
from spikesearch.core.surrogate import SURROGATES
from spikesearch.dhs.genotype import (
    PAPER_CELL,
    PAPER_PATH_8,
    Genotype,
    derive_cell,
    edge_index,
    num_edges,
    random_genotype,
    transition_weights,
    viterbi,
)
from spikesearch.dhs.network import DHSConfig, DHSNet, default_path
from spikesearch.dhs.nodes import DGSSurrogate, NeuronChoice, NodeMix
from spikesearch.dhs.ops import MixedOp, dhs_lif
from spikesearch.dhs.search import derive, dgs_step

OPS = ("skip", "conv3x3", "conv1x1", "avgpool")


def spikes(*shape, p=0.3, seed=0):
    return (torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) < p).float()


def tiny(**kw) -> DHSConfig:
    base = dict(layers=3, levels=2, channels=4, timesteps=2, stem_stride=2)
    return DHSConfig(**{**base, **kw})


def test_mixed_op_is_the_weighted_sum_of_its_ops():
    torch.manual_seed(0)
    op = MixedOp(OPS, 4).eval()
    x = spikes(2, 3, 4, 6, 6)
    w = torch.tensor([0.1, 0.2, 0.3, 0.4])
    expected = sum(wk * o(x) for wk, o in zip(w, op.ops))
    torch.testing.assert_close(op(x, w), expected)
    torch.testing.assert_close(op(x, torch.tensor([1.0, 0, 0, 0])), x)  # one-hot skip = identity


def test_mixed_op_on_spikes_fires_each_conv_with_its_own_temperature():
    op = MixedOp(("skip", "conv3x3_b3", "conv3x3_b5"), 4, mix="spikes")
    assert op.fire[1].surrogate.alpha == 3.0 and op.fire[2].surrogate.alpha == 5.0
    x = spikes(3, 2, 4, 5, 5)
    for k in range(3):
        out = op(x, torch.eye(3)[k])
        assert set(out.unique().tolist()) <= {0.0, 1.0}


def test_derive_cell_keeps_top_edges_by_strongest_real_op():
    steps, ops = 3, ("none", "skip", "conv3x3", "conv1x1")
    alpha = torch.zeros(num_edges(steps), len(ops))
    # node 0: source 1 strong conv3x3; source 0 only strong on skip (does not count for ranking)
    alpha[edge_index(0, 1), 2] = 3
    alpha[edge_index(0, 0), 1] = 5
    alpha[edge_index(0, 0), 3] = 1
    # node 2: sources 3 and 0 strongest, and on source 0 'none' is biggest but may not be picked
    alpha[edge_index(2, 3), 3] = 4
    alpha[edge_index(2, 0), 2] = 4.5
    alpha[edge_index(2, 0), 0] = 5
    cell = derive_cell(alpha, ops, steps, top_k=2)
    assert cell[0] == [(0, "skip"), (1, "conv3x3")]  # skip wins the op argmax of a kept edge
    assert cell[2] == [(0, "conv3x3"), (3, "conv1x1")]
    assert all(len(node) == 2 for node in cell)


def brute_force_path(beta, levels):
    w = transition_weights(beta, levels)
    best, best_p = None, -1.0
    for moves in itertools.product((0, 1), repeat=beta.shape[0]):
        lv, p, path = 0, 1.0, []
        for k, m in enumerate(moves):
            if lv + m >= levels:
                p = -1
                break
            p *= float(w[k, lv, m])
            lv += m
            path.append(lv)
        if p > best_p:
            best, best_p = path, p
    return best


@pytest.mark.parametrize("seed", range(5))
def test_viterbi_matches_brute_force(seed):
    beta = torch.randn(6, 3, 2, generator=torch.Generator().manual_seed(seed)) * 2
    assert viterbi(beta, 3) == brute_force_path(beta, 3)


def test_lowest_level_can_only_stay_and_paper_path_is_the_default():
    w = transition_weights(torch.randn(4, 3, 2), 3)
    assert torch.all(w[:, 2, 0] == 1) and torch.all(w[:, 2, 1] == 0)
    assert default_path(8, 3) == [0, 0, 1, 1, 1, 2, 2, 2]


def test_dgs_mixture_gradient_is_the_weighted_dspike():
    sg = DGSSurrogate(b=3.0, delta=0.5)
    sg.searching = True
    with torch.no_grad():
        sg.logits.copy_(torch.tensor([0.3, -0.2, 1.0]))
    x = torch.linspace(-0.7, 0.7, 57, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(sg(x).sum(), x)
    w = torch.softmax(sg.logits.detach().double(), 0)
    dspike = SURROGATES.get("dspike").grad
    torch.testing.assert_close(g, sum(wk * dspike(x.detach(), b) for wk, b in zip(w, (2.5, 3.0, 3.5))))


def test_dgs_commit_moves_b_to_the_winner_and_clamps():
    sg = DGSSurrogate(b=3.0, delta=0.2)
    with torch.no_grad():
        sg.logits.copy_(torch.tensor([0.0, 0.0, 1.0]))
    assert sg.commit() == pytest.approx(3.2) and torch.all(sg.logits == 0)
    sg.alpha = 1.1
    with torch.no_grad():
        sg.logits.copy_(torch.tensor([1.0, 0.0, 0.0]))
    assert sg.commit() == pytest.approx(1.0)  # floor of the official range [1, 6]
    sg.alpha = 3.0
    assert sg.commit() == pytest.approx(3.0)  # all logits equal (no gradient): b stays, it does not drift down
    with torch.no_grad():
        sg.logits.copy_(torch.tensor([0.5, 0.5, 0.1]))
    assert sg.commit() == pytest.approx(3.0)  # a tie with the current b keeps it
    assert sg.state_dict()["_extra_state"] == {"b": 3.0}  # b travels in checkpoints


def test_paper_preset_fixed_path_is_the_published_one():
    assert default_path(8, 4) == PAPER_PATH_8 == [0, 0, 1, 1, 1, 2, 2, 2]
    assert default_path(4, 3) == [0, 1, 1, 2]


def test_energy_term_counts_the_cells_input_convs():
    """The two 1x1 input convs of a cell cost synaptic ops fed by s0 and s1: spikes at 0.9 pJ x rate, analog
    (HNS) input at 4.6 pJ; the path probability weighs them like the edge ops (issue: they were left out)."""
    torch.manual_seed(0)
    net = DHSNet(tiny(search_cell=False), 1, 10, 12)
    cell = next(iter(net.cells.values()))
    s0 = (torch.rand(2, 3, cell.pre0[0].module[0].in_channels, 12, 12) < 0.3).float()
    s1 = (torch.rand(2, 3, cell.pre1[0].module[0].in_channels, 12, 12) < 0.3).float()
    reset(cell)
    _, spikes_in, _ = cell(s0, s1, None, 0.9 * 0.3, 0.9 * 0.3)
    reset(cell)
    _, analog_in, _ = cell(s0, s1, None, 4.6, 0.9 * 0.3)
    c = cell.pre0[0].module[0].out_channels
    assert cell.pre_macs[0] == cell.pre0[0].module[0].in_channels * c * cell.size ** 2
    assert float(analog_in - spikes_in) == pytest.approx((4.6 - 0.27) * cell.pre_macs[0], rel=1e-5)
    reset(net)
    net(torch.randn(2, 1, 12, 12))
    (g,) = torch.autograd.grad(net.energy, net.beta)  # the path probability moves the input convs' cost too
    assert torch.any(g != 0)


def test_dhs_train_keeps_searching_b_with_dgs(tmp_path, capsys):
    g = tmp_path / "g.json"
    Genotype(PAPER_CELL, [0, 1], stem_b=3.0).save(g)
    argv = ["dhs", "train", "--genotype", str(g), "--name", "t", "--runs_dir", str(tmp_path), "--train_subset", "128",
            "--test_subset", "64", "--train_batch_size", "32", "--train_channels", "4", "--timestep", "2", "--quiet",
            "--dgs", "--dgs_every", "1", "--dgs_steps", "2"]
    assert main([*argv, "--train_epochs", "2"]) == 0
    assert (tmp_path / "t/log.txt").read_text().count("DGS after epoch") == 2
    state = torch.load(tmp_path / "t/checkpoints/last.pt", weights_only=True)["model"]
    bs = [v["b"] for k, v in state.items() if k.endswith("_extra_state")]
    assert len(bs) == 1 + 2 * 3 and any(b != 3.0 for b in bs)  # the stem and every node; b moved


def test_dgs_hypergradient_updates_every_node_logit():
    torch.manual_seed(0)
    net = DHSNet(tiny(dgs=True, search_cell=False, search_layer=False), 1, 10, 12)
    sgs = net.dgs_surrogates()
    assert len(sgs) == 1 + 3 * 3  # the stem and every node of the 3 cells on the path
    for s in sgs:
        s.searching = True
    x, y = torch.randn(8, 1, 12, 12), torch.randint(0, 10, (8,))
    opt = torch.optim.Adam([s.logits for s in sgs], lr=0.1)
    before = [s.logits.detach().clone() for s in sgs]
    dgs_step(net, (x, y), (x.flip(0), y.flip(0)), 0.5, opt)
    moved = [not torch.equal(b, s.logits.detach()) for b, s in zip(before, sgs)]
    assert all(moved)  # every node's logits get a hypergradient (docs/dhs.md §2)


def test_tps_and_hns_node_logits_learn_and_energy_penalises_ann():
    torch.manual_seed(0)
    choices = [NeuronChoice("lif", 1.25), NeuronChoice("lif", 5.0), NeuronChoice("ann")]
    node = NodeMix(choices)
    current = torch.randn(3, 4, 8) + 0.5
    out = node(current)
    (g_task,) = torch.autograd.grad((out - 1).pow(2).mean(), node.logits)
    assert torch.all(g_task != 0)
    reset(node)
    node(current)
    (g_energy,) = torch.autograd.grad(node.cost, node.logits)
    assert g_energy[2] > 0 > g_energy[0]  # raising the ANN weight costs energy (MAC 4.6 pJ vs AC 0.9 pJ x rate)


def test_single_candidate_node_is_the_plain_lif():
    x = torch.randn(5, 2, 6) + 0.4
    mix = NodeMix([NeuronChoice("lif", 2.0, 3.0)])
    torch.testing.assert_close(mix(x), dhs_lif(2.0, "dspike:3")(x))


def test_search_network_parameters_split_cleanly():
    net = DHSNet(tiny(tps=True, hns=True, dgs=True), 1, 10, 12)
    arch = {id(p) for p in net.arch_parameters()}
    dgs = {id(s.logits) for s in net.dgs_surrogates()}
    weights = {id(p) for p in net.weight_parameters()}
    assert not (arch & weights) and not (dgs & weights) and not (arch & dgs)
    assert arch | dgs | weights == {id(p) for p in net.parameters()}
    out = net(torch.randn(4, 1, 12, 12))
    assert out.shape == (4, 10) and 0 < float(net.energy.detach() / net.dense_energy) < 1


def test_derived_network_builds_only_the_path_and_roundtrips(tmp_path):
    torch.manual_seed(0)
    net = DHSNet(tiny(tps=True, hns=True, dgs=True), 1, 10, 12)
    with torch.no_grad():
        net.beta.zero_()
        net.beta[:, :, 1] = 3.0  # always go down
    g = derive(net)
    assert g.path == [1, 1, 1]  # two levels: down once, then the lowest level can only stay
    g2 = Genotype.load(g.save(tmp_path / "g.json"))
    assert g2.to_json() == g.to_json()
    child = DHSNet(tiny(), 1, 10, 12, genotype=g2)
    assert sorted(child.cells) == ["0_1_down", "1_1_same", "2_1_same"]
    assert child.arch_parameters() == [] and child.dgs_surrogates() == []
    assert child(torch.randn(2, 1, 12, 12)).shape == (2, 10)


@pytest.mark.parametrize("edit, message", [
    ({"cell": [[[3, "conv3x3"]], [[0, "skip"]], [[1, "skip"]]]}, "not an earlier state"),
    ({"cell": [[[0, "conv5x5"]], [[0, "skip"]], [[1, "skip"]]]}, "unknown SpikeDHS edge op"),
    ({"path": [0, 2, 2]}, "goes from level 0 to 2"),
    ({"path": [1, 0]}, "goes from level 1 to 0"),
    ({"nodes": [[{"kind": "gru"}] * 3]}, "node kind"),
])
def test_bad_genotype_files_are_refused(tmp_path, edit, message):
    d = {"cell": [[[0, "conv3x3"]], [[1, "skip"]], [[2, "conv1x1"]]], "path": [0, 1, 1], **edit}
    f = tmp_path / "g.json"
    f.write_text(json.dumps(d))
    with pytest.raises(SpikeSearchError, match=message):
        Genotype.load(f)


def test_random_genotype_stays_in_the_space():
    for seed in range(20):
        g = random_genotype(OPS, 3, 5, 3, np.random.default_rng(seed))
        assert all(len(n) == 2 for n in g.cell[1:]) and max(g.path) < 3


def test_cli_search_derive_train(tmp_path, capsys):
    small = ["--layers", "2", "--levels", "2", "--channels", "4", "--timestep", "2", "--train_subset", "128",
             "--batch_size", "32", "--epochs", "2", "--runs_dir", str(tmp_path), "--quiet"]
    assert main(["dhs", "search", "--name", "s", "--tps", "--hns", "--dgs", "--dgs_steps", "1", "--energy_weight", "0.5",
                 *small]) == 0
    run = tmp_path / "s"
    for f in ("genotype.json", "search.pt", "search_history.json", "evolution.png", "genotype.png", "results.json"):
        assert (run / f).is_file(), f
    history = json.loads((run / "search_history.json").read_text())
    assert len(history) == 3 and history[0]["alpha"] != history[-1]["alpha"]  # arch steps in epoch 2
    assert main(["dhs", "derive", "--search", str(run), "--top_k", "1", "--name", "d", "--runs_dir", str(tmp_path)]) == 0
    assert all(len(n) == 1 for n in json.loads((tmp_path / "d" / "genotype.json").read_text())["cell"])
    assert main(["dhs", "derive", "--random", "--seed", "3", "--layers", "2", "--levels", "2", "--name", "r",
                 "--runs_dir", str(tmp_path)]) == 0
    assert main(["dhs", "train", "--genotype", str(run / "genotype.json"), "--name", "t", "--channels", "4",
                 "--timestep", "2", "--epochs", "1", "--train_subset", "128", "--test_subset", "64",
                 "--runs_dir", str(tmp_path), "--quiet"]) == 0
    res = json.loads((tmp_path / "t" / "results.json").read_text())
    assert 0 <= res["test_acc"] <= 1 and math.isfinite(res["spikes"]["energy_uj_per_image"])
    capsys.readouterr()
    assert main(["dhs", "train", "--genotype", str(tmp_path / "missing.json"), "--runs_dir", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err
