"""clnscl.theory.bounds: Corollaries 1–2 (CKA and RSA lower bounds from the coupling ratios) on random and
structured pairs of representations against a materialised float64 N×N oracle written here, coupling_ratios
and StreamingAlignment.coupling_terms against the same oracle, the closed-form bounds (ε, Δ_π, the fraction
Δ, the per-step mismatch bound, Theorem 1) against their formulas, and bad input."""
from __future__ import annotations

import math

import pytest
import torch

from clnscl.metrics import StreamingAlignment
from clnscl.theory import (
    bound_ratios,
    cka_lower_bound,
    coupling_ratios,
    delta_pi,
    epsilon,
    fraction_delta,
    mismatch_bound,
    rsa_lower_bound,
    theorem1_bound,
    theorem1_from_schedule,
)

KEYS = {"k_norm", "k_gap", "rho", "sigma_gap", "rdm_gap", "rdm_scale", "r"}
N, P, Q = 41, 13, 7  # N odd, feature sizes not powers of two, p ≠ q
SLACK = 1e-12


# ------------------------------------------------------------------------------------------------- oracle


def cosine(x: torch.Tensor) -> torch.Tensor:
    x = x.double()
    u = x / x.norm(dim=1, keepdim=True)
    return u @ u.T


def oracle(x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Every coupling key, plus the measured cosine CKA and Pearson RSA, from the materialised N×N matrices."""
    n = x.shape[0]
    sx, sy = cosine(x), cosine(y)
    h = torch.eye(n, dtype=torch.float64) - torch.full((n, n), 1.0 / n, dtype=torch.float64)
    kx, ky = h @ sx @ h, h @ sy @ h
    iu = torch.triu_indices(n, n, 1)
    a, b = (1 - sx)[iu[0], iu[1]], (1 - sy)[iu[0], iu[1]]
    m = a.numel()
    assert m == n * (n - 1) // 2
    k_norm, k_gap = float(kx.norm()), float((kx - ky).norm())
    rdm_gap = float((b - a).norm())
    rdm_scale = math.sqrt(m) * float(((a - a.mean()) ** 2).mean().sqrt())
    ac, bc = a - a.mean(), b - b.mean()
    return {
        "k_norm": k_norm, "k_gap": k_gap, "rho": k_gap / k_norm, "sigma_gap": float((sx - sy).norm()),
        "rdm_gap": rdm_gap, "rdm_scale": rdm_scale, "r": rdm_gap / rdm_scale,
        "cka": float((kx * ky).sum() / (kx.norm() * ky.norm())),
        "pearson": float((ac * bc).sum() / (ac.norm() * bc.norm())),
    }


def orthonormal_rows(p: int, q: int, g: torch.Generator) -> torch.Tensor:
    """(p, q), q ≥ p, with orthonormal rows: x ↦ x·R keeps every inner product of the rows of x."""
    qm, _ = torch.linalg.qr(torch.randn(q, q, generator=g, dtype=torch.float64))
    return qm[:p]


def make_pair(kind: str, seed: int, n: int = N):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, P, generator=g, dtype=torch.float64)
    if kind == "clustered":
        labels = torch.randint(0, 5, (n,), generator=g)
        centres = 3 * torch.randn(5, P, generator=g, dtype=torch.float64)
        x = centres[labels] + torch.randn(n, P, generator=g, dtype=torch.float64)
        y = x @ torch.randn(P, Q, generator=g, dtype=torch.float64)
    elif kind == "rotation":
        y = x @ orthonormal_rows(P, 19, g)
    elif kind == "small_noise":
        y = x + 0.03 * torch.randn(n, P, generator=g, dtype=torch.float64)
    elif kind == "large_noise":
        y = x + torch.randn(n, P, generator=g, dtype=torch.float64)
    elif kind == "noise_only":
        y = torch.randn(n, Q, generator=g, dtype=torch.float64)
    elif kind == "scaled":
        y = 3.7 * x * (0.5 + torch.rand(n, 1, generator=g, dtype=torch.float64))  # cosines unchanged
    elif kind == "one_row":
        y = x.clone()
        y[int(torch.randint(0, n, (1,), generator=g))] = torch.randn(P, generator=g, dtype=torch.float64)
    elif kind == "linear_map":
        y = x @ torch.randn(P, Q, generator=g, dtype=torch.float64)
    else:
        raise AssertionError(kind)
    return x, y


KINDS = ["clustered", "rotation", "small_noise", "large_noise", "noise_only", "scaled", "one_row", "linear_map"]
INVARIANT = {"rotation", "scaled"}  # Σ_Y = Σ_X up to rounding
SEEDS = range(12)


def assert_terms(got: dict, want: dict, rel: float = 1e-10, abs_: float = 1e-10, what: str = ""):
    assert set(got) == KEYS, f"{what}: keys {sorted(got)}"
    for k in KEYS:
        assert isinstance(got[k], float), f"{what}: {k} is {type(got[k]).__name__}, not float"
        assert got[k] == pytest.approx(want[k], rel=rel, abs=abs_), f"{what}: {k} = {got[k]!r}, want {want[k]!r}"


# ---------------------------------------------------------------------------------------- coupling ratios


@pytest.mark.parametrize("kind", KINDS)
def test_coupling_ratios_match_materialised_oracle(kind):
    """coupling_ratios gives every key as the float64 N×N computation here does, on every kind of pair."""
    for seed in SEEDS:
        x, y = make_pair(kind, 100 + seed)
        assert_terms(coupling_ratios(x, y), oracle(x, y), what=f"{kind} seed {seed}")


@pytest.mark.parametrize("kind", KINDS)
def test_corollaries_hold_on_random_and_structured_pairs(kind):
    """(1−ρ)/(1+ρ) ≤ measured cosine CKA and (1−r)/(1+r) ≤ measured Pearson RSA, for ρ, r from coupling_ratios."""
    negative = 0
    for seed in SEEDS:
        x, y = make_pair(kind, 200 + seed)
        t, o = coupling_ratios(x, y), oracle(x, y)
        cka_lb, rsa_lb = cka_lower_bound(t["rho"]), rsa_lower_bound(t["r"])
        assert cka_lb <= o["cka"] + SLACK, f"{kind} seed {seed}: CKA bound {cka_lb} > CKA {o['cka']} (ρ {t['rho']})"
        assert rsa_lb <= o["pearson"] + SLACK, f"{kind} seed {seed}: RSA bound {rsa_lb} > {o['pearson']} (r {t['r']})"
        negative += cka_lb <= 0
        if kind in INVARIANT:
            assert t["rho"] <= 1e-12 and t["r"] <= 1e-12, f"{kind} seed {seed}: ρ {t['rho']}, r {t['r']}"
            assert cka_lb == pytest.approx(1.0, abs=1e-11) and rsa_lb == pytest.approx(1.0, abs=1e-11)
        if kind in ("small_noise", "one_row"):
            assert 0 < t["rho"] < 1 and 0 < t["r"] < 1, f"{kind} seed {seed}: ρ {t['rho']}, r {t['r']}"
            assert cka_lb > 0 and rsa_lb > 0
    if kind == "noise_only":
        # independent representations: ‖K_X − K_Y‖ ≈ √2·‖K_X‖, the bound is vacuous (≤ 0) and still holds
        assert negative == len(SEEDS), f"{negative} of {len(SEEDS)} noise-only pairs have ρ ≥ 1"


def test_identical_inputs_give_zero_ratios_and_unit_bounds():
    """x paired with itself: ρ = r = every gap = 0 and both lower bounds equal 1."""
    for seed in range(5):
        x = torch.randn(N, P, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        t = coupling_ratios(x, x.clone())
        for k in ("k_gap", "rho", "sigma_gap", "rdm_gap", "r"):
            assert abs(t[k]) <= 1e-12, f"seed {seed}: {k} = {t[k]}"
        assert t["k_norm"] == pytest.approx(oracle(x, x)["k_norm"], rel=1e-10) and t["k_norm"] > 0
        assert cka_lower_bound(t["rho"]) == pytest.approx(1.0, abs=1e-12)
        assert rsa_lower_bound(t["r"]) == pytest.approx(1.0, abs=1e-12)
        acc = StreamingAlignment()
        acc.update(x[:17], x[:17].clone())
        acc.update(x[17:], x[17:].clone())
        st = acc.coupling_terms()  # gaps from sums of squares: 0 up to √(rounding) of the norms
        assert st["rho"] <= 1e-6 and st["r"] <= 1e-6, st
    assert cka_lower_bound(0.0) == 1.0 and rsa_lower_bound(0.0) == 1.0


@pytest.mark.parametrize("kind", KINDS)
def test_centring_and_triangle_cannot_increase_the_gap(kind):
    """ρ ≤ sigma_gap/k_norm (H·H is a contraction in Frobenius norm) and rdm_gap ≤ sigma_gap/√2."""
    for seed in SEEDS:
        x, y = make_pair(kind, 300 + seed)
        t = coupling_ratios(x, y)
        assert t["rho"] <= t["sigma_gap"] / t["k_norm"] * (1 + 1e-12) + SLACK, f"{kind} seed {seed}: {t}"
        assert t["rdm_gap"] <= t["sigma_gap"] / math.sqrt(2) * (1 + 1e-12) + SLACK, f"{kind} seed {seed}: {t}"
        assert t["k_gap"] <= t["sigma_gap"] * (1 + 1e-12) + SLACK


@pytest.mark.parametrize("kind", ["clustered", "large_noise", "noise_only", "linear_map", "one_row"])
def test_streaming_coupling_terms_equal_coupling_ratios(kind):
    """StreamingAlignment.coupling_terms() fed in uneven batches equals coupling_ratios (and the oracle) to 1e-10."""
    sizes = [1, 2, 17, 5, 30, 3, 1, 42]  # 101 rows
    n = sum(sizes)
    for seed in range(3):
        x, y = make_pair(kind, 400 + seed, n=n)
        acc = StreamingAlignment()
        start = 0
        for s in sizes:
            acc.update(x[start : start + s], y[start : start + s])
            start += s
        assert acc.n == n
        got, want, o = acc.coupling_terms(), coupling_ratios(x, y), oracle(x, y)
        assert_terms(got, want, rel=1e-10, abs_=1e-12, what=f"{kind} seed {seed} streaming vs coupling_ratios")
        assert_terms(got, o, rel=1e-10, abs_=1e-12, what=f"{kind} seed {seed} streaming vs oracle")
        # the corollaries hold for the streaming accumulator's own CKA / RSA too
        c = acc.compute()
        assert c["cka_cosine"] == pytest.approx(o["cka"], rel=1e-10, abs=1e-12)
        assert c["rsa_pearson"] == pytest.approx(o["pearson"], rel=1e-10, abs=1e-12)
        assert cka_lower_bound(got["rho"]) <= c["cka_cosine"] + SLACK
        assert rsa_lower_bound(got["r"]) <= c["rsa_pearson"] + SLACK


def test_lower_bounds_are_the_formulas_even_when_vacuous():
    """cka_lower_bound(ρ) = (1−ρ)/(1+ρ), rsa_lower_bound(r) = (1−r)/(1+r), negative values returned as they are."""
    for v in (0.0, 1e-9, 0.125, 0.5, 0.999, 1.0, 1.37, 4.0, 250.0):
        want = (1 - v) / (1 + v)
        assert cka_lower_bound(v) == pytest.approx(want, rel=1e-14, abs=1e-15)
        assert rsa_lower_bound(v) == pytest.approx(want, rel=1e-14, abs=1e-15)
    assert cka_lower_bound(3.0) < 0 and rsa_lower_bound(3.0) < 0


def test_bound_ratios_divide_the_gap_bound_by_the_scales():
    """bound_ratios(g, terms) = (g/k_norm, g/(√2·rdm_scale)), with hand-made and with measured terms."""
    terms = {"k_norm": 3.0, "rdm_scale": 5.0, "k_gap": 1.0, "rho": 1 / 3, "sigma_gap": 1.5, "rdm_gap": 1.0,
             "r": 0.2}
    rb, rr = bound_ratios(0.7, terms)
    assert rb == pytest.approx(0.7 / 3.0, rel=1e-14) and rr == pytest.approx(0.7 / (math.sqrt(2) * 5.0), rel=1e-14)
    x, y = make_pair("clustered", 7)
    t = coupling_ratios(x, y)
    o = oracle(x, y)
    for gap in (0.0, 0.013, 2.5, 41.0):
        rb, rr = bound_ratios(gap, t)
        assert rb == pytest.approx(gap / o["k_norm"], rel=1e-10, abs=1e-300)
        assert rr == pytest.approx(gap / (math.sqrt(2) * o["rdm_scale"]), rel=1e-10, abs=1e-300)


# ------------------------------------------------------------------------------------------ the formulas


def want_epsilon(b, t, d):
    return math.sqrt(math.log(t * b / d) / (2 * b))


def want_delta_pi(pi, tau, b, t, d):
    e = want_epsilon(b, t, d)
    return math.inf if pi + e >= 1 else 2 * math.exp(2 / tau) * (pi + e) / (1 - pi - e)


def want_theorem1(etas, tau, b, dv):
    s = float(sum(etas))
    return math.exp(s / (2 * tau**2 * b)) * (s / (tau * math.sqrt(b))) * dv


def test_epsilon_is_the_hoeffding_union_bound_width():
    """epsilon(B, T, δ) = √(log(T·B/δ)/(2B)) over a grid of B, T and δ."""
    for b in (1, 7, 63, 1001):
        for t in (1, 10, 999):
            for d in (0.003, 0.05, 0.5, 0.999):
                assert epsilon(b, t, d) == pytest.approx(want_epsilon(b, t, d), rel=1e-13)


def test_delta_pi_formula_and_infinite_when_prior_plus_epsilon_reaches_one():
    """delta_pi = 2e^{2/τ}(π+ε)/(1−π−ε), and math.inf once π_max + ε ≥ 1."""
    finite = 0
    for pi in (0.0, 0.01, 0.1, 0.3, 0.6, 0.95):
        for tau in (0.1, 0.5, 1.0, 3.0):
            for b, t in ((5, 3), (255, 100), (4097, 1000)):
                got, want = delta_pi(pi, tau, b, t, 0.05), want_delta_pi(pi, tau, b, t, 0.05)
                if math.isinf(want):
                    assert got == math.inf, (pi, tau, b, t, got)
                else:
                    finite += 1
                    assert got == pytest.approx(want, rel=1e-12), (pi, tau, b, t)
    assert finite > 20
    assert delta_pi(0.5, 1.0, 2, 10, 0.1) == math.inf  # ε ≈ 0.86
    assert delta_pi(0.9, 1.0, 10**6, 10, 0.1) == pytest.approx(want_delta_pi(0.9, 1.0, 10**6, 10, 0.1), rel=1e-12)


def test_fraction_delta_formula_zero_and_infinite_ends():
    """fraction_delta(ρ, τ, spread) = 2e^{spread/τ}ρ/(1−ρ); 0 at ρ = 0, math.inf at ρ = 1; spread defaults to 2."""
    for tau in (0.07, 0.5, 1.0, 2.0):
        for rho in (1e-6, 0.05, 1 / 3, 0.5, 0.91):
            assert fraction_delta(rho, tau) == pytest.approx(2 * math.exp(2 / tau) * rho / (1 - rho), rel=1e-12)
            for spread in (0.25, 2.0, 3.5):
                want = 2 * math.exp(spread / tau) * rho / (1 - rho)
                assert fraction_delta(rho, tau, spread) == pytest.approx(want, rel=1e-12)
                assert fraction_delta(rho, tau, spread=spread) == pytest.approx(want, rel=1e-12)
        assert fraction_delta(0.0, tau) == 0.0 and fraction_delta(0, tau, 1.0) == 0.0
        assert fraction_delta(1.0, tau) == math.inf and fraction_delta(1, tau, 0.5) == math.inf


def test_mismatch_bound_formula():
    """mismatch_bound(Δ, τ, B, g) = Δ/(τ√B) + g/(2τ²B), math.inf for Δ = inf."""
    for dv in (0.0, 0.3, 17.0):
        for tau in (0.1, 0.5, 1.0, 2.0):
            for b in (1, 9, 77):
                for gap in (0.0, 0.01, 3.3):
                    want = dv / (tau * math.sqrt(b)) + gap / (2 * tau**2 * b)
                    assert mismatch_bound(dv, tau, b, gap) == pytest.approx(want, rel=1e-13, abs=1e-300)
    assert mismatch_bound(math.inf, 1.0, 5, 0.0) == math.inf


def test_theorem1_bound_formula_and_empty_schedule():
    """theorem1_bound = exp(S/(2τ²B))·(S/(τ√B))·Δ with S = Σ η; 0 for no steps."""
    g = torch.Generator().manual_seed(11)
    schedules = [[0.1] * 7, [1.0 / (1 + t) for t in range(31)], torch.rand(13, generator=g).tolist(), [2.5], (0.3, 0.2)]
    for etas in schedules:
        for tau in (0.2, 0.5, 1.0):
            for b in (3, 33, 257):
                for dv in (0.0, 0.01, 5.0):
                    want = want_theorem1(etas, tau, b, dv)
                    assert theorem1_bound(etas, tau, b, dv) == pytest.approx(want, rel=1e-12, abs=1e-300)
    assert theorem1_bound([], 0.5, 16, 3.0) == 0.0
    assert theorem1_bound((), 1.0, 1, 0.2) == 0.0
    assert theorem1_bound([0.1, 0.1], 1.0, 8, math.inf) == math.inf


def test_theorem1_from_schedule_composes_delta_pi_and_theorem1():
    """theorem1_from_schedule = theorem1_bound(η, τ, B, delta_pi(max π/Σπ, τ, B, T = len η, δ)), inf when vacuous."""
    cases = [
        ([0.05] * 50, 512, 0.5, [10, 10, 10, 10, 10, 10, 10, 10, 10, 10], 0.05),
        ([0.1 / math.sqrt(1 + t) for t in range(100)], 2048, 1.0, [3, 5, 2, 7, 1], 0.1),
        ([0.2] * 9, 129, 0.2, [0.25, 0.25, 0.5], 0.01),
        ([1.0] * 3, 4, 1.0, [1, 1], 0.5),  # π_max + ε ≥ 1: vacuous
    ]
    for etas, b, tau, priors, d in cases:
        pi = max(priors) / sum(priors)
        want = want_theorem1(etas, tau, b, want_delta_pi(pi, tau, b, len(etas), d))
        got = theorem1_from_schedule(etas, tau, b, priors, d)
        kw = theorem1_from_schedule(etas, batch_size=b, temperature=tau, priors=priors, delta=d)
        if math.isinf(want):
            assert got == math.inf and kw == math.inf
        else:
            assert got == pytest.approx(want, rel=1e-12) and kw == pytest.approx(want, rel=1e-12)
    assert math.isinf(want_delta_pi(0.5, 1.0, 4, 3, 0.5))  # the last case is the vacuous one


# --------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("call, name", [
    (lambda: fraction_delta(0.1, 0.0), "temperature"),
    (lambda: fraction_delta(0.1, -1.0), "temperature"),
    (lambda: fraction_delta(-0.1, 1.0), "fraction"),
    (lambda: epsilon(0, 10, 0.1), "batch_size"),
    (lambda: epsilon(10, 10, 0.0), "delta"),
    (lambda: epsilon(10, 10, 1.0), "delta"),
    (lambda: epsilon(10, 10, 1.5), "delta"),
    (lambda: delta_pi(0.1, 0.0, 10, 10, 0.1), "temperature"),
    (lambda: delta_pi(0.1, 1.0, 0, 10, 0.1), "batch_size"),
    (lambda: delta_pi(0.1, 1.0, 10, 10, -0.2), "delta"),
    (lambda: mismatch_bound(1.0, 0.0, 10, 0.0), "temperature"),
    (lambda: mismatch_bound(1.0, 1.0, 0, 0.0), "batch_size"),
    (lambda: theorem1_bound([0.1], -0.5, 10, 1.0), "temperature"),
    (lambda: theorem1_bound([0.1], 1.0, 0, 1.0), "batch_size"),
    (lambda: theorem1_from_schedule([0.1] * 5, 1.0, 0, [1, 2], 0.1), "batch_size"),
    (lambda: theorem1_from_schedule([0.1] * 5, 0.0, 16, [1, 2], 0.1), "temperature"),
    (lambda: theorem1_from_schedule([0.1] * 5, 1.0, 16, [1, 2], 1.0), "delta"),
    (lambda: theorem1_from_schedule([], 0.0, 16, [1, 2], 0.1), "temperature"),  # checked without steps too
    (lambda: theorem1_from_schedule([], 1.0, 16, [1, 2], 1.0), "delta"),
    (lambda: theorem1_from_schedule([0.1], 1.0, 16, [1, -2], 0.1), "priors"),
    (lambda: theorem1_from_schedule([0.1], 1.0, 16, [0, 0], 0.1), "priors"),
    (lambda: bound_ratios(-1.0, {"k_norm": 1.0, "rdm_scale": 1.0}), "gap_bound"),
    (lambda: bound_ratios(1.0, {"k_norm": 1.0}), "rdm_scale"),
    (lambda: cka_lower_bound(-0.1), "rho"),
    (lambda: rsa_lower_bound(-0.1), r"\br\b"),
])
def test_bad_input_raises_value_error_naming_the_argument(call, name):
    """Temperature ≤ 0, batch_size < 1, δ outside (0, 1) and a negative ratio raise ValueError naming the argument."""
    with pytest.raises(ValueError, match=name):
        call()
