"""Loop-based float64 class statistics and clustered data for the geometry and probe tests."""
import numpy as np
import torch


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


def clusters(n_per, n_cls, dim, sep, gen, noise=1.0, centres=None):
    """n_per rows per class around centres (drawn N(0, sep²) unless given), shuffled; float64."""
    if centres is None:
        centres = torch.randn(n_cls, dim, generator=gen, dtype=torch.float64) * sep
    y = torch.arange(n_cls).repeat_interleave(n_per)
    x = centres[y] + noise * torch.randn(n_per * n_cls, dim, generator=gen, dtype=torch.float64)
    perm = torch.randperm(len(y), generator=gen)
    return x[perm], y[perm]
