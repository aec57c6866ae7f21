"""The similarity gap of nearly equal representations (Theorem 1's regime: coupled models start equal and drift
apart slowly): StreamingAlignment, similarity_gap and the coupling terms keep it from the sums of the difference
Ŷ − X̂ (p = q), where ‖X̂ᵀX̂‖² + ‖ŶᵀŶ‖² − 2‖X̂ᵀŶ‖² cancelled to 0 below a relative gap of about 1e-8.

The oracle is the direct float64 difference of the N × N matrices. Its own error is about N·2⁻⁵² per entry,
so the comparison allows that over the gap, plus 1e-6."""
import math

import pytest
import torch
import torch.nn.functional as F

from clnscl import theory
from clnscl.metrics import StreamingAlignment, similarity_gap

N, D = 1500, 48


def _pair(eps: float, seed: int):
    gen = torch.Generator().manual_seed(seed)
    x = F.normalize(torch.randn(N, D, generator=gen, dtype=torch.float64), dim=1)
    y = F.normalize(x + eps * torch.randn(N, D, generator=gen, dtype=torch.float64), dim=1)
    return x, y


def _direct(x, y):
    sx, sy = x @ x.T, y @ y.T
    h = torch.eye(N, dtype=torch.float64) - 1.0 / N
    i, j = torch.triu_indices(N, N, 1)
    return {"sigma_gap": float((sy - sx).norm()), "k_gap": float((h @ (sy - sx) @ h).norm()),
            "rdm_gap": float((sy - sx)[i, j].norm()), "relative": float((sy - sx).norm() / sx.norm())}


def _close(got: float, want: float) -> bool:
    return abs(got - want) <= 1e-6 * want + 8 * N * 2.0**-52


@pytest.mark.parametrize("eps", [1e-3, 1e-6, 1e-9, 1e-11])
def test_the_gap_of_nearly_equal_representations_matches_the_direct_difference(eps):
    x, y = _pair(eps, seed=int(-torch.log10(torch.tensor(eps))))
    want = _direct(x, y)
    assert want["relative"] < 10 * eps  # the regime asked for: a relative gap of the order of eps
    acc = StreamingAlignment()
    for part in torch.arange(N).split(611):  # several batches: the sums add up
        acc.update(x[part], y[part])
    terms, out = acc.coupling_terms(), acc.compute()
    for key in ("sigma_gap", "k_gap", "rdm_gap"):
        assert _close(terms[key], want[key]), (key, terms[key], want[key])
    assert _close(out["gap_frobenius"], want["sigma_gap"])
    assert _close(similarity_gap(x, y)["frobenius"], want["sigma_gap"])
    assert abs(similarity_gap(x, y)["relative"] - want["relative"]) <= 1e-6 * want["relative"] + 1e-15
    assert _close(theory.coupling_ratios(x, y)["sigma_gap"], want["sigma_gap"])  # the materialised path agrees


def test_merged_and_shared_accumulators_keep_the_difference_sums():
    x, y = _pair(1e-10, seed=3)
    _, z = _pair(1e-9, seed=4)
    want = [_direct(x, y)["sigma_gap"], _direct(x, z)["sigma_gap"]]
    first, second = StreamingAlignment(), StreamingAlignment()
    first.update(x[:700], y[:700])
    second.update(x[700:], y[700:])
    assert _close(first.merge(second).coupling_terms()["sigma_gap"], want[0])
    shared = [StreamingAlignment(), StreamingAlignment()]
    StreamingAlignment.update_shared(shared, x, [y, z])
    assert [_close(a.coupling_terms()["sigma_gap"], w) for a, w in zip(shared, want)] == [True, True]


def test_representations_of_different_widths_use_the_sides_sums():
    gen = torch.Generator().manual_seed(5)
    x, y = torch.randn(300, 16, generator=gen, dtype=torch.float64), torch.randn(300, 9, generator=gen,
                                                                                   dtype=torch.float64)
    want = _direct_unequal(x, y)
    acc = StreamingAlignment()
    acc.update(x, y)
    assert abs(acc.coupling_terms()["sigma_gap"] - want) <= 1e-9 * want


def _direct_unequal(x, y):
    xn, yn = F.normalize(x, dim=1), F.normalize(y, dim=1)
    return float((xn @ xn.T - yn @ yn.T).norm())


@pytest.mark.parametrize("n,p", [(1500, 48), (5000, 17), (300, 200)])
def test_when_widths_differ_the_floor_bounds_what_rounding_leaves_of_an_exactly_zero_gap(n, p):
    """p ≠ q: y = (x rotated, a zero column) has Σ_Y = Σ_X, so whatever gap is returned is rounding; it stays under
    the stated floor, and a gap 10× above the floor is resolved to within the floor."""
    gen = torch.Generator().manual_seed(n)
    x = torch.randn(n, p, generator=gen, dtype=torch.float64)
    rotation = torch.linalg.qr(torch.randn(p, p, generator=gen, dtype=torch.float64))[0]
    y = torch.cat([x @ rotation, torch.zeros(n, 1, dtype=torch.float64)], dim=1)
    out = similarity_gap(x, y)
    assert out["frobenius"] <= out["floor"]
    assert 1e-9 < out["floor"] / float((F.normalize(x, dim=1) @ F.normalize(x, dim=1).T).norm()) < 1e-5
    resolved = 0
    for eps in (1e-6, 1e-4):  # p ≠ q through the zero column; the direct difference as the oracle
        noisy = F.normalize(y + eps * torch.randn(n, p + 1, generator=gen, dtype=torch.float64), dim=1)
        got, want = similarity_gap(x, noisy), float((F.normalize(x, dim=1) @ F.normalize(x, dim=1).T
                                                     - noisy @ noisy.T).norm())
        if want > 10 * got["floor"]:
            resolved += 1
            assert abs(got["frobenius"] - want) <= got["floor"] + 1e-9 * want, (eps, got, want)
    assert resolved >= 1  # eps = 1e-4 at least lies well above the floor


def test_when_widths_agree_the_floor_is_rounding_of_the_difference():
    x, y = _pair(1e-11, seed=5)
    out = similarity_gap(x, y)
    assert out["floor"] < 1e-12 * float((x @ x.T).norm()) and out["floor"] < out["frobenius"] / 100
    acc = StreamingAlignment()
    assert math.isnan(acc.gap_floor())
