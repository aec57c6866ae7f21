"""clnscl.metrics.geometry (CDNV, directional CDNV) against straightforward loop-based float64 implementations
written here."""
import math

import numpy as np
import pytest
import torch

from clnscl.metrics import geometry as geo
from clnscl.metrics.geometry import cdnv, directional_cdnv
from tests.support.geometry_cases import clusters, ref_class_stats


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


@pytest.mark.parametrize("directional", [False, True])
@pytest.mark.parametrize("blocks", [False, True])
def test_cdnv_matches_loop(directional, blocks, gen, monkeypatch):
    if blocks:
        monkeypatch.setattr(geo, "BLOCK_ELEMS", 64)
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
            fn(x.tolist(), y)  # numpy is taken; a list is not
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
