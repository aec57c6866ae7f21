"""Trainer overhead (issue 4): with M models a coupled step should cost at most 1.1× the sum of M
single-model steps, and one evaluation of alignment on a 10,000-sample reference set should cost under 10 %
of an epoch (default run).

    python -m benchmarks.train.bar_trainer [--steps 30] [--reference 10000]

Single-model steps: trainers with objectives [cl], [nscl], [supcon]; CE cannot be an anchor, so its step is
the step of [cl, ce] minus that of [cl]. Each trainer runs its warm-up steps, then `--steps` timed steps.
The digits hold 1,797 images, so the 10,000-sample reference set is made of seeded augmented copies of the
run's reference split. An evaluation is timed whole and split into its parts: the forward passes of the M
models over the reference and probe sets, the alignment metrics on those features (StreamingAlignment for
z and h against the anchor, weight divergence), the loss gap, and the accuracies.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch

from benchmarks.support.timing import timed
from clnscl.metrics import StreamingAlignment, weight_divergence
from clnscl.train.augment import Augment
from clnscl.train.batches import GapBatches, SourceBatches
from clnscl.train.config import load_config
from clnscl.train.coupled import weight_matrices
from clnscl.train.datasets import TensorImages
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


def enlarge_reference(trainer: CoupledTrainer, n: int) -> None:
    """Replace the run's reference set by n seeded augmented copies of it (labels kept)."""
    ref = trainer.data.reference
    base, gen = ref.load(torch.arange(len(ref))), torch.Generator().manual_seed(0)
    copies = -(-n // len(ref))
    images = torch.cat([Augment()(base, gen) for _ in range(copies)])[:n]
    trainer.data.reference = ref = TensorImages(images, ref.labels.repeat(copies)[:n])
    cfg = trainer.cfg
    trainer.reference = SourceBatches(ref, torch.arange(n))
    trainer.gap = GapBatches(ref, trainer.augment, seed=cfg.seed, batch_size=cfg.batch_size, count=cfg.gap_batches,
                             rank=0, world=1)


@torch.no_grad()
def _features(models, batches) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """[(h, z)] of every model over the batches, in eval mode."""
    outs = [[m.eval()(x) for x, _ in batches] for m in models]
    for m in models:
        m.train()
    return [(torch.cat([h for h, _ in o]), torch.cat([z for _, z in o])) for o in outs]


def evaluation_parts(trainer: CoupledTrainer) -> dict[str, float]:
    """Seconds of one whole evaluation and of its parts (recomputed separately, in the same order)."""
    models = trainer.models
    _, whole = timed(trainer.evaluate)
    feats, t_ref = timed(lambda: _features(models, trainer.reference))
    _, t_probe = timed(lambda: _features(models, trainer.probe))

    def alignment():
        for k in (0, 1):
            accs = [StreamingAlignment() for _ in models[1:]]
            StreamingAlignment.update_shared(accs, feats[0][k], [f[k] for f in feats[1:]])
            for acc in accs:
                acc.compute()
        for model in models[1:]:
            weight_divergence(weight_matrices(models[0]), weight_matrices(model))

    _, t_align = timed(alignment)
    _, t_gap = timed(lambda: trainer.coupled._loss_gap(trainer.gap))
    return {"whole": whole, "forward, reference": t_ref, "forward, probe": t_probe, "alignment metrics": t_align,
            "loss gap": t_gap, "accuracies (rest)": whole - t_ref - t_probe - t_align - t_gap}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--reference", type=int, default=10_000)
    a = ap.parse_args(argv)
    print(f"{os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"load {os.getloadavg()[0]:.2f}; default config (digits, small CNN, batch 256, 2 views)")
    with tempfile.TemporaryDirectory() as tmp:
        coupled, trainer = step_time(["cl", "nscl", "supcon", "ce"], a.steps, tmp)
        single = {o: step_time([o], a.steps, tmp)[0] for o in ("cl", "nscl", "supcon")}
        single["ce"] = step_time(["cl", "ce"], a.steps, tmp)[0] - single["cl"]
        epoch = coupled * trainer.sampler.epoch_length
        own = evaluation_parts(trainer)
        n_own = len(trainer.data.reference)
        enlarge_reference(trainer, a.reference)
        big = evaluation_parts(trainer)
    total = sum(single.values())
    print("\n| quantity | measured | bar |\n| --- | --- | --- |")
    print(f"| coupled step, 4 models | {coupled * 1e3:.1f} ms | |")
    for o, t in single.items():
        print(f"| single-model step, {o} | {t * 1e3:.1f} ms | |")
    print(f"| coupled / Σ single | {coupled / total:.3f} | ≤ 1.1 |")
    print(f"| one epoch ({trainer.sampler.epoch_length} steps of {trainer.cfg.batch_size}) | {epoch:.3f} s | |")
    for label, parts, n in (("own reference split", own, n_own), ("augmented reference", big, a.reference)):
        for part, t in parts.items():
            bar = "< 0.1" if part == "alignment metrics" and n == a.reference else ""
            print(f"| evaluation on {n:,} samples ({label}): {part} / epoch | {t / epoch:.3f} ({t:.3f} s) | {bar} |")
    print(f"load at the end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
