"""NIR round trips: export -> nir.write -> nir.read -> from_nir gives a module whose spikes equal the original's,
step for step, on a batch of the bundled data (a searched SNASNet backward cell, a derived DHS network, converted
VGGs of every --method with full-precision and binary weights); what NIR cannot say fails with one line, and a
corrupted graph fails the round trip."""
import json
import re

import numpy as np
import pytest
import torch

nir = pytest.importorskip("nir")

from spikesearch import SpikeSearchError, load_dataset  # noqa: E402
from spikesearch.cli.main import main  # noqa: E402
from spikesearch.convert import VGG, ConvertConfig, VGGConfig, convert  # noqa: E402
from spikesearch.convert.methods import AUTO, BINARY, CHOICES, METHODS  # noqa: E402
from spikesearch.core.neurons import reset  # noqa: E402
from spikesearch.data.loader import Augment  # noqa: E402
from spikesearch.dhs.genotype import Genotype  # noqa: E402
from spikesearch.dhs.network import DHSConfig, DHSNet  # noqa: E402
from spikesearch.dhs.nodes import NeuronChoice  # noqa: E402
from spikesearch.export import DT, from_nir, to_nir  # noqa: E402
from spikesearch.snasnet import SNASNet, parse_cnt_mat  # noqa: E402
from spikesearch.train.pipeline import make_loaders  # noqa: E402


@pytest.fixture(scope="module")
def images():
    train, _, info = load_dataset("fmnist-small")
    return Augment.for_dataset(info)(train.images[:16], False)


def spikes_of(model, graph, tmp_path, run_ours, run_nir):
    """Per neuron module the graph names: (ours, the re-read graph's) spikes, step for step, and both outputs.
    The graph goes through a file: written, read back, run by from_nir from what the file holds."""
    nir.write(str(tmp_path / "net.nir"), graph)
    net = from_nir(tmp_path / "net.nir")
    modules = graph.metadata["spikesearch"]["modules"]
    ours = {}
    named = dict(model.named_modules())
    handles = [named[path].register_forward_hook(lambda m, i, out, n=node: ours.setdefault(n, []).append(out.detach()))
               for node, path in modules.items()]
    out_ours = run_ours()
    for h in handles:
        h.remove()
    net.trace = {}
    out_nir = run_nir(net)
    pairs = {}
    for node in modules:
        step_shape = net.trace[node][0].shape  # one step [B, ...]; our multi-step neurons give [T, B, ...] a call
        a = torch.cat([o.reshape(-1, *step_shape) for o in ours[node]])
        pairs[node] = (a, torch.stack(net.trace[node]).reshape(a.shape))
    return pairs, out_ours, out_nir


def round_trip(model, graph, tmp_path, run_ours, run_nir):
    """Every neuron's spikes equal, ours vs the re-read graph's, step for step, and some fired."""
    pairs, out_ours, out_nir = spikes_of(model, graph, tmp_path, run_ours, run_nir)
    modules = graph.metadata["spikesearch"]["modules"]
    for node, (a, b) in pairs.items():
        assert torch.equal(a, b), f"{node} ({modules[node]}): {int((a != b).sum())} spikes differ"
    assert sum(int(a.abs().sum()) for a, _ in pairs.values()) > 0
    return out_ours, out_nir, len(modules)


def differing_spikes(model, graph, tmp_path, run_ours, run_nir) -> int:
    pairs, _, _ = spikes_of(model, graph, tmp_path, run_ours, run_nir)
    return sum(int((a != b).sum()) for a, b in pairs.values())


def test_snasnet_backward_cell_round_trip(images, tmp_path):
    torch.manual_seed(0)
    model = SNASNet(parse_cnt_mat("0302 0030 3003 0000"), "backward", timesteps=5).eval()  # feedback 2 -> 0
    graph = to_nir(model)
    assert any(isinstance(n, nir.Delay) for n in graph.nodes.values())  # the backward edge acts at t+1
    ours, theirs, neurons = round_trip(model, graph, tmp_path, lambda: (reset(model), model(images))[1],
                                       lambda net: net(images, timesteps=5))
    assert neurons == 3 + 3 + 2 + 1 + 1 or neurons >= 6
    torch.testing.assert_close(theirs.mean(0), ours)  # spikes equal; the readout to float rounding


def test_derived_dhs_network_round_trip(images, tmp_path):
    torch.manual_seed(0)
    taus = [[NeuronChoice("lif", 1.25), NeuronChoice("lif", 2.0), NeuronChoice("lif", 5.0)]] * 3  # TPS's searched tau
    g = Genotype([[(0, "conv3x3"), (1, "skip")], [(2, "avgpool"), (1, "conv1x1")], [(3, "conv3x3"), (0, "skip")]],
                 [0, 1, 1], taus)
    model = DHSNet(DHSConfig(levels=2, channels=4, timesteps=4, stem_stride=2), 1, 10, 28, genotype=g).eval()
    graph = to_nir(model)
    taus_written = sorted({float(n.tau.flat[0]) for n in graph.nodes.values() if isinstance(n, nir.LIF)})
    assert taus_written == pytest.approx([DT * 1.25, DT * 2.0, DT * 5.0])
    ours, theirs, _ = round_trip(model, graph, tmp_path, lambda: (reset(model), model(images))[1],
                                 lambda net: net(images, timesteps=4))
    torch.testing.assert_close(theirs.mean(0), ours)  # spikes equal; the readout to float rounding


def _converted(method: str, images, binary: bool = False):
    torch.manual_seed(0)
    qcfs = METHODS.get(method).needs_qcfs if method != AUTO else True
    ann = VGG(VGGConfig(width=0.0625, batchnorm=True, binary=binary, activation="qcfs" if qcfs else "relu")).eval()
    return convert(ann, [images], ConvertConfig(percentile=99.0, method=method, calib_images=16, calib_timesteps=4))[0]


@pytest.mark.parametrize("method", CHOICES)
def test_every_method_exports_spike_equal_or_is_refused(images, tmp_path, method):
    """28-px VGGs (ceil-mode pools with partial windows: 7 -> 4) from every --method: the graph, read from the
    file alone, runs spike-equal to the converted SNN for 16 steps, or export refuses it with the method's reason."""
    snn = _converted(method, images)
    if not snn.method.exportable:
        with pytest.raises(SpikeSearchError, match=re.escape(snn.method.nir_refusal)):
            to_nir(snn, (1, 28, 28))
        return
    graph = to_nir(snn, (1, 28, 28))
    assert sum(isinstance(n, nir.Threshold) for n in graph.nodes.values()) == len(snn.stages)  # reset by subtraction
    ours, theirs, _ = round_trip(snn, graph, tmp_path, lambda: snn.simulate(images, 16, one_step=True),
                                 lambda net: net(images, timesteps=16))
    torch.testing.assert_close(theirs.cumsum(0), ours)


def test_every_method_is_refused_or_exported():
    """The record says which, and the spike values agree: a -1 spike never reaches a NIR graph."""
    for name in METHODS:
        m = METHODS.get(name)
        assert m.exportable == (m.spikes == BINARY and not m.presim), name
    assert {n for n in METHODS if METHODS.get(n).exportable} == {"percentile", "qcfs", "calibrate"}


def test_signed_neuron_is_refused_even_without_its_record(images):
    """A SpikingNet whose record was swapped for an exportable one still cannot write its signed IF as a plain IF."""
    snn = _converted("signed", images)
    snn.method = METHODS.get("percentile")
    with pytest.raises(SpikeSearchError, match="SignedIF has no NIR counterpart"):
        to_nir(snn, (1, 28, 28))


def test_binary_weights_round_trip_with_calibration(images, tmp_path):
    snn = _converted("calibrate", images, binary=True)
    graph = to_nir(snn, (1, 28, 28))
    round_trip(snn, graph, tmp_path, lambda: snn.simulate(images, 16, one_step=True), lambda net: net(images, timesteps=16))


def test_a_corrupted_graph_fails_the_round_trip(images, tmp_path):
    """The round trip reads every neuron from the graph: one changed parameter in the file and spikes differ (before,
    from_nir took a LIF's tau from our metadata, so a wrong tau in the graph read back right)."""
    snn = _converted("qcfs", images)  # membrane from half threshold: the Threshold node holds 0.5
    run_ours, run_nir = lambda: snn.simulate(images, 16, one_step=True), lambda net: net(images, timesteps=16)
    assert differing_spikes(snn, to_nir(snn, (1, 28, 28)), tmp_path, run_ours, run_nir) == 0
    for kind, field in ((nir.Threshold, "threshold"), (nir.Scale, "scale")):
        graph = to_nir(snn, (1, 28, 28))
        name = next(n for n, v in graph.nodes.items() if isinstance(v, kind) and (kind is nir.Threshold or n in
                    {dst for src, dst in graph.edges if src.startswith("delay")}))
        setattr(graph.nodes[name], field, getattr(graph.nodes[name], field) * 1.25)
        assert differing_spikes(snn, graph, tmp_path, run_ours, run_nir) > 0, f"{kind.__name__}.{field}"

    torch.manual_seed(0)
    taus = [[NeuronChoice("lif", 1.25), NeuronChoice("lif", 2.0), NeuronChoice("lif", 5.0)]] * 3
    g = Genotype([[(0, "conv3x3"), (1, "skip")], [(2, "avgpool"), (1, "conv1x1")], [(3, "conv3x3"), (0, "skip")]],
                 [0, 1, 1], taus)
    dhs = DHSNet(DHSConfig(levels=2, channels=4, timesteps=4, stem_stride=2), 1, 10, 28, genotype=g).eval()
    run_ours, run_nir = lambda: (reset(dhs), dhs(images))[1], lambda net: net(images, timesteps=4)
    for field in ("tau", "r", "v_leak"):
        graph = to_nir(dhs)
        name = next(n for n, v in graph.nodes.items() if isinstance(v, nir.LIF))
        node = graph.nodes[name]
        setattr(node, field, getattr(node, field) * 1.5 + (0.1 if field == "v_leak" else 0.0))
        if field == "v_leak":  # a leak potential other than the reset is refused, not misread
            with pytest.raises(SpikeSearchError, match="leak potential"):
                differing_spikes(dhs, graph, tmp_path, run_ours, run_nir)
        else:
            assert differing_spikes(dhs, graph, tmp_path, run_ours, run_nir) > 0, field


def test_what_nir_cannot_say_is_one_clear_error(images):
    hybrid = Genotype([[(0, "conv3x3"), (1, "skip")]] * 3, [0, 1], [[NeuronChoice("ann")] * 3] * 2)
    with pytest.raises(SpikeSearchError, match="ANN node of HNS"):
        to_nir(DHSNet(DHSConfig(levels=2, channels=4, timesteps=2, stem_stride=2), 1, 10, 28, genotype=hybrid))


def test_cli_export_of_a_train_run(tmp_path, capsys):
    runs = tmp_path / "runs"
    assert main(["train", "--name", "t", "--runs_dir", str(runs), "--epochs", "1", "--train_subset", "128",
                 "--test_subset", "64", "--widths", "8", "16", "--timestep", "3", "--quiet"]) == 0
    out = tmp_path / "net.nir"
    assert main(["export", str(runs / "t"), "--format", "nir", "-o", str(out)]) == 0
    graph = nir.read(str(out))
    assert graph.metadata["dt"] == pytest.approx(DT) and sum(isinstance(n, nir.LIF) for n in graph.nodes.values()) == 2
    capsys.readouterr()
    assert main(["export", str(runs / "t/checkpoints/last.pt"), "-o", str(out)]) == 2  # exists: not replaced
    assert "--overwrite" in capsys.readouterr().err
    assert main(["export", str(runs / "t/checkpoints/last.pt"), "-o", str(out), "--overwrite"]) == 0
    lif = [n for n in graph.nodes.values() if isinstance(n, nir.LIF)][0]
    assert float(lif.tau.flat[0]) == pytest.approx(2 * DT)  # tau: 2 steps of dt
    assert np.all(lif.r == 1) and np.all(lif.v_leak == 0)


def test_cli_export_of_a_snasnet_run_runs_as_the_trained_network(images, tmp_path):
    """The exported graph is the run's trained network (its rebuild hook, its best.pt), read from the file alone."""
    from spikesearch.train.checkpoint import load_checkpoint

    runs = tmp_path / "runs"
    assert main(["snasnet", "--exp_name", "s", "--runs_dir", str(runs), "--cnt_mat", "0302", "0030", "3003", "0000",
                 "--epochs", "1", "--train_subset", "128", "--test_subset", "32", "--timestep", "3", "--quiet"]) == 0
    out = tmp_path / "s.nir"
    assert main(["export", str(runs / "s"), "-o", str(out)]) == 0
    model = SNASNet(parse_cnt_mat("0302 0030 3003 0000"), "backward", timesteps=3)
    model.load_state_dict(load_checkpoint(runs / "s/checkpoints/best.pt")["model"])
    model.eval()
    reset(model)
    ours = model(images)
    theirs = from_nir(out)(images, timesteps=3).mean(0)
    torch.testing.assert_close(theirs, ours)
    assert not torch.allclose(SNASNet(parse_cnt_mat("0302 0030 3003 0000"), "backward", timesteps=3).eval()(images), ours)


def test_cli_export_of_convert_runs(tmp_path, capsys):
    """A 28-px Fashion-MNIST conversion exports (its ceil-mode pools once refused every such network) and the file
    runs spike-equal to the run's SNN; a signed run is refused for its -1 spikes; an ANN file changed after the
    conversion is refused by its checksum, not exported as another network."""
    from spikesearch.cli.export import rebuild

    ann = tmp_path / "ann"
    assert main(["train-ann", "--job-dir", str(ann), "--epochs", "1", "--width", "0.0625", "--batchnorm",
                 "--train_subset", "128", "--test_subset", "32", "--quiet"]) == 0
    common = ["--model", str(ann / "model.pt"), "--time", "4", "--eval_size", "16", "--norm", "64", "--calib_images",
              "32", "--report_images", "16", "--one-step", "--quiet"]
    for method in ("calibrate", "signed"):
        assert main(["convert", "--job-dir", str(tmp_path / method), "--method", method, *common]) == 0
    # a calibration is fitted for the latency simulated (--time 4), not for a fixed 8 steps applied at every T
    assert json.loads((tmp_path / "calibrate" / "results.json").read_text())["calibrated_for_timesteps"] == 4
    assert json.loads((tmp_path / "calibrate" / "config.json").read_text())["calib_timesteps"] == 4
    out = tmp_path / "calibrate.nir"
    assert main(["export", str(tmp_path / "calibrate"), "-o", str(out)]) == 0
    snn, shape = rebuild(tmp_path / "calibrate")
    x = torch.cat([b for b, _ in make_loaders("fmnist-small", None, 16, torch.device("cpu"), 0, 16, 16).test])
    graph = nir.read(str(out))
    round_trip(snn, graph, tmp_path, lambda: snn.simulate(x, 8, one_step=True), lambda net: net(x, timesteps=8))
    capsys.readouterr()
    assert main(["export", str(tmp_path / "signed"), "-o", str(tmp_path / "signed.nir")]) == 2
    err = capsys.readouterr().err
    assert METHODS.get("signed").nir_refusal in err and not (tmp_path / "signed.nir").exists()
    state = torch.load(ann / "model.pt")
    next(iter(state["model"].values())).mul_(1.01)  # one weight tensor of the ANN changed
    torch.save(state, ann / "model.pt")
    assert main(["export", str(tmp_path / "calibrate"), "-o", str(tmp_path / "changed.nir")]) == 2
    assert "has changed since it was converted" in capsys.readouterr().err


def test_cli_export_of_a_finetuned_conversion_runs_its_trained_weights(tmp_path, capsys):
    """A fine-tuned binary-weight conversion exports the weights the fine-tuning chose, not the conversion it started
    from: the file runs spike-equal to them, they score what the run reported, every binary filter keeps its signs
    and two values; a damaged, replaced or missing checkpoint is refused, not replaced by the untrained conversion."""
    from spikesearch.cli.export import rebuild
    from spikesearch.convert import evaluate_snn
    from spikesearch.convert.rebuild import rebuild_converted
    from spikesearch.data.datasets import DATASETS

    ann = tmp_path / "ann"
    assert main(["train-ann", "--job-dir", str(ann), "--epochs", "1", "--width", "0.0625", "--batchnorm", "--binary",
                 "--train_subset", "256", "--test_subset", "32", "--quiet"]) == 0
    job = tmp_path / "ft"
    assert main(["convert", "--job-dir", str(job), "--model", str(ann / "model.pt"), "--method", "calibrate", "--time", "4",
                 "--eval_size", "32", "--norm", "64", "--calib_images", "32", "--report_images", "16", "--one-step",
                 "--finetune_epochs", "1", "--finetune_timesteps", "1", "--quiet"]) == 0
    results = json.loads((job / "results.json").read_text())
    assert results["finetuned"]["best_epoch"] == 1 and results["finetuned"]["val_images"] == 500
    out = tmp_path / "ft.nir"
    assert main(["export", str(job), "-o", str(out)]) == 0
    snn, _ = rebuild(job)
    test = make_loaders("fmnist-small", None, 32, torch.device("cpu"), 0, None, 32, eval_batch_size=32).test
    assert evaluate_snn(snn, test, 4, True, progress=False)["accuracy"][-1] == results["test_acc"]
    x = torch.cat([b for b, _ in test])[:16]
    round_trip(snn, nir.read(str(out)), tmp_path, lambda: snn.simulate(x, 8, one_step=True), lambda net: net(x, timesteps=8))
    start = rebuild_converted(json.loads((job / "config.json").read_text()), job, DATASETS.get("fmnist-small"),
                              finetuned=False)
    weighted = [(a, b) for a, b in zip(start.modules(), snn.modules()) if isinstance(a, (torch.nn.Conv2d, torch.nn.Linear))]
    assert all(not torch.equal(a.weight, b.weight) for a, b in weighted)  # every layer trained
    for a, b in weighted[1:-1]:  # the binary layers: signs kept, two values per filter
        assert torch.equal(a.weight.sign(), b.weight.sign())
        assert all(len(torch.unique(f.abs())) == 1 for f in b.weight.flatten(1))
    capsys.readouterr()
    best = job / "checkpoints" / "best.pt"
    best.write_bytes(best.read_bytes()[:200])
    assert main(["export", str(job), "-o", str(tmp_path / "damaged.nir")]) == 2
    assert "not the checkpoint results.json measured" in capsys.readouterr().err
    assert not (tmp_path / "damaged.nir").exists()
    best.unlink()
    assert main(["export", str(job), "-o", str(tmp_path / "missing.nir")]) == 2
    assert "without its weights" in capsys.readouterr().err
