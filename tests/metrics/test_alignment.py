"""Alignment metrics (docs/design.md §3) against the plain float64 oracle in tests/support/metrics_oracle.py.

- cka (linear, cosine, rbf with σ given and σ = None; biased and unbiased), rsa (cosine/euclidean ×
  pearson/spearman), similarity_gap and every key of StreamingAlignment.compute(), for each backend, on random,
  clustered (class centres + noise) and rank-deficient data, N odd, p = 13 ≠ q = 7;
- float16 / bfloat16 / float32 input against the oracle on the same rounded values;
- streaming in uneven batches = one shot; merge (both orders, with an empty accumulator) = one process;
  reset; a 2-process gloo all_reduce = one process on all rows;
- Spearman against scipy.stats.spearmanr on RDMs with many exact ties;
- undefined input (constant representation, too few samples): NaN with a warning saying why, never a crash;
  defined input: no warning; bad input: an exception naming the argument; NaN features: NaN, no hang.
"""
from __future__ import annotations

import itertools
import math
import threading
import warnings

import numpy as np
import pytest
import scipy.stats
import torch

from clnscl.metrics import StreamingAlignment, cka, rsa, similarity_gap
from tests.support import metrics_oracle as oracle
from tests.support.metrics_cases import (
    BACKENDS,
    EXACT,
    SPEARMAN_BOUND,
    TOL,
    P,
    Q,
    make_data,
    need,
    rng_for,
    spearman_tol,
    tied_data,
    usable_backends,
)
from tests.support.processes import run_gloo_workers

KEYS = StreamingAlignment.KEYS
# The pairwise engine estimates the median σ of RBF CKA from a histogram of the distances with 2^16 bins,
# documented |error| ≤ bin width = (max − min)/2^16 (clnscl/metrics/pairwise.py); the reference is exact.
MEDIAN_BINS = 1 << 16
# A warning for a constant representation must say so (or that all its distances are 0, so σ = 0).
CONSTANT_WHY = r"constant|HSIC\(K, ?K\) = 0|distances (are )?0|identical"


def rbf_tol(x, y, sigma, unbiased, backend) -> float:
    """TOL, plus for an estimated median σ how far the oracle moves when each σ moves by the documented bound."""
    if sigma is not None or backend == "reference":
        return TOL
    deltas = []
    for t in (x, y):
        d = np.sqrt(oracle.upper(oracle.sq_distances(t)))
        deltas.append((d.max() - d.min()) / MEDIAN_BINS)
    sx, sy = oracle.median_distance(x), oracle.median_distance(y)
    base = oracle.cka(x, y, "rbf", (sx, sy), unbiased)
    dev = max(
        abs(oracle.cka(x, y, "rbf", (sx + a * deltas[0], sy + b * deltas[1]), unbiased) - base)
        for a in (-1, 1) for b in (-1, 1)
    )
    return 1.1 * dev + TOL


# --------------------------------------------------------------------------------------------------- data


DATA = [("random", 101), ("clustered", 257), ("rankdef", 101)]
DATA_IDS = [f"{k}-N{n}" for k, n in DATA]


@pytest.fixture(scope="module", params=DATA, ids=DATA_IDS)
def data(request):
    kind, n = request.param
    x, y = make_data(kind, n)
    assert x.shape == (n, P) and y.shape == (n, Q)
    if kind == "rankdef":
        assert torch.linalg.matrix_rank(x) == 3
    return kind, x, y


def assert_close(got, want, tol, what=""):
    assert isinstance(got, float), f"{what}: expected a Python float, got {type(got).__name__}"
    assert math.isfinite(want), f"{what}: oracle value not finite ({want})"
    assert math.isclose(got, want, rel_tol=tol, abs_tol=tol), (
        f"{what}: got {got!r}, oracle {want!r}, |err| {abs(got - want):.3e}")


def assert_same(got: dict, want: dict, tol=EXACT, what=""):
    bad = []
    for key in want:
        g, w = got[key], want[key]
        if math.isnan(w) and math.isnan(g):
            continue
        if not math.isclose(g, w, rel_tol=tol, abs_tol=tol):
            bad.append(f"{key}: {g!r} vs {w!r} (|diff| {abs(g - w):.3e})")
    assert not bad, f"{what}: " + "; ".join(bad)


def stream(x, y, sizes=None) -> StreamingAlignment:
    acc = StreamingAlignment()
    if sizes is None:
        acc.update(x, y)
        return acc
    start = 0
    for s in sizes:
        acc.update(x[start : start + s], y[start : start + s])
        start += s
    assert start == x.shape[0]
    return acc


# ------------------------------------------------------------------------------------------ the oracle
def test_oracle_unbiased_hsic_is_songs_u_statistic():
    """The oracle's closed form (Song et al. eq. 5) equals the U-statistic it estimates, by brute force."""
    x, y = make_data("random", 8, 5, 3, seed="ustat")
    for kernel in ("linear", "cosine", "rbf"):
        k, l = oracle.kernel_matrix(x, kernel, 2.0), oracle.kernel_matrix(y, kernel, 2.0)
        for a, b in ((k, l), (k, k), (l, l)):
            assert math.isclose(oracle.hsic_unbiased(a, b), oracle.hsic_unbiased_ustat(a, b), rel_tol=1e-10,
                                abs_tol=1e-12)
        # and the biased estimator is a different number (so a swap of the two shows)
        assert not math.isclose(oracle.hsic_biased(k, l), oracle.hsic_unbiased(k, l), rel_tol=1e-3)


def test_oracle_median_convention():
    d = np.array([[0.0, 0.0], [3.0, 4.0], [6.0, 8.0], [0.0, 1.0]])  # 6 pairs (even): lower median
    dists = sorted(np.linalg.norm(d[i] - d[j]) for i in range(4) for j in range(i + 1, 4))
    assert oracle.median_distance(d) == dists[2]
    assert oracle.median_distance(d[:3]) == 5.0  # 3 pairs (5, 10, 5): the plain median
    assert oracle.median_distance(d, even="mean") == (dists[2] + dists[3]) / 2


# ----------------------------------------------------------------------------------- values vs oracle
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("unbiased", [False, True], ids=["biased", "unbiased"])
@pytest.mark.parametrize("kernel", ["linear", "cosine"])
def test_cka_linear_cosine(data, kernel, unbiased, backend):
    need(backend)
    kind, x, y = data
    want = oracle.cka(x, y, kernel, unbiased=unbiased)
    assert_close(cka(x, y, kernel=kernel, unbiased=unbiased, backend=backend), want, TOL, f"{kind} {kernel}")
    # a wrong estimator (biased for unbiased and vice versa) is far off on these data
    assert abs(oracle.cka(x, y, kernel, unbiased=not unbiased) - want) > 1e-4


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("unbiased", [False, True], ids=["biased", "unbiased"])
@pytest.mark.parametrize("sigma", ["given", None], ids=["sigma-given", "sigma-median"])
def test_cka_rbf(data, sigma, unbiased, backend):
    need(backend)
    kind, x, y = data
    s = None if sigma is None else 0.8 * oracle.median_distance(x)  # one σ for both representations
    want = oracle.cka(x, y, "rbf", s, unbiased)
    tol = rbf_tol(x, y, s, unbiased, backend)
    got = cka(x, y, kernel="rbf", sigma=s, unbiased=unbiased, backend=backend)
    assert_close(got, want, tol, f"{kind} rbf σ={s}")
    if sigma is None:  # σ = the median of each representation's own pairwise distances, not a shared or other one
        assert abs(oracle.cka(x, y, "rbf", oracle.median_distance(x), unbiased) - want) > 1e-6
        assert abs(oracle.cka(x, y, "rbf", oracle.median_distance(y), unbiased) - want) > 1e-6


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("method", ["pearson", "spearman"])
@pytest.mark.parametrize("rdm", ["cosine", "euclidean"])
def test_rsa(data, rdm, method, backend):
    need(backend)
    kind, x, y = data
    want = oracle.rsa(x, y, rdm, method)
    tol = spearman_tol(backend) if method == "spearman" else TOL
    assert_close(rsa(x, y, rdm=rdm, method=method, backend=backend), want, tol, f"{kind} {rdm}/{method}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_similarity_gap(data, backend):
    need(backend)
    kind, x, y = data
    got, want = similarity_gap(x, y, max_abs=True, backend=backend), oracle.similarity_gap(x, y)
    assert set(got) == {"frobenius", "relative", "floor", "max_abs"}
    for key in want:
        assert_close(got[key], want[key], TOL, f"{kind} {key}")


def test_streaming_keys(data):
    kind, x, y = data
    got = stream(x, y).compute()
    assert set(got) == set(KEYS)
    want = oracle.streaming_keys(x, y)
    for key in KEYS:
        assert_close(got[key], want[key], TOL, f"{kind} {key}")


def test_streaming_keys_equal_the_functions(data):
    _, x, y = data
    got = stream(x, y).compute()
    gap = similarity_gap(x, y)
    assert got["cka_linear"] == cka(x, y) and got["cka_cosine_unbiased"] == cka(x, y, "cosine", unbiased=True)
    assert got["rsa_pearson"] == rsa(x, y) and got["gap_frobenius"] == gap["frobenius"]


def test_invariances():
    """Linear CKA: orthogonal maps, isotropic scaling, translation; cosine CKA: positive row scaling; RBF CKA
    with the median σ: isotropic scaling; the Euclidean RDM: translation; Spearman: monotone maps of the data."""
    x, y = make_data("random", 61, seed="inv")
    rng = rng_for("inv-q")
    qmat = torch.tensor(np.linalg.qr(rng.standard_normal((P, P)))[0])
    rows = torch.tensor(rng.uniform(0.2, 5.0, (61, 1)))
    for unbiased in (False, True):
        base = cka(x, y, unbiased=unbiased)
        assert math.isclose(cka(3.0 * x @ qmat + 1.5, y, unbiased=unbiased), base, rel_tol=1e-9)
        for kernel, scaled in (("cosine", x * rows), ("rbf", 4.0 * x)):
            assert math.isclose(cka(scaled, y, kernel, unbiased=unbiased), cka(x, y, kernel, unbiased=unbiased),
                                rel_tol=1e-9)
    assert math.isclose(rsa(x + 7.0, y, "euclidean"), rsa(x, y, "euclidean"), rel_tol=1e-9)
    assert math.isclose(cka(x, y), cka(y, x), rel_tol=1e-12)


def test_common_offset_precision():
    """Features with a large common mean (|mean|/std = 10): still float64-accurate. The oracle uses that
    linear CKA is translation invariant (so it centres first) to stay accurate itself."""
    x, y = make_data("random", 101, seed="offset")
    xo, yo = x + 10.0, y - 10.0
    got = stream(xo, yo).compute()
    xc, yc = x - x.mean(0), y - y.mean(0)
    ux, uy = oracle.unit_rows(xo), oracle.unit_rows(yo)
    ux, uy = ux - ux.mean(0), uy - uy.mean(0)
    want = {
        "cka_linear": oracle.cka(xc, yc), "cka_linear_unbiased": oracle.cka(xc, yc, unbiased=True),
        "cka_cosine": oracle.cka(ux, uy), "cka_cosine_unbiased": oracle.cka(ux, uy, unbiased=True),
        "rsa_pearson": oracle.rsa(xo, yo),
    }
    assert_same(got, want, tol=1e-9, what="offset 10")


# ------------------------------------------------------------------------------- low-precision input
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
def test_low_precision_input(dtype):
    """Half/bfloat16/float32 input is accumulated in float64 (or at worst float32): it matches the oracle on
    the same rounded values, far below the input's own rounding (~1e-3 for half, ~1e-2 for bfloat16)."""
    x, y = make_data("clustered", 101, seed="lowp")
    xl, yl = x.to(dtype), y.to(dtype)
    xr, yr = xl.double(), yl.double()  # the values the function actually received
    tol = 1e-6
    s = 0.8 * oracle.median_distance(xr)
    for kernel in ("linear", "cosine", "rbf"):
        for unbiased in (False, True):
            for sigma in ((None, s) if kernel == "rbf" else (None,)):
                got = cka(xl, yl, kernel=kernel, sigma=sigma, unbiased=unbiased)
                t = max(tol, rbf_tol(xr, yr, sigma, unbiased, "auto")) if kernel == "rbf" else tol
                assert_close(got, oracle.cka(xr, yr, kernel, sigma, unbiased), t,
                             f"{dtype} cka {kernel} {unbiased} {sigma}")
    for rdm in ("cosine", "euclidean"):
        for method in ("pearson", "spearman"):
            t = max(tol, spearman_tol("auto")) if method == "spearman" else tol
            assert_close(rsa(xl, yl, rdm, method), oracle.rsa(xr, yr, rdm, method), t, f"{dtype} rsa {rdm} {method}")
            got = rsa(xl, yl, rdm, method, backend="reference")
            assert_close(got, oracle.rsa(xr, yr, rdm, method), tol, f"{dtype} rsa {rdm} {method} reference")
    got, want = similarity_gap(xl, yl, max_abs=True), oracle.similarity_gap(xr, yr)
    for key in want:
        assert_close(got[key], want[key], tol, f"{dtype} gap {key}")
    got, want = stream(xl, yl, [30, 1, 70]).compute(), oracle.streaming_keys(xr, yr)
    for key in KEYS:
        assert_close(got[key], want[key], tol, f"{dtype} streaming {key}")


# ------------------------------------------------------------------------------------------- streaming
UNEVEN = {101: [1, 50, 7, 2, 41], 257: [1, 50, 7, 128, 3, 68]}


def test_uneven_batches_equal_one_shot(data):
    kind, x, y = data
    one = stream(x, y).compute()
    batched = stream(x, y, UNEVEN[x.shape[0]])
    assert batched.n == x.shape[0]
    assert_same(batched.compute(), one, what=f"{kind} uneven batches")
    singles = stream(x, y, [1] * x.shape[0])
    assert_same(singles.compute(), one, what=f"{kind} one row at a time")


def test_empty_batch_changes_nothing():
    x, y = make_data("random", 101, seed="empty")
    one = stream(x, y).compute()
    acc = StreamingAlignment()
    acc.update(x[:0], y[:0])
    acc.update(x[:60], y[:60])
    acc.update(x[60:60], y[60:60])
    acc.update(x[60:], y[60:])
    assert acc.n == 101
    assert_same(acc.compute(), one)


def test_merge_equals_one_process(data):
    kind, x, y = data
    n = x.shape[0]
    one = stream(x, y).compute()
    cut = n // 3
    for a_sizes, b_sizes in (([cut], [n - cut]), ([1, cut - 1], [7, n - cut - 7])):
        a = stream(x[:cut], y[:cut], a_sizes)
        b = stream(x[cut:], y[cut:], b_sizes)
        assert a.merge(b) is a
        assert a.n == n
        assert_same(a.compute(), one, what=f"{kind} merge")
        b2 = stream(x[cut:], y[cut:], b_sizes)
        b2.merge(stream(x[:cut], y[:cut], a_sizes))  # the other order
        assert_same(b2.compute(), one, what=f"{kind} merge other order")


def test_merge_with_empty_accumulators():
    x, y = make_data("random", 101, seed="merge-empty")
    one = stream(x, y).compute()
    a = stream(x, y)
    a.merge(StreamingAlignment())  # merging an empty one changes nothing
    assert a.n == 101
    assert_same(a.compute(), one)
    fresh = StreamingAlignment()
    fresh.merge(a)  # an empty one takes the other's rows ...
    assert_same(fresh.compute(), one)
    x2, y2 = make_data("random", 11, seed="merge-more")
    a.update(x2, y2)  # ... as a copy: later updates of the source do not leak into it
    assert fresh.n == 101
    assert_same(fresh.compute(), one)
    assert StreamingAlignment().merge(StreamingAlignment()).n == 0


def test_merge_mismatched_features_raises():
    x, y = make_data("random", 11, seed="mm")
    a, b = stream(x, y), stream(x[:, :5], y)
    with pytest.raises(ValueError, match="other"):
        a.merge(b)
    with pytest.raises(ValueError, match=r"\bx\b.*\by\b|feature"):
        a.update(x[:, :5], y)


def test_reset():
    x, y = make_data("clustered", 101, seed="reset")
    x2, y2 = make_data("random", 101, seed="reset2")
    acc = stream(x, y, [40, 61])
    acc.reset()
    assert acc.n == 0
    with pytest.warns(UserWarning, match="samples"):
        out = acc.compute()
    assert set(out) == set(KEYS) and all(math.isnan(v) for v in out.values())
    acc.update(x2, y2)
    assert acc.compute() == stream(x2, y2).compute()


# --------------------------------------------------------------------------- one anchor against several
def shared_inputs(n=101):
    x, y = make_data("random", n, seed="shared")
    _, y2 = make_data("clustered", n, seed="shared2")
    _, y3 = make_data("rankdef", n, p=P, q=P, seed="shared3")
    return x, [y, y2, y3 * 5 + 3]


@pytest.mark.parametrize("chunk", [8192, 37], ids=["one-chunk", "chunks-of-37"])
def test_shared_update_equals_separate_updates(monkeypatch, chunk):
    """update_shared(accs, x, ys) = accs[i].update(x, ys[i]), in uneven batches and across chunk boundaries;
    each equals the oracle; y widths differ (7, 7, 13)."""
    monkeypatch.setattr("clnscl.metrics.streaming._CHUNK_ROWS", chunk)
    x, ys = shared_inputs()
    accs = [StreamingAlignment() for _ in ys]
    start = 0
    for s in UNEVEN[101]:
        StreamingAlignment.update_shared(accs, x[start : start + s], [y[start : start + s] for y in ys])
        start += s
    for i, (acc, y) in enumerate(zip(accs, ys)):
        assert acc.n == 101
        assert_same(acc.compute(), stream(x, y, UNEVEN[101]).compute(), what=f"model {i}")
        want = oracle.streaming_keys(x, y)
        for key in KEYS:
            assert_close(acc.compute()[key], want[key], TOL, f"model {i} {key}")


def test_shared_update_keeps_accumulators_apart():
    """The x statistics handed to several accumulators are copies: updating one later leaves the others."""
    x, ys = shared_inputs()
    accs = [StreamingAlignment() for _ in ys]
    StreamingAlignment.update_shared(accs, x[:60], [y[:60] for y in ys])
    accs[0].update(x[60:], ys[0][60:])
    assert [a.n for a in accs] == [101, 60, 60]
    assert_same(accs[0].compute(), stream(x, ys[0]).compute(), what="updated one")
    for acc, y in zip(accs[1:], ys[1:]):
        assert_same(acc.compute(), stream(x[:60], y[:60]).compute(), what="the others")


def test_shared_update_after_separate_updates():
    """Accumulators whose x rows were shifted differently before (separate earlier batches) still add up."""
    x, ys = shared_inputs()
    accs = [StreamingAlignment() for _ in ys]
    accs[0].update(x[:10], ys[0][:10])
    accs[1].update(x[20:30], ys[1][20:30])  # another first chunk: another shift
    StreamingAlignment.update_shared(accs, x[30:], [y[30:] for y in ys])
    accs[0].update(x[10:20], ys[0][10:20])
    rows = [torch.cat([torch.arange(20), torch.arange(30, 101)]), torch.arange(20, 101), torch.arange(30, 101)]
    for i, (acc, y, r) in enumerate(zip(accs, ys, rows)):
        assert acc.n == len(r)
        assert_same(acc.compute(), stream(x[r], y[r]).compute(), tol=1e-10, what=f"model {i}")


def test_shared_update_bad_input_raises():
    x, ys = shared_inputs(11)
    accs = [StreamingAlignment() for _ in ys]
    with pytest.raises(ValueError, match="ys"):
        StreamingAlignment.update_shared(accs, x, ys[:2])
    with pytest.raises(ValueError, match="same number of rows"):
        StreamingAlignment.update_shared(accs, x, [ys[0], ys[1][:5], ys[2]])
    assert all(a.n == 0 for a in accs)  # nothing added when any pair is bad
    StreamingAlignment.update_shared(accs, x, ys)
    with pytest.raises(ValueError, match="feature sizes"):
        StreamingAlignment.update_shared(accs, x, [ys[0], ys[1][:, :3], ys[2]])
    with pytest.raises(TypeError, match=r"\by\b"):
        StreamingAlignment.update_shared(accs[:1], x, [ys[0].tolist()])  # numpy is taken; a list is not
    StreamingAlignment.update_shared([], x, [])  # nothing to do
    assert [a.n for a in accs] == [11, 11, 11]


# --------------------------------------------------------------------------------------- distributed
WORKER = """
from tests.support.metrics_cases import make_data
from clnscl.metrics import StreamingAlignment
x, y = make_data("clustered", 257, seed="dist")
rows = [slice(0, 100), slice(100, 257)][rank]  # different rows, different counts per rank
sizes = [[1, 99], [50, 7, 100]][rank]  # uneven batches
acc, start = StreamingAlignment(), rows.start
for s in sizes:
    acc.update(x[start:start + s], y[start:start + s])
    start += s
local = acc.compute()
acc.all_reduce()
result = {"rank": rank, "n": acc.n, "local": local, "global": acc.compute()}
"""


@pytest.mark.distributed
def test_all_reduce_two_processes(tmp_path):
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("needs torch.distributed with gloo")
    results = run_gloo_workers(WORKER, 2, tmp_path)

    x, y = make_data("clustered", 257, seed="dist")
    one = stream(x, y).compute()
    for r, res in enumerate(results):
        assert res["n"] == 257
        assert_same(res["global"], one, what=f"rank {r} after all_reduce")
    rows = [slice(0, 100), slice(100, 257)]
    for r, res in enumerate(results):  # before the all-reduce each rank had only its own rows
        assert_same(res["local"], stream(x[rows[r]], y[rows[r]]).compute(), what=f"rank {r} local")
        assert abs(res["local"]["cka_linear_unbiased"] - one["cka_linear_unbiased"]) > 1e-6  # the reduce mattered
    want = oracle.streaming_keys(x, y)
    for key in KEYS:
        assert_close(results[0]["global"][key], want[key], TOL, key)


# ------------------------------------------------------------------------------- Spearman with ties


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("rdm", ["cosine", "euclidean"])
def test_spearman_with_ties_against_scipy(rdm, backend):
    need(backend)
    x, y = tied_data(rdm)
    a, b = oracle.rdm_upper(x, rdm), oracle.rdm_upper(y, rdm)
    assert np.unique(a).size < a.size / 20 and np.unique(b).size < b.size / 20, "the data should be full of ties"
    want = float(scipy.stats.spearmanr(a, b).statistic)
    # ties matter here: ordinal (tie-broken) ranks give a clearly different value
    ordinal = oracle.pearson(scipy.stats.rankdata(a, method="ordinal"), scipy.stats.rankdata(b, method="ordinal"))
    assert abs(ordinal - want) > 5 * SPEARMAN_BOUND
    assert_close(rsa(x, y, rdm=rdm, method="spearman", backend=backend), want, spearman_tol(backend),
                 f"{rdm} spearman with ties")
    assert_close(rsa(x, y, rdm=rdm, method="pearson", backend=backend), oracle.pearson(a, b), TOL, f"{rdm} pearson")


# --------------------------------------------------------------------------------- undefined input
def constant_rows(n: int, p: int, seed) -> torch.Tensor:
    v = rng_for("const", seed).standard_normal((1, p))
    return torch.tensor(np.repeat(v, n, axis=0))


CKA_CASES = [
    ("linear", None, False), ("linear", None, True), ("cosine", None, False), ("cosine", None, True),
    ("rbf", None, False), ("rbf", None, True), ("rbf", 2.0, False), ("rbf", 2.0, True),
]
CKA_IDS = [f"{k}-{'median' if s is None else 'sigma'}-{'unbiased' if u else 'biased'}" for k, s, u in CKA_CASES]
RSA_CASES = [(r, m) for r in ("cosine", "euclidean") for m in ("pearson", "spearman")]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("side", ["x", "y"])
@pytest.mark.parametrize("kernel,sigma,unbiased", CKA_CASES, ids=CKA_IDS)
def test_cka_constant_representation_is_nan_with_warning(kernel, sigma, unbiased, side, backend):
    need(backend)
    x, y = make_data("random", 101, seed="const")
    c = constant_rows(101, P if side == "x" else Q, side)
    args = (c, y) if side == "x" else (x, c)
    with pytest.warns(UserWarning, match=CONSTANT_WHY):
        got = cka(*args, kernel=kernel, sigma=sigma, unbiased=unbiased, backend=backend)
    assert math.isnan(got), f"HSIC(K, K) = 0 for a constant {side}: expected NaN, got {got!r}"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("rdm,method", RSA_CASES)
def test_rsa_constant_representation_is_nan_with_warning(rdm, method, backend):
    need(backend)
    x, y = make_data("random", 101, seed="const")
    for seed in range(4):  # several constant vectors: rounding must not turn 0/0 into a number
        c = constant_rows(101, P, ("rsa", seed))
        with pytest.warns(UserWarning, match=CONSTANT_WHY):
            got = rsa(c, y, rdm=rdm, method=method, backend=backend)
        assert math.isnan(got), f"constant vector #{seed}: {got!r}"


def test_cosine_constant_but_linear_defined():
    """Rows that are positive multiples of one vector: cosine CKA is undefined, linear CKA is not."""
    x, y = make_data("random", 101, seed="ray")
    scales = torch.tensor(rng_for("ray").uniform(0.5, 3.0, (101, 1)))
    ray = scales * constant_rows(1, P, "ray")
    with pytest.warns(UserWarning, match=CONSTANT_WHY):
        assert math.isnan(cka(ray, y, "cosine"))
    assert_close(cka(ray, y, "linear"), oracle.cka(ray, y, "linear"), TOL, "linear CKA of a ray")


def test_streaming_constant_representation():
    x, y = make_data("random", 101, seed="const")
    for seed, sizes in itertools.product(range(4), (None, [50, 51])):  # rounding must not turn 0/0 into a number
        c = constant_rows(101, P, ("stream", seed))
        with pytest.warns(UserWarning, match=CONSTANT_WHY):
            out = stream(c, y, sizes).compute()
        for key in ("cka_linear", "cka_cosine", "cka_linear_unbiased", "cka_cosine_unbiased", "rsa_pearson"):
            assert math.isnan(out[key]), f"constant vector #{seed}: {key} = {out[key]!r}"
        want = oracle.similarity_gap(c, y)  # the gap stays defined
        assert_close(out["gap_frobenius"], want["frobenius"], TOL, "gap of a constant x")


@pytest.mark.parametrize("n", [0, 1])
def test_fewer_than_two_samples_is_nan_with_warning(n):
    x, y = make_data("random", 5, seed="few")
    x, y = x[:n], y[:n]
    for backend in usable_backends():
        for kernel, sigma, unbiased in CKA_CASES:
            with pytest.warns(UserWarning, match="samples"):
                assert math.isnan(cka(x, y, kernel=kernel, sigma=sigma, unbiased=unbiased, backend=backend))
        for rdm, method in RSA_CASES:
            with pytest.warns(UserWarning, match="samples"):
                assert math.isnan(rsa(x, y, rdm=rdm, method=method, backend=backend))
    with pytest.warns(UserWarning, match="samples"):
        out = stream(x, y).compute()
    assert all(math.isnan(v) for v in out.values())


@pytest.mark.parametrize("backend", BACKENDS)
def test_similarity_gap_of_no_samples_does_not_crash(backend):
    need(backend)
    x, y = make_data("random", 5, seed="none")
    with pytest.warns(UserWarning, match="samples"):
        out = similarity_gap(x[:0], y[:0], max_abs=True, backend=backend)
    assert set(out) == {"frobenius", "relative", "floor", "max_abs"}


@pytest.mark.parametrize("n", [2, 3])
def test_unbiased_needs_four_samples(n):
    x, y = make_data("random", 5, seed="four")
    x, y = x[:n], y[:n]
    for kernel, sigma, unbiased in CKA_CASES:
        if unbiased:
            with pytest.warns(UserWarning, match="4"):
                assert math.isnan(cka(x, y, kernel=kernel, sigma=sigma, unbiased=True))
    with pytest.warns(UserWarning, match="4"):
        out = stream(x, y).compute()
    assert math.isnan(out["cka_linear_unbiased"]) and math.isnan(out["cka_cosine_unbiased"])
    assert_close(out["cka_linear"], oracle.cka(x, y), 1e-9, "biased CKA at N = %d" % n)


def test_four_samples_unbiased_is_defined():
    x, y = make_data("clustered", 4, seed="four-ok")
    for kernel in ("linear", "cosine"):
        assert_close(cka(x, y, kernel, unbiased=True), oracle.cka(x, y, kernel, unbiased=True), 1e-9, kernel)


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda x, y: cka(x, y), id="cka-linear-N3"),
        pytest.param(lambda x, y: cka(x, y, "cosine"), id="cka-cosine-N3"),
        pytest.param(lambda x, y: rsa(x, y), id="rsa-cosine-pearson-N3"),
        pytest.param(lambda x, y: similarity_gap(x, y, max_abs=True), id="gap-N3"),
    ],
)
def test_defined_results_come_without_warnings(call):
    """Only an undefined result warns: a biased CKA, RSA or gap on 3 samples is defined (no word about the
    unbiased estimator the caller did not ask for)."""
    x, y = make_data("random", 3, seed="nowarn")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = call(x, y)
    values = out.values() if isinstance(out, dict) else [out]
    assert all(math.isfinite(v) for v in values)


def test_linear_cka_of_a_cosine_constant_representation_comes_without_warnings():
    x, y = make_data("random", 101, seed="ray2")
    scales = torch.tensor(rng_for("ray2").uniform(0.5, 3.0, (101, 1)))
    ray = scales * constant_rows(1, P, "ray2")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = cka(ray, y, "linear")
    assert math.isfinite(got)


def test_similarity_gap_of_a_constant_representation_comes_without_warnings():
    x, y = make_data("random", 101, seed="gapconst")
    c = constant_rows(101, P, "gapconst")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = similarity_gap(c, y, max_abs=True)
    want = oracle.similarity_gap(c, y)
    for key in want:
        assert_close(out[key], want[key], TOL, key)


# ------------------------------------------------------------------------------------ NaN features
def within(seconds: float, fn):
    """fn() in a thread; fail (instead of hanging the suite) if it has not returned after `seconds`."""
    box = {}

    def run():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - reported below
            box["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"no result after {seconds} s (hang?)"
    if "error" in box:
        raise box["error"]
    return box["value"]


@pytest.mark.parametrize("side", ["x", "y"])
def test_nan_features_give_nan(side):
    x, y = make_data("random", 101, seed="nan")
    target = x if side == "x" else y
    target[17, 2] = float("nan")
    bad = []
    for kernel, sigma, unbiased in CKA_CASES:
        for backend in usable_backends():
            v = within(30, lambda: cka(x, y, kernel=kernel, sigma=sigma, unbiased=unbiased, backend=backend))
            if not math.isnan(v):
                bad.append(f"cka {kernel} sigma={sigma} unbiased={unbiased} ({backend}): {v!r}")
    for rdm, method in RSA_CASES:
        for backend in usable_backends():
            v = within(30, lambda: rsa(x, y, rdm=rdm, method=method, backend=backend))
            if not math.isnan(v):
                bad.append(f"rsa {rdm}/{method} ({backend}): {v!r}")
    for backend in usable_backends():
        for key, v in within(30, lambda: similarity_gap(x, y, max_abs=True, backend=backend)).items():
            if not math.isnan(v):
                bad.append(f"similarity_gap {key} ({backend}): {v!r}")
    for key, v in within(30, lambda: stream(x, y, [50, 51]).compute()).items():
        if not math.isnan(v):
            bad.append(f"StreamingAlignment {key}: {v!r}")
    assert not bad, f"NaN in {side} gave finite results: " + "; ".join(bad)


# ------------------------------------------------------------------------------------------ bad input
FUNCS = {
    "cka": lambda x, y: cka(x, y),
    "cka-rbf": lambda x, y: cka(x, y, "rbf"),
    "rsa": lambda x, y: rsa(x, y),
    "rsa-spearman": lambda x, y: rsa(x, y, "euclidean", "spearman"),
    "similarity_gap": lambda x, y: similarity_gap(x, y),
    "StreamingAlignment.update": lambda x, y: StreamingAlignment().update(x, y),
}


@pytest.mark.parametrize("name", list(FUNCS))
def test_mismatched_rows_raise(name):
    x, y = make_data("random", 11, seed="bad")
    with pytest.raises(ValueError, match=r"\bx\b.*\by\b"):
        FUNCS[name](x, y[:10])


@pytest.mark.parametrize("name", list(FUNCS))
def test_non_2d_input_raises(name):
    x, y = make_data("random", 11, seed="bad")
    with pytest.raises(ValueError, match=r"^x\b.*2-D"):
        FUNCS[name](x[:, 0], y)
    with pytest.raises(ValueError, match=r"^y\b.*2-D"):
        FUNCS[name](x, y.reshape(11, 7, 1))
    with pytest.raises(ValueError, match=r"^x\b.*2-D"):
        FUNCS[name](x.reshape(11, 13, 1), y.reshape(11, 7, 1))


@pytest.mark.parametrize("sigma", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_sigma_raises(sigma):
    x, y = make_data("random", 11, seed="bad")
    with pytest.raises(ValueError, match="sigma"):
        cka(x, y, kernel="rbf", sigma=sigma)


@pytest.mark.parametrize(
    "call,arg",
    [
        (lambda x, y: cka(x, y, kernel="gaussian"), "kernel"),
        (lambda x, y: cka(x, y, kernel="RBF"), "kernel"),
        (lambda x, y: cka(x, y, backend="cuda-magic"), "backend"),
        (lambda x, y: rsa(x, y, rdm="manhattan"), "rdm"),
        (lambda x, y: rsa(x, y, method="kendall"), "method"),
        (lambda x, y: rsa(x, y, backend="nope"), "backend"),
        (lambda x, y: similarity_gap(x, y, backend="nope"), "backend"),
    ],
    ids=["kernel", "kernel-case", "cka-backend", "rdm", "method", "rsa-backend", "gap-backend"],
)
def test_unknown_choice_raises(call, arg):
    x, y = make_data("random", 11, seed="bad")
    with pytest.raises(ValueError, match=rf"\b{arg}\b"):
        call(x, y)
