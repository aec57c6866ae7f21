"""Accuracy of three probes on labelled features: nearest class centre (NCC), k-nearest neighbours and a linear
softmax classifier, each trained on (train_features, train_labels) and tested on (test_features, test_labels);
the conventions of metrics/geometry.py."""
from __future__ import annotations

import math
import warnings
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from ..checks import accepts_numpy, check_choice, check_int, check_real
from . import geometry
from .geometry import check_labelled, class_stats, compute_dtype, rows_per_block

__all__ = ["nccc_accuracy", "knn_accuracy", "linear_probe_accuracy"]

_NORM_EPS = 1e-12


def _check_probe(train_features, train_labels, test_features, test_labels) -> None:
    check_labelled(train_features, train_labels, "train_features", "train_labels")
    check_labelled(test_features, test_labels, "test_features", "test_labels")
    if test_features.shape[1] != train_features.shape[1]:
        raise ValueError(
            f"test_features has {test_features.shape[1]} features per row but train_features has "
            f"{train_features.shape[1]}"
        )
    if test_features.device != train_features.device:
        raise ValueError(
            f"test_features is on {test_features.device} but train_features is on {train_features.device}"
        )


def _empty_probe(name: str, n_train: int, n_test: int) -> float | None:
    """The value of a probe without test rows (NaN) or without training rows (0.0), with a warning."""
    if n_test == 0:
        warnings.warn(f"{name}: test_features has no rows: NaN")
        return math.nan
    if n_train == 0:
        warnings.warn(f"{name}: train_features has no rows, every test sample counts as an error: 0.0")
        return 0.0
    return None


def _accuracy(pred_labels: torch.Tensor, test_labels: torch.Tensor) -> float:
    return float((pred_labels.to(torch.int64) == test_labels.to(torch.int64)).to(torch.float64).mean())


@torch.no_grad()
@accepts_numpy("train_features", "train_labels", "test_features", "test_labels")
def nccc_accuracy(train_features: torch.Tensor | np.ndarray, train_labels: torch.Tensor | np.ndarray,
                  test_features: torch.Tensor | np.ndarray, test_labels: torch.Tensor | np.ndarray,
                  n_shot: int | None = None, seed: int = 0) -> float:
    """Accuracy of the nearest class-centre classifier (NCC).

    Centre of class c = mean of its training rows, or of ``n_shot`` of them drawn without replacement by a
    ``torch.Generator`` seeded with ``seed`` (all of the class's rows when it has at most ``n_shot``). A test
    row is assigned the class of the nearest centre in Euclidean distance, argmin_c ‖c‖² − 2⟨x, c⟩ (exact
    ties: the smallest label). Distances in float64 for float64 input, else float32; centres in float64.

    Args:
        train_features: (N_train, p) finite floating features the probe is fitted on (a tensor or a numpy array).
        train_labels: (N_train,) integer labels of the training rows, on their device.
        test_features: (N_test, p) finite floating features the probe is tested on, on the same device.
        test_labels: (N_test,) integer labels of the test rows.
        n_shot: the training rows per class the centres are taken from (None: all).
        seed: seeds the draw of the ``n_shot`` rows.

    Returns:
        The fraction of test rows whose label equals the prediction, in [0, 1]; test labels absent from training
            are errors. No test rows: NaN; no training rows: 0.0 (both with a warning).

    Raises:
        TypeError: features that are not floating tensors, labels that are not integer tensors; a non-integer
            n_shot or seed.
        ValueError: features that are not 2-D or not finite, of different widths or devices; labels that are not
            1-D, of another length or on another device; n_shot < 1.

    Examples:
        >>> train = torch.tensor([[0.0, 0.0], [0.0, 2.0], [10.0, 0.0], [10.0, 2.0]])
        >>> test = torch.tensor([[1.0, 1.0], [9.0, 1.0]])
        >>> clnscl.metrics.nccc_accuracy(train, torch.tensor([0, 0, 1, 1]), test, torch.tensor([0, 1]))
        1.0
    """
    _check_probe(train_features, train_labels, test_features, test_labels)
    if n_shot is not None:
        n_shot = check_int(n_shot, "n_shot", 1)
    check_int(seed, "seed", -(1 << 63))
    empty = _empty_probe("nccc_accuracy", train_features.shape[0], test_features.shape[0])
    if empty is not None:
        return empty

    x, y = train_features, train_labels
    if n_shot is not None:
        # random order, then a stable sort by label: within each class the order stays random, and the
        # first n_shot of every class are kept
        g = torch.Generator().manual_seed(seed)
        perm = torch.randperm(y.shape[0], generator=g).to(y.device)
        yp = y[perm]
        order = torch.sort(yp, stable=True).indices
        ys = yp[order]
        _, counts = torch.unique_consecutive(ys, return_counts=True)
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.arange(ys.shape[0], device=y.device) - starts.repeat_interleave(counts)
        keep = perm[order[rank < n_shot]]
        x, y = x[keep], y[keep]
    classes, _, _, centres = class_stats(x, y)

    dt = compute_dtype(test_features)
    c = centres.to(dt)
    c_sq = c.square().sum(1)
    preds = []
    step = rows_per_block(max(test_features.shape[1], classes.shape[0]))
    for s in range(0, test_features.shape[0], step):
        xb = test_features[s : s + step].to(dt)
        preds.append(torch.argmin(c_sq - 2.0 * (xb @ c.T), dim=1))
    return _accuracy(classes[torch.cat(preds)], test_labels)


METRICS = ("cosine", "euclidean")


@torch.no_grad()
@accepts_numpy("train_features", "train_labels", "test_features", "test_labels")
def knn_accuracy(
    train_features: torch.Tensor | np.ndarray,
    train_labels: torch.Tensor | np.ndarray,
    test_features: torch.Tensor | np.ndarray,
    test_labels: torch.Tensor | np.ndarray,
    k: int = 20,
    metric: Literal["cosine", "euclidean"] = "cosine",
    chunk: int = 4096,
) -> float:
    """Accuracy of the k-nearest-neighbour majority vote.

    Each test row takes the label most frequent among its k nearest training rows (k is capped at the number
    of training rows). Ties in the vote go to the tied class whose neighbours have the smallest summed
    distance, then to the smallest label; which of several training rows at exactly the k-th distance is
    taken is unspecified. Test rows are processed ``chunk`` at a time, and training rows in blocks with a
    running top-k, so memory is O(chunk·(k + block)), never N_test × N_train. Distances in float64 for float64
    input, else float32.

    Args:
        train_features: (N_train, p) finite floating features the probe is fitted on (a tensor or a numpy array).
        train_labels: (N_train,) integer labels of the training rows, on their device.
        test_features: (N_test, p) finite floating features the probe is tested on, on the same device.
        test_labels: (N_test,) integer labels of the test rows.
        k: the neighbours that vote.
        metric: "cosine": distance 1 − cos(x, t) (rows L2-normalised, a zero row stays zero); "euclidean":
            ‖x − t‖.
        chunk: the test rows processed at a time.

    Returns:
        The fraction of test rows whose label equals the vote, in [0, 1]; test labels absent from training are
            errors. No test rows: NaN; no training rows: 0.0 (with a warning).

    Raises:
        TypeError: features that are not floating tensors, labels that are not integer tensors; a non-integer k
            or chunk.
        ValueError: features that are not 2-D or not finite, of different widths or devices; labels that are not
            1-D, of another length or on another device; k or chunk < 1, an unknown metric.

    Examples:
        >>> train = torch.tensor([[0.0, 0.0], [0.0, 2.0], [10.0, 0.0], [10.0, 2.0]])
        >>> test = torch.tensor([[1.0, 1.0], [9.0, 1.0]])
        >>> clnscl.metrics.knn_accuracy(train, torch.tensor([0, 0, 1, 1]), test, torch.tensor([0, 1]), k=1,
        ...                             metric="euclidean")
        1.0
    """
    _check_probe(train_features, train_labels, test_features, test_labels)
    k = check_int(k, "k", 1)
    chunk = check_int(chunk, "chunk", 1)
    check_choice("metric", metric, METRICS)
    empty = _empty_probe("knn_accuracy", train_features.shape[0], test_features.shape[0])
    if empty is not None:
        return empty

    dt = compute_dtype(test_features)
    classes, tr_idx = torch.unique(train_labels, sorted=True, return_inverse=True)
    n_cls, n_tr = classes.shape[0], train_features.shape[0]
    k = min(k, n_tr)
    tr = train_features.to(dt)
    if metric == "cosine":
        tr = F.normalize(tr, dim=1, eps=_NORM_EPS)
    else:
        tr_sq = tr.square().sum(1)
    block = max(k, (4 * geometry.BLOCK_ELEMS) // chunk)

    preds = []
    for s in range(0, test_features.shape[0], chunk):
        q = test_features[s : s + chunk].to(dt)
        if metric == "cosine":
            q = F.normalize(q, dim=1, eps=_NORM_EPS)
        else:
            q_sq = q.square().sum(1, keepdim=True)
        best_d = best_i = None
        for t in range(0, n_tr, block):
            g = q @ tr[t : t + block].T
            kk = min(k, g.shape[1])
            if metric == "cosine":  # the k largest cosines, turned into distances only once selected
                bg, bi = torch.topk(g, kk, dim=1)
                bd = 1.0 - bg
            else:
                d = (q_sq + tr_sq[t : t + block] - 2.0 * g).clamp_min_(0.0)  # squared; sqrt after top-k
                bd, bi = torch.topk(d, kk, dim=1, largest=False)
            bi = bi + t
            if best_d is not None:
                bd, bi = torch.cat([best_d, bd], 1), torch.cat([best_i, bi], 1)
                bd, pos = torch.topk(bd, k, dim=1, largest=False)
                bi = bi.gather(1, pos)
            best_d, best_i = bd, bi
        if metric == "euclidean":
            best_d = best_d.sqrt()
        lab = tr_idx[best_i]  # (rows, k) class indices
        votes = torch.zeros(q.shape[0], n_cls, dtype=torch.int64, device=q.device)
        votes.scatter_add_(1, lab, torch.ones_like(lab))
        dsum = torch.zeros(q.shape[0], n_cls, dtype=torch.float64, device=q.device)
        dsum.scatter_add_(1, lab, best_d.to(torch.float64))
        tied = votes == votes.max(1, keepdim=True).values
        # argmin returns the first minimum: the smallest label among exact ties
        preds.append(torch.argmin(dsum.masked_fill(~tied, math.inf), dim=1))
    return _accuracy(classes[torch.cat(preds)], test_labels)


@accepts_numpy("train_features", "train_labels", "test_features", "test_labels")
def linear_probe_accuracy(
    train_features: torch.Tensor | np.ndarray,
    train_labels: torch.Tensor | np.ndarray,
    test_features: torch.Tensor | np.ndarray,
    test_labels: torch.Tensor | np.ndarray,
    epochs: int = 100,
    lr: float = 1.0,
    weight_decay: float = 1e-4,
    seed: int = 0,
) -> float:
    """Test accuracy of a linear softmax classifier trained on standardised training features.

    Features are standardised with the training mean and standard deviation (population std; a constant
    feature is only centred). The classifier W x + b over the C training classes (sorted labels) minimises
    mean cross-entropy + ½·weight_decay·‖W‖_F² (b not decayed), full batch, with L-BFGS (strong-Wolfe line
    search, step ``lr``, at most ``epochs`` iterations) from W ~ N(0, 0.01²) drawn by a generator seeded with
    ``seed``, b = 0 — so the result is deterministic given the seed (on a given device). Computed in
    float64 for float64 input, else float32, with gradients enabled whatever the caller's grad mode.

    Args:
        train_features: (N_train, p) finite floating features the probe is fitted on (a tensor or a numpy array).
        train_labels: (N_train,) integer labels of the training rows, on their device.
        test_features: (N_test, p) finite floating features the probe is tested on, on the same device.
        test_labels: (N_test,) integer labels of the test rows.
        epochs: the most L-BFGS iterations.
        lr: the L-BFGS step, > 0.
        weight_decay: the L2 penalty on W, ≥ 0.
        seed: seeds W's initialisation.

    Returns:
        The fraction of test rows whose label equals the prediction, in [0, 1]; test labels absent from training
            are errors, and a single training class predicts that class. No test rows: NaN; no training rows: 0.0
            (with a warning).

    Raises:
        TypeError: features that are not floating tensors, labels that are not integer tensors; a non-integer
            epochs or seed, a non-real lr or weight_decay.
        ValueError: features that are not 2-D or not finite, of different widths or devices; labels that are not
            1-D, of another length or on another device; epochs < 1, lr ≤ 0, weight_decay < 0 (or either not
            finite).
    """
    _check_probe(train_features, train_labels, test_features, test_labels)
    epochs = check_int(epochs, "epochs", 1)
    lr = check_real(lr, "lr", 0.0, lo_open=True)
    weight_decay = check_real(weight_decay, "weight_decay", 0.0)
    check_int(seed, "seed", -(1 << 63))
    empty = _empty_probe("linear_probe_accuracy", train_features.shape[0], test_features.shape[0])
    if empty is not None:
        return empty

    classes, target = torch.unique(train_labels, sorted=True, return_inverse=True)
    n_cls = classes.shape[0]
    if n_cls == 1:
        return _accuracy(classes.expand(test_labels.shape[0]), test_labels)

    dt = compute_dtype(test_features)
    device = train_features.device
    with torch.inference_mode(False), torch.enable_grad():
        xtr = train_features.to(dt)
        mean = xtr.mean(0, keepdim=True)
        std = xtr.std(0, unbiased=False, keepdim=True)
        std = torch.where(std > 0, std, torch.ones_like(std))
        xtr = ((xtr - mean) / std).detach()
        target = target.clone()
        g = torch.Generator().manual_seed(seed)
        w0 = torch.randn(n_cls, xtr.shape[1], generator=g, dtype=torch.float64) * 0.01
        w = w0.to(device=device, dtype=dt).requires_grad_(True)
        b = torch.zeros(n_cls, device=device, dtype=dt, requires_grad=True)
        opt = torch.optim.LBFGS([w, b], lr=lr, max_iter=epochs, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = F.cross_entropy(xtr @ w.T + b, target) + 0.5 * weight_decay * w.square().sum()
            loss.backward()
            return loss

        opt.step(closure)
        with torch.no_grad():
            preds = []
            step = rows_per_block(max(test_features.shape[1], n_cls))
            for s in range(0, test_features.shape[0], step):
                xb = (test_features[s : s + step].to(dt) - mean) / std
                preds.append(torch.argmax(xb @ w.T + b, dim=1))
    return _accuracy(classes[torch.cat(preds)], test_labels)
