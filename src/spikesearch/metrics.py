"""Spike and energy accounting for any model built from our neurons.

Forward hooks count, per neuron layer, spikes and neuron updates (firing rate), and per synaptic layer
(Conv2d, Linear) the dense multiply-accumulates of every call. A call whose input is binary (spikes)
costs accumulates only for its spikes (SOPs = dense MACs x input firing rate). Average-pooled spikes
(values k/n in [0, 1]) count as spikes too, since the pool folds into the next layer's weights; their
mean is the firing rate before pooling. A call with analog input (the encoding stem, a hybrid layer)
costs full MACs. Energy uses the 45 nm figures of
Horowitz (ISSCC 2014) as is usual in the SNN literature: 0.9 pJ per AC, 4.6 pJ per MAC.
BatchNorm and pooling are left out (BN folds into the conv at inference; pooling is a few adds).
"""
from __future__ import annotations

from collections import defaultdict

from torch import Tensor, nn

from .neurons import BaseNode

E_AC_PJ = 0.9
E_MAC_PJ = 4.6


def is_spike_like(x: Tensor) -> bool:
    """Binary spikes, or spikes averaged over a pooling window of up to 144 (= lcm of 2x2, 3x3, 4x4) cells."""
    if x.numel() == 0 or float(x.min()) < 0 or float(x.max()) > 1:
        return False
    scaled = x.float() * 144
    return bool(((scaled - scaled.round()).abs() < 1e-3).all())


class SpikeCounter:
    """``with SpikeCounter(model) as sc: model(x)`` then ``sc.report(n_images, timesteps)``."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.stats: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        self.order: list[str] = []
        self.handles: list = []
        # whether a layer's input is spikes is a property of the layer: decided on its first call,
        # not re-checked (a full pass over the input) at every timestep
        self.spike_input: dict[str, bool] = {}

    def __enter__(self) -> "SpikeCounter":
        for name, m in self.model.named_modules():
            if isinstance(m, BaseNode):
                self.handles.append(m.register_forward_hook(self._neuron_hook(name or type(m).__name__)))
            elif isinstance(m, (nn.Conv2d, nn.Linear)):
                self.handles.append(m.register_forward_hook(self._synapse_hook(name)))
        return self

    def __exit__(self, *exc) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()

    def _entry(self, name: str, kind: str) -> dict[str, float]:
        if name not in self.stats:
            self.order.append(name)
            self.stats[name]["kind"] = kind
        return self.stats[name]

    def _neuron_hook(self, name: str):
        def hook(_m, _inp, out: Tensor) -> None:
            e = self._entry(name, "neuron")
            e["spikes"] += float(out.detach().sum())
            e["updates"] += out.numel()
        return hook

    def _synapse_hook(self, name: str):
        def hook(m, inp, out: Tensor) -> None:
            x = inp[0].detach()
            fan_in = m.in_features if isinstance(m, nn.Linear) else (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
            dense = float(out.numel()) * fan_in
            e = self._entry(name, "synapse")
            e["dense_macs"] += dense
            if name not in self.spike_input:
                self.spike_input[name] = is_spike_like(x)
            if self.spike_input[name]:
                e["acs"] += dense * float(x.float().mean())
            else:
                e["macs"] += dense
        return hook

    def report(self, n_images: int, timesteps: int) -> dict:
        layers = []
        tot = defaultdict(float)
        for name in self.order:
            e = self.stats[name]
            if e["kind"] == "neuron":
                layers.append({"layer": name, "kind": "neuron", "firing_rate": e["spikes"] / max(e["updates"], 1),
                               "spikes_per_image": e["spikes"] / n_images})
                tot["spikes"] += e["spikes"]
                tot["updates"] += e["updates"]
            else:
                layers.append({"layer": name, "kind": "synapse", "sops_per_image": e["acs"] / n_images,
                               "macs_per_image": e["macs"] / n_images, "dense_macs_per_image": e["dense_macs"] / n_images})
                for k in ("acs", "macs", "dense_macs"):
                    tot[k] += e[k]
        sops, macs = tot["acs"] / n_images, tot["macs"] / n_images
        energy_pj = E_AC_PJ * sops + E_MAC_PJ * macs
        ann_energy_pj = E_MAC_PJ * tot["dense_macs"] / n_images / timesteps
        return {
            "images": n_images,
            "timesteps": timesteps,
            "mean_firing_rate": tot["spikes"] / max(tot["updates"], 1),
            "spikes_per_image": tot["spikes"] / n_images,
            "sops_per_image": sops,
            "macs_per_image": macs,
            "energy_uj_per_image": energy_pj * 1e-6,
            "ann_equivalent_energy_uj_per_image": ann_energy_pj * 1e-6,
            "energy_model": f"{E_AC_PJ} pJ/AC, {E_MAC_PJ} pJ/MAC (45 nm, Horowitz 2014); ANN equivalent = one dense pass",
            "layers": layers,
        }

