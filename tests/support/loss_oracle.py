"""Independent, deliberately naive float64 oracle of the loss table in docs/design.md §2.

Nothing from clnscl is imported here: the sets P(a) and D(a) are built anchor by anchor, as Python index
lists, straight from the table, so that a mistake in clnscl's masks or fused kernels cannot be copied into
the oracle. O(N²) Python work: small sizes only.

Rows are a = (i, v) with flat index a = i·V + v (the layout of z.reshape(B·V, d)).

| objective | P(a)        | D(a), decoupled=False | D(a), decoupled=True |
| cl / dcl  | Pos         | all b ≠ a             | other samples        |
| nscl      | Pos         | Pos ∪ Neg             | Neg                  |
| supcon    | Pos ∪ Same  | all b ≠ a             | Neg                  |
"""
from __future__ import annotations

import torch

EPS = 1e-12


def anchor_sets(inst, lab, a, objective, decoupled):
    """(P(a), D(a)) as sorted lists of flat row indices, for anchor a.

    inst[b] is the sample index of row b, lab[b] its class (for cl the class is the sample itself).
    """
    n = len(inst)
    pos = [b for b in range(n) if b != a and inst[b] == inst[a]]
    same = [b for b in range(n) if inst[b] != inst[a] and lab[b] == lab[a]]
    neg = [b for b in range(n) if inst[b] != inst[a] and lab[b] != lab[a]]
    everyone_else = [b for b in range(n) if b != a]
    if objective in ("cl", "dcl"):
        if objective == "dcl":
            decoupled = True
        p = pos
        d = (same + neg) if decoupled else everyone_else
    elif objective == "nscl":
        p = pos
        d = neg if decoupled else pos + neg
    elif objective == "supcon":
        p = pos + same
        d = neg if decoupled else everyone_else
    else:  # pragma: no cover - the oracle is only called with valid objectives
        raise ValueError(objective)
    return sorted(p), sorted(d)


def oracle_loss(z, labels=None, *, objective="nscl", temperature=0.1, decoupled=False, normalize=True,
                reduction="mean"):
    """The loss of docs/design.md §2 in float64, differentiable in z (autograd flows back to z's dtype)."""
    b, v, d = z.shape
    x = z.reshape(b * v, d).to(torch.float64)
    if normalize:
        x = x / x.norm(dim=1, keepdim=True).clamp_min(EPS)
    inst = [a // v for a in range(b * v)]
    if objective in ("cl", "dcl") or labels is None:
        lab = list(inst)
    else:
        lab_per_sample = [int(y) for y in labels.tolist()]
        lab = [lab_per_sample[i] for i in inst]
    rows = []
    nonempty = 0
    for a in range(b * v):
        p, dd = anchor_sets(inst, lab, a, objective, decoupled)
        if not dd:
            rows.append(x.new_zeros(()))  # empty D(a): 0 loss, 0 gradient, not counted in the mean
            continue
        nonempty += 1
        s_d = (x[dd] @ x[a]) / temperature
        s_p = (x[p] @ x[a]) / temperature
        rows.append(torch.logsumexp(s_d, dim=0) - s_p.mean())
    rows = torch.stack(rows)
    if reduction == "none":
        return rows.view(b, v)
    if reduction == "sum":
        return rows.sum()
    if reduction == "mean":
        return rows.sum() / max(nonempty, 1)
    raise ValueError(reduction)

