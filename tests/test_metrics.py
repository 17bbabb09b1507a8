"""Exact spike accounting (metrics.py) against brute-force counts: SOPs are spikes x the weights each spike
meets, border-aware; pooled spikes are counted before the pool; spike-ness comes from the producing module;
the ANN equivalent counts every layer once."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from spikesearch.core.neurons import IF, SeqToANN
from spikesearch.measure.spikes import E_AC_PJ, E_MAC_PJ, SpikeCounter
from spikesearch.snasnet import SNASNet, parse_cnt_mat


class Spikes(nn.Module):
    """A neuron layer whose spikes the test chooses (an IF at threshold 0.5 fed exact 0/1 currents)."""

    def __init__(self) -> None:
        super().__init__()
        self.neuron = IF(v_threshold=0.5)

    def forward(self, x):
        self.neuron.reset_state()
        return self.neuron(x)


def brute_force_conv_sops(x, conv):
    """Every (output position, weight) pair whose input is a spike, counted by unfolding the receptive fields."""
    cols = F.unfold(x, conv.kernel_size, conv.dilation, conv.padding, conv.stride)  # [B, Cin*k*k, L]
    return conv.out_channels * float(cols.sum())


@pytest.mark.parametrize("size,stride", [(4, 1), (7, 1), (14, 1), (7, 2)])
def test_padded_conv_sops_are_spikes_times_border_aware_fanout(size, stride):
    torch.manual_seed(size)
    conv = nn.Conv2d(3, 5, 3, stride=stride, padding=1, bias=False)
    net = nn.Sequential(Spikes(), conv)
    x = (torch.rand(4, 3, size, size) < 0.3).float()
    with SpikeCounter(net) as sc:
        net(x)
    r = sc.report(n_images=4, timesteps=1)
    assert r["sops_per_image"] * 4 == pytest.approx(brute_force_conv_sops(x, conv))
    # the old rule (dense MACs x input rate) counts padding as inputs: too high for every padded map
    dense = 5 * 3 * 9 * (conv(x).shape[-1] ** 2) * 4
    assert dense * float(x.mean()) > brute_force_conv_sops(x, conv)


def test_pooled_spikes_are_counted_before_the_pool():
    """LIF -> AvgPool(2) -> Linear: each spike meets the Linear's out_features weights once the pool is folded."""
    torch.manual_seed(0)
    fc = nn.Linear(2 * 3 * 3, 7, bias=False)
    net = nn.Sequential(Spikes(), nn.AvgPool2d(2), nn.Flatten(), fc)
    x = (torch.rand(5, 2, 6, 6) < 0.4).float()
    with SpikeCounter(net) as sc:
        net(x)
    assert sc.report(5, 1)["sops_per_image"] * 5 == pytest.approx(float(x.sum()) * 7)


@pytest.mark.parametrize("size", [7, 8])
def test_global_pool_of_spikes_is_spikes_not_macs(size):
    fc = nn.Linear(4, 3)
    net = nn.Sequential(Spikes(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), fc)
    x = (torch.rand(2, 4, size, size) < 0.2).float()
    with SpikeCounter(net) as sc:
        net(x)
    r = sc.report(2, 1)
    assert r["macs_per_image"] == 0 and r["sops_per_image"] * 2 == pytest.approx(float(x.sum()) * 3)


def test_pool_of_spikes_into_a_conv_inside_seq_to_ann():
    """The SpikingCNN pattern: multi-step neuron -> SeqToANN(AvgPool2d) -> SeqToANN(conv); [T, B] flattened."""
    torch.manual_seed(1)
    conv = nn.Conv2d(2, 3, 3, padding=1, bias=False)
    neuron = IF(v_threshold=0.5, step_mode="m")
    net = nn.Sequential(neuron, SeqToANN(nn.AvgPool2d(2)), SeqToANN(conv))
    x = (torch.rand(3, 2, 2, 8, 8) < 0.3).float()  # [T, B, C, H, W]
    with SpikeCounter(net) as sc:
        neuron.reset_state()
        net(x)
    # brute force on the folded network: a 2x2-pooled map feeds the conv; each pre-pool spike meets the
    # weights of its pooled position, i.e. 4 x the pooled map's count per window
    pooled_sum = F.avg_pool2d(x.flatten(0, 1), 2, divisor_override=1)
    assert sc.report(2, 3)["sops_per_image"] * 2 == pytest.approx(brute_force_conv_sops(pooled_sum, conv))


def test_analog_input_costs_macs_and_binary_concatenations_count_as_spikes():
    class Cat(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.lin = Spikes(), Spikes(), nn.Linear(6, 2, bias=False)

        def forward(self, x):
            return self.lin(torch.cat([self.a(x[:, :3]), self.b(x[:, 3:])], 1))  # a new tensor of exact 0/1

    net = Cat()
    x = (torch.rand(4, 6) < 0.5).float()
    with SpikeCounter(net) as sc:
        net(x)
        net.lin(torch.rand(4, 6))  # analog: dense MACs
    r = sc.report(4, 1)
    assert r["sops_per_image"] * 4 == pytest.approx(float(x.sum()) * 2)
    assert r["macs_per_image"] * 4 == 4 * 6 * 2


def test_ann_equivalent_counts_a_once_run_stem_once():
    """SNASNet's stem runs once per image (direct encoding), its cells T times: the ANN equivalent is every
    synaptic layer's dense MACs for one image at one step, each counted once."""
    torch.manual_seed(0)
    net = SNASNet(parse_cnt_mat("cifar100_bw"), "backward", timesteps=5).eval()
    per_layer = {}

    def note(name):
        def hook(m, inp, out):
            fan_in = m.in_features if isinstance(m, nn.Linear) else m.in_channels * m.kernel_size[0] * m.kernel_size[1]
            per_layer[name] = fan_in * out[0].numel()
        return hook

    handles = [m.register_forward_hook(note(n)) for n, m in net.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    x = torch.randn(3, 1, 28, 28)
    with SpikeCounter(net) as sc:
        net(x)
    for h in handles:
        h.remove()
    r = sc.report(3, 5)
    assert r["ann_equivalent_energy_uj_per_image"] == pytest.approx(E_MAC_PJ * sum(per_layer.values()) * 1e-6)
    stem = per_layer["stem.0"]
    assert r["macs_per_image"] == pytest.approx(stem)  # the analog stem: MACs once; everything else spikes
    assert r["energy_uj_per_image"] == pytest.approx((E_MAC_PJ * stem + E_AC_PJ * r["sops_per_image"]) * 1e-6)


def test_ann_equivalent_counts_a_layer_used_twice_per_step_twice():
    """A weight-shared layer applied at two places in each step is two layers of the ANN's pass; warm-up steps
    beyond the counted ones (SRP's pre-simulation) add no pass."""

    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin, self.neuron = nn.Linear(6, 6), IF(v_threshold=0.5)

        def forward(self, x):
            return self.lin(self.neuron(self.lin(x)))

    net = Shared()
    per_use = 6 * 6
    for steps, counted in ((4, 4), (6, 4)):  # 6 steps of which 4 count: 2 warm-up steps
        net.neuron.reset_state()
        with SpikeCounter(net) as sc:
            for _ in range(steps):
                net(torch.rand(3, 6))
        r = sc.report(3, counted, steps)
        assert r["ann_equivalent_energy_uj_per_image"] == pytest.approx(E_MAC_PJ * 2 * per_use * 1e-6)


def test_an_all_zero_analog_map_costs_macs_not_spikes():
    """A tensor of zeros whose producer is not a neuron (here a ReLU that never opened) is analog: its dense MACs
    are counted; a silent neuron's output, known by its producer, is still spikes (no SOP, no MAC)."""
    lin = nn.Linear(6, 2, bias=False)
    silent = Spikes()
    with SpikeCounter(nn.ModuleList([lin, silent])) as sc:
        lin(torch.relu(-torch.rand(4, 6)))  # all zeros, analog
        lin(silent(torch.zeros(4, 6)))  # all zeros, spikes
    r = sc.report(4, 1)
    assert r["macs_per_image"] * 4 == 4 * 6 * 2 and r["sops_per_image"] == 0
