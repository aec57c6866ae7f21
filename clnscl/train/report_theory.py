"""The theory part of `clnscl report` (the `theory/` records of `train/theory_records.py`): ``theory.png``,
the measured similarity gap ‖Σ^CL − Σ^NSCL‖_F against Theorem 1's similarity-gap bound and the trivial 2N (log
scale), and the measured CKA and RSA against their Corollary 1 and 2 lower bounds (from the measured ρ, r and
through Theorem 1); and the summary's lines saying where each bound held and where it was vacuous (a
similarity-gap bound ≥ 2N, a lower bound ≤ 0). The similarity gap is never the loss gap (CL − NSCL loss, the
report's finding 3): every text here names it in full."""
from __future__ import annotations

import math


def _other(records: list[dict]) -> str:
    return "nscl" if records[-1].get("anchor") == "cl" else "cl"


def _rows(records: list[dict], *keys: str) -> list[tuple]:
    return [(r["step"], *(float(r[k]) for k in keys)) for r in records if all(k in r for k in keys)]


def has_theory(records: list[dict]) -> bool:
    return any("theory/gap" in r for r in records)


def theory_figure(records: list[dict], new, save, legend) -> list[str]:
    """Draw theory.png with the report's figure helpers; notes about values a log axis cannot show."""
    notes = []
    other = _other(records)
    fig, (ax, bx) = new(2)
    drawn = False
    for key, style, label in (("theory/gap", "-", "similarity gap ‖Σ^CL − Σ^NSCL‖_F (measured)"),
                              ("theory/gap_bound", "--", "similarity-gap bound (Theorem 1)"),
                              ("theory/gap_trivial", ":", "2N (largest possible)")):
        rows = _rows(records, key)
        pts = [(s, v) for s, v in rows if v > 0 and math.isfinite(v)]
        if len(pts) < len(rows):
            notes.append(f"theory.png: {len(rows) - len(pts)} value(s) of {key} not positive and finite, not drawn")
        if pts:
            ax.plot(*zip(*pts), style, marker=".", label=label)
            drawn = True
    if drawn:
        ax.set_yscale("log")
    ax.set_ylabel("similarity gap (Frobenius norm)")
    ax.set_title("similarity gap cl vs nscl and its Theorem 1 bound")
    legend(ax)
    for metric, name, color in (("cka_cosine", "cka", "C0"), ("rsa_pearson", "rsa", "C1")):
        for key, style, label in ((f"{metric}/{other}", "-", f"{name.upper()} measured"),
                                  (f"theory/{name}_bound", "--", f"{name.upper()} ≥ bound (measured ratio)"),
                                  (f"theory/{name}_bound_thm1", ":", f"{name.upper()} ≥ bound (Theorem 1)")):
            rows = _rows(records, key)
            if rows:
                bx.plot(*zip(*rows), style, color=color, marker=".", label=label)
    bx.set_ylim(-1.05, 1.05)
    bx.set_title("CKA and RSA (cosine, z) and their lower bounds")
    legend(bx)
    save(fig, "theory.png")
    return notes


def _fmt(v: float) -> str:
    return "inf" if v == math.inf else f"{v:.4g}"


def theory_lines(records: list[dict]) -> list[str]:
    """The summary's lines on the theory records (empty when the run has none)."""
    if not has_theory(records):
        return []
    other = _other(records)
    lines = ["", "Theory (cl vs nscl, reference set, cosine similarities of z):"]
    gaps = _rows(records, "theory/gap", "theory/gap_bound", "theory/gap_trivial")
    over = [s for s, g, b, _ in gaps if g > b]
    vacuous = [s for s, _, b, t in gaps if b >= t]
    step, g, b, t = gaps[-1]
    text = (f"- Theorem 1: at step {step} the measured similarity gap ‖Σ^CL − Σ^NSCL‖_F is {_fmt(g)}, its bound "
            f"{_fmt(b)} (trivial 2N = {_fmt(t)}); the similarity gap exceeded its bound at {len(over)} of {len(gaps)} "
            "evaluation(s)")
    if over:
        text += (f" (first at step {over[0]}: the theorem bounds similarity descent, and a network's similarity "
                 "matrices do not move by −η·G)")
    text += "; the similarity-gap bound is vacuous (≥ 2N) " + (f"from step {vacuous[0]}" if vacuous
                                                                else "at no evaluation")
    lines.append(text)
    for metric, name, cor in (("cka_cosine", "cka", "Corollary 1 (CKA)"), ("rsa_pearson", "rsa", "Corollary 2 (RSA)")):
        rows = _rows(records, f"{metric}/{other}", f"theory/{name}_bound", f"theory/{name}_bound_thm1")
        if not rows:
            continue
        broken = [s for s, m, lo, _ in rows if m < lo - 1e-9]
        empty = [s for s, _, _, lo in rows if lo <= 0]
        step, m, lo, lo1 = rows[-1]
        lines.append(f"- {cor}: at step {step} measured {m:.4f} ≥ {lo:.4f} from the measured ratio "
                     f"({f'held at all {len(rows)}' if not broken else f'FAILED at {len(broken)} of {len(rows)}'} "
                     f"evaluation(s)); through Theorem 1's similarity-gap bound {lo1:.4f} (a bound where that one "
                     f"is), vacuous (≤ 0) at {len(empty)} of {len(rows)}")
    comp = _rows(records, "theory/same_class_max", "theory/same_class_limit")
    if comp:
        step, seen, limit = comp[-1]
        lines.append(f"- batch composition: the largest same-class fraction of an anchor's denominator so far is "
                     f"{seen:.4f}, {'within' if seen <= limit else 'above'} π_max + ε = {limit:.4f}")
    return lines
