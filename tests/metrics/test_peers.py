"""Agreement with established packages where the definitions coincide (optional test dependencies).

rsatoolbox (RSA). Its RDMs and comparisons, read from rsatoolbox 0.3.2's source:
  - calc_rdm(method="correlation") is 1 − Pearson correlation of the pattern vectors, i.e. 1 − cos of the
    rows after subtracting each row's own mean; it equals clnscl's cosine RDM of the row-centred data;
  - calc_rdm(method="euclidean") is the squared Euclidean distance divided by the number of channels: a
    monotone map of clnscl's ‖x_i − x_j‖, so ranks (ties included) coincide, Pearson values do not;
  - compare(method="corr") is the Pearson correlation of the two RDM vectors; "spearman" the Pearson
    correlation of scipy.stats.rankdata average ranks (ties included), clnscl's definition; "rho-a" drops
    the tie correction, so it equals Spearman only on tie-free data.
ckatorch (CKA). cka_base(x, y, kernel, unbiased, threshold, method), read from ckatorch 1.0.3's source:
  - linear: Kornblith et al.'s CKA, biased (tr(KHLH)) or with unbiased (U-statistic) centring, which is Song
    et al.'s unbiased HSIC; cosine is not offered, but clnscl's cosine CKA is defined as linear CKA of the
    L2-normalised rows;
  - rbf: σ = threshold·√(median of the full N×N squared-distance matrix, diagonal zeros included), one per
    representation. That median is not clnscl's (over i < j), so σ = None is not compared; instead y is
    rescaled so that both representations get the same ckatorch σ, which is then passed to clnscl.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from clnscl.metrics import cka, rsa
from tests.support.metrics_cases import BACKENDS, TOL, make_data, need, spearman_tol, tied_data

rsatoolbox = pytest.importorskip("rsatoolbox", reason="optional test dependency: pip install rsatoolbox")


def _rdms(x: torch.Tensor, method: str):
    from rsatoolbox.data import Dataset
    from rsatoolbox.rdm import calc_rdm

    return calc_rdm(Dataset(x.detach().double().numpy()), method=method)


def _compare(x, y, rdm_method: str, compare_method: str) -> float:
    from rsatoolbox.rdm import compare

    value = compare(_rdms(x, rdm_method), _rdms(y, rdm_method), method=compare_method)
    assert value.shape == (1, 1)
    return float(value[0, 0])


def _row_centred(t: torch.Tensor) -> torch.Tensor:
    return t - t.mean(dim=1, keepdim=True)


def _close(got, want, tol, what):
    assert math.isfinite(want)
    assert math.isclose(got, want, rel_tol=tol, abs_tol=tol), (
        f"{what}: clnscl {got!r}, peer {want!r}, |err| {abs(got - want):.3e}")


DATA = [("random", 101), ("clustered", 257)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind,n", DATA)
def test_rsa_against_rsatoolbox(kind, n, backend):
    need(backend)
    x, y = make_data(kind, n, seed="rsatoolbox")
    xc, yc = _row_centred(x), _row_centred(y)
    # cosine RDM of row-centred data = rsatoolbox's correlation RDM
    _close(rsa(xc, yc, "cosine", "pearson", backend=backend), _compare(x, y, "correlation", "corr"), TOL,
           "cosine RDM, Pearson")
    _close(rsa(xc, yc, "cosine", "spearman", backend=backend), _compare(x, y, "correlation", "spearman"),
           spearman_tol(backend), "cosine RDM, Spearman")
    # Euclidean vs squared Euclidean / p: same ranks
    spear = _compare(x, y, "euclidean", "spearman")
    _close(rsa(x, y, "euclidean", "spearman", backend=backend), spear, spearman_tol(backend), "Euclidean RDM, Spearman")
    # no ties in continuous data: rho-a (no tie correction) is the same number
    _close(_compare(x, y, "euclidean", "rho-a"), spear, 1e-10, "rsatoolbox rho-a vs spearman without ties")


@pytest.mark.parametrize("backend", BACKENDS)
def test_rsa_spearman_with_ties_against_rsatoolbox(backend):
    need(backend)
    x, y = tied_data("euclidean")  # small integers: exact, heavily tied squared distances
    want = _compare(x, y, "euclidean", "spearman")
    assert abs(_compare(x, y, "euclidean", "rho-a") - want) > 1e-3  # ties matter (rho-a differs)
    _close(rsa(x, y, "euclidean", "spearman", backend=backend), want, spearman_tol(backend), "Spearman with ties")


# ------------------------------------------------------------------------------------------- ckatorch
def _ckatorch():
    return pytest.importorskip("ckatorch", reason="optional test dependency: pip install ckatorch")


@pytest.mark.parametrize("unbiased", [False, True], ids=["biased", "unbiased"])
@pytest.mark.parametrize("kind,n", DATA + [("rankdef", 101)])
def test_linear_and_cosine_cka_against_ckatorch(kind, n, unbiased):
    ckatorch = _ckatorch()
    x, y = make_data(kind, n, seed="ckatorch")
    methods = ("fro_norm", "hsic") if not unbiased else ("fro_norm",)  # "hsic" ignores `unbiased` in ckatorch
    for method in methods:
        want = float(ckatorch.cka_base(x, y, kernel="linear", unbiased=unbiased, method=method))
        _close(cka(x, y, "linear", unbiased=unbiased), want, TOL, f"linear CKA ({method})")
        xn, yn = F.normalize(x, dim=1), F.normalize(y, dim=1)
        want = float(ckatorch.cka_base(xn, yn, kernel="linear", unbiased=unbiased, method=method))
        _close(cka(x, y, "cosine", unbiased=unbiased), want, TOL, f"cosine CKA ({method})")


def _ckatorch_sq_median(t: torch.Tensor) -> float:
    """ckatorch's bandwidth statistic: torch.median of the full squared-distance matrix (its rbf_kernel)."""
    dot = t @ t.T
    sq = torch.diag(dot)
    return float(torch.median(-2 * dot + sq[:, None] + sq[None, :]))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("unbiased", [False, True], ids=["biased", "unbiased"])
@pytest.mark.parametrize("threshold", [0.5, 1.0, 2.0])
def test_rbf_cka_against_ckatorch(threshold, unbiased, backend):
    need(backend)
    ckatorch = _ckatorch()
    x, y = make_data("clustered", 101, seed="ckatorch-rbf")
    y = y * math.sqrt(_ckatorch_sq_median(x) / _ckatorch_sq_median(y))  # same ckatorch σ for x and y
    assert math.isclose(_ckatorch_sq_median(y), _ckatorch_sq_median(x), rel_tol=1e-12)
    sigma = threshold * math.sqrt(_ckatorch_sq_median(x))
    want = float(ckatorch.cka_base(x, y, kernel="rbf", unbiased=unbiased, threshold=threshold))
    _close(cka(x, y, "rbf", sigma=sigma, unbiased=unbiased, backend=backend), want, 1e-9, f"RBF CKA σ={sigma:.4g}")
