"""ANN -> SNN conversion (Rueckauer et al. 2017; Lu & Sengupta 2020; QCFS, Bu et al. 2022).

The ANN is cut into *stages*: the linear ops between two activations (conv with BatchNorm folded in,
average pooling, flatten, linear) followed by one IF layer. Thresholds are balanced by scaling weights,
``W_l <- W_l * lam_{l-1} / lam_l``, so every IF neuron has threshold 1 (exactly
the official code's data-based normalisation). ``lam_l`` is the chosen percentile of the stage's
post-ReLU activations over the normalisation images in eval mode (the official code left dropout on),
layer-wise or per channel; a QCFS layer uses its trained threshold instead. IF neurons reset by
subtraction, the input is the analog image every step (constant current), average pooling acts on
currents (pool before ReLU), and the prediction is the argmax of the output layer's summed current.

``one_step=True`` propagates the input through every layer within a timestep; without it (the
official default, BindsNET's ``Network.run``) every connection reads its source's output of the previous
step, the input layer's included, and a stage whose conv feeds a pool waits one more step (BindsNET's
pass-through node), so the output layer is silent for the first 1 + stages + pools steps.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from tqdm import tqdm

from ..core.errors import SpikeSearchError
from ..core.neurons import reset
from ..measure.spikes import SpikeCounter
from .binary import BinaryConv2d, BinaryLinear, effective_weight
from .methods import AUTO, CHOICES, Method, resolve
from .qcfs import QCFS

HIST_BINS = 2048


@dataclass
class ConvertConfig:
    percentile: float = 99.9
    channel_wise: bool = False
    v_init: float | None = None  # None: the method's own (methods.Method.v_init)
    method: str = AUTO  # a --method choice: methods.CHOICES
    presim: int = 4  # srp: pre-simulation steps before the counted ones (SRP's tau)
    calib_timesteps: int = 8  # calibrate: the latency the biases are corrected for
    calib_images: int = 256  # calibrate: training images (Li et al. use a few hundred to a thousand)

    def validate(self) -> None:
        if not 0 < self.percentile <= 100:
            raise SpikeSearchError(f"percentile must be in (0, 100], got {self.percentile}")
        if self.method not in CHOICES:
            raise SpikeSearchError(f"conversion method must be one of {', '.join(CHOICES)}; got {self.method!r}")
        if self.presim <= 0 or self.calib_timesteps <= 0 or self.calib_images <= 0:
            raise SpikeSearchError("--presim, --calib_timesteps and --calib_images must be positive")


def _plain_copy(layer: nn.Module) -> nn.Module:
    """A full-precision copy holding the weight the layer actually applies (binarized if binary)."""
    where = {"device": layer.weight.device, "dtype": layer.weight.dtype}
    if isinstance(layer, (nn.Conv2d, BinaryConv2d)):
        new = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
                        layer.dilation, layer.groups, bias=True, **where)
    else:
        new = nn.Linear(layer.in_features, layer.out_features, bias=True, **where)
    with torch.no_grad():
        new.weight.copy_(effective_weight(layer))
        new.bias.copy_(layer.bias.detach() if layer.bias is not None else torch.zeros_like(new.bias))
    return new


def materialize(ann: nn.Module) -> nn.Module:
    """A copy of ``ann`` in plain torch layers: binary layers become Conv2d/Linear holding their
    binarized weights (for tools that trace the network, such as spikingjelly's converter)."""
    out = copy.deepcopy(ann)
    for m in list(out.modules()):
        for child_name, child in list(m.named_children()):
            if isinstance(child, (BinaryConv2d, BinaryLinear)):
                setattr(m, child_name, _plain_copy(child))
    return out


def _fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    with torch.no_grad():
        conv.weight.mul_(scale.view(-1, 1, 1, 1))
        conv.bias.copy_((conv.bias - bn.running_mean) * scale + bn.bias.detach())


def split_stages(ann: nn.Module) -> list[tuple[nn.Sequential, nn.Module | None]]:
    """Leaf modules -> [(linear ops, activation)], the last stage with activation None (the output)."""
    stages, ops = [], []
    for name, m in ann.named_modules():
        if len(list(m.children())):
            continue
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            ops.append(_plain_copy(m))
        elif isinstance(m, nn.BatchNorm2d):
            if not ops or not isinstance(ops[-1], nn.Conv2d):
                raise SpikeSearchError(f"cannot convert: BatchNorm {name} does not directly follow a conv")
            _fold_bn(ops[-1], m)
        elif isinstance(m, (nn.AvgPool2d, nn.Flatten)):
            ops.append(copy.deepcopy(m))
        elif isinstance(m, (nn.ReLU, QCFS)):
            stages.append((nn.Sequential(*ops), m))
            ops = []
        elif isinstance(m, (nn.Dropout, nn.Identity)):
            continue
        else:
            raise SpikeSearchError(f"cannot convert layer {name} ({type(m).__name__}): supported are Conv2d, "
                                   "Linear, BatchNorm2d, AvgPool2d, Flatten, ReLU, QCFS, Dropout")
    if not ops:
        raise SpikeSearchError("cannot convert: the network must end in a Conv2d/Linear layer")
    stages.append((nn.Sequential(*ops), None))
    return stages


def _channel_view(x: Tensor) -> Tensor:
    """[B, C, ...] -> [C, B*...]"""
    return x.transpose(0, 1).reshape(x.shape[1], -1)


@torch.no_grad()
def percentile_thresholds(stages, batches: list[Tensor], percentile: float, channel_wise: bool) -> list[Tensor]:
    """Percentile of each stage's post-ReLU activations (zeros included, as the official
    ``np.percentile``), from a max pass and a histogram pass: memory stays O(bins) whatever ``--norm``
    is, and the result is within two bins (2 * max / 2048) of the exact value."""
    relu_stages = [ops for ops, act in stages if act is not None]

    def activations():
        for x in batches:
            for ops in relu_stages:
                x = torch.relu(ops(x))
                yield x

    n = len(relu_stages)
    maxima = [None] * n
    for i, a in enumerate(activations()):
        m = _channel_view(a).amax(1) if channel_wise else a.max().view(1)
        maxima[i % n] = m if maxima[i % n] is None else torch.maximum(maxima[i % n], m)
    hists = [torch.zeros(len(m), HIST_BINS + 1, dtype=torch.float64, device=m.device) for m in maxima]
    for i, a in enumerate(activations()):
        v = _channel_view(a) if channel_wise else a.reshape(1, -1)
        top = maxima[i % n].clamp_min(1e-12)[:, None]
        idx = torch.where(v > 0, (v / top * HIST_BINS).ceil().clamp(1, HIST_BINS), torch.zeros_like(v)).long()
        flat = (idx + torch.arange(len(v), device=v.device)[:, None] * (HIST_BINS + 1)).reshape(-1)
        hists[i % n] += torch.bincount(flat, minlength=len(v) * (HIST_BINS + 1)).view(len(v), -1).double()
    out = []
    for h, top in zip(hists, maxima):
        # bin 0 holds exact zeros; bin k>0 holds (top*(k-1)/B, top*k/B]; linear interpolation in the bin
        cum = h.cumsum(1)
        rank = percentile / 100 * (cum[:, -1] - 1) + 1
        k = torch.searchsorted(cum, rank[:, None]).squeeze(1).clamp(max=HIST_BINS)
        below = torch.where(k > 0, cum.gather(1, (k - 1).clamp(min=0)[:, None]).squeeze(1), torch.zeros_like(rank))
        frac = ((rank - below) / h.gather(1, k[:, None]).squeeze(1).clamp_min(1)).clamp(0, 1)
        value = torch.where(k > 0, top.double() * (k - 1 + frac) / HIST_BINS, torch.zeros_like(rank))
        out.append(torch.where(value > 0, value, top.double().clamp_min(1e-12)).float())  # silent layer: keep max
    return out


class SpikingNet(nn.Module):
    """The converted network: stages of (linear ops -> the method's IF neuron with threshold 1), then the output
    ops. ``method`` (a ``methods.Method``) says what it is and emits; ``v_init`` overrides its initial membrane.
    An SRP method runs ``presim`` uncounted steps first, after which every neuron whose membrane is not
    positive is silenced for the counted steps and all membranes restart."""

    def __init__(self, stages: list[nn.Sequential], output: nn.Sequential, method: Method,
                 v_init: float | None = None, presim: int = 4, levels: list[int | None] | None = None) -> None:
        super().__init__()
        self.method = method
        self.levels = levels or [None] * len(stages)  # the ANN's activation per stage: QCFS levels, None = ReLU
        v0 = method.v_init if v_init is None else v_init
        self.stages = nn.ModuleList(nn.Sequential(*ops, method.neuron(v_threshold=1.0, v_init=v0))
                                    for ops in stages)
        self.output = output
        self.pool_delay = [any(isinstance(m, nn.AvgPool2d) for m in ops) for ops in list(stages) + [output]]
        self.presim = presim if method.presim else 0

    def ann_ops(self, k: int) -> nn.Sequential:
        """Stage ``k``'s converted ANN ops (rescaled, BN folded), without the IF and a calibration shift."""
        return nn.Sequential(*(m for m in self.stages[k][:-1] if not isinstance(m, BiasShift)))

    def step(self, x: Tensor, masks: list[Tensor] | None = None) -> Tensor:
        """One timestep through every layer (one-step propagation); SRP's masks silence neurons."""
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if masks is not None:
                x = x * masks[i]
        return self.output(x)

    @torch.no_grad()
    def simulate(self, x: Tensor, timesteps: int, one_step: bool = False) -> Tensor:
        """Cumulative output current after each counted step, ``[T, B, classes]``. Event frames
        ``[F, B, C, H, W]`` are replayed in a loop: step t reads frame t mod F."""
        reset(self)
        frames = x if x.dim() == 5 else x.unsqueeze(0)
        layers = [*self.stages, self.output]
        outs, total = [], 0.0
        masks = None
        if self.presim:
            if not one_step:
                raise SpikeSearchError(f"--method {self.method.name} simulates one step at a time: add --one-step")
            for t in range(self.presim):
                self.step(frames[t % len(frames)], None)
            masks = [(stage[-1].membrane > 1e-3).to(frames.dtype) for stage in self.stages]  # residual potential > 0
            reset(self)
        if one_step:
            for t in range(timesteps):
                total = total + self.step(frames[(t + self.presim) % len(frames)], masks)
                outs.append(total)
            return torch.stack(outs)
        # synchronous: every layer reads its source's output of the previous step (zeros at t=0), the input
        # layer's too (BindsNET computes all inputs from the state before the step), and a conv+pool stage
        # reads it one step later still (the pass-through node between conv and pool)
        x = frames[0]
        prev, h = [], x
        for layer in layers:
            h = layer[:-1](h) if layer is not self.output else layer(h)
            prev.append(torch.zeros_like(h))
        held = [torch.zeros_like(x if i == 0 else prev[i - 1]) if d else None for i, d in enumerate(self.pool_delay)]
        silent = torch.zeros_like(x)
        for t in range(timesteps):
            new = []
            for i, layer in enumerate(layers):
                inp = (frames[(t - 1) % len(frames)] if t else silent) if i == 0 else prev[i - 1]
                if self.pool_delay[i]:
                    inp, held[i] = held[i], inp
                new.append(layer(inp))
            prev = new
            total = total + prev[-1]
            outs.append(total)
        return torch.stack(outs)


def convert(ann: nn.Module, batches: list[Tensor], cfg: ConvertConfig = ConvertConfig()) -> tuple[SpikingNet, list[Tensor]]:
    """Convert ``ann`` (eval mode) using ``batches`` of training images (threshold balancing and, for
    ``calibrate``, bias calibration); returns the SNN and lam_l. Thresholds come from the ANN's QCFS layers
    when it has them, else from the percentile of each layer's activations."""
    cfg.validate()
    batches = [b.mean(0) if b.dim() == 5 else b for b in batches]  # event frames: the ANN's view is their mean
    ann.eval()
    stages = split_stages(ann)
    acts = [act for _, act in stages if act is not None]
    qcfs = [a for a in acts if isinstance(a, QCFS)]
    if qcfs and len(qcfs) != len(acts):
        raise SpikeSearchError("cannot convert a network that mixes ReLU and QCFS activations")
    method = resolve(cfg.method, bool(qcfs))
    if qcfs:
        lams = [a.threshold.detach().abs().view(1).clone() for a in qcfs]
    else:
        lams = percentile_thresholds(stages, batches, cfg.percentile, cfg.channel_wise)
    one = torch.ones(1, device=next(ann.parameters()).device)
    prev = one
    ops_list = []
    for (ops, _), lam in zip(stages[:-1], lams):
        _rescale(ops, prev, lam)
        ops_list.append(ops)
        prev = lam
    out_ops = stages[-1][0]
    _rescale(out_ops, prev, one)
    snn = SpikingNet(ops_list, out_ops, method, cfg.v_init, presim=cfg.presim,
                     levels=[a.levels if isinstance(a, QCFS) else None for a in acts])
    if method.calibrate:
        calibrate_biases(snn, torch.cat(batches)[:cfg.calib_images], cfg.calib_timesteps)
    return snn, lams


def ann_activation(levels: int | None, clip: bool = True):
    """The ANN's activation in units of its threshold (what a converted stage's rate stands for): QCFS with
    threshold 1 and ``levels`` levels; ReLU (``levels`` None) clipped at 1 (a rate cannot exceed 1) or, with
    ``clip=False``, the ANN's own unbounded ReLU."""
    if levels is not None:
        return lambda z: torch.clamp(torch.floor(z * levels + 0.5) / levels, 0, 1)
    return (lambda z: torch.clamp(z, 0, 1)) if clip else torch.relu


class BiasShift(nn.Module):
    """A per-channel current added before a stage's IF neurons: SNN calibration's correction, kept apart from
    the converted ANN weights (``SpikingNet.ann_ops`` leaves it out)."""

    def __init__(self, shift: Tensor) -> None:
        super().__init__()
        self.register_buffer("shift", shift)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.shift.view(1, -1, *([1] * (x.dim() - 2)))


@torch.no_grad()
def calibrate_biases(snn: SpikingNet, x: Tensor, timesteps: int, iterations: int = 16) -> list[float]:
    """Light SNN calibration (Li et al., ICML 2021, bias correction): layer by layer, a per-channel current
    (``BiasShift``) makes each channel's mean firing rate over ``timesteps`` one-step steps match its mean ANN
    activation (in threshold units, the ANN fed its own previous activations); the next layer is calibrated
    against the corrected one. The paper adds the mean error once; here each channel's shift is found by
    bisection, because a rate is a staircase in the bias: images with a flat background put many neurons on
    one activation value, and when that sits near a step a one-shot correction overshoots (measured on the
    bundled data: the mean error grew). Returns each stage's mean absolute shift."""
    shifts = []
    ann_in, spikes_in = x, [x] * timesteps
    for k, stage in enumerate(snn.stages):
        ops, neuron = snn.ann_ops(k), stage[-1]
        ann_out = ann_activation(snn.levels[k])(ops(ann_in))
        target = _per_channel(ann_out)
        lo, hi = torch.full_like(target, -1.0), torch.full_like(target, 1.0)
        for _ in range(iterations):  # the mean rate rises with the shift: bisect every channel at once
            mid = (lo + hi) / 2
            low = _per_channel(_run_stage(ops, neuron, spikes_in, mid).mean(0)) < target
            lo, hi = torch.where(low, mid, lo), torch.where(low, hi, mid)
        candidates = torch.stack([lo, hi])
        errors = torch.stack([(_per_channel(_run_stage(ops, neuron, spikes_in, c).mean(0)) - target).abs()
                              for c in candidates])
        shift = candidates.gather(0, errors.argmin(0, keepdim=True))[0]
        snn.stages[k] = nn.Sequential(*ops, BiasShift(shift), neuron)
        shifts.append(float(shift.abs().mean()))
        ann_in, spikes_in = ann_out, list(_run_stage(ops, neuron, spikes_in, shift))
    return shifts


def _per_channel(a: Tensor) -> Tensor:
    return a.transpose(0, 1).reshape(a.shape[1], -1).mean(1)


def _run_stage(ops: nn.Sequential, neuron: nn.Module, inputs: list[Tensor], shift: Tensor) -> Tensor:
    """One stage over a recorded input sequence with a per-channel ``shift`` current: its spikes ``[T, ...]``."""
    add = BiasShift(shift)
    neuron.reset_state()
    return torch.stack([neuron(add(ops(inp))) for inp in inputs])


def _rescale(ops: nn.Sequential, lam_in: Tensor, lam_out: Tensor) -> None:
    """Scale the stage so it takes spikes of value 1 standing for lam_in and fires at 1 for lam_out."""
    weighted = [m for m in ops if isinstance(m, (nn.Conv2d, nn.Linear))]
    first, last = weighted[0], weighted[-1]
    with torch.no_grad():
        if len(lam_in) > 1 and isinstance(first, nn.Linear):  # per-channel lam through a flatten
            lam_in = lam_in.repeat_interleave(first.in_features // len(lam_in))
        shape = (1, -1) + (1,) * (first.weight.dim() - 2)
        first.weight.mul_(lam_in.view(shape))
        last.weight.div_(lam_out.view((-1,) + (1,) * (last.weight.dim() - 1)))
        last.bias.div_(lam_out)


@torch.no_grad()
def evaluate_snn(snn: SpikingNet, loader, timesteps: int, one_step: bool, max_images: int | None = None,
                 progress: bool = True) -> dict:
    """Accuracy after every timestep, spike/SOP/energy report, simulation time per step."""
    correct = torch.zeros(timesteps, dtype=torch.long)
    n, sim_seconds = 0, 0.0
    with SpikeCounter(snn) as counter:
        bar = tqdm(loader, desc="simulating", leave=False, disable=not progress)
        for x, y in bar:
            if max_images is not None:
                if n >= max_images:
                    break
                x, y = x[:max_images - n], y[:max_images - n]
            t0 = time.perf_counter()
            out = snn.simulate(x, timesteps, one_step)
            if out.is_cuda:  # kernels run asynchronously: time them, not their launches
                torch.cuda.synchronize(out.device)
            sim_seconds += time.perf_counter() - t0
            correct += (out.argmax(2) == y[None]).sum(1).cpu()
            n += len(y)
            bar.set_postfix(acc=f"{100 * float(correct[-1]) / n:.1f}%")
    if n == 0:
        raise SpikeSearchError("no test images to simulate")
    return {"images": n, "accuracy": (correct.double() / n).tolist(),
            "seconds_per_timestep": sim_seconds / timesteps, "spikes": counter.report(n, timesteps, timesteps + snn.presim)}
