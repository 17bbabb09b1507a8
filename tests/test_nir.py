"""NIR round trips: export -> nir.write -> nir.read -> from_nir gives a module whose spikes equal the original's,
step for step, on a batch of the bundled data (a searched SNASNet backward cell, a derived DHS network, converted
VGGs with full-precision and binary weights); what NIR cannot say fails with one line."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

nir = pytest.importorskip("nir")

from spikesearch import SpikeSearchError, load_dataset  # noqa: E402
from spikesearch.cli.main import main  # noqa: E402
from spikesearch.convert import VGG, ConvertConfig, VGGConfig, convert  # noqa: E402
from spikesearch.core.neurons import reset  # noqa: E402
from spikesearch.data.loader import Augment  # noqa: E402
from spikesearch.dhs.genotype import Genotype  # noqa: E402
from spikesearch.dhs.network import DHSConfig, DHSNet  # noqa: E402
from spikesearch.dhs.nodes import NeuronChoice  # noqa: E402
from spikesearch.export import DT, from_nir, to_nir  # noqa: E402
from spikesearch.snasnet import SNASNet, parse_cnt_mat  # noqa: E402


@pytest.fixture(scope="module")
def images():
    train, _, info = load_dataset("fmnist-small")
    return Augment.for_dataset(info)(train.images[:16], False)


def round_trip(model, graph, tmp_path, run_ours, run_nir):
    """Spikes of every neuron module the graph names, ours vs the re-read graph's, step for step."""
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
    fired = 0
    for node in modules:
        step_shape = net.trace[node][0].shape  # one step [B, ...]; our multi-step neurons give [T, B, ...] a call
        a = torch.cat([o.reshape(-1, *step_shape) for o in ours[node]])
        b = torch.stack(net.trace[node]).reshape(a.shape)
        assert torch.equal(a, b), f"{node} ({modules[node]}): {int((a != b).sum())} spikes differ"
        fired += int(a.sum())
    assert fired > 0
    return out_ours, out_nir, len(modules)


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


@pytest.mark.parametrize("binary", [False, True])
def test_converted_vgg_round_trip(images, tmp_path, binary):
    torch.manual_seed(0)
    x = F.pad(images, (2, 2, 2, 2))  # 32 px: every pool of the VGG divides it (28 px has partial windows)
    ann = VGG(VGGConfig(in_channels=1, image_size=32, width=0.125, batchnorm=True, binary=binary)).eval()
    snn, _ = convert(ann, [x], ConvertConfig(percentile=99.0, method="percentile"))
    graph = to_nir(snn, (1, 32, 32))
    assert sum(isinstance(n, nir.Threshold) for n in graph.nodes.values()) == len(snn.stages)  # reset by subtraction
    ours, theirs, _ = round_trip(snn, graph, tmp_path, lambda: snn.simulate(x, 24, one_step=True),
                                 lambda net: net(x, timesteps=24))
    torch.testing.assert_close(theirs.cumsum(0), ours)


def test_what_nir_cannot_say_is_one_clear_error(images):
    ann = VGG(VGGConfig(in_channels=1, image_size=32, width=0.0625, activation="qcfs")).eval()
    x = F.pad(images, (2, 2, 2, 2))
    with pytest.raises(SpikeSearchError, match="membrane starts at 0.5"):
        to_nir(convert(ann, [x])[0], (1, 32, 32))
    with pytest.raises(SpikeSearchError, match="SRP"):
        to_nir(convert(ann, [x], ConvertConfig(method="srp"))[0], (1, 32, 32))
    relu = VGG(VGGConfig(width=0.0625)).eval()
    with pytest.raises(SpikeSearchError, match="partial windows"):
        to_nir(convert(relu, [images])[0], (1, 28, 28))
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
