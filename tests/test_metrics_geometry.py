"""clnscl.metrics.geometry against straightforward loop-based float64 implementations written here."""
import math

import numpy as np
import pytest
import torch

import clnscl
from clnscl.metrics import geometry as geo
from clnscl.metrics.geometry import (
    cdnv,
    directional_cdnv,
    knn_accuracy,
    linear_probe_accuracy,
    loss_gap_bound,
    nccc_accuracy,
    weight_divergence,
)

# ------------------------------------------------------------------------------------ loop references


def ref_class_stats(x, y):
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y)
    classes = sorted(set(y.tolist()))
    means, members = [], []
    for c in classes:
        rows = [x[n] for n in range(len(y)) if y[n] == c]
        members.append(rows)
        means.append(sum(rows) / len(rows))
    return classes, means, members


def ref_cdnv(x, y, directional=False):
    classes, means, members = ref_class_stats(x, y)
    c = len(classes)
    v = np.full((c, c), np.nan)
    for i in range(c):
        for j in range(c):
            if i == j:
                continue
            diff = means[i] - means[j]
            d2 = float(diff @ diff)
            if directional:
                u = diff / math.sqrt(d2)
                si = sum(float((f - means[i]) @ u) ** 2 for f in members[i]) / len(members[i])
                sj = sum(float((f - means[j]) @ u) ** 2 for f in members[j]) / len(members[j])
            else:
                si = sum(float((f - means[i]) @ (f - means[i])) for f in members[i]) / len(members[i])
                sj = sum(float((f - means[j]) @ (f - means[j])) for f in members[j]) / len(members[j])
            v[i, j] = (si + sj) / (2 * d2)
    return v


def ref_nccc(xtr, ytr, xte, yte):
    classes, means, _ = ref_class_stats(xtr, ytr)
    xte = np.asarray(xte, dtype=np.float64)
    correct = 0
    for n in range(len(xte)):
        dists = [float((xte[n] - m) @ (xte[n] - m)) for m in means]
        correct += classes[int(np.argmin(dists))] == int(yte[n])
    return correct / len(xte)


def ref_knn(xtr, ytr, xte, yte, k, metric):
    xtr = np.asarray(xtr, dtype=np.float64)
    xte = np.asarray(xte, dtype=np.float64)
    ytr = np.asarray(ytr)
    correct = 0
    for n in range(len(xte)):
        dists = []
        for m in range(len(xtr)):
            if metric == "cosine":
                a, b = xte[n], xtr[m]
                dists.append(1 - float(a @ b) / (np.linalg.norm(a) * np.linalg.norm(b)))
            else:
                dists.append(float(np.linalg.norm(xte[n] - xtr[m])))
        nearest = np.argsort(dists, kind="stable")[:k]
        votes, dsum = {}, {}
        for m in nearest:
            lab = int(ytr[m])
            votes[lab] = votes.get(lab, 0) + 1
            dsum[lab] = dsum.get(lab, 0.0) + dists[m]
        best = max(votes.values())
        tied = sorted(lab for lab in votes if votes[lab] == best)
        pred = min(tied, key=lambda lab: (dsum[lab], lab))
        correct += pred == int(yte[n])
    return correct / len(xte)


def clusters(n_per, n_cls, dim, sep, gen, noise=1.0, centres=None):
    """n_per rows per class around centres (drawn N(0, sep²) unless given), shuffled; float64."""
    if centres is None:
        centres = torch.randn(n_cls, dim, generator=gen, dtype=torch.float64) * sep
    y = torch.arange(n_cls).repeat_interleave(n_per)
    x = centres[y] + noise * torch.randn(n_per * n_cls, dim, generator=gen, dtype=torch.float64)
    perm = torch.randperm(len(y), generator=gen)
    return x[perm], y[perm]


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(1234)


@pytest.fixture
def small_blocks(monkeypatch):
    """Force many row blocks, so the chunked paths are the ones tested."""
    monkeypatch.setattr(geo, "_BLOCK_ELEMS", 64)


# --------------------------------------------------------------------------------------- weight divergence


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


# ----------------------------------------------------------------------------------------------- CDNV


@pytest.mark.parametrize("directional", [False, True])
@pytest.mark.parametrize("blocks", [False, True])
def test_cdnv_matches_loop(directional, blocks, gen, monkeypatch):
    if blocks:
        monkeypatch.setattr(geo, "_BLOCK_ELEMS", 64)
    fn = directional_cdnv if directional else cdnv
    n, p = 97, 13
    x = torch.randn(n, p, generator=gen, dtype=torch.float64) + 3.0  # offset: tests the mean shift
    y = torch.tensor([-3, 4, 11, 2, 7])[torch.randint(0, 5, (n,), generator=gen)]
    y[0] = 99  # a singleton class (variance 0)
    want = ref_cdnv(x, y, directional)
    mat = fn(x, y, return_matrix=True)
    assert mat.shape == (6, 6) and mat.dtype == torch.float64
    np.testing.assert_allclose(mat.numpy(), want, rtol=1e-10, equal_nan=True)
    off = ~np.eye(6, dtype=bool)
    assert fn(x, y) == pytest.approx(float(want[off].mean()), rel=1e-10)
    # float32 input: same up to float32 rounding of the input
    assert fn(x.float(), y) == pytest.approx(float(ref_cdnv(x.float(), y, directional)[off].mean()), rel=1e-8)


def test_directional_cdnv_below_cdnv(gen):
    x, y = clusters(20, 4, 9, 3.0, gen)
    full = cdnv(x, y, return_matrix=True)
    dirm = directional_cdnv(x, y, return_matrix=True)
    off = ~torch.eye(4, dtype=torch.bool)
    assert bool((dirm[off] <= full[off] + 1e-12).all())
    # isotropic noise: the directional variance is about 1/p of the full one
    assert directional_cdnv(x, y) == pytest.approx(cdnv(x, y) / 9, rel=0.5)


def test_cdnv_degenerate(gen):
    x = torch.randn(10, 3, generator=gen)
    one = torch.zeros(10, dtype=torch.int64)
    for fn in (cdnv, directional_cdnv):
        with pytest.warns(UserWarning, match="2 classes"):
            assert math.isnan(fn(x, one))
        with pytest.warns(UserWarning):
            m = fn(x, one, return_matrix=True)
        assert m.shape == (1, 1) and bool(m.isnan().all())
        with pytest.warns(UserWarning):
            assert math.isnan(fn(x[:0], one[:0]))
    # two classes with the same mean: +inf
    xs = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0], [5.0, 5.0]])
    ys = torch.tensor([0, 0, 1, 1, 2])
    for fn in (cdnv, directional_cdnv):
        m = fn(xs, ys, return_matrix=True)
        assert m[0, 1] == math.inf and m[1, 0] == math.inf and math.isfinite(m[0, 2])
        assert fn(xs, ys) == math.inf
    # every class a single point: 0
    assert cdnv(xs[2:], torch.arange(3)) == 0.0
    assert directional_cdnv(xs[2:], torch.arange(3)) == 0.0
    # half precision input is accepted
    xh, yh = clusters(5, 3, 4, 3.0, gen)
    assert cdnv(xh.half(), yh) == pytest.approx(cdnv(xh.half().double(), yh), rel=1e-9)
    assert directional_cdnv(xh.bfloat16(), yh) == pytest.approx(directional_cdnv(xh.bfloat16().double(), yh), rel=1e-9)


def test_cdnv_errors(gen):
    x = torch.randn(6, 3, generator=gen)
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    for fn in (cdnv, directional_cdnv):
        with pytest.raises(ValueError, match="features"):
            fn(x.flatten(), y)
        with pytest.raises(TypeError, match="features"):
            fn(x.long(), y)
        with pytest.raises(TypeError, match="features"):
            fn(x.numpy(), y)
        with pytest.raises(ValueError, match="labels"):
            fn(x, y[:5])
        with pytest.raises(TypeError, match="labels"):
            fn(x, y.float())
        with pytest.raises(ValueError, match="labels"):
            fn(x, y.view(3, 2))
        with pytest.raises(ValueError, match="features"):
            fn(torch.full_like(x, math.nan), y)
        if torch.cuda.is_available():
            with pytest.raises(ValueError, match="labels"):
                fn(x, y.cuda())
        else:
            with pytest.raises(ValueError, match="labels"):
                fn(x, y.to("meta"))


# ----------------------------------------------------------------------------------------------- probes


@pytest.mark.parametrize("blocks", [False, True])
def test_nccc_matches_loop(blocks, gen, monkeypatch):
    if blocks:
        monkeypatch.setattr(geo, "_BLOCK_ELEMS", 64)
    centres = torch.randn(5, 11, generator=gen, dtype=torch.float64)
    xtr, ytr = clusters(17, 5, 11, 0, gen, noise=1.5, centres=centres)  # overlapping: accuracy below 1
    xte, yte = clusters(9, 5, 11, 0, gen, noise=1.5, centres=centres)
    xte = xte + 0.3
    yte[:3] = 42  # absent from training: errors
    want = ref_nccc(xtr, ytr, xte, yte)
    assert 0.1 < want < 0.95
    assert nccc_accuracy(xtr, ytr, xte, yte) == pytest.approx(want, abs=1e-12)


def test_nccc_n_shot(gen):
    centres = torch.randn(4, 6, generator=gen, dtype=torch.float64)
    xtr, ytr = clusters(21, 4, 6, 0, gen, noise=1.0, centres=centres)
    ytr[:5] = 9  # a class of 5 rows: n_shot = 8 takes all of them
    xte, yte = clusters(15, 4, 6, 0, gen, noise=1.0, centres=centres)
    got = nccc_accuracy(xtr, ytr, xte, yte, n_shot=8, seed=3)
    # the subset chosen: replay the documented draw (randperm of a seeded generator, stable sort by label)
    perm = torch.randperm(len(ytr), generator=torch.Generator().manual_seed(3))
    keep = []
    for c in sorted(set(ytr.tolist())):
        keep += [int(i) for i in perm if ytr[i] == c][:8]
    assert len(keep) == 4 * 8 + 5
    assert got == pytest.approx(ref_nccc(xtr[keep], ytr[keep], xte, yte), abs=1e-12)
    assert got == nccc_accuracy(xtr, ytr, xte, yte, n_shot=8, seed=3)  # deterministic
    assert nccc_accuracy(xtr, ytr, xte, yte, n_shot=1000) == nccc_accuracy(xtr, ytr, xte, yte)
    # a different seed uses different samples (the centres, hence usually the accuracy, change)
    accs = {nccc_accuracy(xtr, ytr, xte, yte, n_shot=1, seed=s) for s in range(6)}
    assert len(accs) > 1


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("k,chunk", [(1, 4096), (5, 7), (6, 3), (200, 11)])
def test_knn_matches_loop(metric, k, chunk, gen, small_blocks):
    centres = torch.randn(4, 7, generator=gen, dtype=torch.float64)
    xtr, ytr = clusters(13, 4, 7, 0, gen, noise=1.5, centres=centres)
    xte, yte = clusters(8, 4, 7, 0, gen, noise=1.5, centres=centres)
    ytr = ytr * 3 - 2
    yte = yte * 3 - 2
    yte[0] = 100
    want = ref_knn(xtr, ytr, xte, yte, min(k, len(xtr)), metric)
    assert knn_accuracy(xtr, ytr, xte, yte, k=k, metric=metric, chunk=chunk) == pytest.approx(want, abs=1e-12)
    # float32 features: same up to rounding (no near-ties here)
    assert knn_accuracy(xtr.float(), ytr, xte.float(), yte, k=k, metric=metric, chunk=chunk) == pytest.approx(
        want, abs=0.05
    )


def test_knn_tie_break():
    # one test point at 0; neighbours: class 5 at distances 1 and 4 (sum 5), class 2 at 2 and 2 (sum 4)
    xtr = torch.tensor([[1.0], [4.0], [-2.0], [2.0], [10.0]])
    ytr = torch.tensor([5, 5, 2, 2, 5])
    xte = torch.tensor([[0.0]])
    assert knn_accuracy(xtr, ytr, xte, torch.tensor([2]), k=4, metric="euclidean") == 1.0
    # equal vote and equal summed distance: the smaller label
    xtr = torch.tensor([[1.0], [-1.0]])
    assert knn_accuracy(xtr, torch.tensor([8, 3]), xte, torch.tensor([3]), k=2, metric="euclidean") == 1.0


def test_linear_probe_against_sklearn(gen):
    from sklearn.linear_model import LogisticRegression

    centres = torch.randn(3, 6, generator=gen, dtype=torch.float64)
    xtr, ytr = clusters(40, 3, 6, 0, gen, noise=1.2, centres=centres)
    xte, yte = clusters(40, 3, 6, 0, gen, noise=1.2, centres=centres)
    scale = torch.tensor([1.0, 100.0, 0.01, 1.0, 5.0, 1.0], dtype=torch.float64)
    xtr, xte = xtr * scale + 7.0, xte * scale + 7.0
    wd = 1e-2
    acc = linear_probe_accuracy(xtr, ytr, xte, yte, epochs=200, weight_decay=wd)
    mu, sd = xtr.mean(0), xtr.std(0, unbiased=False)
    clf = LogisticRegression(C=1.0 / (wd * len(ytr)), max_iter=5000, tol=1e-10)
    clf.fit(((xtr - mu) / sd).numpy(), ytr.numpy())
    want = float((clf.predict(((xte - mu) / sd).numpy()) == yte.numpy()).mean())
    assert 0.4 < want < 1.0
    assert acc == pytest.approx(want, abs=1.5 / len(yte))
    assert acc == linear_probe_accuracy(xtr, ytr, xte, yte, epochs=200, weight_decay=wd)  # deterministic


def test_probes_separated_clusters_and_chance(gen):
    centres = 10.0 * torch.randn(5, 16, generator=gen, dtype=torch.float64)
    xtr, ytr = clusters(30, 5, 16, 0, gen, noise=0.5, centres=centres)
    xte, yte = clusters(20, 5, 16, 0, gen, noise=0.5, centres=centres)
    ytr, yte = ytr + 10, yte + 10  # labels need not start at 0
    assert nccc_accuracy(xtr, ytr, xte, yte) == 1.0
    assert nccc_accuracy(xtr, ytr, xte, yte, n_shot=2) == 1.0
    assert knn_accuracy(xtr, ytr, xte, yte, k=5) == 1.0
    assert knn_accuracy(xtr, ytr, xte, yte, k=5, metric="euclidean") == 1.0
    assert linear_probe_accuracy(xtr.float(), ytr, xte.float(), yte) == 1.0
    # labels independent of the features: about chance (1/5)
    g = torch.Generator().manual_seed(5)
    xr = torch.randn(1200, 8, generator=g)
    yr = torch.randint(0, 5, (1200,), generator=g)
    for acc in (
        nccc_accuracy(xr[:800], yr[:800], xr[800:], yr[800:]),
        knn_accuracy(xr[:800], yr[:800], xr[800:], yr[800:], k=20),
        linear_probe_accuracy(xr[:800], yr[:800], xr[800:], yr[800:]),
    ):
        assert abs(acc - 0.2) < 0.08


def test_probes_degenerate(gen):
    centres = 5.0 * torch.randn(3, 4, generator=gen, dtype=torch.float64)
    xtr, ytr = clusters(5, 3, 4, 0, gen, centres=centres)
    xte, yte = clusters(4, 3, 4, 0, gen, centres=centres)
    for fn in (nccc_accuracy, knn_accuracy, linear_probe_accuracy):
        with pytest.warns(UserWarning, match="test_features"):
            assert math.isnan(fn(xtr, ytr, xte[:0], yte[:0]))
        with pytest.warns(UserWarning, match="train_features"):
            assert fn(xtr[:0], ytr[:0], xte, yte) == 0.0
        # a single training class: every prediction is that class
        one = torch.full_like(ytr, 4)
        assert fn(xtr, one, xte, torch.tensor([4, 4, 0] * 4)) == pytest.approx(8 / 12)
        # no test label seen in training
        assert fn(xtr, ytr, xte, yte + 100) == 0.0
        # half / bfloat16 and constant features work
        assert 0.0 <= fn(xtr.half(), ytr, xte.half(), yte) <= 1.0
        assert 0.0 <= fn(xtr.bfloat16(), ytr, xte.bfloat16(), yte) <= 1.0
        assert 0.0 <= fn(torch.zeros_like(xtr), ytr, torch.zeros_like(xte), yte) <= 1.0
    # the linear probe runs under no_grad / inference_mode, with inputs that require grad
    with torch.inference_mode():
        a = linear_probe_accuracy(xtr, ytr, xte, yte)
    with torch.no_grad():
        assert linear_probe_accuracy(xtr.requires_grad_(), ytr, xte, yte) == a
    assert nccc_accuracy(xtr, ytr, xte, yte) == nccc_accuracy(xtr.detach(), ytr, xte, yte)


def test_probe_errors(gen):
    xtr, ytr = clusters(5, 3, 4, 5.0, gen)
    xte, yte = clusters(4, 3, 4, 5.0, gen)
    for fn in (nccc_accuracy, knn_accuracy, linear_probe_accuracy):
        with pytest.raises(ValueError, match="train_features"):
            fn(xtr[0], ytr, xte, yte)
        with pytest.raises(ValueError, match="test_features"):
            fn(xtr, ytr, xte.unsqueeze(0), yte)
        with pytest.raises(ValueError, match="test_features"):
            fn(xtr, ytr, xte[:, :3], yte)
        with pytest.raises(ValueError, match="train_labels"):
            fn(xtr, ytr[1:], xte, yte)
        with pytest.raises(ValueError, match="test_labels"):
            fn(xtr, ytr, xte, yte[1:])
        with pytest.raises(TypeError, match="test_labels"):
            fn(xtr, ytr, xte, yte.double())
        with pytest.raises(TypeError, match="train_labels"):
            fn(xtr, ytr.bool(), xte, yte)
        with pytest.raises(TypeError, match="train_features"):
            fn(xtr.int(), ytr, xte, yte)
    for k in (0, -3):
        with pytest.raises(ValueError, match="k"):
            knn_accuracy(xtr, ytr, xte, yte, k=k)
    with pytest.raises(TypeError, match="k"):
        knn_accuracy(xtr, ytr, xte, yte, k=2.5)
    with pytest.raises(ValueError, match="chunk"):
        knn_accuracy(xtr, ytr, xte, yte, chunk=0)
    with pytest.raises(ValueError, match="metric"):
        knn_accuracy(xtr, ytr, xte, yte, metric="manhattan")
    with pytest.raises(ValueError, match="n_shot"):
        nccc_accuracy(xtr, ytr, xte, yte, n_shot=0)
    with pytest.raises(TypeError, match="n_shot"):
        nccc_accuracy(xtr, ytr, xte, yte, n_shot=1.5)
    with pytest.raises(ValueError, match="epochs"):
        linear_probe_accuracy(xtr, ytr, xte, yte, epochs=0)
    with pytest.raises(ValueError, match="lr"):
        linear_probe_accuracy(xtr, ytr, xte, yte, lr=-1.0)
    with pytest.raises(ValueError, match="weight_decay"):
        linear_probe_accuracy(xtr, ytr, xte, yte, weight_decay=math.nan)
