"""spikesearch networks -> NIR graphs (see the package doc for the conventions)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..core.errors import SpikeSearchError
from ..core.neurons import IF, LIF, PLIF, BaseNode, SeqToANN, TimeSharedDropout

DT = 1e-4  # seconds per simulation step, written into every graph as metadata["dt"] (snnTorch's NIR reader assumes it)
SKIP = (nn.Dropout, TimeSharedDropout, nn.Identity)  # no-ops at inference


def nir_module():
    try:
        import nir
    except ImportError:
        raise SpikeSearchError('NIR export needs the nir package: pip install -e ".[nir]" (or pip install nir)') from None
    return nir


def _np(t) -> np.ndarray:
    return t.detach().cpu().double().numpy().astype(np.float32) if isinstance(t, torch.Tensor) else np.asarray(t, np.float32)


def _pair(v) -> tuple[int, int]:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


class Graph:
    """Nodes and edges of ``model``'s graph under construction; ``modules`` maps a neuron node to the module it
    stands for, named by its path in ``model`` (looked up, so no exporter spells a model's attribute layout)."""

    def __init__(self, model: nn.Module) -> None:
        self.nir = nir_module()
        self.nodes: dict = {}
        self.edges: list[tuple[str, str]] = []
        self.modules: dict[str, str] = {}
        self.paths = {m: name for name, m in model.named_modules()}

    def where(self, m: nn.Module) -> str:
        """``m``'s path in the model, for the graph's module names and for errors."""
        return self.paths[m]

    def add(self, prefix: str, node, *sources: str, module: str | None = None) -> str:
        name = f"{prefix}_{len(self.nodes)}"
        self.nodes[name] = node
        self.edges += [(s, name) for s in sources]
        if module is not None:
            self.modules[name] = module
        return name

    def total(self, shape, *sources: str) -> str:
        """A node that is the sum of its inputs (NIR sums what enters a node): an identity ``Scale``."""
        return self.add("sum", self.nir.Scale(scale=np.ones(shape, np.float32)), *sources)

    # --- synapses -------------------------------------------------------------------------------------
    def conv(self, conv: nn.Conv2d, bn: nn.BatchNorm2d | None, src: str, shape, where: str,
             weight_slice: slice | None = None, with_bias: bool = True) -> tuple[str, tuple]:
        from ..convert.binary import effective_weight

        w = effective_weight(conv).double()
        b = conv.bias.detach().double() if conv.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64)
        if bn is not None:  # fold: the conv's output normalised by the running statistics, then scaled and shifted
            scale = bn.weight.detach().double() / torch.sqrt(bn.running_var.double() + bn.eps)
            w, b = w * scale.view(-1, 1, 1, 1), (b - bn.running_mean.double()) * scale + bn.bias.detach().double()
        if weight_slice is not None:
            w = w[:, weight_slice]
        if isinstance(conv.padding, str):
            raise SpikeSearchError(f"{where}: string padding {conv.padding!r} is not exported; use integers")
        c, h, wd = shape
        out = [(n + 2 * p - d * (k - 1) - 1) // s + 1 for n, k, s, p, d in
               zip((h, wd), conv.kernel_size, conv.stride, conv.padding, conv.dilation)]
        node = self.nir.Conv2d(input_shape=(h, wd), weight=_np(w), stride=_pair(conv.stride), padding=_pair(conv.padding),
                               dilation=_pair(conv.dilation), groups=conv.groups,
                               bias=_np(b if with_bias else torch.zeros_like(b)))
        return self.add("conv", node, src), (w.shape[0], *out)

    def affine(self, weight: torch.Tensor, bias: torch.Tensor | None, src: str) -> tuple[str, tuple]:
        if bias is None:
            return self.add("linear", self.nir.Linear(weight=_np(weight)), src), (weight.shape[0],)
        return self.add("affine", self.nir.Affine(weight=_np(weight), bias=_np(bias)), src), (weight.shape[0],)

    def batchnorm(self, bn: nn.BatchNorm2d, src: str, shape) -> tuple[str, tuple]:
        """A BatchNorm on an analog value (no conv before it to fold into): a 1x1 convolution with a diagonal
        weight (NIR's type inference takes a depthwise convolution's input channels from its weight)."""
        scale = bn.weight.detach().double() / torch.sqrt(bn.running_var.double() + bn.eps)
        shift = bn.bias.detach().double() - bn.running_mean.double() * scale
        node = self.nir.Conv2d(input_shape=tuple(shape[1:]), weight=_np(torch.diag(scale)[:, :, None, None]),
                               stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1, bias=_np(shift))
        return self.add("bn", node, src), tuple(shape)

    def avgpool(self, pool: nn.AvgPool2d, src: str, shape, where: str) -> tuple[str, tuple]:
        (k0, k1), (s0, s1), (p0, p1) = _pair(pool.kernel_size), _pair(pool.stride or pool.kernel_size), _pair(pool.padding)
        c, h, w = shape
        if pool.ceil_mode and ((h + 2 * p0 - k0) % s0 or (w + 2 * p1 - k1) % s1):
            return self._partial_pool(pool, src, shape, where)
        out = (c, (h + 2 * p0 - k0) // s0 + 1, (w + 2 * p1 - k1) // s1 + 1)
        kw = dict(kernel_size=np.array([k0, k1]), stride=np.array([s0, s1]), padding=np.array([p0, p1]))
        if pool.count_include_pad or (p0, p1) == (0, 0):
            return self.add("avgpool", self.nir.AvgPool2d(**kw), src), out
        # padding not counted: a sum over the window, divided by how many real cells each window holds
        summed = self.add("sumpool", self.nir.SumPool2d(**kw), src)
        return self.add("scale", self.nir.Scale(scale=_np((1 / _cells_per_window(pool, h, w)).expand(out))), summed), out

    def _partial_pool(self, pool: nn.AvgPool2d, src: str, shape, where: str) -> tuple[str, tuple]:
        """A ceil-mode pool whose last windows hang over the map's end (VGG's 7 -> 4 at 28 px), as NIR can say it: a
        convolution that pads both sides by ``stride - 1`` and whose kernel, ``stride - 1`` cells wider, is 1 only on
        the window's own cells (so window i sums cells ``[s i, s i + k)`` that exist, whatever the left padding adds),
        then a ``Scale`` by 1 / the cells each window holds (torch's divisor in ceil mode)."""
        (k0, k1), (s0, s1), (p0, p1) = _pair(pool.kernel_size), _pair(pool.stride or pool.kernel_size), _pair(pool.padding)
        c, h, w = shape
        if (p0, p1) != (0, 0):
            raise SpikeSearchError(f"{where}: a padded AvgPool2d(ceil_mode=True) with partial windows on a {h}x{w} map "
                                   "is not exported")
        count = _cells_per_window(pool, h, w)
        weight = torch.zeros(c, c, k0 + s0 - 1, k1 + s1 - 1, dtype=torch.float64)
        weight[range(c), range(c), s0 - 1:, s1 - 1:] = 1.0
        node = self.nir.Conv2d(input_shape=(h, w), weight=_np(weight), stride=(s0, s1), padding=(s0 - 1, s1 - 1),
                               dilation=(1, 1), groups=1, bias=np.zeros(c, np.float32))
        sizes = [(n + 2 * (s - 1) - (k + s - 1)) // s + 1 for n, k, s in ((h, k0, s0), (w, k1, s1))]
        if tuple(sizes) != tuple(count.shape):  # torch drops a last window that would start past the map
            raise SpikeSearchError(f"{where}: AvgPool2d(ceil_mode=True) on a {h}x{w} map gives {tuple(count.shape)}, "
                                   "which a strided convolution cannot reproduce")
        summed = self.add("poolconv", node, src)
        return self.add("scale", self.nir.Scale(scale=_np((1 / count).expand(c, *count.shape))), summed), (c, *sizes)

    def shift(self, shift: torch.Tensor, src: str, shape) -> str:
        """Calibration's per-channel current, added after the layer's own bias as the SNN adds it (folding it into
        that bias rounds differently, and a rounding can move a spike): an identity 1x1 convolution (or an identity
        ``Affine`` on a vector) whose bias is the shift."""
        c = shape[0]
        eye = torch.eye(c, dtype=torch.float64)
        if len(shape) == 1:
            return self.add("shift", self.nir.Affine(weight=_np(eye), bias=_np(shift)), src)
        node = self.nir.Conv2d(input_shape=tuple(shape[1:]), weight=_np(eye[:, :, None, None]), stride=(1, 1),
                               padding=(0, 0), dilation=(1, 1), groups=1, bias=_np(shift))
        return self.add("shift", node, src)

    def flatten(self, src: str, shape) -> tuple[str, tuple]:
        node = self.nir.Flatten(input_type={"input": np.array(shape)}, start_dim=0, end_dim=-1)
        return self.add("flatten", node, src), (int(np.prod(shape)),)

    # --- neurons ----------------------------------------------------------------------------------------
    def neuron(self, m: BaseNode, src: str, shape) -> str:
        from ..convert.methods import ConvertedIF

        where = self.where(m)
        ones = np.ones(shape, np.float32)
        th = float(m.v_threshold)
        if type(m) not in (IF, LIF, PLIF, ConvertedIF):  # a subclass changes the dynamics (the signed IF emits -1)
            raise SpikeSearchError(f"{where}: {type(m).__name__} has no NIR counterpart")
        if m.v_reset is None and (isinstance(m, LIF) or not (isinstance(m, ConvertedIF) or m.v_init == 0)):
            raise SpikeSearchError(f"{where}: a {type(m).__name__} with reset by subtraction starting at {m.v_init:g} "
                                   "is not exported (NIR has no initial state; the conversion's neurons are)")
        if m.v_reset is None:
            meta = {"spikesearch": {"neuron": "if", "reset": "subtract", "v_threshold": th, "v_init": m.v_init,
                                    "fires_at": ">="}}
            # u[t] = u[t-1] + x[t] - th s[t-1], s[t] = [u[t] >= th - v_init]: ConvertedIF's state, its pre-reset
            # membrane less its start. NIR has no initial state, but with reset by subtraction a start above 0 is a
            # threshold lowered by as much (the loop subtracts th, the Threshold compares with th - v_init)
            integ = self.add("integrator", self.nir.I(r=ones / DT), src)
            spikes = self.add("threshold", self.nir.Threshold(threshold=ones * (th - m.v_init), metadata=meta), integ,
                              module=where)
            back = self.add("scale", self.nir.Scale(scale=-th * ones), self.add("delay", self.nir.Delay(delay=ones * DT), spikes))
            self.edges.append((back, integ))
            return spikes
        vr = float(m.v_reset)
        if m.v_init != vr:
            raise SpikeSearchError(f"{where}: the membrane starts at {m.v_init:g}, not at its reset value; NIR has no "
                                   "initial state")
        meta = {"neuron": type(m).__name__.lower(), "v_threshold": th, "v_reset": vr, "fires_at": ">="}
        if isinstance(m, IF):
            node = self.nir.IF(r=ones / DT, v_threshold=ones * th, v_reset=ones * vr, metadata={"spikesearch": meta})
            return self.add("if", node, src, module=where)
        tau = float(1 / torch.sigmoid(m.w).item()) if isinstance(m, PLIF) else float(m.tau)
        meta.update(tau=tau, decay_input=bool(m.decay_input))
        # forward Euler over DT: v += DT / tau_nir * (v_leak - v + r I) -- our update with tau_nir = DT * tau
        node = self.nir.LIF(tau=ones * DT * tau, r=ones if m.decay_input else ones * tau, v_leak=ones * vr,
                            v_threshold=ones * th, v_reset=ones * vr, metadata={"spikesearch": meta})
        return self.add("lif", node, src, module=where)

    # --- chains ---------------------------------------------------------------------------------------------
    def chain(self, modules: nn.Module, src: str, shape) -> tuple[str, tuple]:
        """A sequence of stateless layers and neurons: Conv2d(+BatchNorm), BatchNorm, AvgPool2d, Flatten, Linear,
        calibration's BiasShift, neurons; SeqToANN and Sequential wrappers are walked into, dropout and identities
        skipped."""
        from ..convert.converter import BiasShift

        flat = list(_leaves(modules))
        i = 0
        while i < len(flat):
            m = flat[i]
            path = self.where(m)
            nxt = flat[i + 1] if i + 1 < len(flat) else None
            if isinstance(m, nn.Conv2d):
                bn = nxt if isinstance(nxt, nn.BatchNorm2d) else None
                src, shape = self.conv(m, bn, src, shape, path)
                i += 1 + (bn is not None)
                continue
            if isinstance(m, nn.BatchNorm2d):
                src, shape = self.batchnorm(m, src, shape)
            elif isinstance(m, nn.AvgPool2d):
                src, shape = self.avgpool(m, src, shape, path)
            elif isinstance(m, nn.Flatten):
                src, shape = self.flatten(src, shape)
            elif isinstance(m, nn.Linear):
                from ..convert.binary import effective_weight

                src, shape = self.affine(effective_weight(m), m.bias, src)
            elif isinstance(m, BaseNode):
                src = self.neuron(m, src, shape)
            elif isinstance(m, BiasShift):
                src = self.shift(m.shift, src, shape)
            elif not isinstance(m, SKIP):
                raise SpikeSearchError(f"{path}: {type(m).__name__} is not exported to NIR")
            i += 1
        return src, shape

    def graph(self, input_shape, first: str, last: str, out_shape, kind: str):
        self.nodes[first] = self.nir.Input(input_type=np.array(input_shape))
        self.nodes["output"] = self.nir.Output(output_type=np.array(out_shape))
        self.edges.append((last, "output"))
        meta = {"dt": DT, "spikesearch": {"model": kind, "modules": self.modules,
                                          "readout": "the output node's value is summed (converted SNN) or averaged "
                                                     "(trained SNNs) over the timesteps; the argmax is the class"}}
        return self.nir.NIRGraph(nodes=self.nodes, edges=self.edges, metadata=meta)


def _cells_per_window(pool: nn.AvgPool2d, h: int, w: int) -> torch.Tensor:
    """How many cells of an ``h`` x ``w`` map each window of ``pool`` holds (padding and overhang left out)."""
    ones = torch.ones(1, 1, h, w, dtype=torch.float64)
    return nn.functional.avg_pool2d(ones, pool.kernel_size, pool.stride, pool.padding, pool.ceil_mode,
                                    divisor_override=1)[0, 0]


def _leaves(module: nn.Module):
    for m in module.children():
        if isinstance(m, (nn.Sequential, SeqToANN)):
            yield from _leaves(m)
        else:
            yield m


# --- the model families ------------------------------------------------------------------------------------

def _spiking_cnn(model, input_shape):
    g = Graph(model)
    src, shape = g.chain(model.features, "input", tuple(input_shape))
    src, shape = g.chain(model.classifier, src, shape)
    return g.graph(input_shape, "input", src, shape, "SpikingCNN")


def _snasnet_cell(g: Graph, cell, src: str, shape) -> str:
    """Node values are sum nodes; a spiking edge reads its source node's LIF; a backward edge j -> k (j > k)
    acts one step later through a Delay."""
    from ..snasnet.network import BoxFilter3

    z = [g.total(shape, src)] + [g.total(shape) for _ in range(3)]
    lifs: dict[int, str] = {}
    for i, j, op, lif in cell.edge_list():
        source = z[i]
        if lif is not None:
            if i not in lifs:
                lifs[i] = g.neuron(lif, z[i], shape)
            source = lifs[i]
        if isinstance(op, BoxFilter3):  # AvgPool2d(3, 1, 1) with the padding counted
            out, _ = g.avgpool(nn.AvgPool2d(3, 1, 1), source, shape, g.where(op))
        else:
            out, _ = g.chain(op, source, shape)
        if i > j:
            out = g.add("delay", g.nir.Delay(delay=np.full(shape, DT, np.float32)), out)
        g.edges.append((out, z[j]))
    return z[3]


def _snasnet(model):
    m = model.macro
    g = Graph(model)
    shape = (m.in_channels, m.image_size, m.image_size)
    src, s = g.chain(model.stem, "input", shape)
    src = _snasnet_cell(g, model.cell1, src, s)
    src, s = g.chain(model.downconv, src, s)
    src = _snasnet_cell(g, model.cell2, src, s)
    src, s = g.chain(model.last_act, src, s)
    hidden, weight, bias = model.voted_readout()
    src, s = g.chain(hidden, src, s)
    src, s = g.affine(weight, bias, src)
    return g.graph(shape, "input", src, s, "SNASNet")


def _dhs(model):
    cells = model.derived_cells()  # first: a search trellis is refused before any work
    g = Graph(model)
    shape = model.input_shape
    src, s = g.chain(model.stem, "input", shape)
    states = {(-2, 0): ([(src, s[0])], s[1]), (-1, 0): ([(src, s[0])], s[1])}
    for cell, own, pp, p in cells:
        pre = [_dhs_pre(g, conv, bn, neuron, states[state], cell.size)
               for (conv, bn, neuron), state in zip(cell.inputs(), (pp, p))]
        c = cell.channels
        node_shape = (c, cell.size, cell.size)
        outs = list(pre)
        for i, node in enumerate(cell.nodes):
            if not isinstance(node, BaseNode):
                raise SpikeSearchError(f"{g.where(node)}: {type(node).__name__} (an ANN node of HNS) has no NIR "
                                       "counterpart: NIR describes spiking and linear dynamics, not ReLU")
            ins = []
            for source, op, fire in cell.derived_edges(i):
                out, _ = g.chain(op, outs[source], node_shape)
                if isinstance(fire, BaseNode):
                    out = g.neuron(fire, out, node_shape)
                ins.append(out)
            outs.append(g.neuron(node, g.total(node_shape, *ins), node_shape))
        states[own] = ([(o, c) for o in outs[2:]], cell.size)
    parts, size = states[cells[-1][1]]
    head = model.derived_head()
    logits, start = [], 0
    for n, (part, c) in enumerate(parts):  # global average pool + the head's weight slice, per concatenated node
        pooled, _ = g.avgpool(nn.AvgPool2d(size), part, (c, size, size), g.where(head))
        flat, _ = g.flatten(pooled, (c, 1, 1))
        w = head.weight.detach()[:, start:start + c]
        name, out_shape = g.affine(w, head.bias.detach() if n == 0 else torch.zeros(w.shape[0]), flat)
        logits.append(name)
        start += c
    return g.graph(shape, "input", g.total(out_shape, *logits), out_shape, "DHSNet")


def _dhs_pre(g: Graph, conv: nn.Conv2d, bn: nn.BatchNorm2d, neuron: BaseNode, state, size: int) -> str:
    """A cell's input: nearest resize (a strided subsampling where the sizes divide) of the concatenated node
    outputs, then its spiking 1x1 conv: one conv node per concatenated part with that part's weight slice."""
    parts, in_size = state
    if in_size % size:
        raise SpikeSearchError(f"{g.where(conv)}: the nearest resize {in_size}->{size} picks rows unevenly, which a "
                               "strided convolution cannot say (use image sizes the levels divide)")
    stride = in_size // size
    strided = nn.Conv2d(conv.in_channels, conv.out_channels, 1, stride=stride, bias=False)
    strided.weight = conv.weight
    convs, start = [], 0
    for n, (part, c) in enumerate(parts):
        name, shape = g.conv(strided, bn, part, (c, in_size, in_size), g.where(conv), slice(start, start + c), n == 0)
        convs.append(name)
        start += c
    return g.neuron(neuron, g.total(shape, *convs), shape)


def _converted(model, input_shape):
    model.method.check_exportable()
    g = Graph(model)
    src, shape = "input", tuple(input_shape)
    for stage in model.stages:
        src, shape = g.chain(stage, src, shape)
    src, shape = g.chain(model.output, src, shape)
    return g.graph(input_shape, "input", src, shape, "SpikingNet")


def _families() -> list[tuple[type, object, bool]]:
    """Each exported model family, its graph builder, and whether it needs ``input_shape`` (it does not record
    its input size). Imported here: export sits above the pillars."""
    from ..convert.converter import SpikingNet
    from ..core.models import SpikingCNN
    from ..dhs.network import DHSNet
    from ..snasnet.network import SNASNet

    return [(SNASNet, lambda m, shape: _snasnet(m), False), (DHSNet, lambda m, shape: _dhs(m), False),
            (SpikingCNN, _spiking_cnn, True), (SpikingNet, _converted, True)]


def to_nir(model: nn.Module, input_shape: tuple[int, ...] | None = None):
    """The NIR graph of a spikesearch network (eval-mode semantics: dropout off, BatchNorm's running
    statistics). ``input_shape`` (C, H, W) is needed for ``SpikingCNN`` and converted VGGs, which do not
    record their input size."""
    for family, build, needs_shape in _families():
        if isinstance(model, family):
            if input_shape is None and needs_shape:
                raise SpikeSearchError(f"{family.__name__} does not record its input size: give input_shape=(C, H, W)")
            return build(model, input_shape)
    raise SpikeSearchError(f"no NIR export for {type(model).__name__}: SpikingCNN, SNASNet, DHSNet (derived) and "
                           "converted SNNs are exported")


def write_nir(model: nn.Module, path: str | Path, input_shape: tuple[int, ...] | None = None) -> Path:
    nir = nir_module()
    path = Path(path)
    graph = to_nir(model, input_shape)
    try:
        nir.write(str(path), graph)
    except OSError as e:
        raise SpikeSearchError(f"cannot write {path}: {e.strerror or e}") from None
    return path
