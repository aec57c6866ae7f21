"""The sweep part of `clnscl sweep` and `clnscl report`: the statistics over seeds of a sweep's final records
(mean, the half-width of the 95 % Student-t interval of the mean, min and max, per key), their table, and the
report of a sweep directory OUT (runs OUT/<factor>=<value>/seed=<s>, or OUT/<factor>=<value> for a sweep of one
seed): the table, and for every pair of compared models whether the first ends more aligned with the anchor than
the second (final CKA cosine of z) in every seed, per value of the factor. A run is judged only where the run
report would judge its findings: at least `MIN_EVALUATIONS` evaluations, and every model of the comparison (the
anchor included) above chance in probe accuracy."""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

from .records import METRICS_FILE
from .report import (
    MIN_EVALUATIONS,
    SUMMARY_FILE,
    Chance,
    _best_accuracy,
    _count,
    _f,
    _final,
    _models,
    read_metrics,
    run_chance,
    write_report,
)
from .report import main as report_main

CONFIDENCE = 0.95
INTERVAL = f"± the half-width of the {CONFIDENCE:.0%} Student-t interval of the mean over the seeds"
_RUN_DIR = re.compile(r"^(?P<factor>[A-Za-z_]\w*)=(?P<value>.+)$")


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _order(text: str) -> tuple:
    """Sort key of a value or seed as written in a directory name: numerically where it is a number."""
    try:
        return 0, float(text), text
    except ValueError:
        return 1, 0.0, text


def seed_stats(*, finals: dict) -> dict:
    """The final records of one value's runs, {seed: record}, with per numeric key (those every record holds)
    their mean, `ci95` (the half-width of the 95 % Student-t interval of the mean: t · s / √n with n − 1 degrees
    of freedom; None for one seed), min and max; NaN in any seed makes every statistic of the key NaN."""
    from scipy.stats import t  # scikit-learn's dependency

    records = list(finals.values())
    n = len(records)
    keys = [k for k in records[0] if all(_number(r.get(k)) for r in records)]
    stats = {"n": n, "seeds": dict(finals), "mean": {}, "ci95": {}, "min": {}, "max": {}}
    scale = float(t.ppf(0.5 + CONFIDENCE / 2, n - 1)) / math.sqrt(n) if n > 1 else None
    for key in keys:
        xs = [float(r[key]) for r in records]
        mean = sum(xs) / n  # inf and −inf give NaN (math.fsum would raise)
        nan = any(math.isnan(x) for x in xs)
        stats["mean"][key] = mean
        stats["min"][key] = math.nan if nan else min(xs)
        stats["max"][key] = math.nan if nan else max(xs)
        if scale is None:
            stats["ci95"][key] = None
        else:
            stats["ci95"][key] = scale * math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    return stats


def main_keys(record: dict) -> list[str]:
    """The keys the sweep table shows: final CKA cosine (z) and weight divergence of every compared model, the
    loss gap, and the similarity gap where the run has theory/ records."""
    compared = [k.split("/", 1)[1] for k in record if k.startswith("cka_cosine/")]
    keys = [f"cka_cosine/{m}" for m in compared] + [f"weight_div/{m}" for m in compared] + ["loss_gap"]
    return keys + (["theory/gap"] if "theory/gap" in record else [])


def _cell(mean: float, ci: float | None) -> str:
    return f"{mean:.4g}" if ci is None else f"{mean:.4g} ± {ci:.2g}"


def table(*, stats: dict, factor: str) -> str:
    """Markdown table of `stats` ({value: seed_stats}): one row per value, the mean ± interval of `main_keys`."""
    values = sorted(stats, key=lambda v: _order(str(v)))
    keys = [k for k in main_keys(stats[values[0]]["mean"]) if all(k in stats[v]["mean"] for v in values)]
    one = all(stats[v]["n"] == 1 for v in values)
    lines = [f"Final records{' of one seed' if one else f': mean {INTERVAL}'}.", "",
             "| " + " | ".join([factor, "seeds", *keys]) + " |", "|" + "---|" * (len(keys) + 2)]
    for v in values:
        s = stats[v]
        cells = [_cell(s["mean"][k], s["ci95"][k]) for k in keys]
        lines.append("| " + " | ".join([str(v), ", ".join(map(str, s["seeds"])), *cells]) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ the report


def sweep_runs(*, out) -> dict[str, dict[str, dict[str, Path]]]:
    """The run directories of the sweep directory `out`: {factor: {value: {seed: run directory}}}, values and
    seeds as written in the directory names (a run of one seed: its config.yaml's seed)."""
    import yaml

    found: dict[str, dict[str, dict[str, Path]]] = {}
    for path in sorted(Path(out).iterdir()):
        match = _RUN_DIR.match(path.name)
        if not path.is_dir() or not match or match["factor"] == "seed":
            continue
        seeds = {p.name.split("=", 1)[1]: p for p in path.glob("seed=*") if (p / METRICS_FILE).is_file()}
        if not seeds and (path / METRICS_FILE).is_file():
            cfg_path = path / "config.yaml"
            cfg = (yaml.safe_load(cfg_path.read_text()) or {}) if cfg_path.is_file() else {}
            seeds = {str(cfg.get("seed", "?")): path}
        if seeds:
            found.setdefault(match["factor"], {})[match["value"]] = _sorted(seeds)
    return {factor: _sorted(values) for factor, values in found.items()}


def _sorted(mapping: dict) -> dict:
    """The mapping with its keys (values or seeds as written in directory names) in `_order`."""
    return {k: mapping[k] for k in sorted(mapping, key=_order)}


def _why_not_judged(records: list[dict], models: list[str], chance: Chance | None) -> str | None:
    """Why a run cannot judge a comparison of `models` (anchor first), in a few words; None: it can."""
    points = _count(records, f"cka_cosine/{models[1]}")
    if points < MIN_EVALUATIONS:
        return f"{points} evaluation(s), fewer than {MIN_EVALUATIONS}"
    low = [m for m in models if chance is not None and not _best_accuracy(records, m) > chance.threshold]
    if low:
        return f"{', '.join(low)} at chance in probe accuracy (not above {_f(chance.threshold)})"
    nan = [m for m in models[1:] if math.isnan(_final(records, f"cka_cosine/{m}"))]
    if nan:
        return f"no final CKA cosine of {', '.join(nan)}"
    return None


@dataclass(frozen=True)
class Agreement:
    """Seed by seed, whether `better` ends more aligned with the anchor than `worse` (final CKA cosine, z):
    the seeds where it does, those where it does not with both CKAs, and those not judged with the reason."""

    holds: tuple[str, ...]
    fails: tuple[tuple[str, float, float], ...]
    unjudged: tuple[tuple[str, str], ...]

    def __str__(self) -> str:
        judged = len(self.holds) + len(self.fails)
        parts = [f"holds in {len(self.holds)}/{judged} {'judged ' if self.unjudged else ''}seeds"] if judged else []
        if self.fails:
            parts.append("not in " + ", ".join(f"seed {s} ({_f(b)} vs {_f(w)})" for s, b, w in self.fails))
        reasons: dict[str, list[str]] = {}
        for seed, why in self.unjudged:
            reasons.setdefault(why, []).append(seed)
        parts += [f"not judged in seed(s) {', '.join(seeds)}: {why}" for why, seeds in reasons.items()]
        return "; ".join(parts)


def agreement(*, runs: dict[str, list[dict]], chances: dict[str, Chance | None], anchor: str, better: str,
              worse: str) -> Agreement:
    """Whether `better` ends more aligned with `anchor` than `worse` (final cka_cosine/<model>, strictly greater)
    in each run of `runs` ({seed: records}); a run is judged as the run report judges a finding (`chances`:
    {seed: its Chance, None to leave the accuracies unchecked})."""
    holds, fails, unjudged = [], [], []
    for seed, records in runs.items():
        why = _why_not_judged(records, [anchor, better, worse], chances.get(seed))
        if why:
            unjudged.append((seed, why))
            continue
        b, w = _final(records, f"cka_cosine/{better}"), _final(records, f"cka_cosine/{worse}")
        if b > w:
            holds.append(seed)
        else:
            fails.append((seed, b, w))
    return Agreement(tuple(holds), tuple(fails), tuple(unjudged))


def sweep_summary(*, out) -> str:
    """The markdown report of the sweep directory `out`: per factor, the table of the runs' final records and,
    for every pair of compared models, whether the first ends more aligned with the anchor in every seed, per
    value. Raises FileNotFoundError when `out` holds no sweep runs."""
    found = sweep_runs(out=out)
    if not found:
        raise FileNotFoundError(f"{out} holds neither {METRICS_FILE} nor sweep runs (<factor>=<value>/ or "
                                f"<factor>=<value>/seed=<s>/ with {METRICS_FILE}); run `clnscl train` or "
                                "`clnscl sweep` first")
    lines = []
    for factor, values in found.items():
        runs = {v: {s: read_metrics(p / METRICS_FILE)[0] for s, p in seeds.items()} for v, seeds in values.items()}
        chances = {v: {s: run_chance(p, runs[v][s]) for s, p in seeds.items()} for v, seeds in values.items()}
        anchor, _, compared = _models([r for seeds in runs.values() for records in seeds.values() for r in records])
        n_runs = sum(len(seeds) for seeds in runs.values())
        lines += [f"## Sweep report: {factor} over {', '.join(runs)}, {n_runs} run(s), anchor `{anchor}`", "",
                  table(stats={v: seed_stats(finals={s: rs[-1] for s, rs in seeds.items()})
                               for v, seeds in runs.items()}, factor=factor), "",
                  f"Alignment with {anchor} (final CKA cosine, z), seed by seed; a run is judged when it has at least "
                  f"{MIN_EVALUATIONS} evaluations and every model compared is above chance in probe accuracy:"]
        for i, better in enumerate(compared):
            for worse in compared[i + 1:]:
                per_value = {v: agreement(runs=runs[v], chances=chances[v], anchor=anchor, better=better,
                                          worse=worse) for v in runs}
                if any(a.fails for a in per_value.values()):
                    verdict = "not in every seed"
                elif any(a.unjudged for a in per_value.values()):
                    verdict = ("holds in every judged seed" if any(a.holds for a in per_value.values())
                               else "not judged in any seed")
                else:
                    verdict = "holds in every seed at every value"
                lines.append(f"- {better} more aligned with {anchor} than {worse}: {verdict}")
                lines += [f"  - {factor}={v}: {a}" for v, a in per_value.items()]
        lines.append("")
    return "\n".join(lines).rstrip()


def write_sweep_report(out) -> str:
    """`sweep_summary` of the sweep directory `out`, written to OUT/summary.md (atomically) and returned."""
    out = Path(out)
    text = sweep_summary(out=out) + f"\n\nThis summary in {out / SUMMARY_FILE}; each run's own in its directory"
    tmp = out / f"{SUMMARY_FILE}.tmp"
    tmp.write_text(text + "\n", encoding="utf-8")
    os.replace(tmp, out / SUMMARY_FILE)
    return text


def write_any_report(path) -> str:
    """The report of a run directory (`report.write_report`) or, for a directory without metrics.jsonl, of a sweep
    directory (`write_sweep_report`)."""
    path = Path(path)
    if path.is_dir() and not (path / METRICS_FILE).exists():
        return write_sweep_report(path)
    return write_report(path)


def main(argv=None) -> int:
    """`clnscl report DIR` for a run or a sweep directory."""
    return report_main(argv, write=write_any_report)
