import math

import pytest
import torch

from spikesearch import IF, LIF, PLIF, SpikeSearchError, reset
from spikesearch.core.neurons import TimeSharedDropout


def run(neuron, xs):
    return [float(neuron(torch.tensor([x]))) for x in xs], float(neuron.v)


def test_lif_hard_reset_matches_equations():
    tau, xs = 4 / 3, [0.9, 1.5, 0.2, 2.0]
    v, spikes = 0.0, []
    for x in xs:  # H = V + (X - V)/tau ; S = H >= 1 ; V = H(1-S)
        h = v + (x - v) / tau
        s = float(h >= 1.0)
        spikes.append(s)
        v = h * (1 - s)
    got, v_end = run(LIF(tau=tau), xs)
    assert got == spikes and v_end == pytest.approx(v)
    assert spikes == [0.0, 1.0, 0.0, 1.0]


def test_lif_decay_input_false_and_nonzero_reset():
    n = LIF(tau=2.0, decay_input=False, v_reset=-0.5, v_threshold=1.0)
    n.reset_state()
    v = -0.5
    for x in [0.3, 1.2, 0.1]:
        h = v - (v - (-0.5)) / 2.0 + x
        s = float(h >= 1)
        assert float(n(torch.tensor([x]))) == s
        v = h * (1 - s) + (-0.5) * s
        assert float(n.v) == pytest.approx(v)


def test_if_soft_reset_keeps_residual_charge():
    n = IF(v_reset=None, v_threshold=1.0)
    assert float(n(torch.tensor([1.7]))) == 1.0
    assert float(n.v) == pytest.approx(0.7)  # subtract, not zero
    assert float(n(torch.tensor([0.2]))) == 0.0
    assert float(n.v) == pytest.approx(0.9)


def test_plif_learns_tau():
    n = PLIF(init_tau=2.0)
    assert n.learned_tau == pytest.approx(2.0)
    x = torch.full((8,), 0.9)
    out = sum(n(x).sum() for _ in range(3))
    out.backward()
    assert n.w.grad is not None and n.w.grad.abs() > 0


def test_multi_step_equals_single_step_loop():
    x = torch.randn(6, 4, 5) + 0.8
    single, multi = LIF(tau=2.0), LIF(tau=2.0, step_mode="m")
    ref = torch.stack([single(xt) for xt in x])
    assert torch.equal(multi(x), ref)


def test_detach_reset_changes_gradient_only():
    x = torch.tensor([0.8, 1.6, 0.9, 1.4], requires_grad=True)
    grads = []
    for detach in (True, False):
        n = LIF(tau=2.0, detach_reset=detach, step_mode="m")
        y = n(x.view(4, 1))
        (g,) = torch.autograd.grad(y.sum(), x)
        grads.append((y.detach(), g))
    assert torch.equal(grads[0][0], grads[1][0])
    assert not torch.allclose(grads[0][1], grads[1][1])


def test_reset_clears_every_state():
    model = torch.nn.Sequential(LIF(), IF(), TimeSharedDropout(0.5))
    model(torch.ones(3, 2))
    assert isinstance(model[0].v, torch.Tensor) and model[2].mask is not None
    reset(model)
    assert model[0].v == 0.0 and model[1].v == 0.0 and model[2].mask is None


def test_shape_change_without_reset_is_a_clear_error():
    n = LIF()
    n(torch.zeros(2, 3))
    with pytest.raises(SpikeSearchError, match="reset"):
        n(torch.zeros(4, 3))


def test_bad_parameters():
    with pytest.raises(SpikeSearchError):
        LIF(tau=1.0)
    with pytest.raises(SpikeSearchError):
        LIF(step_mode="x")
    with pytest.raises(SpikeSearchError, match="multi-step"):
        LIF(step_mode="m")(torch.zeros(3))


def test_time_shared_dropout_reuses_mask_until_reset():
    d = TimeSharedDropout(0.5)
    x = torch.ones(4, 100)
    a, b = d(x), d(x)
    assert torch.equal(a, b)
    reset(d)
    assert not torch.equal(d(x), a)
    assert math.isclose(float(a.mean()), 1.0, abs_tol=0.25)


SEQUENCE_NEURONS = [
    lambda: IF(v_reset=None, surrogate="atan"),
    lambda: IF(v_threshold=0.7, v_reset=0.0, surrogate="triangle"),
    lambda: LIF(tau=2.0, surrogate="sigmoid"),
    lambda: LIF(tau=2.0, surrogate="atan:3"),
    lambda: LIF(tau=1.25, decay_input=False, v_threshold=0.5, v_reset=0.0, surrogate="dspike:3"),
    lambda: LIF(tau=4 / 3, v_reset=-0.2, v_init=0.1, surrogate="erf"),
]


@pytest.mark.parametrize("make", SEQUENCE_NEURONS)
def test_fused_sequence_matches_the_step_loop(make):
    """The fused multi-step kernel gives the same spikes, final state and input gradient as T single steps."""
    x = (torch.randn(7, 3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 0.8 + 0.4)
    grad = torch.randn(7, 3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    results = []
    for fused in (True, False):
        n = make()
        n.step_mode = "m"
        xi = x.clone().requires_grad_(True)
        out = n(xi) if fused else torch.stack([n.single_step(xt) for xt in xi])
        (g,) = torch.autograd.grad((out * grad).sum(), xi)
        results.append((out.detach(), n.v.detach(), g))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b)
    assert results[0][0].sum() > 0  # the test input does make spikes


def _kernel_device(device: str) -> torch.device:
    """The device to test the compiled kernels on, skipping where they cannot be built (no C compiler; no
    GPU or Triton: the CUDA cases run on a GPU machine, never in CI)."""
    import shutil

    from spikesearch.core import kernels, triton_lif

    if device == "cuda" and not (torch.cuda.is_available() and triton_lif.available()):
        pytest.skip("no CUDA device with Triton")
    if device == "cpu" and shutil.which("cc") is None:
        pytest.skip("no C compiler: the torch ops are the only path")
    assert device == "cuda" or kernels.library() is not None
    return torch.device(device)


@pytest.mark.parametrize("device", ["cpu", "cuda"])
@pytest.mark.parametrize("make", SEQUENCE_NEURONS)
def test_compiled_kernel_matches_the_torch_ops(make, device, monkeypatch):
    """float32 on the CPU takes the compiled C pass (wherever a C compiler exists, as on CI), on CUDA the
    Triton one; each agrees with the torch-op fused path and the step loop on spikes, state and input gradient."""
    from spikesearch.core import kernels

    dev = _kernel_device(device)
    x = (torch.randn(6, 4, 300, generator=torch.Generator().manual_seed(0)) * 0.8 + 0.4).to(dev)
    grad = torch.randn(6, 4, 300, generator=torch.Generator().manual_seed(1)).to(dev)
    results = []
    for path in ("kernel", "torch", "loop"):
        monkeypatch.setattr(kernels, "usable", lambda *t, p=path: p == "kernel")
        n = make()
        n.step_mode = "m"
        xi = x.clone().requires_grad_(True)
        out = torch.stack([n.single_step(xt) for xt in xi]) if path == "loop" else n(xi)
        (g,) = torch.autograd.grad((out * grad).sum(), xi)
        results.append((out.detach(), torch.as_tensor(n.v).detach(), g))
    for other in results[1:]:
        assert torch.equal(results[0][0], other[0])  # identical spikes
        torch.testing.assert_close(results[0][1], other[1])
        torch.testing.assert_close(results[0][2], other[2], rtol=1e-5, atol=1e-6)
    assert results[0][0].sum() > 0


@pytest.mark.parametrize("make", SEQUENCE_NEURONS)
def test_compiled_single_step_without_autograd_matches_the_torch_ops(make, monkeypatch):
    """Scoring, evaluation and conversion step neurons under no_grad on the CPU: the compiled step gives the
    same spikes and membranes as the autograd-capable torch ops."""
    from spikesearch.core import kernels

    _kernel_device("cpu")
    x = torch.randn(6, 4, 300, generator=torch.Generator().manual_seed(2)) * 0.8 + 0.4
    runs = []
    for compiled in (True, False):
        monkeypatch.setattr(kernels, "usable", lambda *t, c=compiled: c)
        n = make()
        with torch.no_grad():
            spikes = torch.stack([n(xt) for xt in x])
        runs.append((spikes, n.v))
    assert torch.equal(runs[0][0], runs[1][0]) and runs[0][0].sum() > 0
    torch.testing.assert_close(runs[0][1], runs[1][1])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_triton_kernel_under_autocast_dtypes_keeps_a_float32_membrane(dtype):
    """Autocast training feeds half-precision currents: the Triton pass reads them into float32 and keeps the
    membrane there across steps, so its spikes equal the float32 path on the same (rounded) inputs."""
    dev = _kernel_device("cuda")
    x = (torch.randn(8, 4, 300, generator=torch.Generator().manual_seed(3)) * 0.8 + 0.4).to(dev, dtype)
    grad = torch.randn(8, 4, 300, generator=torch.Generator().manual_seed(4)).to(dev, dtype)
    out = []
    for xi in (x.clone(), x.float()):
        xi.requires_grad_(True)
        n = LIF(tau=2.0, surrogate="atan", step_mode="m")
        s = n(xi)
        (g,) = torch.autograd.grad((s * grad.to(s.dtype)).sum(), xi)
        out.append((s, g))
    assert out[0][0].dtype == dtype and torch.equal(out[0][0].float(), out[1][0]) and out[1][0].sum() > 0
    # h is stored in the low-precision dtype for backward, so the surrogate is read at a rounded membrane
    torch.testing.assert_close(out[0][1].float(), out[1][1], rtol=0.1, atol=0.1)
