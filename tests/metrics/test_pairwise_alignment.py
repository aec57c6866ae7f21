"""metrics.pairwise_alignment: every pairwise metric from two passes over the pairs (issue 22, item 1) — the same
values as rsa, cka(kernel="rbf") and similarity_gap(max_abs=True) one by one, in fewer passes."""
import math

import pytest
import torch

from clnscl import metrics
from clnscl.metrics import pairwise


def _pair(n, p, q, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, p, generator=gen, dtype=torch.float64)
    y = torch.tanh(x @ torch.randn(p, q, generator=gen, dtype=torch.float64)) + 0.5 * torch.randn(
        n, q, generator=gen, dtype=torch.float64)
    return x, y


def _one_by_one(x, y, rdm, sigma, unbiased, backend):
    spearman, bound = metrics.rsa(x, y, rdm, "spearman", backend=backend, return_error=True)
    cka, sigmas = metrics.cka(x, y, "rbf", sigma, unbiased, backend=backend, return_sigma=True)
    return {"rsa_spearman": spearman, "rsa_spearman_error": bound,
            "rsa_pearson": metrics.rsa(x, y, rdm, "pearson", backend=backend), "cka_rbf": cka, **sigmas,
            "gap_max_abs": metrics.similarity_gap(x, y, max_abs=True, backend=backend)["max_abs"]}


@pytest.mark.parametrize("rdm,sigma,unbiased,n", [("euclidean", None, False, 1301), ("cosine", None, True, 777),
                                                  ("cosine", 2.5, False, 530), ("euclidean", 1.5, True, 299)])
def test_equals_the_metrics_one_by_one(rdm, sigma, unbiased, n):
    x, y = _pair(n, 13, 7, n)
    got = metrics.pairwise_alignment(x, y, rdm, sigma, unbiased, backend="cpu")
    want = _one_by_one(x, y, rdm, sigma, unbiased, "cpu")
    assert set(got) == set(want)
    for key, value in want.items():  # the same passes' sums, added in another order at most
        assert got[key] == pytest.approx(value, rel=1e-12, abs=1e-14), key
    assert got["rsa_spearman_error"] > 0  # binned ranks, not the exact fallback


def test_reference_backend_and_the_engine_agree_within_the_bounds():
    x, y = _pair(401, 9, 11, 3)
    engine = metrics.pairwise_alignment(x, y, backend="cpu")
    ref = metrics.pairwise_alignment(x, y, backend="reference")
    assert ref == pytest.approx(_one_by_one(x, y, "euclidean", None, False, "reference"), rel=1e-12)
    assert abs(engine["rsa_spearman"] - ref["rsa_spearman"]) <= engine["rsa_spearman_error"]
    for side in ("sigma_x", "sigma_y"):
        assert abs(engine[side] - ref[side]) <= engine[f"{side}_error"] * (1 + 1e-9)
    assert engine["rsa_pearson"] == pytest.approx(ref["rsa_pearson"], rel=1e-10)
    assert engine["gap_max_abs"] == pytest.approx(ref["gap_max_abs"], rel=1e-12)
    assert engine["cka_rbf"] == pytest.approx(ref["cka_rbf"], abs=1e-3)  # σ within its bound of the median


@pytest.mark.parametrize("rdm,histogram_passes", [("euclidean", 1), ("cosine", 2)])
def test_two_passes_where_one_by_one_takes_six(rdm, histogram_passes, monkeypatch):
    x, y = _pair(600, 8, 5, 1)
    calls = []
    for name in ("histograms", "moments"):
        original = getattr(pairwise, name)

        def counted(*args, _original=original, _name=name, **kwargs):
            calls.append(_name)
            return _original(*args, **kwargs)

        monkeypatch.setattr(pairwise, name, counted)
    metrics.pairwise_alignment(x, y, rdm, backend="cpu")
    assert calls.count("histograms") == histogram_passes and calls.count("moments") == 1
    calls.clear()
    _one_by_one(x, y, rdm, None, False, "cpu")
    assert len(calls) == 6  # Spearman 2, RBF CKA 2, Pearson 1 (on the engine, backend="cpu"), the maximum gap 1


def test_a_constant_representation_or_few_rows_give_nan_with_warnings():
    x, y = _pair(50, 4, 3, 2)
    with pytest.warns(UserWarning, match="constant"):
        out = metrics.pairwise_alignment(torch.ones(50, 4, dtype=torch.float64), y, backend="cpu")
    assert math.isnan(out["rsa_spearman"]) and math.isnan(out["cka_rbf"])
    with pytest.warns(UserWarning, match="at least"):
        out = metrics.pairwise_alignment(x[:2], y[:2], backend="cpu")
    assert math.isnan(out["rsa_spearman"])


def test_numpy_inputs_and_bad_arguments():
    x, y = _pair(40, 4, 3, 5)
    assert metrics.pairwise_alignment(x.numpy(), y.numpy(), backend="cpu") == pytest.approx(
        metrics.pairwise_alignment(x, y, backend="cpu"), rel=1e-12)
    with pytest.raises(ValueError, match="rdm"):
        metrics.pairwise_alignment(x, y, rdm="manhattan")
    with pytest.raises(ValueError, match="sigma"):
        metrics.pairwise_alignment(x, y, sigma=-1.0)
