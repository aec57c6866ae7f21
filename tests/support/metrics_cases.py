"""Data and backend helpers of the metrics tests: seeded paired representations (random, clustered,
rank-deficient, full of ties), the backends the package offers and which of them run here, tolerances."""
from __future__ import annotations

import warnings
import zlib

import numpy as np
import pytest
import torch

from clnscl.metrics import rsa
from clnscl.metrics.pairwise import BACKENDS as METRICS_BACKENDS

BACKENDS = METRICS_BACKENDS.names  # every backend the package offers
P, Q = 13, 7
TOL = 1e-10  # float64 metric values in [-1, 1] against the oracle
EXACT = 1e-12  # the same computation on the same rows, split or merged differently
# The contract (docs/design.md §3) allows an approximate Spearman with a documented bound |error| ≤ 1e-3 (the
# pairwise engine's binned ranks); the reference backend is held to float64 accuracy.
SPEARMAN_BOUND = 1e-3

_unavailable: dict[str, str | None] = {}


def unavailable(backend: str) -> str | None:
    """Why `backend` cannot run here (e.g. a GPU backend on a CPU machine, or its C++ build failed), else None."""
    if backend not in _unavailable:
        x = torch.tensor(np.random.default_rng(0).standard_normal((6, 3)))
        try:
            quiet(rsa, x, x.exp(), "euclidean", "spearman", backend=backend)
            _unavailable[backend] = None
        except RuntimeError as exc:
            _unavailable[backend] = str(exc) if "unavailable" in str(exc) else None
    return _unavailable[backend]


def need(backend: str) -> None:
    if unavailable(backend):
        pytest.skip(f"backend {backend!r}: {unavailable(backend)}")


def usable_backends() -> list[str]:
    return [b for b in BACKENDS if not unavailable(b)]


def spearman_tol(backend: str) -> float:
    return TOL if backend == "reference" else SPEARMAN_BOUND


def rng_for(*key) -> np.random.Generator:
    """A seeded generator per test case (same inputs on every run, different across cases)."""
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def make_data(kind: str, n: int, p: int = P, q: int = Q, seed=0) -> tuple[torch.Tensor, torch.Tensor]:
    """Paired float64 (n, p), (n, q) representations that are related (CKA, RSA well inside (0, 1)) and have
    non-zero feature means, so that a missing or wrong centring shows."""
    rng = rng_for(kind, n, p, q, seed)
    if kind == "random":
        x = rng.standard_normal((n, p)) + rng.uniform(-2, 2, p)
        y = np.tanh(x @ rng.standard_normal((p, q)) / 2) + 0.5 * rng.standard_normal((n, q)) + rng.uniform(-1, 1, q)
    elif kind == "clustered":  # class centres + noise
        k = 5
        labels = rng.integers(0, k, n)
        cx, cy = 3 * rng.standard_normal((k, p)), 3 * rng.standard_normal((k, q))
        x = cx[labels] + 0.5 * rng.standard_normal((n, p)) + 1.0
        y = cy[labels] + 0.8 * rng.standard_normal((n, q)) - 0.5
    elif kind == "rankdef":  # x = a @ b with inner rank 3
        a = rng.standard_normal((n, 3))
        x = (a + 0.5) @ rng.standard_normal((3, p))  # non-zero mean, still rank 3
        y = np.tanh(a @ rng.standard_normal((3, q))) + 0.3 * rng.standard_normal((n, q))
    else:
        raise ValueError(kind)
    return torch.tensor(x), torch.tensor(y)


def quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


def dyadic_unit_pool(dim: int) -> np.ndarray:
    """Unit vectors with dyadic coordinates (±e_k and vectors of four ±1/2): every cosine between them is
    exact in floating point, so tied dissimilarities are tied bit for bit in any implementation."""
    pool = [s * np.eye(dim)[k] for k in range(dim) for s in (1.0, -1.0)]
    for support in ([0, 1, 2, 3], [1, 2, 4, 5], [2, 3, 5, 6], [0, 3, 4, 7]):
        if max(support) >= dim:
            continue
        for signs in range(16):
            v = np.zeros(dim)
            v[support] = [0.5 if signs >> b & 1 else -0.5 for b in range(4)]
            pool.append(v)
    return np.array(pool)


def tied_data(rdm: str, n: int = 61):
    rng = rng_for("ties", rdm, n)
    if rdm == "euclidean":  # small integers: squared distances are exact integers, with many repeats
        x = rng.integers(0, 3, (n, 5)).astype(float)
        y = np.concatenate([x[:, :2], rng.integers(0, 3, (n, 1))], axis=1)
        flip = rng.random(n) < 0.3
        y[flip, 0] = 2 - y[flip, 0]
    else:  # rows from a small pool of dyadic unit vectors, scaled by powers of two (normalisation is exact)
        px, py = dyadic_unit_pool(8), dyadic_unit_pool(4)
        ix = rng.integers(0, 12, n)
        iy = np.where(rng.random(n) < 0.6, ix % len(py), rng.integers(0, len(py), n))
        x = px[ix] * 2.0 ** rng.integers(-2, 3, (n, 1))
        y = py[iy] * 2.0 ** rng.integers(-2, 3, (n, 1))
    return torch.tensor(x), torch.tensor(y)
