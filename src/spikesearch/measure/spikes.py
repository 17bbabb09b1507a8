"""Spike and energy accounting for any model built from our neurons.

Forward hooks count, per neuron layer, spikes and neuron updates (firing rate), and per synaptic layer
(Conv2d, Linear) its synaptic operations, exactly:

- **Spike input** costs one accumulate (SOP) per spike per weight it meets: ``sum_j s_j * fanout_j``, where
  ``fanout_j`` is the number of (output, weight) pairs input position ``j`` takes part in, border-aware for
  padded and strided convolutions (``nn.grad.conv2d_input`` of ones), ``out_features`` for a Linear.
- **Average-pooled spikes** feeding a weighted layer (LIF -> AvgPool -> Linear) are counted before the pool
  with the folded fan-out: an input holding the mean of ``a`` spike cells stands for ``value * a`` spikes,
  each meeting that position's weights (the pool folds into the next layer's weights).
- Whether an input is spikes is decided by the module that produced it, not guessed from its values: the
  output of a neuron is spikes; an average pool, a flatten, an identity or a dropout in eval mode passes
  that on (tracked through views by storage); any other tensor of exact zeros and ones (a concatenation or
  nearest-neighbour resize of spike maps) is spikes too. Everything else is analog and costs dense MACs
  (the encoding stem, a hybrid ANN layer).

Energy uses the 45 nm figures of Horowitz (ISSCC 2014) as is usual in the SNN literature: 0.9 pJ per AC,
4.6 pJ per MAC. A -1 spike (the signed IF of ``convert --method signed``) costs what a +1 spike costs at every
synapse it meets: one accumulate, the weight subtracted instead of added (an adder does either). It is counted
apart (``negative_spikes_per_image``, ``negative_sops_per_image``) so a reader sees how much of the traffic a
0/1-only chip could not carry; the spike itself must carry a sign bit, which these figures do not price. BatchNorm and pooling are left out (BN folds into the conv at inference; pooling is a few
adds). "ANN equivalent" is the same network run once as an ANN: every synaptic layer's dense MACs for one
image at one step, counted once per layer (a stem that runs once is not divided by T).
"""
from __future__ import annotations

from collections import OrderedDict, defaultdict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.neurons import BaseNode, TimeSharedDropout

E_AC_PJ = 0.9
E_MAC_PJ = 4.6
POOLS = (nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)
PASS_THROUGH = (nn.Flatten, nn.Unflatten, nn.Identity, nn.Dropout, TimeSharedDropout)
KEEP = 256  # producer records kept (with their tensors, so a storage is never reused while remembered)


def is_binary(x: Tensor) -> bool:
    """Exact zeros and ones (or -1, the signed spikes of a signed IF), at least one of them not zero: spikes,
    whatever reshaped, concatenated or resized them. A map of zeros alone says nothing about its producer
    (a ReLU that never opened, a blank image), so it is analog and costs its dense MACs; a silent neuron's map
    is still spikes, known by the module that made it."""
    return x.numel() > 0 and bool(((x == 0) | (x.abs() == 1)).all()) and bool(x.any())


def _key(x: Tensor) -> tuple[int, int]:
    return x.untyped_storage().data_ptr(), x.untyped_storage().nbytes()


def pool_area(m: nn.Module, x: Tensor) -> Tensor | float:
    """How many input cells each output of an average pool is the mean of (its divisor): the ratio of the
    window sums to the window means of ones, both by the module's own arithmetic; a number where every
    window has the same divisor, else a map over one sample's output."""
    if getattr(m, "divisor_override", None):
        return float(m.divisor_override)
    ones = torch.ones_like(x[:1])
    area = _sum_version(m, ones) / m.forward(ones).clamp_min(1e-12)  # forward(): no hooks (this runs in one)
    flat = area.flatten()
    return float(flat[0]) if bool((flat == flat[0]).all()) else area


def _windows(n: int, out: int) -> list[int]:
    """Sizes of an adaptive pool's windows along one axis (torch's start/end rule)."""
    return [-(-(i + 1) * n // out) - i * n // out for i in range(out)]


def _sum_version(m: nn.Module, x: Tensor) -> Tensor:
    """The window sums an average pool takes the mean of (padding adds nothing)."""
    if isinstance(m, nn.AvgPool2d):
        return F.avg_pool2d(x, m.kernel_size, m.stride, m.padding, m.ceil_mode, m.count_include_pad, divisor_override=1)
    if isinstance(m, nn.AvgPool1d):  # through the 2-d arithmetic on a [N, C, 1, L] view
        return F.avg_pool2d(x.unsqueeze(-2), (1, m.kernel_size[0]), (1, m.stride[0]), (0, m.padding[0]), m.ceil_mode,
                            m.count_include_pad, divisor_override=1).squeeze(-2)
    out = m.forward(x)
    sizes = [torch.tensor(_windows(n, o), dtype=x.dtype, device=x.device) for n, o in zip(x.shape[2:], out.shape[2:])]
    area = sizes[0] if len(sizes) == 1 else sizes[0][:, None] * sizes[1][None, :]
    return out * area


def fanout(m: nn.Module, x: Tensor) -> Tensor | float:
    """Per input position of one sample, the number of (output, weight) pairs it takes part in: the
    transposed convolution of ones with ones, so padding and stride are accounted for at every border."""
    if isinstance(m, nn.Linear):
        return float(m.out_features)
    size = [(n + 2 * p - d * (k - 1) - 1) // s + 1
            for n, k, s, p, d in zip(x.shape[2:], m.kernel_size, m.stride, m.padding, m.dilation)]
    ones_w = torch.ones(m.out_channels, m.in_channels // m.groups, *m.kernel_size, device=x.device)
    grad = torch.ones(1, m.out_channels, *size, device=x.device)
    return nn.grad.conv2d_input((1, *x.shape[1:]), ones_w, grad, m.stride, m.padding, m.dilation, m.groups)[0]


def one_pass(e: dict[str, float], n_images: int, steps: int) -> float:
    """A synapse layer's dense MACs in one pass of the same network as an ANN, for one image. The layer ran
    ``rows / n_images`` times per image: a layer of the step loop ``steps`` times (every step simulated) per place
    it is used (a weight-shared layer used twice per step is two layers of the ANN); a layer outside the loop
    (SNASNet's stem, once per image) fewer times, each a place of its own."""
    runs = e["rows"] / n_images
    if not runs:
        return 0.0
    places = runs // steps if runs >= steps else runs
    return e["dense_macs"] / n_images * places / runs


class SpikeCounter:
    """``with SpikeCounter(model) as sc: model(x)`` then ``sc.report(n_images, timesteps)``."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.stats: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        self.order: list[str] = []
        self.handles: list = []
        # storage -> (tensor, spike multiplicity per element): outputs of neurons and of what passes spikes on
        self.spiking: OrderedDict[tuple[int, int], tuple[Tensor, Tensor | float]] = OrderedDict()
        self.fanouts: dict[tuple[str, tuple], Tensor | float] = {}

    def __enter__(self) -> "SpikeCounter":
        for name, m in self.model.named_modules():
            if isinstance(m, BaseNode):
                self.handles.append(m.register_forward_hook(self._neuron_hook(name or type(m).__name__)))
            elif isinstance(m, (nn.Conv2d, nn.Linear)):
                self.handles.append(m.register_forward_hook(self._synapse_hook(name)))
            elif isinstance(m, POOLS + PASS_THROUGH):
                self.handles.append(m.register_forward_hook(self._carry_hook))
        return self

    def __exit__(self, *exc) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()
        self.spiking.clear()

    def _remember(self, out: Tensor, area: Tensor | float) -> None:
        self.spiking[_key(out)] = (out, area)
        self.spiking.move_to_end(_key(out))
        while len(self.spiking) > KEEP:
            self.spiking.popitem(last=False)

    def _spike_area(self, x: Tensor) -> Tensor | float | None:
        """The spike multiplicity of ``x``'s elements, or None for analog input."""
        known = self.spiking.get(_key(x))
        if known is not None and known[0].shape == x.shape:
            return known[1]
        if known is not None and isinstance(known[1], float):  # a reshaped view of a uniform spike map
            return known[1]
        return 1.0 if is_binary(x) else None

    def _entry(self, name: str, kind: str) -> dict[str, float]:
        if name not in self.stats:
            self.order.append(name)
            self.stats[name]["kind"] = kind
        return self.stats[name]

    def _neuron_hook(self, name: str):
        def hook(_m, _inp, out: Tensor) -> None:
            e = self._entry(name, "neuron")
            out_d = out.detach()
            e["spikes"] += float(out_d.abs().sum())  # a signed spike (-1) is a spike too
            e["negative_spikes"] += float((out_d < 0).sum())
            e["updates"] += out.numel()
            self._remember(out, 1.0)
        return hook

    def _carry_hook(self, m: nn.Module, inp: tuple, out: Tensor) -> None:
        if not inp or not isinstance(inp[0], Tensor) or not isinstance(out, Tensor):
            return
        area = self._spike_area(inp[0])
        if area is None:
            return
        if isinstance(m, POOLS):
            # a map of areas entering a pool would need the per-window sums of areas: uniform areas multiply
            own = pool_area(m, inp[0])
            area = area * own if isinstance(area, float) else None
            if area is not None:
                self._remember(out, area)
        elif not isinstance(m, (nn.Dropout, TimeSharedDropout)) or not m.training:
            self._remember(out, m.forward(area) if isinstance(area, Tensor) and isinstance(m, (nn.Flatten, nn.Unflatten)) else area)

    def _synapse_hook(self, name: str):
        def hook(m, inp, out: Tensor) -> None:
            x = inp[0].detach()
            rows = out.shape[0] if isinstance(m, nn.Conv2d) else out.numel() // out.shape[-1]
            fan_in = m.in_features if isinstance(m, nn.Linear) else (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
            per_row = fan_in * (out[0].numel() if isinstance(m, nn.Conv2d) else m.out_features)
            e = self._entry(name, "synapse")
            e["dense_macs"] += per_row * rows
            e["rows"] += rows  # applications to one image (a row), over every step and every place it is used
            area = self._spike_area(x)
            if area is None:
                e["macs"] += per_row * rows
                return
            key = (name, tuple(x.shape[1:]))
            if key not in self.fanouts:
                self.fanouts[key] = fanout(m, x)
            for kind, spikes in (("acs", x.float().abs()), ("negative_acs", (x < 0).float())):
                # every spike costs an accumulate per weight it meets, whatever its sign: negative ones apart
                weighted = spikes * area if not (isinstance(area, float) and area == 1.0) else spikes
                if isinstance(m, nn.Linear):
                    e[kind] += float(weighted.sum()) * m.out_features
                else:
                    e[kind] += float((weighted.sum(0) * self.fanouts[key]).sum())
        return hook

    def report(self, n_images: int, timesteps: int, steps_run: int | None = None) -> dict:
        """Per image over ``n_images``. ``steps_run``: the steps simulated when more than the ``timesteps`` that
        count (SRP's uncounted pre-simulation steps run every layer too)."""
        layers = []
        tot = defaultdict(float)
        for name in self.order:
            e = self.stats[name]
            if e["kind"] == "neuron":
                layers.append({"layer": name, "kind": "neuron", "firing_rate": e["spikes"] / max(e["updates"], 1),
                               "spikes_per_image": e["spikes"] / n_images})
                for k in ("spikes", "negative_spikes", "updates"):
                    tot[k] += e[k]
            else:
                layers.append({"layer": name, "kind": "synapse", "sops_per_image": e["acs"] / n_images,
                               "macs_per_image": e["macs"] / n_images, "dense_macs_per_image": e["dense_macs"] / n_images})
                for k in ("acs", "negative_acs", "macs", "dense_macs"):
                    tot[k] += e[k]
                tot["one_pass_macs"] += one_pass(e, n_images, steps_run or timesteps)
        sops, macs = tot["acs"] / n_images, tot["macs"] / n_images
        energy_pj = E_AC_PJ * sops + E_MAC_PJ * macs
        ann_energy_pj = E_MAC_PJ * tot["one_pass_macs"]
        return {
            "images": n_images,
            "timesteps": timesteps,
            "mean_firing_rate": tot["spikes"] / max(tot["updates"], 1),
            "spikes_per_image": tot["spikes"] / n_images,
            "negative_spikes_per_image": tot["negative_spikes"] / n_images,
            "sops_per_image": sops,
            "negative_sops_per_image": tot["negative_acs"] / n_images,
            "macs_per_image": macs,
            "energy_uj_per_image": energy_pj * 1e-6,
            "ann_equivalent_energy_uj_per_image": ann_energy_pj * 1e-6,
            "energy_model": f"{E_AC_PJ} pJ/AC, {E_MAC_PJ} pJ/MAC (45 nm, Horowitz 2014); SOPs = spikes x fan-out "
                            "(pooled spikes counted before the pool); a -1 spike costs an AC per synapse like a +1 "
                            "(the weight subtracted), counted in SOPs and apart in negative_sops, its sign bit not "
                            "priced; ANN equivalent = one dense pass",
            "layers": layers,
        }
