"""The C++ pairwise engine (backend="cpu") against the materialised float64 reference: RBF CKA, Euclidean and
cosine RSA (Pearson, Spearman with its error bound), max |Σ_X − Σ_Y|; N crossing the 256-row tile, p ≠ q."""
import math

import pytest
import scipy.stats
import torch

from clnscl import metrics
from clnscl.metrics import pairwise, reference


def _data(n, p, q, kind, seed):
    gen = torch.Generator().manual_seed(seed)
    if kind == "ties":  # small integers: many equal distances
        return tuple(torch.randint(0, 3, (n, w), generator=gen).double() for w in (p, q))
    x = torch.randn(n, p, generator=gen, dtype=torch.float64)
    if kind == "clustered":
        centres = torch.randn(5, p, generator=gen, dtype=torch.float64)
        x = x * 0.3 + 3 * centres[torch.randint(0, 5, (n,), generator=gen)]
    w = torch.randn(p, q, generator=gen, dtype=torch.float64)
    y = x @ w + 0.7 * torch.randn(n, q, generator=gen, dtype=torch.float64)
    return x, y


CASES = [(301, 13, 7, "random", 0), (513, 9, 20, "clustered", 1), (257, 5, 3, "ties", 2)]


@pytest.mark.parametrize("n,p,q,kind,seed", CASES)
@pytest.mark.parametrize("unbiased", [False, True])
def test_rbf_cka_with_given_sigma_is_exact(n, p, q, kind, seed, unbiased):
    x, y = _data(n, p, q, kind, seed)
    got = metrics.cka(x, y, "rbf", sigma=2.5, unbiased=unbiased, backend="cpu")
    assert got == pytest.approx(reference.cka(x, y, "rbf", 2.5, unbiased), rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("n,p,q,kind,seed", CASES)
def test_median_sigma_within_one_bin_and_cka_close(n, p, q, kind, seed):
    x, y = _data(n, p, q, kind, seed)
    for rows, (median, error) in zip((x, y), pairwise.median_distances(x, y)):
        width = pairwise.value_range(rows, pairwise.EUCLIDEAN)[1] / pairwise.BINS
        assert abs(median - reference.median_distance(rows)) <= error <= width
    assert metrics.cka(x, y, "rbf", backend="cpu") == pytest.approx(reference.cka(x, y, "rbf", None, False), abs=1e-4)


@pytest.mark.parametrize("n,p,q,kind,seed", CASES)
@pytest.mark.parametrize("rdm", ["cosine", "euclidean"])
def test_rsa(n, p, q, kind, seed, rdm):
    x, y = _data(n, p, q, kind, seed)
    assert metrics.rsa(x, y, rdm, "pearson", backend="cpu") == pytest.approx(reference.rsa(x, y, rdm, "pearson"),
                                                                              rel=1e-9, abs=1e-12)
    a, b = reference.rdm_upper(x, rdm).numpy(), reference.rdm_upper(y, rdm).numpy()
    exact = scipy.stats.spearmanr(a, b).statistic
    rho, bound = pairwise.spearman(x, y, pairwise.COSINE if rdm == "cosine" else pairwise.EUCLIDEAN)
    assert bound <= 1e-3  # 0 where the engine fell back to exact ranks
    assert abs(rho - exact) <= bound + 1e-12
    assert metrics.rsa(x, y, rdm, "spearman", backend="cpu") == rho


@pytest.mark.parametrize("n,p,q,kind,seed", CASES)
def test_max_abs_gap(n, p, q, kind, seed):
    x, y = _data(n, p, q, kind, seed)
    x[3] = 0  # a zero row: cos 0 with everything and Σ_X[3, 3] = 0
    got = metrics.similarity_gap(x, y, max_abs=True, backend="cpu")
    want = reference.similarity_gap(x, y)
    assert got["max_abs"] == pytest.approx(want["max_abs"], rel=1e-12)
    assert got["frobenius"] == pytest.approx(want["frobenius"], rel=1e-9)


def test_nan_features_give_nan():
    x, y = _data(300, 4, 4, "random", 3)
    x[7, 1] = math.nan
    assert math.isnan(metrics.rsa(x, y, "euclidean", "pearson", backend="cpu"))
    assert math.isnan(metrics.rsa(x, y, "euclidean", "spearman", backend="cpu"))
    assert math.isnan(metrics.cka(x, y, "rbf", sigma=1.0, backend="cpu"))


def test_engine_handles_float32_and_bfloat16_inputs():
    x, y = _data(301, 13, 7, "random", 4)
    for dtype in (torch.float32, torch.bfloat16):
        xl, yl = x.to(dtype), y.to(dtype)
        assert metrics.rsa(xl, yl, "euclidean", backend="cpu") == pytest.approx(
            reference.rsa(xl.double(), yl.double(), "euclidean", "pearson"), rel=1e-9)


def test_nearly_constant_cosine_rdm_falls_back_to_the_pairs():
    """Rows sharing a large offset: cos ≈ 1 everywhere, beyond what Gram statistics resolve; rsa() must still
    give the reference value (the pairwise engine works on 1 − cos directly)."""
    x, y = _data(301, 13, 7, "random", 5)
    x, y = x + 1000, y + 1000
    want = reference.rsa(x, y, "cosine", "pearson")
    assert metrics.rsa(x, y) == pytest.approx(want, rel=1e-6)


def test_the_backend_rule_is_the_losses(monkeypatch):
    """An explicit engine that cannot run raises with the reason; auto falls back to the materialised
    reference with a warning that gives the reason, once (clnscl/dispatch.py, as for the loss)."""
    from clnscl import dispatch

    reason = "the CPU ops failed to build (simulated for the test)"
    monkeypatch.setattr(pairwise.BACKENDS["cpu"], "unavailable", lambda: reason)
    monkeypatch.setattr(dispatch, "_warned", set())
    x, y = _data(61, 6, 4, "random", 7)
    with pytest.raises(RuntimeError, match=r"backend 'cpu' is unavailable: .*simulated for the test"):
        metrics.rsa(x, y, "euclidean", "spearman", backend="cpu")
    with pytest.warns(UserWarning, match=r"clnscl metrics: no fused backend .*simulated for the test.*materialised"):
        got = metrics.rsa(x, y, "euclidean", "spearman")
    assert got == reference.rsa(x, y, "euclidean", "spearman")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same reason warns once
        assert metrics.cka(x, y, "rbf", sigma=1.5) == pytest.approx(reference.cka(x, y, "rbf", 1.5, False), rel=1e-12)
