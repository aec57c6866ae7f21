"""`contrastive_loss`: the public entry point of the loss family (DESIGN.md §2).

The fused backends split each row loss ℓ_a = LSE_{b∈D(a)} s_ab − mean_{p∈P(a)} s_ap in two: the masked
row log-sum-exp comes from a kernel that never builds the N×N matrix, and the positive mean from per-instance
or per-class sums in O(N·d). The reference backend materialises everything and is the oracle of the tests.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import backends, reference
from ._positives import class_positive_mean, instance_positive_mean
from ._spec import loss_spec
from ._validate import check_features, check_labels, check_options, check_temperature

NORM_EPS = 1e-12  # as F.normalize: ẑ = z / max(‖z‖, eps), so a zero row stays zero instead of NaN


def contrastive_loss(
    z: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    objective: str = "nscl",
    temperature: float = 0.1,
    decoupled: bool = False,
    normalize: bool = True,
    reduction: str = "mean",
    backend: str = "auto",
    process_group=None,
) -> torch.Tensor:
    """Contrastive loss of z (B, V, d) with optional integer labels (B,); see DESIGN.md §2 for the sets.

    objective: "cl" (NT-Xent), "dcl" (= cl, decoupled), "nscl" or "supcon". temperature τ > 0 scales
    s_ab = ⟨ẑ_a, ẑ_b⟩/τ. reduction "mean" averages over rows with non-empty D(a), "sum" adds, "none" returns
    (B, V). backend: "auto", "reference", "cpu" (C++) or "triton". With process_group, negatives and
    positives run over the rows of all ranks and the result is the reduction over this rank's rows.
    """
    check_options(objective, reduction)
    spec = loss_spec(objective, decoupled)
    check_features(z)
    check_labels(labels, z, spec.needs_labels, objective)
    scale = 1.0 / check_temperature(temperature)
    impl = backends.resolve(backend, z)

    b, v, d = z.shape
    compute_dtype = torch.float64 if z.dtype == torch.float64 else torch.float32
    x = z.reshape(b * v, d).to(compute_dtype)
    if normalize:
        x = F.normalize(x, dim=1, eps=NORM_EPS)
    inst = torch.arange(b, device=z.device)
    cl = spec.objective == "cl"  # CL ignores labels: every sample is its own class
    if process_group is None:
        inst_offset = 0
    else:
        from .distributed import global_columns

        inst_offset, xk, col_inst, col_cls = global_columns(x, None if cl else labels, v, process_group)
    row_inst = (inst + inst_offset).repeat_interleave(v)
    row_cls = row_inst if cl else labels.to(torch.int64).repeat_interleave(v)
    row_offset = inst_offset * v
    self_sim = process_group is None  # the columns are the rows themselves
    kx, k_inst, k_cls = (x, row_inst, row_cls) if self_sim else (xk, col_inst, col_cls)

    if impl.name == "reference":
        rows, valid = reference.row_losses(x, kx, row_inst, row_cls, k_inst, k_cls, row_offset, scale, spec)
    else:
        op_k, op_inst, op_cls = (None, None, None) if self_sim else (kx, k_inst, k_cls)
        lse = impl.masked_lse(
            x, op_k, row_inst, row_cls, op_inst, op_cls, row_offset, scale, spec.include, normalize, z.dtype
        )
        if spec.supervised_positives:
            pos = class_positive_mean(x, kx, k_cls, row_offset)
        else:
            pos = instance_positive_mean(x, v)
        valid = lse != float("-inf")
        rows = torch.where(valid, lse - scale * pos, torch.zeros_like(lse))

    if reduction == "none":
        return rows.view(b, v)
    if reduction == "sum":
        return rows.sum()
    return rows.sum() / valid.sum().clamp_min(1).to(rows.dtype)
