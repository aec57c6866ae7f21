"""clnscl.metrics.coupling: weight divergence against hand-computed values, and the loss-gap bound against
its formula and against the gap of the losses themselves."""
import math

import pytest
import torch

import clnscl
from clnscl.metrics.coupling import loss_gap_bound, weight_divergence


def _mlp(seed):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.ReLU(), torch.nn.Linear(7, 3))


def test_weight_divergence_identical_is_zero():
    a = _mlp(0)
    b = _mlp(0)
    out = weight_divergence(a, b)
    assert set(out["per_tensor"]) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    assert all(v == 0.0 for v in out["per_tensor"].values())
    assert out["mean"] == 0.0 and out["global"] == 0.0


def test_weight_divergence_known_perturbation():
    a = _mlp(0)
    b = _mlp(0)
    with torch.no_grad():
        b[0].weight.mul_(2.0)  # exact in float32: r = ‖w‖ / (½·3‖w‖) = 2/3
        b[2].bias.add_(0.5)
    out = weight_divergence(a, b)
    assert out["per_tensor"]["0.weight"] == pytest.approx(2 / 3, rel=1e-12)
    assert out["per_tensor"]["0.bias"] == 0.0 and out["per_tensor"]["2.weight"] == 0.0
    wa, wb = a[2].bias.detach().double(), b[2].bias.detach().double()
    r = float((wa - wb).norm() / (0.5 * (wa.norm() + wb.norm())))
    assert out["per_tensor"]["2.bias"] == pytest.approx(r, rel=1e-12)
    assert out["mean"] == pytest.approx((2 / 3 + r) / 4, rel=1e-12)
    ca = torch.cat([p.detach().double().flatten() for p in a.parameters()])
    cb = torch.cat([p.detach().double().flatten() for p in b.parameters()])
    g = float((ca - cb).norm() / (0.5 * (ca.norm() + cb.norm())))
    assert out["global"] == pytest.approx(g, rel=1e-12)
    # symmetric, and across dtypes (float64 copy of b)
    assert weight_divergence(b, a)["global"] == pytest.approx(g, rel=1e-12)
    assert weight_divergence(a, b.double())["global"] == pytest.approx(g, rel=1e-6)


def test_weight_divergence_zero_and_empty():
    a, b = _mlp(0), _mlp(1)
    with torch.no_grad():
        a[0].bias.zero_()
        b[0].bias.zero_()
    assert weight_divergence(a, b)["per_tensor"]["0.bias"] == 0.0
    out = weight_divergence(torch.nn.ReLU(), torch.nn.ReLU())
    assert out == {"per_tensor": {}, "mean": 0.0, "global": 0.0}


def test_weight_divergence_mismatch():
    a = _mlp(0)
    b = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.ReLU(), torch.nn.Linear(7, 4))
    with pytest.raises(ValueError, match="2.weight"):
        weight_divergence(a, b)
    c = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.ReLU())
    with pytest.raises(ValueError, match="2.weight"):
        weight_divergence(a, c)
    with pytest.raises(ValueError, match="2.weight"):
        weight_divergence(c, a)
    with pytest.raises(TypeError, match="model_b"):
        weight_divergence(a, 3)


# ------------------------------------------------------------------------------------------ loss gap bound


def test_loss_gap_bound_formula():
    y = torch.tensor([0, 0, 0, 1, 1, 2, 5, 5, 5, 5, 7])  # N = 11, n_max = 4
    for tau in (0.07, 0.1, 0.5, 1.0, 3.0):
        want = math.log(1 + 4 * math.exp(2 / tau) / (11 - 4))
        assert loss_gap_bound(y, tau) == pytest.approx(want, rel=1e-12)
    # views: repeating each label V times leaves n_max/(N − n_max) unchanged
    assert loss_gap_bound(y.repeat_interleave(3), 0.1) == pytest.approx(loss_gap_bound(y, 0.1), rel=1e-12)
    # small temperatures: finite, ≈ 2/τ + log(n_max/(N − n_max))
    b = loss_gap_bound(y, 0.01)
    assert math.isfinite(b) and b == pytest.approx(200 + math.log(4 / 7), rel=1e-12)
    assert math.isfinite(loss_gap_bound(y, 1e-4))
    assert loss_gap_bound(torch.zeros(5, dtype=torch.int64), 0.1) == math.inf
    assert loss_gap_bound(torch.zeros(0, dtype=torch.int64), 0.1) == 0.0
    assert loss_gap_bound([0, 1, 1], 1.0) == pytest.approx(math.log(1 + 2 * math.e**2), rel=1e-12)


@pytest.mark.parametrize("tau", [0.01, 0.1, 0.5, 1.0])
def test_loss_gap_bound_holds(tau):
    g = torch.Generator().manual_seed(7)
    for trial in range(6):
        b, v, d = 13 + trial, 2 + trial % 2, 5
        z = torch.randn(b, v, d, generator=g, dtype=torch.float64)
        if trial % 3 == 0:  # views close together, classes tight: a larger gap
            z = z[:, :1] + 0.05 * torch.randn(b, v, d, generator=g, dtype=torch.float64)
        labels = torch.randint(0, 3, (b,), generator=g)
        kw = dict(temperature=tau, decoupled=False, backend="reference")
        cl = clnscl.contrastive_loss(z, labels, objective="cl", **kw)
        ns = clnscl.contrastive_loss(z, labels, objective="nscl", **kw)
        rows = clnscl.contrastive_loss(z, labels, objective="cl", reduction="none", **kw) - clnscl.contrastive_loss(
            z, labels, objective="nscl", reduction="none", **kw
        )
        bound = loss_gap_bound(labels, tau)
        assert math.isfinite(bound)
        assert bound == pytest.approx(loss_gap_bound(labels.repeat_interleave(v), tau), rel=1e-12)
        assert float(cl - ns) <= bound + 1e-9
        assert float(rows.max()) <= bound + 1e-9
        assert float(rows.min()) >= -1e-9  # removing terms from the denominator can only lower the loss


def test_loss_gap_bound_errors():
    y = torch.tensor([0, 1])
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="temperature"):
            loss_gap_bound(y, bad)
    with pytest.raises(TypeError, match="temperature"):
        loss_gap_bound(y, "0.1")
    with pytest.raises(TypeError, match="labels"):
        loss_gap_bound(torch.tensor([0.0, 1.0]), 0.1)
    with pytest.raises(ValueError, match="labels"):
        loss_gap_bound(torch.zeros(2, 2, dtype=torch.int64), 0.1)
