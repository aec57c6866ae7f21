"""Milliseconds per coupled training step of the default run (4 models), one line: the figure that two trees
are compared on, each run in its own fresh process (BENCHMARKS.md, issue 20).

    python -m benchmarks.train.step_time [--steps 40]
"""
from __future__ import annotations

import argparse
import tempfile
import time

from clnscl.train.config import load_config
from clnscl.train.loop import CoupledTrainer


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = CoupledTrainer(load_config(None, []), tmp, log=lambda *_: None)
        for _ in range(3):  # warm-up
            trainer.train_step()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            trainer.train_step()
        print(f"{(time.perf_counter() - t0) / args.steps * 1e3:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
