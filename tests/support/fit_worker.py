"""A `fit` run of a user model that is not the package's, as a script (tests/train/test_fit.py kills it).

    python tests/support/fit_worker.py OUT STEPS MODE [RANK WORLD STORE]

MODE: "run" (train from scratch), "slow" (the same, but once step `MARK_AFTER` is done it writes
OUT/passed.rank{R} and sleeps `SLOW_S` before every further batch, so that a signal sent then lands mid-run) or
"resume" (continue the run in OUT). With RANK WORLD STORE the process joins a gloo group of WORLD processes
through the file STORE and passes `process_group=dist.group.WORLD` to `Coupled`; each rank trains on its half of
every batch (rows rank*B/W to (rank+1)*B/W: every rank draws the same shuffled batch and the same views, as all
seed torch alike) and evaluates on its half of the reference, probe and gap batches.

The model: an MLP with dropout (h) and a linear projector (z) on random 10-d vectors of 3 classes; the batches
(views (B, 2, 10), labels) of a shuffling DataLoader whose dataset draws each view's noise from the global RNG:
shuffling, views and dropout all come from the global random stream, which a resume has to reproduce.

Exit codes: 0 on success; 75 when `fit` raised `Preempted` (single process: the SystemExit itself; in a group:
caught, the group destroyed, then os._exit(75)); 2 on any other error (traceback on stderr).
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

N_TRAIN, DIM, CLASSES, BATCH = 96, 10, 3, 16
EVAL_EVERY, CHECKPOINT_EVERY = 5, 10
MARK_AFTER, SLOW_S = 8, 0.25  # 22 slowed steps: 5.5 s for the test to send its signal
OBJECTIVES = ("cl", "nscl", "supcon", "ce")


class MLP(nn.Module):
    """forward(x) → (h, z): h from a hidden layer with dropout, z its linear projection."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(DIM, 32), nn.ReLU(), nn.Dropout(0.2))
        self.proj = nn.Linear(32, 8)

    def forward(self, x):
        h = self.body(x)
        return h, self.proj(h)


class TwoViews(Dataset):
    """(two noisy copies of x_i (2, DIM), y_i): the noise drawn from the global RNG at every access."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i):
        x = self.x[i]
        return torch.stack([x + 0.1 * torch.randn(DIM), x + 0.1 * torch.randn(DIM)]), self.y[i]


def fixed_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n vectors around 3 class centres, drawn from their own generator (the global stream untouched)."""
    gen = torch.Generator().manual_seed(seed)
    centres = 2.0 * torch.randn(CLASSES, DIM, generator=torch.Generator().manual_seed(7))
    y = torch.randint(0, CLASSES, (n,), generator=gen)
    return centres[y] + torch.randn(n, DIM, generator=gen), y


class Shards:
    """The batches of `loader` cut to this rank's rows, optionally slowed down once `mark_after` batches were
    given (writing the file `marker` then). len() is the loader's (fit's epochs)."""

    def __init__(self, loader, rank: int = 0, world: int = 1, marker: Path | None = None, mark_after: int = 0,
                 sleep_s: float = 0.0):
        self.loader, self.rank, self.world = loader, rank, world
        self.marker, self.mark_after, self.sleep_s, self.given = marker, mark_after, sleep_s, 0

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for views, labels in self.loader:
            if self.marker is not None and self.given >= self.mark_after:
                if not self.marker.exists():
                    self.marker.write_text(str(self.given))
                time.sleep(self.sleep_s)
            self.given += 1
            yield self.part(views), self.part(labels)

    def part(self, t: torch.Tensor) -> torch.Tensor:
        per = len(t) // self.world
        return t[self.rank * per:(self.rank + 1) * per]


def build(steps: int, rank: int = 0, world: int = 1, process_group=None, marker: Path | None = None,
          sleep_s: float = 0.0, objectives=OBJECTIVES):
    """(coupled, train, reference, probe, gap) of a run, after torch.manual_seed(0): the same in every process."""
    from clnscl.train.coupled import Coupled

    torch.manual_seed(0)
    model = MLP()
    coupled = Coupled(model, objectives, num_classes=CLASSES, temperature=0.5, process_group=process_group,
                      optimizer=lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
                      scheduler=lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps))
    x, y = fixed_data(N_TRAIN, seed=1)
    loader = DataLoader(TwoViews(x, y), batch_size=BATCH, shuffle=True, drop_last=True)
    shard = Shards(loader, rank, world)
    train = Shards(loader, rank, world, marker=marker, mark_after=MARK_AFTER, sleep_s=sleep_s)
    rx, ry = fixed_data(40, seed=2)
    px, py = fixed_data(30, seed=3)
    reference = [(shard.part(rx[i:i + 20]), shard.part(ry[i:i + 20])) for i in (0, 20)]
    probe = [(shard.part(px), shard.part(py))]
    gx, gy = fixed_data(BATCH, seed=4)
    gen = torch.Generator().manual_seed(5)
    gviews = torch.stack([gx + 0.1 * torch.randn(gx.shape, generator=gen),
                          gx + 0.1 * torch.randn(gx.shape, generator=gen)], dim=1)
    gap = [(shard.part(gviews), shard.part(gy))]
    return coupled, train, reference, probe, gap


def run(out: Path, steps: int, mode: str, rank: int = 0, world: int = 1, process_group=None):
    from clnscl.train.fit import fit

    marker = out / f"passed.rank{rank}" if mode == "slow" else None
    coupled, train, reference, probe, gap = build(steps, rank, world, process_group, marker=marker,
                                                  sleep_s=SLOW_S if mode == "slow" else 0.0)
    return fit(coupled, train, reference, out=out, steps=steps, eval_every=EVAL_EVERY,
               checkpoint_every=CHECKPOINT_EVERY, resume=mode == "resume", progress=False, loggers=(), probe=probe,
               gap=gap)


def main(argv: list[str]) -> None:
    out, steps, mode = Path(argv[0]), int(argv[1]), argv[2]
    if mode not in ("run", "slow", "resume"):
        raise SystemExit(f"fit_worker: unknown mode {mode!r}")
    torch.set_num_threads(1)
    if len(argv) == 3:  # one process: a Preempted leaves as the SystemExit it is (exit code 75)
        out.mkdir(parents=True, exist_ok=True)
        run(out, steps, mode)
        return
    rank, world, store = int(argv[3]), int(argv[4]), argv[5]
    code = 2
    try:
        import datetime

        import torch.distributed as dist

        from clnscl.train.fit import PREEMPTED_EXIT_CODE, Preempted

        out.mkdir(parents=True, exist_ok=True)
        dist.init_process_group("gloo", init_method="file://" + store, rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=60))
        try:
            run(out, steps, mode, rank, world, dist.group.WORLD)
            code = 0
        except Preempted:
            code = PREEMPTED_EXIT_CODE
        dist.barrier()
        dist.destroy_process_group()
    except BaseException:  # noqa: BLE001
        import traceback

        traceback.print_exc()
        code = 2
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main(sys.argv[1:])
