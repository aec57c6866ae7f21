"""Geometry of representations and weights (DESIGN.md §3, "Also"): weight divergence, the CL–NSCL loss-gap
bound, class-distance normalised variance (CDNV, plain and directional), and the accuracy of three probes
(nearest class centre, k-nearest neighbours, linear).

Conventions shared by every function here:

- features are 2-D floating tensors (N, p) of any float dtype, on any device, finite; labels are 1-D
  integer tensors of length N on the same device. Labels are arbitrary integers (not necessarily 0..C−1):
  classes are the sorted distinct values, and any C×C output is ordered that way.
- Class statistics (means, variances) are accumulated in float64 with ``index_add_`` — no Python loop over
  classes or class pairs; anything of size N×N, N×C or N×C×p is built a block of rows at a time.
- Bad arguments raise TypeError/ValueError naming the argument. Undefined results (fewer than two classes,
  an empty test set) are NaN with a warning; every other degenerate case has the documented value.
"""
from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Mapping

import torch
import torch.nn.functional as F

from .._validate import check_temperature

__all__ = [
    "weight_divergence",
    "loss_gap_bound",
    "cdnv",
    "directional_cdnv",
    "nccc_accuracy",
    "knn_accuracy",
    "linear_probe_accuracy",
]

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_BLOCK_ELEMS = 1 << 22  # elements of one row-block intermediate (32 MiB in float64)
_NORM_EPS = 1e-12


# ----------------------------------------------------------------------------------------------- checks


def _check_features(x, name: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (N, p), got {type(x).__name__}")
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D (N, p), got shape {tuple(x.shape)}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be a floating-point tensor (float16/bfloat16/float32/float64), got {x.dtype}")
    if x.numel() and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or infinite values")


def _check_labels(y, name: str, n: int | None = None, device=None, against: str = "") -> None:
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"{name} must be a 1-D integer torch.Tensor, got {type(y).__name__}")
    if y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        raise TypeError(f"{name} must have an integer dtype, got {y.dtype}")
    if y.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(y.shape)}")
    if n is not None and y.shape[0] != n:
        raise ValueError(f"{name} has {y.shape[0]} entries but {against} has {n} rows")
    if device is not None and y.device != device:
        raise ValueError(f"{name} is on {y.device} but {against} is on {device}; put both on one device")


def _check_pair(x, y, xname: str, yname: str) -> None:
    _check_features(x, xname)
    _check_labels(y, yname, x.shape[0], x.device, xname)


def _check_int(value, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _check_real(value, name: str, *, positive: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    v = float(value)
    if not math.isfinite(v) or v < 0 or (positive and v == 0):
        raise ValueError(f"{name} must be finite and {'> 0' if positive else '>= 0'}, got {value}")
    return v


def _rows_per_block(width: int) -> int:
    return max(1, _BLOCK_ELEMS // max(1, width))


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """float64 stays float64; half types and float32 compute in float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


# ------------------------------------------------------------------------------------- weight divergence


def _named_weights(model, name: str) -> dict[str, torch.Tensor]:
    if isinstance(model, torch.nn.Module):
        return dict(model.named_parameters())
    if isinstance(model, Mapping):
        return dict(model)
    raise TypeError(f"{name} must be a torch.nn.Module (or a mapping name -> tensor), got {type(model).__name__}")


def weight_divergence(model_a, model_b) -> dict:
    """Relative distance between the weights of two models with the same parameter names and shapes.

    For each parameter tensor (``named_parameters()``, or the items of a mapping name → tensor)
    r = ‖w_a − w_b‖_F / (½(‖w_a‖_F + ‖w_b‖_F)), with r = 0 when both tensors are zero (so 0 ≤ r ≤ 2).
    Returns ``{"per_tensor": {name: r}, "mean": mean of r over tensors, "global": the same ratio on all
    parameters concatenated}``. Computed on CPU in float64, so the models may live on different devices or
    dtypes. Models without parameters give ``mean = global = 0.0``. A name present in only one model or a
    shape mismatch raises ValueError naming the first such parameter (in ``model_a``'s order).
    """
    wa, wb = _named_weights(model_a, "model_a"), _named_weights(model_b, "model_b")
    for key in wa:
        if key not in wb:
            raise ValueError(f"parameter {key!r} of model_a is missing from model_b")
        if tuple(wa[key].shape) != tuple(wb[key].shape):
            raise ValueError(
                f"parameter {key!r} has shape {tuple(wa[key].shape)} in model_a but {tuple(wb[key].shape)} in model_b"
            )
    for key in wb:
        if key not in wa:
            raise ValueError(f"parameter {key!r} of model_b is missing from model_a")

    per_tensor: dict[str, float] = {}
    sq_diff = sq_a = sq_b = 0.0
    with torch.no_grad():
        for key, ta in wa.items():
            a = ta.detach().to(device="cpu", dtype=torch.float64)
            b = wb[key].detach().to(device="cpu", dtype=torch.float64)
            d2 = float(torch.sum((a - b) ** 2))
            a2, b2 = float(torch.sum(a * a)), float(torch.sum(b * b))
            per_tensor[key] = _ratio(d2, a2, b2)
            sq_diff, sq_a, sq_b = sq_diff + d2, sq_a + a2, sq_b + b2
    mean = sum(per_tensor.values()) / len(per_tensor) if per_tensor else 0.0
    return {"per_tensor": per_tensor, "mean": mean, "global": _ratio(sq_diff, sq_a, sq_b)}


def _ratio(d2: float, a2: float, b2: float) -> float:
    den = 0.5 * (math.sqrt(a2) + math.sqrt(b2))
    return 0.0 if den == 0 else math.sqrt(d2) / den


# ------------------------------------------------------------------------------------------ loss gap bound


def loss_gap_bound(labels, temperature) -> float:
    """Upper bound on ℓ_CL − ℓ_NSCL for a batch with these labels: log(1 + n_max·e^{2/τ}/(N − n_max)).

    N = len(labels), n_max = size of the largest class. Evaluated as softplus(log n_max − log(N − n_max)
    + 2/τ), so small τ (e.g. 0.01) gives a large finite value instead of overflowing. Counting samples or
    views gives the same value (both n_max and N − n_max scale by V). A single class (N = n_max: NSCL has
    no negatives) gives ``math.inf``; empty labels give 0.0 (both losses are 0 on an empty batch).
    labels: 1-D integer tensor (or anything ``torch.as_tensor`` turns into one); temperature: finite > 0.
    """
    if not isinstance(labels, torch.Tensor):
        try:
            labels = torch.as_tensor(labels)
        except (TypeError, ValueError, RuntimeError) as e:
            raise TypeError(f"labels must be a 1-D integer tensor, got {type(labels).__name__}") from e
    _check_labels(labels, "labels")
    tau = check_temperature(temperature)
    n = labels.shape[0]
    if n == 0:
        return 0.0
    n_max = int(torch.unique(labels, return_counts=True)[1].max())
    if n_max == n:
        return math.inf
    a = math.log(n_max) - math.log(n - n_max) + 2.0 / tau
    return max(a, 0.0) + math.log1p(math.exp(-abs(a)))  # softplus(a), stable for any a


# ----------------------------------------------------------------------------------------------- CDNV


def _class_stats(x: torch.Tensor, y: torch.Tensor):
    """Sorted class values, per-row class index, class counts, class means (C, p) in float64."""
    classes, idx, counts = torch.unique(y, sorted=True, return_inverse=True, return_counts=True)
    c, p = classes.shape[0], x.shape[1]
    sums = torch.zeros(c, p, dtype=torch.float64, device=x.device)
    step = _rows_per_block(p)
    for s in range(0, x.shape[0], step):
        sums.index_add_(0, idx[s : s + step], x[s : s + step].to(torch.float64))
    means = sums / counts.to(torch.float64).unsqueeze(1)
    return classes, idx, counts, means


def _mean_sqdist(means: torch.Tensor) -> torch.Tensor:
    """D_ij = ‖μ_i − μ_j‖² (C, C), float64, without the cancellation of the Gram expansion."""
    return torch.cdist(means, means, compute_mode="donot_use_mm_for_euclid_dist").square()


def _cdnv_result(numer: torch.Tensor, dist2: torch.Tensor, return_matrix: bool):
    """V = numer / (2 dist2) off the diagonal, NaN on it; +inf where two means coincide."""
    c = dist2.shape[0]
    v = numer / (2.0 * dist2)
    v = torch.where(dist2 > 0, v, torch.full_like(v, math.inf))
    eye = torch.eye(c, dtype=torch.bool, device=v.device)
    v = v.masked_fill(eye, math.nan)
    if return_matrix:
        return v
    return float(v[~eye].mean())


def _too_few_classes(c: int, what: str, return_matrix: bool, device):
    warnings.warn(f"{what} needs at least 2 classes, got {c}: NaN")
    if return_matrix:
        return torch.full((c, c), math.nan, dtype=torch.float64, device=device)
    return math.nan


@torch.no_grad()
def cdnv(features, labels, return_matrix: bool = False):
    """Class-distance normalised variance (Galanti et al., 2022), averaged over ordered pairs i ≠ j.

    V_ij = (σ_i² + σ_j²) / (2‖μ_i − μ_j‖²), μ_i = mean of class i's rows, σ_i² = mean over class i of
    ‖f − μ_i‖² (population variance; 0 for a singleton class). Returns the mean of V_ij over i ≠ j as a
    float, or with ``return_matrix=True`` the (C, C) float64 matrix (classes in sorted label order, NaN on
    the diagonal). Two classes with identical means have V_ij = +inf. Fewer than 2 classes: NaN (a C×C NaN
    matrix) with a warning.
    """
    _check_pair(features, labels, "features", "labels")
    classes, idx, counts, means = _class_stats(features, labels)
    c = classes.shape[0]
    if c < 2:
        return _too_few_classes(c, "cdnv", return_matrix, features.device)
    # σ_i²: ‖f − μ_y‖² summed per class, a block of rows at a time
    sq = torch.zeros(c, dtype=torch.float64, device=features.device)
    step = _rows_per_block(features.shape[1])
    for s in range(0, features.shape[0], step):
        i = idx[s : s + step]
        r = features[s : s + step].to(torch.float64) - means[i]
        sq.index_add_(0, i, r.square().sum(1))
    var = sq / counts.to(torch.float64)
    return _cdnv_result(var.unsqueeze(1) + var.unsqueeze(0), _mean_sqdist(means), return_matrix)


@torch.no_grad()
def directional_cdnv(features, labels, return_matrix: bool = False):
    """Directional CDNV: the CDNV with each variance taken only along the line between the two means.

    u_ij = (μ_i − μ_j)/‖μ_i − μ_j‖, σ_i²(u_ij) = mean over class i of ⟨f − μ_i, u_ij⟩²,
    V^dir_ij = (σ_i²(u_ij) + σ_j²(u_ij)) / (2‖μ_i − μ_j‖²); mean over ordered pairs i ≠ j, or the (C, C)
    matrix with ``return_matrix=True`` (sorted label order, NaN diagonal). Same degenerate values as
    :func:`cdnv` (coinciding means → +inf, fewer than 2 classes → NaN with a warning).

    No per-class covariance: with M the class means shifted by their average (the inner products below do
    not change under a common shift, and the shift reduces cancellation), P = (F − μ_y) Mᵀ is (N, C) and
    ⟨f − μ_i, μ_i − μ_j⟩ = P[f, i] − P[f, j]; T_ij = Σ_{f∈i} (P[f, i] − P[f, j])² is one ``index_add_``
    per block of rows, and σ_i²(u_ij) = T_ij / (n_i ‖μ_i − μ_j‖²). O(N·p·C) time, O(C·(p + C)) memory.
    """
    _check_pair(features, labels, "features", "labels")
    classes, idx, counts, means = _class_stats(features, labels)
    c = classes.shape[0]
    if c < 2:
        return _too_few_classes(c, "directional_cdnv", return_matrix, features.device)
    shifted = means - means.mean(0, keepdim=True)
    t = torch.zeros(c, c, dtype=torch.float64, device=features.device)
    step = _rows_per_block(max(features.shape[1], c))
    for s in range(0, features.shape[0], step):
        i = idx[s : s + step]
        r = features[s : s + step].to(torch.float64) - means[i]
        proj = r @ shifted.T  # (rows, C)
        own = proj.gather(1, i.unsqueeze(1))
        t.index_add_(0, i, (own - proj).square())
    dist2 = _mean_sqdist(means)
    ni = counts.to(torch.float64).unsqueeze(1)
    s_dir = t / ni  # = σ_i²(u_ij)·‖μ_i − μ_j‖²
    numer = (s_dir + s_dir.T) / dist2  # σ_i²(u_ij) + σ_j²(u_ij); inf/NaN where dist2 = 0 is masked below
    return _cdnv_result(numer, dist2, return_matrix)


# ----------------------------------------------------------------------------------------------- probes


def _check_probe(train_features, train_labels, test_features, test_labels) -> None:
    _check_pair(train_features, train_labels, "train_features", "train_labels")
    _check_pair(test_features, test_labels, "test_features", "test_labels")
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
def nccc_accuracy(train_features, train_labels, test_features, test_labels, n_shot=None, seed: int = 0) -> float:
    """Accuracy of the nearest class-centre classifier (NCC).

    Centre of class c = mean of its training rows, or of ``n_shot`` of them drawn without replacement by a
    ``torch.Generator`` seeded with ``seed`` (all of the class's rows when it has at most ``n_shot``). A test
    row is assigned the class of the nearest centre in Euclidean distance, argmin_c ‖c‖² − 2⟨x, c⟩ (exact
    ties: the smallest label). Accuracy = fraction of test rows whose label equals the prediction, in
    [0, 1]; test labels absent from training are errors. No test rows: NaN; no training rows: 0.0 (both
    with a warning). Distances in float64 for float64 input, else float32; centres in float64.
    """
    _check_probe(train_features, train_labels, test_features, test_labels)
    if n_shot is not None:
        n_shot = _check_int(n_shot, "n_shot")
    _check_int(seed, "seed", minimum=-(1 << 63))
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
    classes, _, _, centres = _class_stats(x, y)

    dt = _compute_dtype(test_features)
    c = centres.to(dt)
    c_sq = c.square().sum(1)
    preds = []
    step = _rows_per_block(max(test_features.shape[1], classes.shape[0]))
    for s in range(0, test_features.shape[0], step):
        xb = test_features[s : s + step].to(dt)
        preds.append(torch.argmin(c_sq - 2.0 * (xb @ c.T), dim=1))
    return _accuracy(classes[torch.cat(preds)], test_labels)


METRICS = ("cosine", "euclidean")


@torch.no_grad()
def knn_accuracy(
    train_features, train_labels, test_features, test_labels, k: int = 20, metric: str = "cosine", chunk: int = 4096
) -> float:
    """Accuracy of the k-nearest-neighbour majority vote.

    metric "cosine": distance 1 − cos(x, t) (rows L2-normalised, a zero row stays zero); "euclidean":
    ‖x − t‖. Each test row takes the label most frequent among its k nearest training rows (k is capped at
    the number of training rows). Ties in the vote go to the tied class whose neighbours have the smallest
    summed distance, then to the smallest label; which of several training rows at exactly the k-th
    distance is taken is unspecified. Test labels absent from training are errors. Test rows are processed
    ``chunk`` at a time, and training rows in blocks with a running top-k, so memory is
    O(chunk·(k + block)), never N_test × N_train. No test rows: NaN; no training rows: 0.0 (with a warning).
    Distances in float64 for float64 input, else float32.
    """
    _check_probe(train_features, train_labels, test_features, test_labels)
    k = _check_int(k, "k")
    chunk = _check_int(chunk, "chunk")
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    empty = _empty_probe("knn_accuracy", train_features.shape[0], test_features.shape[0])
    if empty is not None:
        return empty

    dt = _compute_dtype(test_features)
    classes, tr_idx = torch.unique(train_labels, sorted=True, return_inverse=True)
    n_cls, n_tr = classes.shape[0], train_features.shape[0]
    k = min(k, n_tr)
    tr = train_features.to(dt)
    if metric == "cosine":
        tr = F.normalize(tr, dim=1, eps=_NORM_EPS)
    else:
        tr_sq = tr.square().sum(1)
    block = max(k, (4 * _BLOCK_ELEMS) // chunk)

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


def linear_probe_accuracy(
    train_features,
    train_labels,
    test_features,
    test_labels,
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
    float64 for float64 input, else float32, with gradients enabled whatever the caller's grad mode. Test
    labels absent from training are errors; a single training class predicts that class. No test rows:
    NaN; no training rows: 0.0 (with a warning).
    """
    _check_probe(train_features, train_labels, test_features, test_labels)
    epochs = _check_int(epochs, "epochs")
    lr = _check_real(lr, "lr", positive=True)
    weight_decay = _check_real(weight_decay, "weight_decay", positive=False)
    _check_int(seed, "seed", minimum=-(1 << 63))
    empty = _empty_probe("linear_probe_accuracy", train_features.shape[0], test_features.shape[0])
    if empty is not None:
        return empty

    classes, target = torch.unique(train_labels, sorted=True, return_inverse=True)
    n_cls = classes.shape[0]
    if n_cls == 1:
        return _accuracy(classes.expand(test_labels.shape[0]), test_labels)

    dt = _compute_dtype(test_features)
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
            step = _rows_per_block(max(test_features.shape[1], n_cls))
            for s in range(0, test_features.shape[0], step):
                xb = (test_features[s : s + step].to(dt) - mean) / std
                preds.append(torch.argmax(xb @ w.T + b, dim=1))
    return _accuracy(classes[torch.cat(preds)], test_labels)
