"""Whether one model is more aligned with an anchor than another, beyond the sampling error of the reference
samples: a paired Poisson bootstrap of the difference of their metrics with the anchor."""
from __future__ import annotations

import numpy as np
import torch

from ..checks import accepts_numpy, check_choice, check_int, check_real
from .streaming import StreamingAlignment, check_pair, percentile_interval


@accepts_numpy("anchor", "a", "b")
def compare(anchor: torch.Tensor | np.ndarray, a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray, *,
            metric: str = "cka_cosine", bootstrap: int = 1000, seed: int = 0, level: float = 0.95,
            budget_gib: float = 4.0) -> dict[str, float | tuple[float, float]]:
    """The difference m(anchor, a) − m(anchor, b) of a streaming metric over the same N reference samples, with a
    paired bootstrap interval: both accumulators draw the same Poisson(1) weights for every row, so each replica
    resamples the reference set once for both models.

    Args:
        anchor: (N, p) features of the anchor (tensor or numpy array).
        a: (N, q_a) features of the first model on the same samples (tensor or numpy array).
        b: (N, q_b) features of the second model on the same samples (tensor or numpy array).
        metric: a key of StreamingAlignment.KEYS (default the CKA of the cosine-similarity matrices).
        bootstrap: the number of replicas R (≥ 2).
        seed: seeds the replicas' weights.
        level: the interval's nominal coverage, in (0, 1).
        budget_gib: the memory the replicas of each accumulator may take.

    Returns:
        {"a": m(anchor, a), "b": m(anchor, b), "difference": their difference, "interval": (low, high) the percentile
            interval of the replicas' differences, "fraction": the share of replicas in which a's metric exceeds b's}.

    Raises:
        TypeError: features that are not floating tensors (or arrays); a non-integer bootstrap or seed.
        ValueError: a bad metric, level or shape (the rows of all three must pair), bootstrap < 2, a negative seed,
            a non-positive budget_gib or replicas above it.

    Examples:
        >>> anchor = torch.randn(200, 8, dtype=torch.float64)
        >>> out = clnscl.metrics.compare(anchor, 2 * anchor, torch.randn(200, 8, dtype=torch.float64), bootstrap=20)
        >>> round(out["a"], 4), out["difference"] > 0, out["interval"][0] > 0
        (1.0, True, True)
    """
    check_choice("metric", metric, StreamingAlignment.KEYS)
    check_int(bootstrap, "bootstrap", 2)
    check_real(level, "level", 0.0, 1.0, lo_open=True, hi_open=True)
    check_pair(anchor, a)
    check_pair(anchor, b)
    accs = [StreamingAlignment(bootstrap=bootstrap, seed=seed, budget_gib=budget_gib) for _ in (a, b)]
    StreamingAlignment.update_shared(accs, anchor, [a, b])  # the same rows in the same chunks: the same weights
    values = [acc.compute([metric])[metric] for acc in accs]
    diffs = accs[0].replica_values([metric])[metric] - accs[1].replica_values([metric])[metric]
    return {"a": values[0], "b": values[1], "difference": values[0] - values[1],
            "interval": percentile_interval(diffs, level), "fraction": float((diffs > 0).double().mean())}
