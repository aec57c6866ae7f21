"""Costs a user can see before paying them (issue 21, item 2): similarity_gap runs its O(N²) maximum only when
asked; a pass over the pairs cut into parts (to show a tqdm bar) gives the whole pass's values; feature extraction
shows a bar over the batches; `progress` forces bars on or off. Also the a-posteriori bounds the approximate
quantities return where asked: Spearman RSA's and the median σ's (item 3)."""
import pytest
import scipy.stats
import torch
from torch import nn

from clnscl import metrics
from clnscl.metrics import pairwise, reference


def _pair(n, p, q, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, p, generator=gen, dtype=torch.float64)
    y = x @ torch.randn(p, q, generator=gen, dtype=torch.float64) + 0.8 * torch.randn(n, q, generator=gen,
                                                                                      dtype=torch.float64)
    return x, y


def test_similarity_gap_runs_no_pass_over_the_pairs_unless_max_abs_is_asked_for(monkeypatch):
    x, y = _pair(20_000, 24, 24, 0)
    x_small, y_small = x[:400], y[:400]
    want = reference.similarity_gap(x_small, y_small)

    def refuse(*args, **kwargs):
        raise AssertionError("an O(N²) pass ran")

    monkeypatch.setattr(pairwise, "moments", refuse)
    monkeypatch.setattr(metrics.reference, "similarity_gap", refuse)
    out = metrics.similarity_gap(x, y)
    assert set(out) == {"frobenius", "relative", "floor"}
    got = metrics.similarity_gap(x_small, y_small)
    assert got["frobenius"] == pytest.approx(want["frobenius"], rel=1e-10)
    assert got["relative"] == pytest.approx(want["relative"], rel=1e-10)
    with pytest.raises(AssertionError, match="O\\(N²\\) pass"):
        metrics.similarity_gap(x_small, y_small, max_abs=True)


def test_max_abs_when_asked_equals_the_direct_maximum():
    x, y = _pair(333, 11, 7, 1)
    want = float((reference.kernel_matrix(x, "cosine", None) - reference.kernel_matrix(y, "cosine", None)).abs().max())
    for backend in ("cpu", "reference"):
        got = metrics.similarity_gap(x, y, max_abs=True, backend=backend)
        assert got["max_abs"] == pytest.approx(want, rel=1e-12), backend


@pytest.mark.parametrize("bad", [1, "yes", None])
def test_max_abs_must_be_a_bool(bad):
    x, y = _pair(10, 3, 3, 2)
    with pytest.raises(TypeError, match="max_abs"):
        metrics.similarity_gap(x, y, max_abs=bad)


def test_a_pass_cut_into_parts_gives_the_whole_pass_and_draws_a_bar(monkeypatch, capsys):
    """Parts of 40 pairs: ~100 parts over N = 301 rows, each op's part ranges covering every tile pair once."""
    x, y = _pair(301, 13, 9, 3)

    def every(progress):
        return {
            "gap": metrics.similarity_gap(x, y, max_abs=True, progress=progress)["max_abs"],
            "rbf": metrics.cka(x, y, "rbf", progress=progress),
            "rbf_sigma": metrics.cka(x, y, "rbf", sigma=3.0, unbiased=True, progress=progress),
            "pearson": metrics.rsa(x, y, "euclidean", progress=progress),
            "spearman": metrics.rsa(x, y, "euclidean", "spearman", progress=progress),
        }

    whole = every(False)
    capsys.readouterr()
    monkeypatch.setattr(pairwise, "PART_PAIRS", 40)
    assert pairwise._parts(301, True) == pairwise.MAX_PARTS
    parted = every(True)
    for key, value in whole.items():
        assert parted[key] == pytest.approx(value, rel=1e-11, abs=1e-14), key
    err = capsys.readouterr().err
    for desc in ("pairwise moments", "pairwise histograms"):
        assert desc in err
    metrics.similarity_gap(x, y, max_abs=True, progress=False)
    assert capsys.readouterr().err == ""


def test_the_parts_of_one_op_add_up_to_the_whole():
    x, y = _pair(600, 5, 4, 4)  # 3 CPU tiles: 6 tile pairs, cut into 4 runs of unequal length
    ops = torch.ops.clnscl
    whole = ops.pairwise_moments(x, y, 1, 0.1, 0.2)
    parts = [ops.pairwise_moments(x, y, 1, 0.1, 0.2, part=k, parts=4) for k in range(4)]
    combined = parts[0]
    for part in parts[1:]:
        combined = pairwise._combine_moments(combined, part)
    for got, want in zip(combined, whole):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    with pytest.raises(RuntimeError, match="part < parts"):
        ops.pairwise_moments(x, y, 1, 0.1, 0.2, part=4, parts=4)


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Dropout(0.5))

    def forward(self, x):
        return self.body(x)


def test_feature_extraction_draws_a_bar_over_the_batches_when_asked(capsys):
    torch.manual_seed(0)
    loader = [(torch.randn(5, 6), torch.zeros(5)) for _ in range(3)]
    a, b = _Net(), _Net()
    stats_before = a.body[1].running_mean.clone()
    feats = metrics.extract_features(a, loader, progress=True, dtype=torch.float64)
    assert "features" in capsys.readouterr().err and feats.shape == (15, 8)
    assert a.training and torch.equal(a.body[1].running_mean, stats_before)  # eval mode, restored after
    acc, _ = metrics.align_models(a, b, loader, progress=True)
    assert "features" in capsys.readouterr().err and acc.n == 15
    metrics.extract_features(a, loader, progress=False)
    metrics.align_models(a, b, loader)  # None: stderr is not a terminal under pytest
    assert capsys.readouterr().err == ""
    with pytest.raises(TypeError, match="progress"):
        metrics.extract_features(a, loader, progress="on")


@pytest.mark.parametrize("rdm", ["cosine", "euclidean"])
@pytest.mark.parametrize("n,seed", [(301, 5), (1500, 6)])
def test_spearman_returns_a_bound_that_contains_the_exact_value(rdm, n, seed):
    x, y = _pair(n, 9, 6, seed)
    value, bound = metrics.rsa(x, y, rdm, "spearman", return_error=True)
    exact = scipy.stats.spearmanr(reference.rdm_upper(x, rdm).numpy(), reference.rdm_upper(y, rdm).numpy()).statistic
    assert 0 < bound <= pairwise.SPEARMAN_BOUND  # binned ranks here: a bound that says something
    assert abs(value - exact) <= bound
    assert value == metrics.rsa(x, y, rdm, "spearman")
    ref_value, ref_bound = metrics.rsa(x, y, rdm, "spearman", backend="reference", return_error=True)
    assert ref_bound == 0.0 and ref_value == pytest.approx(exact, abs=1e-12)
    assert metrics.rsa(x, y, rdm, "pearson", return_error=True)[1] == 0.0


def test_the_median_sigma_comes_with_a_bound_that_contains_the_exact_median():
    x, y = _pair(700, 7, 5, 7)
    value, sig = metrics.cka(x, y, "rbf", return_sigma=True)
    for side, rows in (("x", x), ("y", y)):
        exact = reference.median_distance(rows)
        assert abs(sig[f"sigma_{side}"] - exact) <= sig[f"sigma_{side}_error"]
        assert 0 < sig[f"sigma_{side}_error"] <= pairwise.value_range(rows, pairwise.EUCLIDEAN)[1] / pairwise.BINS
    assert value == metrics.cka(x, y, "rbf")
    _, given = metrics.cka(x, y, "rbf", sigma=2.0, return_sigma=True)
    assert given == {"sigma_x": 2.0, "sigma_y": 2.0, "sigma_x_error": 0.0, "sigma_y_error": 0.0}
    with pytest.raises(ValueError, match="return_sigma"):
        metrics.cka(x, y, "linear", return_sigma=True)
