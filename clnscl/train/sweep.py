"""`clnscl sweep`: the coupled run repeated over the values of one factor — temperature, number of classes
(seeded class subsets) or batch size (learning rate scaled by the config's `lr_scaling`: none, linear, sqrt,
fourth_root) — with one figure per factor of the final alignment, weight divergence and loss gap against it,
and of the theory's bounds beside what was measured, like the paper's Figures 3–5. Each run goes to
OUT/<factor>=<value> and can be resumed on its own. With seeds (`--seeds 0 1 2` or the config key `seeds`) every
value is run once per seed, into OUT/<factor>=<value>/seed=<s>: the figure draws the mean over the seeds with their
min–max band, and OUT/sweep_<factor>.md tabulates the mean ± the 95 % t-interval (`clnscl report OUT` then says
in how many seeds each comparison of the models' alignment holds). Under torchrun every process runs every value
(rank 0 writes)."""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

from .config import Config, ConfigError, load_config
from .report_sweep import seed_stats, table
from .run import add_run_dir_flags, train

FACTORS = {"temperature": float, "num_classes": int, "batch_size": int}


def _draw(ax, values: list, finals: dict, key: str, *args, **kwargs) -> None:
    """One curve of `figure`: the mean of `key` over the seeds at each value, and the min–max band over the seeds
    (shaded) when there are several; a NaN in any seed leaves the value out of both."""
    rows = np.array([[float(r[key]) for r in finals[v].values()] for v in values])  # value × seed
    line, = ax.plot(values, rows.mean(axis=1), *args, marker="o", **kwargs)
    if rows.shape[1] > 1:
        ax.fill_between(values, rows.min(axis=1), rows.max(axis=1), color=line.get_color(), alpha=0.2, linewidth=0)


def plot(finals: dict, *, factor: str, out: Path) -> Path:
    """`figure(finals, factor=factor)` saved as OUT/sweep_<factor>.png; returns the file."""
    path = out / f"sweep_{factor}.png"
    figure(finals, factor=factor).savefig(path, dpi=110)
    return path


def figure(finals: dict, *, factor: str):
    """The sweep's figure of `finals`, {value: {seed: final record}}: the final alignment, weight divergence
    and loss gap against the factor, and for runs with theory/ records a second row: the measured similarity gap
    against Theorem 1's bound (log scale) and the measured CKA against its Corollary 1 bounds, so that the bound's
    trend and the measured trend over the factor sit side by side. With several seeds every curve is the mean over
    the seeds, with the min–max band over them shaded."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    values = sorted(finals)
    last = next(iter(finals[values[0]].values()))
    seeds = sorted({s for v in values for s in finals[v]})
    compared = [k.split("/", 1)[1] for k in last if k.startswith("cka_cosine/")]
    theory = all("theory/gap" in r for v in values for r in finals[v].values())
    fig = Figure(figsize=(15, 8 if theory else 4.4), layout="constrained")
    FigureCanvasAgg(fig)
    if len(seeds) > 1:
        fig.suptitle(f"mean over {len(seeds)} seeds ({', '.join(map(str, seeds))}); shaded: min–max over the seeds")
    grid = fig.subplots(2 if theory else 1, 3, squeeze=False)
    panels = list(grid[0])
    for m in compared:
        _draw(panels[0], values, finals, f"cka_cosine/{m}", label=m)
        _draw(panels[1], values, finals, f"weight_div/{m}", label=m)
    _draw(panels[2], values, finals, "loss_gap", label="CL − NSCL loss gap")
    _draw(panels[2], values, finals, "loss_gap_bound", linestyle="--", label="bound")
    titles = [f"final CKA (cosine, z) with {last.get('anchor', 'the anchor')}", "final weight divergence",
              "loss gap of the anchor"]
    if theory:
        gap_ax, cka_ax, spare = grid[1]
        spare.axis("off")
        for key, style, label in (("theory/gap", "-", "measured ‖Σ^CL − Σ^NSCL‖_F"),
                                  ("theory/gap_bound", "--", "Theorem 1 bound"), ("theory/gap_trivial", ":", "2N")):
            _draw(gap_ax, values, finals, key, style, label=label)
        gap_ax.set_yscale("log")
        other = "nscl" if last.get("anchor") == "cl" else "cl"
        for key, style, label in ((f"cka_cosine/{other}", "-", "CKA measured"),
                                  ("theory/cka_bound", "--", "Corollary 1 (measured ρ)"),
                                  ("theory/cka_bound_thm1", ":", "Corollary 1 (Theorem 1)")):
            _draw(cka_ax, values, finals, key, style, label=label)
        cka_ax.set_ylim(-1.05, 1.05)
        panels += [gap_ax, cka_ax]
        titles += ["final similarity gap cl vs nscl and Theorem 1", "final CKA cl vs nscl and its lower bounds"]
    for ax, title in zip(panels, titles):
        ax.set_xlabel(factor)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
        if factor != "num_classes":
            ax.set_xscale("log")
    return fig


def sweep(cfg: Config, factor: str, values: list, out, resume=False, overwrite: bool = False, log=print) -> dict:
    """One run of cfg per value of `factor` into OUT/<factor>=<value>, or with cfg.seeds one per value and seed
    into OUT/<factor>=<value>/seed=<s> (resume and overwrite as for train, per run), then OUT/sweep_<factor>.png
    and .json. Returns on rank 0 ({} on the others) what the JSON holds: {value: final record}, or with seeds
    {value: `report_sweep.seed_stats`} (the final record of every seed, and per key the mean, the half-width of
    its 95 % t-interval, min and max), whose table is logged and written to OUT/sweep_<factor>.md."""
    out = Path(out)
    seeds = cfg.seeds or [cfg.seed]
    runs = [(value, seed, dataclasses.replace(cfg, **{factor: value}, seed=seed, seeds=None))
            for value in values for seed in seeds]  # every run's config checked first
    finals: dict = {}
    for value, seed, run_cfg in runs:
        run_dir = out / f"{factor}={value}"
        if cfg.seeds:
            run_dir /= f"seed={seed}"
        log(f"\n=== {factor} = {value}" + (f", seed {seed}" if cfg.seeds else "") + " ===")
        records = train(run_cfg, run_dir, resume=resume, overwrite=overwrite, log=log)
        if records:
            finals.setdefault(value, {})[seed] = records[-1]
    if not finals:
        return {}
    log(f"\nfigure: {plot(finals, factor=factor, out=out)}")
    if cfg.seeds:
        results = {value: seed_stats(finals=by_seed) for value, by_seed in finals.items()}
        text = table(stats=results, factor=factor)
        (out / f"sweep_{factor}.md").write_text(text + "\n", encoding="utf-8")
        log(f"\n{text}\ntable: {out / f'sweep_{factor}.md'}")
    else:
        results = {value: by_seed[cfg.seed] for value, by_seed in finals.items()}
    (out / f"sweep_{factor}.json").write_text(json.dumps({str(k): v for k, v in results.items()}, indent=1))
    return results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="clnscl sweep", description=__doc__.splitlines()[0])
    ap.add_argument("--factor", required=True, choices=tuple(FACTORS), help="what to vary")
    ap.add_argument("--values", required=True, help="comma-separated values, e.g. 0.1,0.2,0.5,1")
    ap.add_argument("--config", metavar="FILE.yaml", help="YAML file of configuration keys (as clnscl train)")
    ap.add_argument("--set", metavar="KEY=VALUE", action="append", default=[], help="as in clnscl train")
    ap.add_argument("--out", metavar="DIR", default="runs/sweep", help="sweep directory (default runs/sweep)")
    ap.add_argument("--seeds", metavar="SEED", nargs="+", type=int,
                    help="run every value once per seed (distinct, >= 0) into OUT/<factor>=<value>/seed=<s>, and "
                         "draw and tabulate the mean and spread over them (overrides the config key seeds)")
    add_run_dir_flags(ap)
    args = ap.parse_args(argv)
    try:
        values = [FACTORS[args.factor](v) for v in args.values.split(",") if v.strip()]
    except ValueError:
        print(f"clnscl sweep: --values must be {FACTORS[args.factor].__name__}s, got {args.values!r}", file=sys.stderr)
        return 2
    if len(values) < 2:
        print("clnscl sweep: --values needs at least two values", file=sys.stderr)
        return 2
    try:
        cfg = load_config(args.config, args.set)
        if args.seeds is not None:
            try:
                cfg = dataclasses.replace(cfg, seeds=args.seeds)
            except ConfigError as exc:
                raise ConfigError(f"--seeds {' '.join(map(str, args.seeds))}: {exc}") from None
        sweep(cfg, args.factor, values, args.out, resume=args.resume,
              overwrite=args.overwrite, log=lambda text: print(text, flush=True))
    except (ValueError, FileNotFoundError, ImportError) as exc:
        print(f"clnscl sweep: {exc}", file=sys.stderr)
        return 2
    return 0
