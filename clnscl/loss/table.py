"""The loss table as data: which pairs (a, b), b ≠ a, enter the positives P(a) and the denominator D(a).

Pairs fall in three relations: POS (another view of the same sample), SAME (a view of another sample of the
same class) and NEG (a view of a sample of another class). D(a) is a 3-bit include mask over them, the same
bits the C++ (csrc/masked_lse.h) and Triton (triton/kernels.py) kernels test:

| objective | P(a)       | D(a), decoupled=False | D(a), decoupled=True |
| cl        | Pos        | Pos ∪ Same ∪ Neg      | Same ∪ Neg (DCL)     |
| nscl      | Pos        | Pos ∪ Neg             | Neg                  |
| supcon    | Pos ∪ Same | Pos ∪ Same ∪ Neg      | Neg                  |
"""
from __future__ import annotations

from typing import NamedTuple

POS, SAME, NEG = 1, 2, 4

OBJECTIVES = ("cl", "dcl", "nscl", "supcon")
REDUCTIONS = ("mean", "sum", "none", "global_mean")


class LossSpec(NamedTuple):
    objective: str  # canonical: "cl", "nscl" or "supcon"
    include: int  # D(a) as a mask over POS | SAME | NEG
    supervised_positives: bool  # P(a) = Pos ∪ Same (SupCon) rather than Pos
    needs_labels: bool


def loss_spec(objective: str, decoupled: bool) -> LossSpec:
    """Resolve an objective name ("dcl" is "cl" decoupled) and the decoupled flag to its row of the table."""
    if objective == "dcl":
        objective, decoupled = "cl", True
    if objective == "cl":
        include = SAME | NEG if decoupled else POS | SAME | NEG
        return LossSpec("cl", include, False, False)
    if objective == "nscl":
        return LossSpec("nscl", NEG if decoupled else POS | NEG, False, True)
    if objective == "supcon":
        return LossSpec("supcon", NEG if decoupled else POS | SAME | NEG, True, True)
    raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
