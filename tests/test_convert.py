import copy
import json

import numpy as np
import pytest
import torch
from torch import nn

from spikesearch import SpikeSearchError, TrainConfig, Trainer
from spikesearch.cli.main import main
from spikesearch.convert import (
    QCFS,
    VGG,
    BinaryConv2d,
    BinaryLinear,
    ConvertConfig,
    SpikingNet,
    VGGConfig,
    binarize,
    convert,
    evaluate_snn,
    init_thresholds,
)
from spikesearch.convert.binary import effective_weight
from spikesearch.convert.converter import percentile_thresholds, split_stages
from spikesearch.convert.finetune import FinetuneConfig, Unrolled
from spikesearch.convert.methods import METHODS
from spikesearch.data.loader import BatchLoader
from spikesearch.runs import Run
from spikesearch.train.pipeline import make_loaders
from spikesearch.train.setup import seed_everything
from spikesearch.train.trainer import evaluate


def small_net(act=nn.ReLU, bn=False):
    layers = [nn.Conv2d(1, 8, 3, padding=1, bias=False)] + ([nn.BatchNorm2d(8)] if bn else []) + [
        nn.AvgPool2d(2), act(), nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.AvgPool2d(2), act(),
        nn.Flatten(), nn.Dropout(0.1), nn.Linear(16 * 49, 64, bias=False), act(), nn.Linear(64, 10, bias=False)]
    return nn.Sequential(*layers)


@pytest.fixture(scope="module")
def data():
    seed_everything(0)
    return make_loaders("fmnist-small", None, 64, torch.device("cpu"), 0, 1000, 300)


def trained(data, net, tmp_path, epochs=2):
    seed_everything(0)
    tr, te = data.train, data.test
    Trainer(net, tr, te, TrainConfig(epochs=epochs, optimizer="adam", lr=3e-3, weight_decay=0, progress=False),
            Run("ann", tmp_path, quiet=True)).fit()
    return net.eval()


def norm_batches(data, n=500):
    tr = data[0]
    return [x for x, _ in BatchLoader(tr.data.subset(n), 250, tr.augment, False)]


def predictions(model, loader):
    return torch.cat([model(x).argmax(1) for x, _ in loader])


def test_converted_net_agrees_with_ann_at_large_t(data, tmp_path):
    ann = trained(data, small_net(), tmp_path)
    snn, lams = convert(ann, norm_batches(data), ConvertConfig(percentile=100.0))
    te = data.test
    with torch.no_grad():
        ann_pred = predictions(ann, te)
        snn_pred = torch.cat([snn.simulate(x, 512, one_step=True)[-1].argmax(1) for x, _ in te])
    agreement = float((ann_pred == snn_pred).float().mean())
    assert agreement >= 0.99, agreement
    assert len(lams) == 3


def test_bn_folding_and_stages_reproduce_the_ann(data, tmp_path):
    ann = trained(data, small_net(bn=True), tmp_path, epochs=1)
    x = norm_batches(data, 64)[0]
    with torch.no_grad():
        h = x
        for ops, act in split_stages(ann):
            h = ops(h)
            h = torch.relu(h) if act is not None else h
        torch.testing.assert_close(h, ann(x), rtol=1e-4, atol=1e-4)


def test_if_layers_reset_by_subtraction():
    snn, _ = convert(small_net().eval(), [torch.randn(8, 1, 28, 28)])
    neuron = snn.stages[0][-1]
    assert neuron.v_reset is None and neuron.v_threshold == 1.0
    neuron.reset_state()
    out = [float(neuron(torch.tensor([0.45]))) for _ in range(3)]
    assert out == [0.0, 0.0, 1.0] and float(neuron.membrane) == pytest.approx(0.35)  # residual 1.35 - 1 kept


def test_synchronous_output_silent_for_the_depth():
    torch.manual_seed(0)
    ann = small_net().eval()
    snn, _ = convert(ann, [torch.randn(16, 1, 28, 28) * 3])
    x = torch.randn(4, 1, 28, 28) * 3
    out = snn.simulate(x, 20, one_step=False)
    # BindsNET: the input connection, 3 IF layers + output layer, two of them behind a conv->pool
    # pass-through node: the first output current at t index 6
    delay = 1 + len(snn.stages) + sum(snn.pool_delay)
    assert delay == 6
    assert torch.all(out[:delay] == 0) and torch.any(out[delay:] != 0)
    assert torch.any(snn.simulate(x, delay, one_step=True) != 0)  # one-step: no propagation delay


def test_every_binary_filter_has_two_values():
    conv = BinaryConv2d(3, 5, 3)
    wb = binarize(conv.weight.detach())
    for f, w in zip(wb, conv.weight.detach()):
        alpha = w.abs().mean()
        assert sorted(set(f.flatten().tolist())) in ([-float(alpha), float(alpha)], [float(alpha)], [-float(alpha)])
        torch.testing.assert_close(f.abs(), torch.full_like(f, float(alpha)))
    vgg = VGG(VGGConfig(binary=True, width=0.125))
    convs = [m for m in vgg.features if isinstance(m, nn.Conv2d)]
    assert not isinstance(convs[0], BinaryConv2d) and all(isinstance(c, BinaryConv2d) for c in convs[1:])
    assert type(vgg.classifier[-1]) is nn.Linear  # last layer full precision


class _BinOp:
    """XNOR-Net-PyTorch's ``BinOp`` (``util.py``), transcribed for the parts the B-SNN training calls:
    binarization() = meancenter + clamp + save + binarize, then restore() and updateBinaryGradWeight()."""

    def __init__(self, weight):
        self.target, self.saved = weight, weight.data.clone()

    def binarization(self):
        w = self.target
        negMean = w.data.mean(1, keepdim=True).mul(-1).expand_as(w.data)
        w.data = w.data.add(negMean)
        w.data = w.data.clamp(-1.0, 1.0)
        self.saved.copy_(w.data)
        n, s = w.data[0].nelement(), w.data.size()
        m = (w.data.norm(1, 3, keepdim=True).sum(2, keepdim=True).sum(1, keepdim=True).div(n) if len(s) == 4
             else w.data.norm(1, 1, keepdim=True).div(n))
        w.data = w.data.sign().mul(m.expand(s))

    def restore(self):
        self.target.data.copy_(self.saved)

    def updateBinaryGradWeight(self):
        weight = self.target.data
        n, s = weight[0].nelement(), weight.size()
        if len(s) == 4:
            m = weight.norm(1, 3, keepdim=True).sum(2, keepdim=True).sum(1, keepdim=True).div(n).expand(s).clone()
        else:
            m = weight.norm(1, 1, keepdim=True).div(n).expand(s).clone()
        m[weight.lt(-1.0)] = 0
        m[weight.gt(1.0)] = 0
        m = m.mul(self.target.grad.data)
        m_add = weight.sign().mul(self.target.grad.data)
        if len(s) == 4:
            m_add = m_add.sum(3, keepdim=True).sum(2, keepdim=True).sum(1, keepdim=True).div(n).expand(s)
        else:
            m_add = m_add.sum(1, keepdim=True).div(n).expand(s)
        m_add = m_add.mul(weight.sign())
        self.target.grad.data = m.add(m_add).mul(1.0 - 1.0 / s[1]).mul(n)


@pytest.mark.parametrize("shape", [(16, 3, 3, 3), (8, 16, 3, 3), (10, 24)])
def test_binary_training_step_is_xnor_nets_binop(shape):
    """One training step of our binary layer equals BinOp's: the same projected latent weights, the same
    binarized forward, and the gradient of updateBinaryGradWeight (135x ours before for a 16x3x3 filter)."""
    torch.manual_seed(0)
    layer = (BinaryConv2d(shape[1], shape[0], shape[2], bias=False) if len(shape) == 4
             else BinaryLinear(shape[1], shape[0], bias=False))
    with torch.no_grad():
        layer.weight.copy_(torch.randn(shape) * 0.9)  # some beyond [-1, 1], not centred
    x = torch.randn(5, shape[1], 6, 6) if len(shape) == 4 else torch.randn(5, shape[1])
    ref = nn.Parameter(layer.weight.detach().clone())
    ref_layer = copy.deepcopy(layer)  # the official loop binarizes the parameter, runs the plain layer
    ref_layer.weight = ref
    g = torch.randn_like(layer.eval()(x).detach())  # eval: no projection yet

    layer.train()
    out = layer(x)
    (out * g).sum().backward()

    official = _BinOp(ref)
    official.binarization()
    plain = nn.functional.conv2d(x, ref, None, ref_layer.stride, ref_layer.padding) if len(shape) == 4 else x @ ref.T
    (plain * g).sum().backward()
    official.restore()
    official.updateBinaryGradWeight()
    torch.testing.assert_close(out, plain)
    torch.testing.assert_close(layer.weight.detach(), ref.detach())  # centred and clamped in place, kept
    torch.testing.assert_close(layer.weight.grad, ref.grad, rtol=1e-5, atol=1e-4)  # float sums in another order


def test_percentile_histogram_matches_numpy():
    torch.manual_seed(0)
    ann = small_net().eval()
    batches = [torch.randn(32, 1, 28, 28) for _ in range(2)]
    stages = split_stages(ann)
    got = percentile_thresholds(stages, batches, 99.9, channel_wise=False)
    with torch.no_grad():
        acts = []
        for x in batches:
            h = x
            for i, (ops, act) in enumerate(stages[:-1]):
                h = torch.relu(ops(h))
                acts.append((i, h))
    for i, lam in enumerate(got):
        values = torch.cat([a.flatten() for j, a in acts if j == i]).numpy()
        assert float(lam) == pytest.approx(np.percentile(values, 99.9), abs=2 * float(values.max()) / 2048 + 1e-6)
    per_channel = percentile_thresholds(stages, batches, 99.9, channel_wise=True)
    assert per_channel[0].shape == (8,) and per_channel[2].shape == (64,)


def test_qcfs_converts_at_low_latency(data, tmp_path):
    ann = trained(data, small_net(act=lambda: QCFS(levels=4, init_threshold=4.0)), tmp_path)
    _, ann_acc = evaluate(ann, data.test)
    snn, lams = convert(ann, [])
    assert snn.stages[0][-1].v_init == 0.5
    res = evaluate_snn(snn, data.test, 8, one_step=True, progress=False)
    assert res["accuracy"][-1] >= ann_acc - 0.03, (res["accuracy"], ann_acc)
    assert res["spikes"]["mean_firing_rate"] > 0


def test_qcfs_forward_levels():
    q = QCFS(levels=4, init_threshold=2.0)
    z = torch.tensor([-1.0, 0.2, 0.3, 1.0, 1.9, 5.0])
    torch.testing.assert_close(q(z), torch.tensor([0.0, 0.0, 0.5, 1.0, 2.0, 2.0]))


def test_unsupported_layer_is_clear_error():
    with pytest.raises(SpikeSearchError, match="MaxPool2d"):
        split_stages(nn.Sequential(nn.Conv2d(1, 2, 3), nn.MaxPool2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(2, 2)))


def test_cli_train_ann_then_convert(tmp_path, capsys):
    ann_dir = tmp_path / "ann"
    assert main(["train-ann", "--job-dir", str(ann_dir), "--epochs", "1", "--width", "0.125", "--batchnorm",
                 "--train_subset", "500", "--test_subset", "200", "--quiet"]) == 0
    assert (ann_dir / "model.pt").is_file()
    job = tmp_path / "snn"
    assert main(["convert", "--job-dir", str(job), "--model", str(ann_dir / "model.pt"), "--dataset", "fmnist-small",
                 "--percentile", "99.9", "--norm", "200", "--time", "12", "--arch", "vgg15ab", "--one-step",
                 "--eval_size", "100", "--batch-size", "50", "--results-file", str(tmp_path / "acc.csv"),
                 "--quiet"]) == 0
    res = json.loads((job / "results.json").read_text())
    assert res["images"] == 100 and len((job / "accuracy_per_timestep.csv").read_text().splitlines()) == 13
    for f in ("accuracy_vs_timestep.png", "spikes.png", "spikes.json", "layer_report.json", "layer_report.png"):
        assert (job / f).is_file()
    report = json.loads((job / "layer_report.json").read_text())
    assert len(report["layers"]) == 14 and set(report["layers"][0]["per_t"]) == {"1", "2", "4", "8", "12"}
    assert (tmp_path / "acc.csv").is_file()
    torch.save(torch.load(ann_dir / "model.pt")["model"], tmp_path / "bare.pt")  # bare state dict, other width
    assert main(["convert", "--job-dir", str(tmp_path / "bad"), "--model", str(tmp_path / "bare.pt"),
                 "--batchnorm", "--width", "0.25", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "does not match this architecture" in err and "features.0.weight" in err


def test_qcfs_thresholds_start_from_the_data():
    torch.manual_seed(0)
    vgg = VGG(VGGConfig(width=0.125, batchnorm=True, activation="qcfs"))
    x = torch.randn(64, 1, 28, 28)
    seen = {}
    first = next(m for m in vgg.modules() if isinstance(m, QCFS))
    first.register_forward_pre_hook(lambda m, inp: seen.setdefault("z", inp[0].detach().clone()))
    lams = init_thresholds(vgg, x)
    z = seen["z"]
    assert lams[0] == pytest.approx(float(torch.quantile(z[z > 0], 0.999)), rel=1e-5)
    assert all(0 < v < 8 for v in lams) and vgg.training  # mode restored


def test_vgg_traces_with_fx_and_takes_event_frames():
    """spikingjelly's ann2snn and torch.compile trace the ANN with torch.fx: its forward must stay branch-free,
    while event frames [T, B, C, H, W] still reach it as their mean."""
    model = VGG(VGGConfig(width=0.125, in_channels=2, image_size=32)).eval()
    traced = torch.fx.symbolic_trace(model)
    x = torch.rand(3, 4, 2, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(traced(x.mean(0)), model(x))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU (runs on a GPU machine, never in CI)")
def test_conversion_on_cuda_matches_the_cpu(data, tmp_path):
    """Every tensor the converter makes follows the network's device: converting and simulating on a GPU gives
    the CPU's thresholds and predictions (a CPU-made threshold once broke ``convert --gpu``)."""
    ann = trained(data, small_net(bn=True), tmp_path, epochs=1)
    batches = norm_batches(data, 250)
    x = next(iter(data.test))[0]
    results = []
    for dev in ("cpu", "cuda"):
        snn, lams = convert(copy.deepcopy(ann).to(dev), [b.to(dev) for b in batches])
        results.append((torch.cat(lams).cpu(), snn.simulate(x.to(dev), 32, one_step=True)[-1].cpu()))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-3, atol=1e-4)
    assert float((results[0][1].argmax(1) == results[1][1].argmax(1)).float().mean()) >= 0.97


def _one_stage_snn(weights, presim):
    """A single IF layer fed constant currents: ``weights`` is the current of each neuron per step."""
    lin = nn.Linear(1, len(weights))
    with torch.no_grad():
        lin.weight.copy_(torch.tensor(weights)[:, None])
        lin.bias.zero_()
    out = nn.Linear(len(weights), len(weights))
    with torch.no_grad():
        out.weight.copy_(torch.eye(len(weights)))
        out.bias.zero_()
    return SpikingNet([nn.Sequential(lin)], nn.Sequential(out), METHODS.get("srp" if presim else "calibrate"),
                      presim=presim)


def test_srp_silences_neurons_whose_residual_potential_is_not_positive():
    """SRP (Hao et al. 2023): after tau uncounted steps a neuron whose membrane is <= 0 stays silent; the rest
    restart at half threshold and are counted."""
    x = torch.ones(1, 1)
    # currents: +0.3 fires and keeps a positive residue; -0.2 ends at 0.5 - 0.8 < 0; +0.125 ends at exactly 1.0
    # after 4 steps, fires at step 4 -> residue 0 -> silenced: the unevenness error SRP removes
    snn = _one_stage_snn([0.3, -0.2, 0.125], presim=4)
    counted = snn.simulate(x, 6, one_step=True)[-1][0]
    plain = _one_stage_snn([0.3, -0.2, 0.125], presim=0).simulate(x, 6, one_step=True)[-1][0]
    assert counted[1] == 0 and counted[2] == 0 and counted[0] == plain[0] > 0
    assert plain[2] > 0  # without SRP the third neuron fires in the counted steps
    with pytest.raises(SpikeSearchError, match="one-step"):
        snn.simulate(x, 2, one_step=False)


def test_calibration_reduces_the_rate_error_it_is_fitted_for(data, tmp_path):
    from spikesearch.convert.report import layer_report

    ann = trained(data, small_net(), tmp_path)
    x = norm_batches(data, 256)
    test = torch.cat([b for b, _ in data.test])[:256]
    errors = {}
    for method in ("percentile", "calibrate"):
        snn, _ = convert(copy.deepcopy(ann), x, ConvertConfig(percentile=99.9, method=method, v_init=0.5, calib_timesteps=8))
        errors[method] = [abs(row["per_t"][8]["bias"]) for row in layer_report(snn, test, [8], one_step=True)]
    assert sum(errors["calibrate"]) < 0.5 * sum(errors["percentile"]), errors  # on held-out images


def test_layer_report_error_shrinks_with_t_and_saturation_is_counted(data, tmp_path):
    from spikesearch.convert.report import layer_report

    ann = trained(data, small_net(), tmp_path, epochs=1)
    snn, lams = convert(ann, norm_batches(data, 256), ConvertConfig(percentile=99.0))
    test = torch.cat([b for b, _ in data.test])[:128]
    rows = layer_report(snn, test, [2, 64], one_step=True)
    assert all(r["per_t"][64]["mae"] < r["per_t"][2]["mae"] for r in rows)
    with torch.no_grad():  # the first layer's saturation by hand: the ANN's ReLU above the 99th percentile
        first = torch.relu(split_stages(ann)[0][0](test)) / lams[0]
    assert rows[0]["saturated"] == pytest.approx(float((first > 1).float().mean()), abs=1e-6)
    assert 0.005 < rows[0]["saturated"] < 0.02


def test_method_errors_come_before_the_run_folder(tmp_path, capsys):
    ann_dir = tmp_path / "ann"
    assert main(["train-ann", "--job-dir", str(ann_dir), "--epochs", "1", "--width", "0.0625", "--train_subset", "128",
                 "--test_subset", "64", "--quiet"]) == 0
    for extra, msg in ((["--method", "qcfs"], "QCFS activations"), (["--method", "srp"], "--one-step")):
        code = main(["convert", "--job-dir", str(tmp_path / "snn"), "--model", str(ann_dir / "model.pt"), "--time", "4",
                     "--eval_size", "32", "--quiet", *extra])
        assert code == 2 and msg in capsys.readouterr().err and not (tmp_path / "snn").exists()


def test_signed_if_takes_a_spike_back_only_after_it_fired():
    """Fast-SNN's signed IF (threshold 1, from half threshold): +1 at the threshold, -1 when the membrane drops below
    0 while its net count is positive, never a -1 before a +1; on random currents its spikes equal a direct
    transcription of the rule on the absolute membrane."""
    neuron = METHODS.get("signed").neuron(v_threshold=1.0, v_init=0.5)
    neuron.reset_state()
    out = [float(neuron(torch.tensor([x]))) for x in (0.6, -0.9, -0.5, -2.0)]
    # 0.5+0.6=1.1 fires (0.1 left); 0.1-0.9=-0.8 < 0 after a spike: -1 (0.2); 0.2-0.5=-0.3 < 0, count 0: nothing
    assert out == [1.0, -1.0, 0.0, 0.0] and float(neuron.membrane) == pytest.approx(-2.3)
    torch.manual_seed(0)
    x = torch.randn(40, 500) * 0.6
    neuron.reset_state()
    got = torch.stack([neuron(xt) for xt in x])
    v, count, want = torch.full((500,), 0.5), torch.zeros(500), []
    for xt in x:
        v = v + xt
        s = (v >= 1).float() - ((v < 0) & (count > 0)).float()
        v, count = v - s, count + s
        want.append(s)
    want = torch.stack(want)
    assert (got == -1).any() and (got == 1).any() and torch.equal(got, want)
    assert bool((want.cumsum(0) >= 0).all())  # a spike is only ever taken back


def test_a_negative_spike_costs_an_accumulate_and_is_counted_apart():
    """Energy of a signed IF layer feeding a Linear: every spike, +1 or -1, meets out_features weights at one AC
    each; the -1 spikes and their SOPs are reported apart."""
    from spikesearch.measure.spikes import E_AC_PJ, SpikeCounter

    class SignedLayer(nn.Module):
        def __init__(self):
            super().__init__()
            self.neuron = METHODS.get("signed").neuron(v_threshold=1.0, v_init=0.5)
            self.lin = nn.Linear(4, 3, bias=False)

        def forward(self, x):
            return self.lin(self.neuron(x))

    net = SignedLayer()
    net.neuron.reset_state()
    steps = [torch.tensor([[0.6, 0.0, 0.7, -0.2]]), torch.tensor([[-0.9, 0.0, 0.0, 0.0]])]
    s = torch.cat([net.neuron(x) for x in steps])
    assert int((s < 0).sum()) == 1 and int((s > 0).sum()) == 2  # +1 +1 at step 0, the first taken back at step 1
    net.neuron.reset_state()
    with SpikeCounter(net) as sc:
        for x in steps:
            net(x)
    r = sc.report(1, 2)
    assert r["spikes_per_image"] == 3 and r["negative_spikes_per_image"] == 1
    assert r["sops_per_image"] == 3 * 3 and r["negative_sops_per_image"] == 3 * 1
    assert r["energy_uj_per_image"] == pytest.approx(E_AC_PJ * 9 * 1e-6)


@pytest.mark.parametrize("layer", [BinaryConv2d(4, 3, 3, padding=1), BinaryLinear(6, 3)])
def test_binary_layers_evaluate_and_export_the_weights_training_applies(layer):
    """XNOR-Net's BinOp mean-centres and clamps the latent weights before a test pass as before a training pass: a
    binary layer whose stored weights are off-centre and out of [-1, 1] (a step after the last projection, or a
    loaded file) applies in eval mode, converts and exports with exactly the weights a training pass would use,
    and evaluation leaves the stored weights as they are."""
    torch.manual_seed(0)
    with torch.no_grad():
        layer.weight.copy_(torch.randn_like(layer.weight) * 1.5 + 0.4)
    stored = layer.weight.detach().clone()
    x = torch.randn(2, 4, 5, 5) if isinstance(layer, BinaryConv2d) else torch.randn(2, 6)
    with torch.no_grad():
        evaluated = layer.eval()(x)
        assert torch.equal(layer.weight, stored)
        exported = effective_weight(layer).clone()
        trained = layer.train()(x)  # projects the stored weights in place first
    torch.testing.assert_close(evaluated, trained)
    torch.testing.assert_close(exported, binarize(layer.weight.detach()))  # what the training pass applied
    assert not torch.equal(binarize(stored), exported)  # the projection mattered


def test_qcfs_conversion_is_exact_at_t_equal_l_for_evenly_spread_input():
    """At T = L, an IF stage (threshold lam, membrane from lam/2, reset by subtraction) fed a constant current
    fires exactly L * QCFS(z) / lam times (Bu et al., ICLR 2022): BN folding, pool-before-activation, threshold
    balancing and the neuron add no error, so a converted QCFS net's loss at T = L is the unevenness of the spike
    trains between layers alone (docs/conversion.md, the per-layer diagnosis)."""
    torch.manual_seed(0)
    levels = 4
    ann = small_net(act=lambda: QCFS(levels=levels, init_threshold=1.0), bn=True)
    with torch.no_grad():
        for i, m in enumerate(m for m in ann.modules() if isinstance(m, QCFS)):
            m.threshold.fill_(0.7 + 0.4 * i)
        for m in ann.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2), m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5), m.bias.uniform_(-0.3, 0.3)
    ann.eval()
    x = torch.rand(16, 1, 28, 28)
    snn, lams = convert(ann, [], ConvertConfig(method="qcfs"))
    # the ANN's activations in threshold units, stage by stage
    a, ann_acts = x, []
    with torch.no_grad():
        for (ops, act), lam in zip(split_stages(ann)[:-1], lams):
            a = act(ops(a))
            ann_acts.append(a / lam)
        for k, stage in enumerate(snn.stages):
            inp = x if k == 0 else ann_acts[k - 1]  # the ANN's previous activation as a constant current
            neuron = stage[-1]
            neuron.reset_state()
            z = stage[:-1](inp)
            count = torch.stack([neuron(z) for _ in range(levels)]).sum(0)
            mismatch = (count != torch.round(ann_acts[k] * levels)).float().mean()
            assert mismatch <= 1e-3, (k, float(mismatch))  # float ties at a level boundary only


def test_the_conversion_neuron_trained_spikes_as_it_runs_with_a_box_gradient():
    """Fine-tuning's neuron: with a gradient the spikes are the evaluated neuron's, exactly, membranes on the
    threshold included; the gradient is 1 within half a threshold of the firing point and 0 outside."""
    neuron = METHODS.get("qcfs").neuron(v_threshold=1.0, v_init=0.5)
    x = torch.tensor([[0.5, 0.25, 0.75, -0.2, 0.5000001, 0.4999999]] * 3)
    neuron.reset_state()
    with torch.no_grad():
        want = torch.stack([neuron(xt) for xt in x])
    neuron.reset_state()
    xg = x.clone().requires_grad_(True)
    got = torch.stack([neuron(xt) for xt in xg])
    assert torch.equal(got.detach(), want) and want[0].tolist() == [1, 0, 1, 0, 1, 0]
    u = torch.tensor([0.0, 0.49, 0.51, 0.99, 1.01], requires_grad=True)  # firing point v_threshold - v_init = 0.5
    neuron.fire(u).sum().backward()
    assert u.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]


def test_finetuning_recovers_what_the_conversion_loses_at_low_latency(data, tmp_path):
    """A 0/1 conversion from a zero membrane is near chance at T = 2; one epoch of spike-based fine-tuning at T = 2
    lifts it by more than 10 points (measured: 11.3 -> 30.0 %), and the SNN still runs its IF neurons."""
    ann = trained(data, small_net(), tmp_path)
    snn, _ = convert(ann, norm_batches(data), ConvertConfig(percentile=99.0))
    before = evaluate_snn(snn, data.test, 2, True, progress=False)["accuracy"][-1]
    net = Unrolled(snn, 2, binary=False)
    Trainer(net, data.train, None, FinetuneConfig(epochs=1, timesteps=2, lr=1e-3).train_config(0, False),
            Run("ft", tmp_path, quiet=True)).fit()
    tuned = net.baked()
    after = evaluate_snn(tuned, data.test, 2, True, progress=False)["accuracy"][-1]
    assert after > before + 0.10, (before, after)
    assert all(type(stage[-1]) is METHODS.get("percentile").neuron for stage in tuned.stages)
    assert not any(p.requires_grad for p in tuned.parameters())


def test_finetuning_refuses_what_it_cannot_train(tmp_path, capsys):
    """Fine-tuning trains 0/1 neurons run one step at a time: signed and SRP conversions and synchronous runs are
    refused before a run folder exists; --resume continues only a fine-tuning."""
    ann_dir = tmp_path / "ann"
    assert main(["train-ann", "--job-dir", str(ann_dir), "--epochs", "1", "--width", "0.0625", "--train_subset", "128",
                 "--test_subset", "64", "--quiet"]) == 0
    common = ["--model", str(ann_dir / "model.pt"), "--time", "2", "--eval_size", "16", "--norm", "32",
              "--report_images", "8", "--quiet"]
    for extra, msg in ((["--method", "signed", "--one-step"], "emits -1/0/+1 spikes"),
                       (["--method", "srp", "--one-step"], "decided at run time"),
                       (["--method", "calibrate"], "add --one-step")):
        assert main(["convert", "--job-dir", str(tmp_path / "snn"), "--finetune_epochs", "1", *common, *extra]) == 2
        assert msg in capsys.readouterr().err and not (tmp_path / "snn").exists()
    assert main(["convert", "--job-dir", str(tmp_path / "plain"), "--one-step", *common]) == 0
    assert main(["convert", "--job-dir", str(tmp_path / "plain"), "--resume", "--finetune_epochs", "1",
                 "--override", "finetune_epochs", "--one-step", *common]) == 2
    assert "--resume continues a fine-tuning" in capsys.readouterr().err
