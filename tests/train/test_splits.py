"""Seeded class-stratified splits and class subsets (labels remapped)."""
import pytest
import torch

from clnscl.train.splits import class_subset, class_subset_indices, filter_classes, split


def test_split_is_stratified_disjoint_and_seeded(digits):
    x, y = digits
    n = y.numel()
    tagged = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, 8, 8).clone()  # image = its index
    tx, ty, rx, ry = split(tagged, y, reference_fraction=0.2, seed=0)
    ti, ri = tx[:, 0, 0, 0].long(), rx[:, 0, 0, 0].long()
    assert set(ti.tolist()).isdisjoint(ri.tolist()) and len(ti) + len(ri) == n
    assert torch.equal(ty, y[ti]) and torch.equal(ry, y[ri])
    for c in range(10):
        n_c = int((y == c).sum())
        assert int((ry == c).sum()) == round(0.2 * n_c)
    again = split(tagged, y, 0.2, seed=0)
    assert torch.equal(again[2], rx)
    other = split(tagged, y, 0.2, seed=1)
    assert not torch.equal(other[2], rx)
    # a tiny imbalanced label set: every class with >= 2 samples lands on both sides
    small = torch.tensor([0] * 9 + [1] * 2 + [2])
    _, sty, _, sry = split(torch.zeros(12, 1, 2, 2), small, 0.2, seed=0)
    assert sorted(sry.tolist()) == [0, 0, 1] and sorted(sty.tolist()) == [0] * 7 + [1, 2]
    with pytest.raises(ValueError, match="reference_fraction"):
        split(tagged, y, 1.0)


def test_class_subset_seeded_and_remapped(digits):
    x, y = digits
    a = class_subset(y, 4, seed=0)
    assert a == sorted(a) and len(a) == 4 and len(set(a)) == 4 and all(isinstance(c, int) for c in a)
    assert class_subset(y, 4, seed=0) == a
    assert any(class_subset(y, 4, seed=s) != a for s in range(1, 6))
    assert class_subset(y, None, seed=0) == list(range(10))
    with pytest.raises(ValueError, match="num_classes"):
        class_subset(y, 11, seed=0)
    with pytest.raises(ValueError, match="num_classes"):
        class_subset(y, 0, seed=0)
    fx, fy = filter_classes(x, y, a)
    keep = torch.isin(y, torch.tensor(a))
    assert torch.equal(fx, x[keep])
    assert torch.equal(fy, torch.tensor([a.index(int(c)) for c in y[keep]]))
    idx, remapped = class_subset_indices(y, a)
    assert torch.equal(idx, keep.nonzero().flatten()) and torch.equal(remapped, fy)
