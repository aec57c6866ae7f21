"""`clnscl sweep`: the coupled run repeated over the values of one factor — temperature, number of classes
(seeded class subsets) or batch size (learning rate scaled by the config's `lr_scaling`: none, linear, sqrt,
fourth_root) — with one figure per factor of the final alignment, weight divergence and loss gap against it,
and of the theory's bounds beside what was measured, like the paper's Figures 3–5. Each run goes to
OUT/<factor>=<value> and can be resumed on its own. Under torchrun every process runs every value (rank 0
writes)."""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from .config import Config, load_config
from .run import add_run_dir_flags, train

FACTORS = {"temperature": float, "num_classes": int, "batch_size": int}


def plot(results: dict, factor: str, out: Path) -> Path:
    """OUT/sweep_<factor>.png: the final alignment, weight divergence and loss gap against the factor, and for
    runs with theory/ records a second row: the measured similarity gap against Theorem 1's bound (log scale)
    and the measured CKA against its Corollary 1 bounds, so that the bound's trend and the measured trend over
    the factor sit side by side."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    values = sorted(results)
    last = results[values[0]]
    compared = [k.split("/", 1)[1] for k in last if k.startswith("cka_cosine/")]
    theory = all("theory/gap" in results[v] for v in values)
    fig = Figure(figsize=(15, 8 if theory else 4), layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.subplots(2 if theory else 1, 3, squeeze=False)
    panels = list(grid[0])
    for m in compared:
        panels[0].plot(values, [results[v][f"cka_cosine/{m}"] for v in values], marker="o", label=m)
        panels[1].plot(values, [results[v][f"weight_div/{m}"] for v in values], marker="o", label=m)
    panels[2].plot(values, [results[v]["loss_gap"] for v in values], marker="o", label="CL − NSCL loss gap")
    panels[2].plot(values, [results[v]["loss_gap_bound"] for v in values], linestyle="--", label="bound")
    titles = [f"final CKA (cosine, z) with {last.get('anchor', 'the anchor')}", "final weight divergence",
              "loss gap of the anchor"]
    if theory:
        gap_ax, cka_ax, spare = grid[1]
        spare.axis("off")
        for key, style, label in (("theory/gap", "-", "measured ‖Σ^CL − Σ^NSCL‖_F"),
                                  ("theory/gap_bound", "--", "Theorem 1 bound"), ("theory/gap_trivial", ":", "2N")):
            gap_ax.plot(values, [results[v][key] for v in values], style, marker="o", label=label)
        gap_ax.set_yscale("log")
        other = "nscl" if last.get("anchor") == "cl" else "cl"
        for key, style, label in ((f"cka_cosine/{other}", "-", "CKA measured"),
                                  ("theory/cka_bound", "--", "Corollary 1 (measured ρ)"),
                                  ("theory/cka_bound_thm1", ":", "Corollary 1 (Theorem 1)")):
            cka_ax.plot(values, [results[v][key] for v in values], style, marker="o", label=label)
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
    path = out / f"sweep_{factor}.png"
    fig.savefig(path, dpi=110)
    return path


def sweep(cfg: Config, factor: str, values: list, out, resume=False, overwrite: bool = False, log=print) -> dict:
    """One run of cfg per value of `factor` into OUT/<factor>=<value> (resume and overwrite as for train, per
    run), then OUT/sweep_<factor>.png and .json; the final record of every run on rank 0 ({} on the others)."""
    out = Path(out)
    runs = [(value, dataclasses.replace(cfg, **{factor: value})) for value in values]  # every value checked first
    results = {}
    for value, run_cfg in runs:
        log(f"\n=== {factor} = {value} ===")
        records = train(run_cfg, out / f"{factor}={value}", resume=resume, overwrite=overwrite, log=log)
        if records:
            results[value] = records[-1]
    if results:
        log(f"\nfigure: {plot(results, factor, out)}")
        (out / f"sweep_{factor}.json").write_text(json.dumps({str(k): v for k, v in results.items()}, indent=1))
    return results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="clnscl sweep", description=__doc__.splitlines()[0])
    ap.add_argument("--factor", required=True, choices=tuple(FACTORS), help="what to vary")
    ap.add_argument("--values", required=True, help="comma-separated values, e.g. 0.1,0.2,0.5,1")
    ap.add_argument("--config", metavar="FILE.yaml", help="YAML file of configuration keys (as clnscl train)")
    ap.add_argument("--set", metavar="KEY=VALUE", action="append", default=[], help="as in clnscl train")
    ap.add_argument("--out", metavar="DIR", default="runs/sweep", help="sweep directory (default runs/sweep)")
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
        sweep(load_config(args.config, args.set), args.factor, values, args.out, resume=args.resume,
              overwrite=args.overwrite, log=lambda text: print(text, flush=True))
    except (ValueError, FileNotFoundError, ImportError) as exc:
        print(f"clnscl sweep: {exc}", file=sys.stderr)
        return 2
    return 0
