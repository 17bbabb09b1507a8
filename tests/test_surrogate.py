import math

import pytest
import torch

from spikesearch import SpikeSearchError, Surrogate
from spikesearch.core.surrogate import SURROGATES, make_surrogate

FORMULAS = {
    "atan": lambda x, a: (a / 2) / (1 + (math.pi / 2 * a * x) ** 2),
    "sigmoid": lambda x, a: a * torch.sigmoid(a * x) * (1 - torch.sigmoid(a * x)),
    "triangle": lambda x, a: torch.clamp(a - a * a * x.abs(), min=0),
    "rectangular": lambda x, a: a * (x.abs() < 0.5 / a).to(x.dtype),
    "erf": lambda x, a: a / math.sqrt(math.pi) * torch.exp(-(a * x) ** 2),
    # SpikeDHS writes it on the membrane u = x + V_th with V_th = 0.5: zero outside 0 < u < 1
    "dspike": lambda x, a: torch.where(x.abs() < 0.5, a / (2 * math.tanh(a / 2)) * (1 - torch.tanh(a * x) ** 2), 0 * x),
}


@pytest.mark.parametrize("name", sorted(FORMULAS))
@pytest.mark.parametrize("alpha", [0.5, 2.0, 5.0])
def test_gradient_matches_formula(name, alpha):
    x = torch.linspace(-2, 2, 401, dtype=torch.float64, requires_grad=True)
    y = Surrogate(name, alpha)(x)
    assert torch.equal(y.detach(), (x >= 0).double())
    (g,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(g, FORMULAS[name](x.detach(), alpha))


@pytest.mark.parametrize("name", sorted(FORMULAS))
def test_gradient_integrates_to_one_and_matches_primitive(name):
    shape = SURROGATES.get(name)
    x = torch.linspace(-30, 30, 600001, dtype=torch.float64)
    g = shape.grad(x, shape.default_alpha)
    assert float(torch.trapezoid(g, x)) == pytest.approx(1.0, abs=2e-2 if name == "atan" else 1e-3)
    xs = torch.linspace(-1.5, 1.5, 31, dtype=torch.float64) + 0.013  # off the box edges
    h = 1e-6
    fd = (shape.primitive(xs + h, shape.default_alpha) - shape.primitive(xs - h, shape.default_alpha)) / (2 * h)
    torch.testing.assert_close(fd, shape.grad(xs, shape.default_alpha), atol=1e-5, rtol=1e-4)


def test_piecewise_alias_and_spec_strings():
    assert make_surrogate("piecewise").shape is SURROGATES.get("triangle")
    s = make_surrogate("sigmoid:3")
    assert s.shape.name == "sigmoid" and s.alpha == 3.0


@pytest.mark.parametrize("bad", ["nope", "atan:x", "atan:-1"])
def test_bad_surrogate_is_clear_error(bad):
    with pytest.raises(SpikeSearchError):
        make_surrogate(bad)
