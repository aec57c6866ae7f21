"""`clnscl report DIR`: figures and a markdown summary of a coupled-training run (RUN_DIR/metrics.jsonl); for a
sweep directory of `clnscl sweep`, the summary of `train/report_sweep.py`.

`write_report(run_dir)` reads the records that `clnscl train` wrote, draws

* ``alignment.png``          CKA cosine, CKA linear and RSA Pearson of every compared model against the anchor,
                             one panel per metric; projector outputs z solid, encoder features h dashed;
* ``weight_divergence.png``  mean relative weight distance to the anchor (log y-axis);
* ``loss_gap.png``           the loss gap: CL − NSCL loss of the anchor model on the fixed evaluation batches, and
                             the loss-gap bound;
* ``accuracy.png``           NCCC and k-NN accuracy of every model;
* ``losses.png``             training loss of every model;
* ``theory.png``             when the run has cl and nscl: the similarity gap ‖Σ^CL − Σ^NSCL‖_F against its
                             Theorem 1 bound, CKA and RSA against their lower bounds (`train/report_theory.py`);
* ``layers.png``             with layer_alignment=true: per compared model, the CKA of every encoder block with
                             the anchor's, block × evaluation (`train/report_layers.py`);

into RUN_DIR, writes the markdown summary to RUN_DIR/summary.md and returns it: a table per compared model and
the paper's three qualitative findings, each stated as holds / does not hold with the numbers behind it, not
applicable (the run lacks the models), or not informative, with the reason: measured over fewer than
`MIN_EVALUATIONS` evaluations, or a model it is about (the anchor included) has no probe accuracy above chance
(`Chance`; the classes from the run's classes.json or config.yaml). The thresholds are fixed constants of this
module, never fitted to a run.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from .records import METRICS_FILE, read_records
from .report_layers import has_layers, layers_figure
from .report_theory import has_theory, theory_figure, theory_lines

FIGURES = ("alignment.png", "weight_divergence.png", "loss_gap.png", "accuracy.png", "losses.png")
ALIGNMENT_METRICS = (("cka_cosine", "CKA (cosine)"), ("cka_linear", "CKA (linear)"), ("rsa_pearson", "RSA (Pearson)"))
SUMMARY_FILE = "summary.md"
HOLDS, FAILS, NOT_APPLICABLE, NOT_INFORMATIVE = "holds", "does not hold", "not applicable", "not informative"
# Finding (2): "alignment stayed high" means the minimum CKA cosine (z) over every evaluation is at least this.
HIGH_ALIGNMENT = 0.9
# A finding needs at least this many evaluations: the first is always at step 1 (the models one step from their
# common start), so two evaluations hold a single trained state and no course to judge.
MIN_EVALUATIONS = 3
# A probe accuracy is above chance when it exceeds 1/classes by more than this many binomial standard errors of a
# chance-level accuracy on the reference set, √(p(1 − p)/n) with p = 1/classes: a one-sided test that a
# representation without class information passes by luck about 2 % of the time.
CHANCE_SE = 2.0
# The reference set's size when neither the records (theory/gap_trivial = 2N) nor config.yaml (reference_size)
# give it: a small set, so a wide margin.
FALLBACK_REFERENCE = 100


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
        ax.plot(*zip(*finite), "--", color="C3", label="loss-gap bound")
    if len(finite) < len(bsteps):
        notes.append(f"loss_gap.png: {len(bsteps) - len(finite)} infinite or NaN loss-gap bound value(s) not drawn")
    ax.set_ylabel("loss gap (CL − NSCL loss)")
    ax.set_title(f"loss gap of the anchor ({anchor}) and its bound")
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


@dataclass(frozen=True)
class Chance:
    """The chance level of a run's probe accuracies (1/classes) and the margin above it that counts as class
    information: `CHANCE_SE` binomial standard errors at the reference set's size (the accuracies' test set)."""

    classes: int
    reference: int
    reference_known: bool = True

    @property
    def threshold(self) -> float:
        p = 1.0 / self.classes
        return p + CHANCE_SE * math.sqrt(p * (1.0 - p) / self.reference)

    def __str__(self) -> str:
        size = f"{self.reference} reference samples" + ("" if self.reference_known else " (size unknown, assumed)")
        return f"{_f(self.threshold)} = 1/{self.classes} + {CHANCE_SE:g} binomial SE at {size}"


def run_chance(run_dir, records: list[dict]) -> Chance | None:
    """The run's `Chance` from RUN_DIR's classes.json or config.yaml (num_classes, else the dataset's classes) and
    the reference set's size (theory/gap_trivial = 2N, else config.yaml's reference_size); None when the number of
    classes is unknown."""
    import yaml

    run_dir = Path(run_dir)
    cfg_path, classes_path = run_dir / "config.yaml", run_dir / "classes.json"
    cfg = (yaml.safe_load(cfg_path.read_text()) or {}) if cfg_path.is_file() else {}
    if classes_path.is_file():
        classes = len(json.loads(classes_path.read_text()))
    else:
        from .config import DATASET_CLASSES  # a run of the command line: its dataset's classes

        classes = cfg.get("num_classes") or DATASET_CLASSES.get(cfg.get("dataset"))
    if not classes:
        return None
    trivial = _final(records, "theory/gap_trivial")
    reference = round(trivial / 2) if math.isfinite(trivial) else cfg.get("reference_size")
    return Chance(int(classes), int(reference or FALLBACK_REFERENCE), bool(reference))


def _best_accuracy(records: list[dict], model: str) -> float:
    """The better of the model's final NCCC and k-NN accuracies (NaN when it has neither)."""
    accs = [a for a in (_final(records, f"nccc/{model}"), _final(records, f"knn/{model}")) if not math.isnan(a)]
    return max(accs) if accs else math.nan


def _uninformative(records: list[dict], models: list[str], points: int, chance: Chance | None) -> str | None:
    """Why a finding about `models`, measured over `points` evaluations, cannot be judged on this run (None: it
    can)."""
    if points < MIN_EVALUATIONS:
        return f"the run is too short to say ({points} evaluation(s); at least {MIN_EVALUATIONS} needed)"
    if chance is None:
        return None
    low = [f"{m} {_f(a)}" for m in models if not (a := _best_accuracy(records, m)) > chance.threshold]
    if low:
        return (f"probe accuracy at chance level, so the representations hold no class information to compare "
                f"(best final NCCC / kNN: {'; '.join(low)}; not above {chance})")
    return None


def _count(records: list[dict], key: str) -> int:
    return sum(1 for r in records if key in r)


def _finding_aligned(records: list[dict], anchor: str, compared: list[str], chance: Chance | None) -> tuple:
    """(1) NSCL stays more aligned with the anchor than SupCon and CE (final CKA cosine of z and final RSA)."""
    others = [m for m in ("supcon", "ce") if m in compared]
    if "nscl" not in compared or not others:
        why = "no nscl model compared with the anchor" if "nscl" not in compared else "no supcon or ce model"
        return NOT_APPLICABLE, f"NSCL stays more aligned with {anchor} than SupCon and CE: {why}"
    claim = f"NSCL stays more aligned with {anchor} than {' and '.join(others)}"
    why = _uninformative(records, [anchor, "nscl", *others], _count(records, "cka_cosine/nscl"), chance)
    if why:
        return NOT_INFORMATIVE, f"{claim} — {why}"
    cka = {m: _final(records, f"cka_cosine/{m}") for m in ("nscl", *others)}
    rsa = {m: _final(records, f"rsa_pearson/{m}") for m in ("nscl", *others)}
    ok = all(cka["nscl"] > cka[m] and rsa["nscl"] > rsa[m] for m in others)
    nums = "; ".join(f"{m} {_f(cka[m])} / {_f(rsa[m])}" for m in ("nscl", *others))
    return _verdict(ok), f"{claim} (final CKA cosine / RSA: {nums})"


def _finding_diverge(records: list[dict], anchor: str, compared: list[str], chance: Chance | None) -> tuple:
    """(2) NSCL's weights diverge from the anchor's over training while its representation stays aligned."""
    claim = "weights diverge while alignment stays high"
    if "nscl" not in compared:
        return NOT_APPLICABLE, f"{claim}: no nscl model compared with {anchor}"
    why = _uninformative(records, [anchor, "nscl"], _count(records, "weight_div/nscl"), chance)
    if why:
        return NOT_INFORMATIVE, f"{claim} (nscl vs {anchor}) — {why}"
    w0, w1 = _first(records, "weight_div/nscl"), _final(records, "weight_div/nscl")
    low = _min(records, "cka_cosine/nscl")
    grew, high = w1 > w0, low >= HIGH_ALIGNMENT
    return _verdict(grew and high), (f"weight divergence of nscl {'grew' if grew else 'did not grow'} "
                                     f"({_g(w0)} → {_g(w1)}) while its CKA cosine with {anchor} "
                                     f"{'stayed' if high else 'did not stay'} ≥ {HIGH_ALIGNMENT} (minimum {_f(low)})")


def _finding_loss_gap(records: list[dict], anchor: str, chance: Chance | None) -> tuple:
    """(3) The loss gap (CL − NSCL loss of the anchor) never exceeds the loss-gap bound."""
    pairs = [(r["step"], _num(r["loss_gap"]), _num(r["loss_gap_bound"])) for r in records
             if "loss_gap" in r and "loss_gap_bound" in r]
    claim = f"the loss gap (CL − NSCL loss of {anchor}) stays within the loss-gap bound"
    if not pairs:
        return NOT_APPLICABLE, f"{claim}: no loss_gap records"
    why = _uninformative(records, [anchor], len(pairs), chance)
    if why:
        return NOT_INFORMATIVE, f"{claim} — {why}"
    # the evaluation whose loss gap comes closest to (or furthest past) its bound; NaN counts as a violation
    margin = [(b - g) if not (math.isnan(g) or math.isnan(b)) else -math.inf for _, g, b in pairs]
    i = min(range(len(pairs)), key=margin.__getitem__)
    step, g, b = pairs[i]
    ok = margin[i] >= 0
    gaps = [g for _, g, _ in pairs if not math.isnan(g)]
    largest = max(gaps) if gaps else math.nan
    return _verdict(ok), (f"the loss gap (CL − NSCL loss of {anchor}) {'never exceeded' if ok else 'exceeded'} "
                          f"the loss-gap bound over {len(pairs)} evaluation(s) (tightest at step {step}: loss gap "
                          f"{_f(g)} vs bound {_f(b)}; largest loss gap {_f(largest)})")


def _verdict(ok: bool) -> str:
    return HOLDS if ok else FAILS


def findings(records: list[dict], anchor: str, compared: list[str], chance: Chance | None = None) -> list[tuple]:
    """The paper's three qualitative findings on these records: (verdict, explanation with the numbers or the
    reason), verdict one of HOLDS, FAILS, NOT_APPLICABLE (the run lacks the models) and NOT_INFORMATIVE (too few
    evaluations, or a probe accuracy at chance; without `chance` the accuracies are not checked)."""
    return [_finding_aligned(records, anchor, compared, chance), _finding_diverge(records, anchor, compared, chance),
            _finding_loss_gap(records, anchor, chance)]


def _rules(chance: Chance | None) -> str:
    """The summary's line saying when a finding is informative."""
    text = f"A finding is judged over at least {MIN_EVALUATIONS} evaluations"
    if chance is None:
        return (text + "; the number of classes is unknown (no classes.json, no config.yaml naming num_classes or a "
                       "dataset of known classes), so the probe accuracies were not checked against chance.")
    return (text + " with every model it is about above chance in probe accuracy (best final NCCC / kNN above "
                   f"{chance}).")


def summary(records: list[dict], notes=(), chance: Chance | None = None) -> str:
    """The markdown summary: the table per model, the findings (judged with `chance`), the theory lines, notes."""
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
    lines += ["", "Paper findings in this run:", _rules(chance)]
    for n, (verdict, text) in enumerate(findings(records, anchor, compared, chance), start=1):
        lines.append(f"- ({n}) {verdict}: {text}")
    lines += theory_lines(records)
    if notes:
        lines += ["", *(f"Note: {n}" for n in notes)]
    return "\n".join(lines)


def write_report(run_dir) -> str:
    """Draw the figures of RUN_DIR/metrics.jsonl into RUN_DIR, write the markdown summary to RUN_DIR/summary.md
    (atomically) and return the same text.

    run_dir may also be the metrics.jsonl file itself (figures and summary then go next to it); a sweep directory
    is `report_sweep.write_any_report`'s."""
    run_dir = Path(run_dir)
    path = run_dir if run_dir.is_file() else run_dir / METRICS_FILE
    records, notes = read_metrics(path)
    anchor, models, compared = _models(records)
    notes += _figures(records, anchor, models, compared, path.parent)
    figs = ", ".join(FIGURES + (("theory.png",) if has_theory(records) else ())
                     + (("layers.png",) if has_layers(records) else ()))
    text = (summary(records, notes, run_chance(path.parent, records))
            + f"\n\nFigures in {path.parent}: {figs}; this summary in {SUMMARY_FILE}")
    tmp = path.parent / f"{SUMMARY_FILE}.tmp"
    tmp.write_text(text + "\n", encoding="utf-8")
    os.replace(tmp, path.parent / SUMMARY_FILE)
    return text


def main(argv=None, write=write_report) -> int:
    """`clnscl report DIR`: print write(DIR), or the error with exit code 2."""
    parser = argparse.ArgumentParser(prog="clnscl report",
                                     description="figures and a markdown summary of a `clnscl train` run, or "
                                                 "the agreement over seeds of a `clnscl sweep` directory")
    parser.add_argument("run_dir", metavar="DIR", help="run directory holding metrics.jsonl, or sweep directory")
    args = parser.parse_args(argv)
    try:
        text = write(args.run_dir)
    except (FileNotFoundError, ValueError) as exc:
        print(f"clnscl report: {exc}", file=sys.stderr)
        return 2
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
