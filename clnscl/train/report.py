"""`clnscl report DIR`: figures and a markdown summary of a coupled-training run (RUN_DIR/metrics.jsonl).

`write_report(run_dir)` reads the records that `clnscl train` wrote, draws

* ``alignment.png``          CKA cosine, CKA linear and RSA Pearson of every compared model against the anchor,
                             one panel per metric; projector outputs z solid, encoder features h dashed;
* ``weight_divergence.png``  mean relative weight distance to the anchor (log y-axis);
* ``loss_gap.png``           CL − NSCL loss of the anchor model on the fixed evaluation batch, and its bound;
* ``accuracy.png``           NCCC and k-NN accuracy of every model;
* ``losses.png``             training loss of every model;
* ``theory.png``             when the run has cl and nscl: the similarity gap against Theorem 1's bound, CKA
                             and RSA against their lower bounds (`train/report_theory.py`);
* ``layers.png``             with layer_alignment=true: per compared model, the CKA of every encoder block with
                             the anchor's, block × evaluation (`train/report_layers.py`);

into RUN_DIR and returns a markdown summary: a table per compared model and the paper's three qualitative
findings, each stated as holds / does not hold / not applicable with the numbers behind it. The thresholds
are fixed constants of this module (`HIGH_ALIGNMENT`), never fitted to a run.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from .records import METRICS_FILE, read_records
from .report_layers import has_layers, layers_figure
from .report_theory import has_theory, theory_figure, theory_lines

FIGURES = ("alignment.png", "weight_divergence.png", "loss_gap.png", "accuracy.png", "losses.png")
ALIGNMENT_METRICS = (("cka_cosine", "CKA (cosine)"), ("cka_linear", "CKA (linear)"), ("rsa_pearson", "RSA (Pearson)"))
# Finding (2): "alignment stayed high" means the minimum CKA cosine (z) over every evaluation is at least this.
HIGH_ALIGNMENT = 0.9


# ------------------------------------------------------------------------------------------------ reading


def read_metrics(path) -> tuple[list[dict], list[str]]:
    """Records of a metrics.jsonl file and notes about what was skipped (`records.read_records`); a file without
    records raises ValueError naming it."""
    records, notes = read_records(path)
    if not records:
        raise ValueError(f"{path} holds no evaluation records" + (" (only a truncated line)" if notes else ""))
    return records, notes


def _num(v) -> float:
    if v is None or isinstance(v, bool):
        return math.nan
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _models(records: list[dict]) -> tuple[str, list[str], list[str]]:
    """(anchor, every model, compared models) in the order they first appear."""
    every = list(dict.fromkeys(k.split("/", 1)[1] for r in records for k in r if k.startswith("loss/")))
    compared = list(dict.fromkeys(k.split("/", 1)[1] for r in records for k in r if k.startswith("cka_cosine/")))
    anchors = [r["anchor"] for r in records if isinstance(r.get("anchor"), str)]
    if anchors:
        anchor = anchors[-1]
    else:  # older records: the anchor is the model that is never compared
        rest = [m for m in every if m not in compared]
        anchor = rest[0] if rest else "anchor"
    every = list(dict.fromkeys([*([anchor] if anchor in every else []), *every, *compared]))
    return anchor, every, compared


def _series(records: list[dict], key: str) -> tuple[list[float], list[float]]:
    steps, values = [], []
    for r in records:
        if key in r:
            steps.append(_num(r["step"]))
            values.append(_num(r[key]))
    return steps, values


def _final(records: list[dict], key: str) -> float:
    for r in reversed(records):
        if key in r:
            return _num(r[key])
    return math.nan


def _first(records: list[dict], key: str) -> float:
    for r in records:
        if key in r:
            return _num(r[key])
    return math.nan


def _min(records: list[dict], key: str) -> float:
    vals = [v for v in _series(records, key)[1] if not math.isnan(v)]
    if not vals:
        return math.nan
    return min(vals)


# ------------------------------------------------------------------------------------------------ figures


def _figures(records: list[dict], anchor: str, models: list[str], compared: list[str], out: Path) -> list[str]:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("`clnscl report` draws its figures with matplotlib: pip install matplotlib") from exc

    notes = []
    # One colour per model in every figure.
    palette = ["C0", "C1", "C2", "C3", "C4", "C5", "C6", "C7", "C8", "C9"]
    color = {m: palette[i % len(palette)] for i, m in enumerate(models)}

    def new(ncols=1, width=5.0, height=3.8):
        # The Agg canvas is attached to each figure: nothing global (pyplot, the user's backend) is touched
        # and no window is ever opened.
        fig = Figure(figsize=(width * ncols, height), layout="constrained")
        FigureCanvasAgg(fig)
        axes = fig.subplots(1, ncols, squeeze=False)[0]
        for ax in axes:
            ax.set_xlabel("step")
            ax.grid(True, alpha=0.3)
        return fig, axes

    def save(fig, name):
        fig.savefig(out / name, dpi=110)

    def legend(ax):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)

    fig, axes = new(len(ALIGNMENT_METRICS))
    for ax, (key, title) in zip(axes, ALIGNMENT_METRICS):
        for m in compared:
            for prefix, style, space in (("", "-", "z"), ("h/", "--", "h")):
                steps, vals = _series(records, f"{prefix}{key}/{m}")
                if steps:
                    ax.plot(steps, vals, style, color=color[m], marker=".", label=f"{m} ({space})")
        ax.set_title(f"{title} vs {anchor}")
        legend(ax)
    fig.suptitle("alignment with the anchor (z: projector output, solid; h: encoder features, dashed)",
                 fontsize=10)
    save(fig, "alignment.png")

    fig, (ax,) = new()
    drawn = False
    for m in compared:
        steps, vals = _series(records, f"weight_div/{m}")
        pts = [(s, v) for s, v in zip(steps, vals) if v > 0]  # log axis: 0 or NaN cannot be drawn
        if len(pts) < len(steps):
            notes.append(f"weight_divergence.png: {len(steps) - len(pts)} non-positive or NaN value(s) of "
                         f"weight_div/{m} not drawn on the log axis")
        if pts:
            ax.plot(*zip(*pts), marker=".", color=color[m], label=m)
            drawn = True
    if drawn:
        ax.set_yscale("log")
    ax.set_ylabel("mean relative weight distance")
    ax.set_title(f"weight divergence from {anchor}")
    legend(ax)
    save(fig, "weight_divergence.png")

    fig, (ax,) = new()
    steps, gap = _series(records, "loss_gap")
    if steps:
        ax.plot(steps, gap, marker=".", color="C0", label="loss gap  ℓ_CL − ℓ_NSCL")
    bsteps, bound = _series(records, "loss_gap_bound")
    finite = [(s, b) for s, b in zip(bsteps, bound) if math.isfinite(b)]
    if finite:
        ax.plot(*zip(*finite), "--", color="C3", label="bound")
    if len(finite) < len(bsteps):
        notes.append(f"loss_gap.png: {len(bsteps) - len(finite)} infinite or NaN bound value(s) not drawn")
    ax.set_ylabel("loss")
    ax.set_title(f"CL − NSCL loss of the anchor ({anchor}) and its bound")
    legend(ax)
    save(fig, "loss_gap.png")

    fig, axes = new(2)
    for ax, (key, title) in zip(axes, (("nccc", "nearest class-centre accuracy"), ("knn", "k-NN accuracy"))):
        for m in models:
            steps, vals = _series(records, f"{key}/{m}")
            if steps:
                ax.plot(steps, vals, marker=".", color=color[m], label=m)
        ax.set_title(title)
        ax.set_ylabel("accuracy (reference set)")
        legend(ax)
    save(fig, "accuracy.png")

    fig, (ax,) = new()
    for m in models:
        steps, vals = _series(records, f"loss/{m}")
        if steps:
            ax.plot(steps, vals, marker=".", color=color[m], label=m)
    ax.set_ylabel("training loss (last batch)")
    ax.set_title("training losses")
    legend(ax)
    save(fig, "losses.png")
    if has_theory(records):
        notes += theory_figure(records, new, save, legend)
    if has_layers(records):
        notes += layers_figure(records, new, save)
    return notes


# ------------------------------------------------------------------------------------------------ summary


def _f(v: float, digits: int = 4) -> str:
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return f"{v:.{digits}f}"


def _g(v: float) -> str:
    return _f(v) if not math.isfinite(v) else f"{v:.3g}"


def _verdict(ok: bool | None) -> str:
    return {True: "holds", False: "does not hold", None: "not applicable"}[ok]


def findings(records: list[dict], anchor: str, compared: list[str]) -> list[tuple[bool | None, str]]:
    """The paper's three qualitative findings on these records: (verdict, explanation with the numbers).

    verdict is True (holds), False (does not hold) or None (not applicable to this run)."""
    out = []
    # (1) NSCL stays more aligned with the anchor than SupCon and CE (final CKA cosine z and final RSA).
    others = [m for m in ("supcon", "ce") if m in compared]
    if "nscl" not in compared or not others:
        why = "no nscl model compared with the anchor" if "nscl" not in compared else "no supcon or ce model"
        out.append((None, f"NSCL stays more aligned with {anchor} than SupCon and CE: {why}"))
    else:
        cka = {m: _final(records, f"cka_cosine/{m}") for m in ("nscl", *others)}
        rsa = {m: _final(records, f"rsa_pearson/{m}") for m in ("nscl", *others)}
        ok = all(cka["nscl"] > cka[m] and rsa["nscl"] > rsa[m] for m in others)
        nums = "; ".join(f"{m} {_f(cka[m])} / {_f(rsa[m])}" for m in ("nscl", *others))
        out.append((ok, f"NSCL stays more aligned with {anchor} than {' and '.join(others)} "
                        f"(final CKA cosine / RSA: {nums})"))
    # (2) NSCL's weights diverge from the anchor's over training while its representation stays aligned.
    if "nscl" not in compared:
        out.append((None, f"weights diverge while alignment stays high: no nscl model compared with {anchor}"))
    elif sum(1 for r in records if "weight_div/nscl" in r) < 2:
        out.append((None, "weights diverge while alignment stays high: a single evaluation, no trend to judge"))
    else:
        w0, w1 = _first(records, "weight_div/nscl"), _final(records, "weight_div/nscl")
        low = _min(records, "cka_cosine/nscl")
        grew, high = w1 > w0, low >= HIGH_ALIGNMENT
        ok = grew and high
        out.append((ok, f"weight divergence of nscl {'grew' if grew else 'did not grow'} "
                        f"({_g(w0)} → {_g(w1)}) while its CKA cosine with {anchor} "
                        f"{'stayed' if high else 'did not stay'} ≥ {HIGH_ALIGNMENT} (minimum {_f(low)})"))
    # (3) The CL − NSCL loss gap never exceeds its bound.
    pairs = [(r["step"], _num(r["loss_gap"]), _num(r["loss_gap_bound"])) for r in records
             if "loss_gap" in r and "loss_gap_bound" in r]
    if not pairs:
        out.append((None, "loss gap within its bound: no loss_gap records"))
    else:
        # the evaluation whose gap comes closest to (or furthest past) its bound; NaN counts as a violation
        margin = [(b - g) if not (math.isnan(g) or math.isnan(b)) else -math.inf for _, g, b in pairs]
        i = min(range(len(pairs)), key=margin.__getitem__)
        step, g, b = pairs[i]
        ok = margin[i] >= 0
        gaps = [g for _, g, _ in pairs if not math.isnan(g)]
        largest = max(gaps) if gaps else math.nan
        out.append((ok, f"the loss gap {'never exceeded' if ok else 'exceeded'} its bound over {len(pairs)} "
                        f"evaluation(s) (tightest at step {step}: gap {_f(g)} vs bound {_f(b)}; "
                        f"largest gap {_f(largest)})"))
    return out


def summary(records: list[dict], notes=()) -> str:
    anchor, models, compared = _models(records)
    last = records[-1]
    lines = [f"## Run report: {len(records)} evaluation(s), final step {last['step']}"
             + (f" (epoch {_num(last['epoch']):.2f})" if "epoch" in last else "") + f", anchor `{anchor}`", ""]
    header = ["model", "final CKA cos (z)", "min CKA cos (z)", "final RSA (z)", "final weight div", "final NCCC",
              "final kNN"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for m in models:
        if m == anchor:
            align = ["—"] * 4
            m_name = f"{m} (anchor)"
        else:
            align = [_f(_final(records, f"cka_cosine/{m}")), _f(_min(records, f"cka_cosine/{m}")),
                     _f(_final(records, f"rsa_pearson/{m}")), _g(_final(records, f"weight_div/{m}"))]
            m_name = m
        acc = [_f(_final(records, f"nccc/{m}")), _f(_final(records, f"knn/{m}"))]
        lines.append("| " + " | ".join([m_name, *align, *acc]) + " |")
    lines += ["", "Paper findings in this run:"]
    for n, (ok, text) in enumerate(findings(records, anchor, compared), start=1):
        lines.append(f"- ({n}) {_verdict(ok)}: {text}")
    lines += theory_lines(records)
    if notes:
        lines += ["", *(f"Note: {n}" for n in notes)]
    return "\n".join(lines)


def write_report(run_dir) -> str:
    """Draw the figures of RUN_DIR/metrics.jsonl into RUN_DIR and return the markdown summary.

    run_dir may also be the metrics.jsonl file itself (figures then go next to it)."""
    run_dir = Path(run_dir)
    path = run_dir if run_dir.is_file() else run_dir / METRICS_FILE
    records, notes = read_metrics(path)
    anchor, models, compared = _models(records)
    notes += _figures(records, anchor, models, compared, path.parent)
    figs = ", ".join(FIGURES + (("theory.png",) if has_theory(records) else ())
                     + (("layers.png",) if has_layers(records) else ()))
    return summary(records, notes) + f"\n\nFigures in {path.parent}: {figs}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="clnscl report",
                                     description="figures and a markdown summary of a `clnscl train` run")
    parser.add_argument("run_dir", metavar="DIR", help="run directory holding metrics.jsonl")
    args = parser.parse_args(argv)
    try:
        text = write_report(args.run_dir)
    except (FileNotFoundError, ValueError) as exc:
        print(f"clnscl report: {exc}", file=sys.stderr)
        return 2
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
