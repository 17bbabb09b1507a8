"""The zero-cost table (proxies.SCORES): every entry computes through its record, SWAP and ZiCo equal their
official formulas recomputed here by brute force, and a --score contradicted by a lower-level flag is renamed
to what it computes (or custom) or refused, never mislabelled."""
import json

import numpy as np
import pytest
import torch
from torch import nn

from spikesearch import SpikeSearchError
from spikesearch.cli.main import build_parser, main
from spikesearch.core.neurons import BaseNode, reset
from spikesearch.nasbench.bench import cell_of
from spikesearch.nasbench.network import BenchNet
from spikesearch.proxies import CUSTOM, NEEDS, SCORES, ScoreConfig, combine, evaluate, scoring_layout, seeded
from spikesearch.proxies.table import SWAP_SAMPLES


def _net(arch_id=12617, seed=0):
    return seeded(lambda: BenchNet(cell_of(arch_id), width=0.0625, timesteps=2), seed, str(arch_id))


def _inputs(batches=2, size=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(size, 3, 32, 32, generator=g) for _ in range(batches)]
    return xs, [torch.randint(0, 10, (size,), generator=g) for _ in range(batches)]


def test_every_entry_is_a_complete_record():
    for name in SCORES:
        s = SCORES.get(name)
        assert s.name == name and s.needs in NEEDS and s.summary and callable(s.compute)
        assert all(m in SCORES and SCORES.get(m).need.per_model for m in s.members)
        assert (s.kernel is not None) == (s.needs == "grams" and name != "firing")
    with pytest.raises(SpikeSearchError, match="unknown zero-cost score 'synflow'"):
        ScoreConfig(score="synflow")


def test_evaluate_computes_each_per_model_score_and_refuses_what_it_cannot():
    net, (xs, ys) = _net(), _inputs()
    names = tuple(n for n in SCORES if SCORES.get(n).need.per_model)
    every = evaluate(net, xs, ScoreConfig(), names, ys)
    assert set(every) == set(names) and all(np.isfinite(v) for v in every.values())
    for n in names:  # one score alone is the same number as among the others (one pass shared, no cross-talk)
        assert evaluate(net, xs, ScoreConfig(), (n,), ys)[n] == pytest.approx(every[n], rel=1e-12), n
    assert every["params"] == sum(p.numel() for p in net.parameters())
    with pytest.raises(SpikeSearchError, match="needs labels"):
        evaluate(net, xs, ScoreConfig(), ("zico",))
    with pytest.raises(SpikeSearchError, match="over a sample"):
        evaluate(net, xs, ScoreConfig(), ("rank-ensemble",))
    table = {"sahd": np.array([1.0, 2, 3]), "naswot": np.array([3.0, 2, 1]), "params": np.array([1.0, 1, 2])}
    assert combine("rank-ensemble", table).tolist() == pytest.approx([(1 + 3 + 1.5) / 3, (2 + 2 + 1.5) / 3, (3 + 1 + 3) / 3])


def _spatial_spikes(net, x):
    """Every spatial spike map [B, C, H, W] of every neuron call at every timestep, by hooks of our own."""
    maps = []

    def hook(m, i, out):
        for s in (out if m.step_mode == "m" else out.unsqueeze(0)):
            if s.dim() == 4:
                maps.append(s.detach().clone())
    handles = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, BaseNode)]
    net.train()
    for m in net.modules():
        if isinstance(m, nn.Dropout):
            m.eval()
    reset(net)
    with torch.no_grad():
        net(x)
    for h in handles:
        h.remove()
    return maps


def test_swap_is_the_official_unique_count_of_sample_wise_patterns():
    """The official SWAP (pym1024/SWAP, src/metrics/swap.py): the hooked activations of the first samples,
    concatenated per sample into [samples, features], sign(), transposed, and torch.unique(dim=0) rows counted;
    the score averages over the scoring batches."""
    net, (xs, _) = _net(), _inputs()
    official = []
    for x in xs:
        acts = torch.cat([s[:SWAP_SAMPLES].reshape(SWAP_SAMPLES, -1) for s in _spatial_spikes(net, x)], 1)
        official.append(torch.unique(torch.sign(acts).T, dim=0).size(0))
    assert official[0] != official[1]  # the two batches differ: the mean is a real mean
    assert evaluate(net, xs, ScoreConfig(), ("swap",))["swap"] == np.mean(official)
    # a silent network has one pattern (all zeros) however many neurons it has
    assert evaluate(_net(arch_id=1), xs, ScoreConfig(), ("swap",))["swap"] == 1


def test_zico_is_the_official_statistic_on_per_batch_gradients():
    """ZiCo as the official caculate_zico (SLDGroup/ZiCo, numpy): per Conv2d/Linear weight, mean |g| / std g over
    the batches (np.std, nonzero std only), log of each layer's sum, summed over layers. A layer off every
    input-output path has no gradient (the official code would stop there) and adds nothing."""
    net, (xs, ys) = _net(), _inputs(batches=3)
    grads = {}
    net.train()
    for m in net.modules():
        if isinstance(m, nn.Dropout):
            m.eval()
    with scoring_layout(net, xs) as layout:  # the layout evaluate runs in: the same float32 gradients
        for x, y in zip(layout, ys):
            reset(net)
            net.zero_grad()
            nn.functional.cross_entropy(net(x), y).backward()
            for name, m in net.named_modules():
                if isinstance(m, (nn.Conv2d, nn.Linear)) and m.weight.grad is not None:  # off the path: no gradient
                    grads.setdefault(name, []).append(m.weight.grad.detach().reshape(-1).numpy().astype(np.float64))
    official = 0.0
    for g in grads.values():
        g = np.array(g)
        std = np.std(g, axis=0)
        nz = np.nonzero(std)[0]
        total = np.sum(np.mean(np.abs(g), axis=0)[nz] / std[nz])
        if total != 0:
            official += np.log(total)
    assert official > 0 and len(grads) < sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in net.modules())
    assert evaluate(net, xs, ScoreConfig(), ("zico",), ys)["zico"] == pytest.approx(official, rel=1e-9)


def _resolved(*flags):
    from spikesearch.cli.snasnet import fill_recipe

    a = build_parser().parse_args(["snasnet", *flags])
    fill_recipe(a)
    return a


def test_a_score_contradicted_by_a_kernel_flag_is_renamed_never_mislabelled():
    assert _resolved().score == "sahd"
    assert _resolved("--score", "naswot", "--score_alpha", "2").score == "naswot"  # alpha never enters N - d_H
    a = _resolved("--score", "sahd", "--score_aggregate", "sum")
    assert (a.score, a.score_given) == ("sahd-sum", "sahd")  # what it computes is the paper's SAHD
    a = _resolved("--score", "sahd-last", "--score_aggregate", "sum")
    assert (a.score, a.score_aggregate, a.score_given) == (CUSTOM, "sum", "sahd-last")
    from spikesearch.cli.snasnet import score_config

    cfg = score_config(a)  # a custom score keeps what the named one fixed (the last two layers here)
    assert cfg.name == CUSTOM and cfg.kernel.layers == 2 and cfg.kernel.aggregate == "sum"
    with pytest.raises(SystemExit):  # ZiCo needs labels the search's scoring batches do not carry
        _resolved("--score", "zico")


def test_snasnet_records_the_computed_score_and_refuses_a_kernel_flag_without_a_kernel(tmp_path, capsys):
    common = ["snasnet", "--runs_dir", str(tmp_path), "--num_search", "2", "--score_batch", "8", "--score_repeats", "1",
              "--timestep", "2", "--train_subset", "64", "--test_subset", "32", "--search_only", "--quiet"]
    assert main([*common, "--exp_name", "j", "--score_norm", "january"]) == 0
    cfg = json.loads((tmp_path / "j/config.json").read_text())
    assert (cfg["score"], cfg["score_given"], cfg["score_norm"]) == (CUSTOM, "sahd", "january")
    assert main([*common, "--exp_name", "j", "--score_norm", "january", "--resume"]) == 0  # the same run again
    capsys.readouterr()
    assert main([*common, "--exp_name", "s", "--score", "swap", "--score_norm", "rate"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'swap' has no Hamming kernel" in err[0]
    assert not (tmp_path / "s").exists()  # refused before any run folder is written
    assert main([*common, "--exp_name", "w", "--score", "swap"]) == 0
    rows = (tmp_path / "w/search.csv").read_text().splitlines()[1:]
    assert json.loads((tmp_path / "w/config.json").read_text())["score"] == "swap"
    assert all(float(r.split(",")[2]) >= 1 for r in rows)  # a count of distinct patterns, not a log-det
