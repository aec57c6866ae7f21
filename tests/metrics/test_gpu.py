"""GPU-only checks of the metrics (skipped without a CUDA device; run by scripts/gpu_check.sh): the CUDA pairwise
engine against the float64 reference, NaN handling, and its shared-memory histograms against global atomics."""
import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize("n", [301, 1025])
def test_pairwise_engine_cuda_matches_reference(n):
    from clnscl import metrics
    from clnscl.metrics import reference

    gen = torch.Generator().manual_seed(n)
    x = torch.randn(n, 13, generator=gen, dtype=torch.float64)
    w = torch.randn(13, 7, generator=gen, dtype=torch.float64)
    y = x @ w + torch.randn(n, 7, generator=gen, dtype=torch.float64)
    xc, yc = x.cuda(), y.cuda()
    for unbiased in (False, True):
        got = metrics.cka(xc, yc, "rbf", sigma=2.0, unbiased=unbiased, backend="cuda")
        assert got == pytest.approx(reference.cka(x, y, "rbf", 2.0, unbiased), rel=1e-9, abs=1e-9)
    for rdm in ("cosine", "euclidean"):
        assert metrics.rsa(xc, yc, rdm, "pearson", backend="cuda") == pytest.approx(
            reference.rsa(x, y, rdm, "pearson"), rel=1e-9)
        assert metrics.rsa(xc, yc, rdm, "spearman", backend="cuda") == pytest.approx(
            reference.rsa(x, y, rdm, "spearman"), abs=1e-3)
    assert metrics.similarity_gap(xc, yc, max_abs=True, backend="cuda")["max_abs"] == pytest.approx(
        reference.similarity_gap(x, y)["max_abs"], rel=1e-12)


def test_pairwise_engine_cuda_nan_features_give_nan():
    """NaN stays NaN in the CUDA pair values (squared distances clamp with a NaN-preserving max, as on CPU)."""
    import math

    from clnscl import metrics

    gen = torch.Generator().manual_seed(3)
    x, y = torch.randn(50, 6, generator=gen), torch.randn(50, 4, generator=gen)
    x[7, 1] = math.nan
    xc, yc = x.cuda(), y.cuda()
    assert math.isnan(metrics.rsa(xc, yc, "euclidean", "pearson", backend="cuda"))
    assert math.isnan(metrics.rsa(xc, yc, "euclidean", "spearman", backend="cuda"))
    assert math.isnan(metrics.cka(xc, yc, "rbf", sigma=1.0, backend="cuda"))


@pytest.mark.parametrize("rdm", [0, 1])
def test_pairwise_histograms_shared_memory_equal_global_atomics(rdm, monkeypatch):
    """Block-private 16-bit shared-memory counters (flushed before they overflow) count exactly what global
    atomics count: 6000 points on few distinct positions put far more than 65,535 pairs of one block into one
    bin, and every block handles many tiles (several flushes)."""
    from clnscl.metrics import pairwise

    gen = torch.Generator().manual_seed(7)
    x = torch.randint(0, 3, (6000, 5), generator=gen).double()
    y = torch.randn(6000, 9, generator=gen, dtype=torch.float64)
    xc, yc = x.cuda(), y.cuda()
    limits = pairwise.value_range(x, rdm) + pairwise.value_range(y, rdm)
    for bins in (1 << 16, (1 << 16) - 1, 1000):
        shared = pairwise.histograms(xc, yc, rdm, *limits, bins)
        monkeypatch.setenv("CLNSCL_PAIRWISE_GLOBAL_HISTOGRAMS", "1")
        global_ = pairwise.histograms(xc, yc, rdm, *limits, bins)
        monkeypatch.delenv("CLNSCL_PAIRWISE_GLOBAL_HISTOGRAMS")
        pairs = 6000 * 5999 // 2
        assert int(shared[0].sum()) == int(shared[1].sum()) == pairs
        for a, b in zip(shared, global_):
            assert torch.equal(a, b)
        cpu = pairwise.histograms(x, y, rdm, *limits, bins)  # float64 Grams summed in another order
        assert (shared[1] - cpu[1]).abs().sum() <= 1e-6 * pairs


def test_a_cuda_pass_cut_into_parts_gives_the_whole_pass(monkeypatch):
    """The CUDA ops' part/parts (a progress bar's parts, a rank's share) cover every tile pair once."""
    from clnscl import metrics
    from clnscl.metrics import pairwise

    gen = torch.Generator().manual_seed(5)
    x = torch.randn(700, 9, generator=gen, dtype=torch.float64).cuda()
    y = (x @ torch.randn(9, 4, generator=gen, dtype=torch.float64).cuda()).tanh()
    whole = [metrics.cka(x, y, "rbf", backend="cuda", progress=False),
             metrics.rsa(x, y, "euclidean", "spearman", backend="cuda", progress=False),
             metrics.similarity_gap(x, y, max_abs=True, backend="cuda", progress=False)["max_abs"]]
    monkeypatch.setattr(pairwise, "PART_PAIRS", 3000)
    parted = [metrics.cka(x, y, "rbf", backend="cuda", progress=True),
              metrics.rsa(x, y, "euclidean", "spearman", backend="cuda", progress=True),
              metrics.similarity_gap(x, y, max_abs=True, backend="cuda", progress=True)["max_abs"]]
    assert parted == pytest.approx(whole, rel=1e-11, abs=1e-14)
