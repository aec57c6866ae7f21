"""Trainer overhead (issue 4): with M models a coupled step should cost at most 1.1× the sum of M
single-model steps, and one evaluation of alignment should cost under 10 % of an epoch (default run).

    python benchmarks/bar_trainer.py [--steps 30]

Single-model steps: trainers with objectives [cl], [nscl], [supcon]; CE cannot be an anchor, so its step is
the step of [cl, ce] minus that of [cl]. Each trainer runs its warm-up steps, then `--steps` timed steps.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch

from clnscl.train.config import load_config
from clnscl.train.loop import CoupledTrainer


def step_time(objectives: list[str], steps: int, out: str) -> tuple[float, CoupledTrainer]:
    cfg = load_config(None, [f"objectives=[{','.join(objectives)}]"])
    trainer = CoupledTrainer(cfg, out, log=lambda *_: None)
    for _ in range(3):
        trainer.train_step()
    t0 = time.perf_counter()
    for _ in range(steps):
        trainer.train_step()
    return (time.perf_counter() - t0) / steps, trainer


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    a = ap.parse_args(argv)
    print(f"{os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"load {os.getloadavg()[0]:.2f}; default config (digits, small CNN, batch 256, 2 views)")
    with tempfile.TemporaryDirectory() as tmp:
        coupled, trainer = step_time(["cl", "nscl", "supcon", "ce"], a.steps, tmp)
        single = {o: step_time([o], a.steps, tmp)[0] for o in ("cl", "nscl", "supcon")}
        single["ce"] = step_time(["cl", "ce"], a.steps, tmp)[0] - single["cl"]
        t0 = time.perf_counter()
        trainer.evaluate()
        evaluation = time.perf_counter() - t0
        epoch = coupled * trainer.sampler.epoch_length
    total = sum(single.values())
    print("\n| quantity | measured | bar |\n| --- | --- | --- |")
    print(f"| coupled step, 4 models | {coupled * 1e3:.1f} ms | |")
    for o, t in single.items():
        print(f"| single-model step, {o} | {t * 1e3:.1f} ms | |")
    print(f"| coupled / Σ single | {coupled / total:.3f} | ≤ 1.1 |")
    print(f"| one evaluation ({trainer.ref_x.shape[0]} reference samples) / one epoch "
          f"({trainer.sampler.epoch_length} steps) | {evaluation / epoch:.3f} | < 0.1 (at 10,000 samples) |")
    print(f"load at the end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
