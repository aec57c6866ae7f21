"""The evaluation bar (issue 11): on a CIFAR-10-sized run, one evaluation costs at most 10 % of an epoch.

    python -m benchmarks.train.bar_evaluation [--steps 8] [--probe 10000] [--model small_cnn]

Generated data in CIFAR-10's python format (50,000 training and 10,000 test images of 3 × 32 × 32, random
pixels, 10 classes), read by the trainer as any CIFAR-10 run is: `eval_split=test`, so the 10,000 test images
are the reference set and `--probe` training images (0: all 50,000) the probe set of NCC and k-NN. The four
coupled models (cl, nscl, supcon, ce) train with batch 256 and the simclr_cifar augmentations; in the same
process, `--steps` timed steps (after 2 warm-up steps) give the epoch's time (195 steps × their mean), and one
evaluation (`CoupledTrainer.evaluate`: features of both sets, alignment, weight divergence, loss gap,
accuracies) is timed whole. The ratio of the two is the bar's figure.
"""
from __future__ import annotations

import argparse
import pickle
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from clnscl.train.config import load_config
from clnscl.train.loop import CoupledTrainer


def write_cifar10(root: Path, train: int = 50_000, test: int = 10_000, seed: int = 0) -> Path:
    """CIFAR-10's python-format files under root/cifar-10-batches-py with random images and labels."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    per = train // 5
    for name, n in [*((f"data_batch_{i}", per) for i in range(1, 6)), ("test_batch", test)]:
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 b"labels": rng.integers(0, 10, n).tolist()}
        with (folder / name).open("wb") as f:
            pickle.dump(batch, f)
    return root


def measure(data_root: Path, out: Path, steps: int, probe: int, model: str, batch_size: int = 256) -> dict:
    """Seconds of a training step (mean of `steps`), of an epoch (its steps × that mean) and of one evaluation."""
    sets = ["dataset=cifar10", f"data_root={data_root}", "eval_split=test", f"model={model}",
            f"batch_size={batch_size}", "augment.preset=simclr_cifar", "device=cpu", "epochs=1", "warmup_epochs=0"]
    if probe:
        sets.append(f"probe_size={probe}")
    trainer = CoupledTrainer(load_config(None, sets), out, log=lambda *_: None)
    try:
        for _ in range(2):
            trainer.train_step()
        t0 = time.perf_counter()
        for _ in range(steps):
            trainer.train_step()
        step = (time.perf_counter() - t0) / steps
        t0 = time.perf_counter()
        trainer.evaluate()
        evaluation = time.perf_counter() - t0
    finally:
        trainer.close()
    epoch = step * trainer.sampler.epoch_length
    return {"step": step, "epoch": epoch, "evaluation": evaluation, "steps_per_epoch": trainer.sampler.epoch_length,
            "reference": len(trainer.data.reference), "probe": len(trainer.data.probe),
            "train": len(trainer.data.train)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--probe", type=int, default=10_000, help="probe-set size (0: the whole training split)")
    ap.add_argument("--model", default="small_cnn")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = write_cifar10(Path(tmp) / "data")
        r = measure(root, Path(tmp) / "run", a.steps, a.probe, a.model)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; model {a.model}; {r['train']} training, "
          f"{r['reference']} reference, {r['probe']} probe images\n")
    print("| quantity | measured | bar |\n| --- | --- | --- |")
    print(f"| training step (4 models, batch 256, 2 views) | {r['step']:.3f} s | |")
    print(f"| epoch ({r['steps_per_epoch']} steps) | {r['epoch']:.1f} s | |")
    ratio = r["evaluation"] / r["epoch"]
    print(f"| one evaluation | {r['evaluation']:.1f} s | |")
    print(f"| evaluation / epoch | {ratio:.3f} | ≤ 0.10: {'met' if ratio <= 0.10 else 'not met'} |")


if __name__ == "__main__":
    main()
