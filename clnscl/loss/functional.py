"""`contrastive_loss`: the public entry point of the loss family.

Every backend splits each row loss ℓ_a = LSE_{b∈D(a)} s_ab − mean_{p∈P(a)} s_ap in two: the masked row
log-sum-exp comes from the backend (a fused kernel that never builds the N×N matrix, or the materialised
reference), and the positive mean from per-instance or per-class sums in O(N·d) (loss/positives.py).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..checks import check_choice, check_float, check_labels, check_temperature, check_temperature_tensor, check_tensor
from .backends import BACKENDS
from .columns import columns
from .ops import LseArgs
from .positives import class_positive_mean, instance_positive_mean
from .rows import compute_dtype, nonempty_mean
from .table import OBJECTIVES, POS, REDUCTIONS, loss_spec

NORM_EPS = 1e-12  # as F.normalize: ẑ = z / max(‖z‖, eps), so a zero row stays zero instead of NaN


def contrastive_loss(
    z: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    objective: str = "nscl",
    temperature: float | torch.Tensor = 0.1,
    decoupled: bool = False,
    normalize: bool = True,
    reduction: str = "mean",
    backend: str = "auto",
    process_group: torch.distributed.ProcessGroup | None = None,
    negatives: torch.Tensor | None = None,
    negative_labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """Contrastive loss of z (B, V, d): B samples, V ≥ 2 views each, with optional integer labels (B,).

    Rows a = (i, v), N = B·V, ẑ_a = z_a/‖z_a‖ (normalize=True), s_ab = ⟨ẑ_a, ẑ_b⟩/τ, and
    ℓ_a = LSE_{b∈D(a)} s_ab − mean_{p∈P(a)} s_ap with Pos(a) the other views of sample i, Same(a) the views
    of other samples of its class, Neg(a) those of other classes:

    | objective          | P(a)       | D(a)        | D(a), decoupled=True |
    | ------------------ | ---------- | ----------- | -------------------- |
    | "cl" (NT-Xent)     | Pos        | all b ≠ a   | Same ∪ Neg ("dcl")   |
    | "nscl"             | Pos        | Pos ∪ Neg   | Neg                  |
    | "supcon" (L_out)   | Pos ∪ Same | all b ≠ a   | Neg                  |

    A row with empty D(a) contributes 0 and is not counted. The LSE is fused (the N×N matrix is never built) and
    the positive mean comes from per-instance or per-class sums in O(N·d); see docs/design.md for the kernels.
    fp32, bf16 and fp16 accumulate in fp32 (the loss is fp32), float64 stays float64.

    Args:
        z: (B, V, d) floating features: V ≥ 2 views of each of B samples.
        labels: (B,) integer class ids; "nscl" and "supcon" need them, "cl" ignores them (None allowed).
        objective: "cl" (NT-Xent), "dcl" ("cl" decoupled), "nscl" or "supcon" (the table above).
        temperature: τ > 0: a float, or a one-element tensor (an nn.Parameter learns: its exact gradient on every
            backend).
        decoupled: D(a) of the table's last column (the positives leave the denominator).
        normalize: L2-normalise the rows first (a zero row stays zero).
        reduction: "mean" over the rows with a non-empty D(a), "sum", "none" (the (B, V) row losses) or
            "global_mean" (with process_group; "mean" without): world_size·Σ_own ℓ_a / (counted rows of all
            ranks), whose average over the ranks (what DDP's gradient averaging takes) is the mean over the whole
            batch, so DDP's gradients equal one process's for any per-rank sizes.
        backend: "auto", "reference", "cpu", "cuda" or "triton" (loss/backends.py); "auto" takes triton, then
            cuda, for CUDA tensors and cpu otherwise, and falls back to the reference with a warning.
        process_group: every rank passes its own rows; negatives and positives run over the rows of all ranks,
            the result reduces this rank's rows, and column gradients are summed back to their owners.
        negatives: (M, d) extra columns of the denominator only (a memory bank: MoCo's queue, lightly's
            memory_bank_size), for cl/dcl and nscl, not for supcon (its same-class entries would be positives);
            they carry no gradient and stay local to the rank.
        negative_labels: (M,) class ids of the negatives, needed by nscl: same-class entries leave its
            denominator, as same-class samples do.

    Returns:
        The loss, a 0-d tensor (float64 for float64 z, else float32), or the (B, V) row losses with
            reduction="none".

    Raises:
        TypeError: z or negatives not a floating tensor, labels not an integer tensor, a temperature that is
            not a real number or a floating tensor.
        ValueError: a bad shape, choice or temperature (τ ≤ 0); labels missing for "nscl" or "supcon";
            negatives with "supcon", with requires_grad, on another device, or without negative_labels for "nscl".
        RuntimeError: the backend named cannot run here (the message says why).

    Examples:
        >>> z = torch.randn(8, 2, 16)  # 8 samples, 2 views each
        >>> labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
        >>> loss = clnscl.contrastive_loss(z, labels, objective="nscl", temperature=0.1)
        >>> loss.shape, loss.dtype
        (torch.Size([]), torch.float32)
        >>> clnscl.contrastive_loss(z, labels, reduction="none").shape
        torch.Size([8, 2])
        >>> exact = clnscl.contrastive_loss(z, labels, objective="nscl", temperature=0.1, backend="reference")
        >>> torch.allclose(loss, exact, atol=1e-5)  # the fused kernel equals the materialised N×N reference
        True

        Two views alike and nothing else to contrast with: log e^{s} − s = 0 exactly.

        >>> clnscl.contrastive_loss(torch.ones(1, 2, 4), objective="cl").item()
        0.0
    """
    check_choice("objective", objective, OBJECTIVES)
    check_choice("reduction", reduction, REDUCTIONS)
    spec = loss_spec(objective, decoupled)
    _check_z(z)
    if labels is None and spec.needs_labels:
        raise ValueError(f"objective {objective!r} needs labels; only 'cl'/'dcl' accept labels=None")
    if labels is not None:
        check_labels(labels, "labels", z.shape[0], z.device, against="z", unit="samples")
    scale = temperature_scale(temperature)
    impl = BACKENDS.resolve(backend, z)

    b, v, d = z.shape
    x = z.reshape(b * v, d).to(compute_dtype(z))
    if normalize:
        x = F.normalize(x, dim=1, eps=NORM_EPS)
    bank = bank_columns(negatives, negative_labels, spec, d, z.device) if negatives is not None else None
    cols = columns(x, None if spec.objective == "cl" else labels, v, process_group)
    # this rank's rows against themselves as one set (the backends' symmetric schedules apply), then, under
    # a process group, against the other ranks' rows as separate columns
    own = LseArgs(q=x, k=None, row_inst=cols.row_inst, row_cls=cols.row_cls, col_inst=None, col_cls=None,
                  row_offset=0, scale=scale, include=spec.include, unit_rows=normalize)
    lse = impl.masked_lse(own, z.dtype)
    if cols.k is not None and cols.k.shape[0] > x.shape[0]:
        k, col_inst, col_cls = cols.others()
        lse = log_add_exp(lse, impl.masked_lse(own._replace(k=k, col_inst=col_inst, col_cls=col_cls), z.dtype))
    if bank is not None:
        lse = with_bank(impl, own, lse, bank, normalize, z.dtype)
    if spec.supervised_positives:
        pos = class_positive_mean(x, *cols.all(x), cols.row_offset)
    else:
        pos = instance_positive_mean(x, v)
    valid = lse != float("-inf")
    rows = torch.where(valid, lse - scale * pos, torch.zeros_like(lse))
    others = bank is not None or (cols.k is not None and cols.k.shape[0] > x.shape[0])
    only = _positive_only(spec, labels, b, v, others)
    if only is not False:  # log e^{s} − s: exactly 0, with a zero gradient, where the fused LSE leaves rounding
        rows = rows * 0 if only is True else torch.where(only, rows * 0, rows)
    if reduction == "none":
        return rows.view(b, v)
    if reduction == "sum":
        return rows.sum()
    return nonempty_mean(rows, valid, process_group if reduction == "global_mean" else None)


def _positive_only(spec, labels, b: int, v: int, other_columns: bool) -> bool | torch.Tensor:
    """Whether every row's denominator D(a) is its one positive alone (two views, nothing to contrast with: one
    sample, or for nscl one class; no bank, no other rank), so that each row loss is exactly 0. For nscl a
    0-d tensor (the labels decide: no Python branch on data, so torch.compile keeps one graph)."""
    if v != 2 or not spec.include & POS or other_columns:
        return False
    if spec.objective == "nscl":
        return (labels == labels[0]).all()
    return b == 1


def with_bank(impl, args: LseArgs, lse: torch.Tensor, bank, normalize: bool, io_dtype) -> torch.Tensor:
    """lse with the bank's rows (bank_columns) as one more part of each row's denominator."""
    k, inst, cls = bank
    if k.shape[0] == 0:
        return lse
    k = k.to(args.q.dtype)
    k = F.normalize(k, dim=1, eps=NORM_EPS) if normalize else k
    return log_add_exp(lse, impl.masked_lse(args._replace(k=k, col_inst=inst, col_cls=cls, row_offset=0), io_dtype))


def bank_columns(negatives, negative_labels, spec, d: int, device):
    """(bank rows, their instance ids, their class ids): ids −1, −2, … that no row has, so that every entry is
    another instance — a negative, or for nscl with its label in the row's class a same-class sample."""
    check_tensor(negatives, "negatives", "(M, d)")
    check_float(negatives, "negatives")
    if negatives.ndim != 2 or negatives.shape[1] != d:
        raise ValueError(f"negatives must have shape (M, {d}) (the rows' feature dimension), got "
                         f"{tuple(negatives.shape)}")
    if negatives.device != device:
        raise ValueError(f"negatives must be on z's device {device}, got {negatives.device}")
    if negatives.requires_grad:
        raise ValueError("negatives carry no gradient (a memory bank): pass negatives.detach()")
    if spec.supervised_positives:
        raise ValueError("negatives: supcon's same-class bank entries would be positives; a memory bank holds "
                         "negatives for cl, dcl and nscl only")
    m = negatives.shape[0]
    inst = -1 - torch.arange(m, device=device)
    if spec.objective == "cl":
        return negatives, inst, inst
    if negative_labels is None:
        raise ValueError(f"objective {spec.objective!r} needs negative_labels (M,) with negatives")
    check_labels(negative_labels, "negative_labels", m, device, against="negatives", unit="rows")
    return negatives, inst, negative_labels.to(torch.int64)


def log_add_exp(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """log(e^a + e^b) of two parts of each row's denominator; −inf (with a zero gradient) where both are."""
    both = torch.isneginf(a) & torch.isneginf(b)
    return torch.where(both, a.detach(), torch.logaddexp(a.masked_fill(both, 0.0), b.masked_fill(both, 0.0)))


def temperature_scale(temperature) -> torch.Tensor:
    """scale = 1/τ as a 0-d tensor: from a float a CPU float64 constant (reading it needs no device sync), from
    a tensor τ (a learnable temperature) differentiable, on τ's device and in its dtype."""
    if isinstance(temperature, torch.Tensor):
        check_temperature_tensor(temperature)
        return (1.0 / temperature).reshape(())
    return torch.tensor(1.0 / check_temperature(temperature), dtype=torch.float64)


def _check_z(z) -> None:
    check_tensor(z, "z", "(B, V, d)")
    if z.ndim != 3:
        raise ValueError(f"z must have shape (B, V, d) (3 dimensions), got shape {tuple(z.shape)}")
    b, v, d = z.shape
    if v < 2:
        raise ValueError(f"z must hold V >= 2 views per sample (shape (B, V, d)), got V = {v}")
    if b == 0:
        raise ValueError("z is an empty batch (B = 0); a contrastive loss needs at least one sample")
    if d == 0:
        raise ValueError("z has feature dimension d = 0")
    check_float(z, "z")
