"""Two run directories of the same configuration compared: their records key by key and their time per step.

    python -m benchmarks.train.compare_runs RUN_A RUN_B

What the library path (Coupled + fit) is measured with against an earlier trainer: both run `clnscl train`
into their own directory, and this prints, for every recorded number but the timings, the largest relative
difference over the steps, and each run's seconds per step (its last record's wall time over its steps,
evaluations included) with their ratio. Exits 1 when the runs recorded different steps or keys.
"""
from __future__ import annotations

import argparse
import math

from clnscl.train.records import METRICS_FILE, TIMINGS, read_records

SKIP = (*TIMINGS, "images_per_s", "skipped_steps", "anchor", "step", "epoch", "config_changes")


def differences(a: list[dict], b: list[dict]) -> dict[str, float]:
    """max over the steps of |a − b| / max(|a|, |b|, 1e-12) for every number both runs recorded."""
    out = {}
    for ra, rb in zip(a, b):
        for key, va in ra.items():
            vb = rb.get(key)
            if key in SKIP or not isinstance(va, (int, float)) or not isinstance(vb, (int, float)):
                continue
            d = abs(va - vb) / max(abs(va), abs(vb), 1e-12) if math.isfinite(va) or math.isfinite(vb) else 0.0
            out[key] = max(out.get(key, 0.0), d)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_a")
    ap.add_argument("run_b")
    args = ap.parse_args(argv)
    a, b = (read_records(f"{d}/{METRICS_FILE}")[0] for d in (args.run_a, args.run_b))
    if [r["step"] for r in a] != [r["step"] for r in b]:
        print(f"different steps: {[r['step'] for r in a]} vs {[r['step'] for r in b]}")
        return 1
    keys_a = {k for r in a for k in r if k not in SKIP}
    keys_b = {k for r in b for k in r if k not in SKIP}
    diffs = differences(a, b)
    print("| key | largest relative difference |\n| --- | --- |")
    for key, d in sorted(diffs.items(), key=lambda kv: -kv[1]):
        print(f"| {key} | {d:.2e} |")
    per_step = [r[-1]["time"] / r[-1]["step"] for r in (a, b)]
    print(f"\nseconds per step (evaluations included): A {per_step[0]:.4f}, B {per_step[1]:.4f}, "
          f"A/B {per_step[0] / per_step[1]:.3f}")
    if keys_a != keys_b:
        print(f"keys only in A: {sorted(keys_a - keys_b)}; only in B: {sorted(keys_b - keys_a)}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
