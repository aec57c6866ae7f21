"""clnscl.metrics.probes (NCC, k-NN and linear-probe accuracy) against straightforward loop-based float64
implementations written here, and scikit-learn's logistic regression."""
import math

import numpy as np
import pytest
import torch

from clnscl.metrics import geometry as geo
from clnscl.metrics.probes import knn_accuracy, linear_probe_accuracy, nccc_accuracy
from tests.support.geometry_cases import clusters, ref_class_stats


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


@pytest.mark.parametrize("blocks", [False, True])
def test_nccc_matches_loop(blocks, gen, monkeypatch):
    if blocks:
        monkeypatch.setattr(geo, "BLOCK_ELEMS", 64)
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
