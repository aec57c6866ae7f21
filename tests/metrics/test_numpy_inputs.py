"""Every metric takes numpy arrays as well as tensors: the same numbers, float64 kept float64 (issue 21, item 4)."""
import math

import numpy as np
import pytest
import torch

from clnscl import metrics, theory

RNG = np.random.default_rng(7)
X, Y = RNG.standard_normal((61, 13)), RNG.standard_normal((61, 13))
LABELS = RNG.integers(0, 4, 61)
CASES = {
    "cka": lambda x, y, lab: metrics.cka(x, y),
    "cka-cosine-unbiased": lambda x, y, lab: metrics.cka(x, y, kernel="cosine", unbiased=True),
    "cka-rbf": lambda x, y, lab: metrics.cka(x, y, kernel="rbf"),
    "rsa-spearman": lambda x, y, lab: metrics.rsa(x, y, method="spearman"),
    "similarity_gap": lambda x, y, lab: metrics.similarity_gap(x, y),
    "nccc": lambda x, y, lab: metrics.nccc_accuracy(x, lab, y, lab),
    "knn": lambda x, y, lab: metrics.knn_accuracy(x, lab, y, lab, k=5),
    "linear_probe": lambda x, y, lab: metrics.linear_probe_accuracy(x, lab, y, lab),
    "cdnv": lambda x, y, lab: metrics.cdnv(x, lab),
    "directional_cdnv": lambda x, y, lab: metrics.directional_cdnv(x, lab),
    "loss_gap_bound": lambda x, y, lab: metrics.loss_gap_bound(lab, 0.3),
    "coupling_ratios": lambda x, y, lab: theory.coupling_ratios(x, y),
}


def _streaming(x, y, lab):
    acc = metrics.StreamingAlignment()
    acc.update(x[:30], y[:30])
    metrics.StreamingAlignment.update_shared([acc], x[30:], [y[30:]])
    return acc.compute()


CASES["StreamingAlignment"] = _streaming


def _same(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return (math.isnan(a) and math.isnan(b)) or a == b


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", sorted(CASES))
def test_numpy_and_torch_inputs_give_the_same_numbers(case, dtype):
    x, y = X.astype(dtype), Y.astype(dtype)
    got = CASES[case](x, y, LABELS)
    want = CASES[case](torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(LABELS))
    assert _same(got, want), (got, want)


def test_float64_arrays_are_computed_in_float64():
    """A relative gap of 1e-12 in float64 arrays is resolved (float32 could not hold the inputs apart)."""
    x = X / np.linalg.norm(X, axis=1, keepdims=True)
    y = x + 1e-12 * RNG.standard_normal(x.shape)
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    want = np.linalg.norm(x @ x.T - y @ y.T)
    got = metrics.similarity_gap(x, y)["frobenius"]
    assert want > 0 and abs(got - want) <= 1e-6 * want + 8 * len(x) * 2.0**-52
