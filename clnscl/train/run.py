"""One coupled run from its configuration to a complete run directory: config.yaml, metrics.jsonl and
metrics.csv, checkpoint.pt and the report's figures, with the report's summary logged. Under torchrun every
process calls it; rank 0 writes and gets the records.

A directory that holds a run (its checkpoint or its records) is never written over by accident: a new run
there needs overwrite=True; resume=True continues it (its checkpoint must exist); resume="auto" continues it
when it has a checkpoint and starts afresh otherwise — what a restarted worker of an elastic torchrun job
needs, since it runs the same command line again.
"""
from __future__ import annotations

from pathlib import Path

import torch.distributed as dist

from .checkpoint import CHECKPOINT_FILE
from .config import Config
from .loop import CoupledTrainer
from .records import METRICS_FILE, write_csv
from .report import write_report

RESUME_MODES = (False, True, "auto")


def continues(out: Path, resume=False, overwrite: bool = False) -> bool:
    """Whether a run into `out` continues the one there (True) or starts afresh (False); ValueError when `out`
    holds a run and neither resume nor overwrite says what to do with it."""
    if resume not in RESUME_MODES:
        raise ValueError(f"resume must be one of {RESUME_MODES}, got {resume!r}")
    if resume and overwrite:
        raise ValueError("--resume and --overwrite exclude each other: continue the run in the directory, or "
                         "replace it")
    if resume == "auto":
        return (out / CHECKPOINT_FILE).exists()
    if resume:
        return True
    held = [name for name in (CHECKPOINT_FILE, METRICS_FILE) if (out / name).exists()]
    if held and not overwrite:
        raise ValueError(f"{out} holds a run ({', '.join(held)}): pass --resume to continue it (--resume auto: "
                         "continue it if it has a checkpoint, else start afresh) or --overwrite to replace it")
    return False


def add_run_dir_flags(parser) -> None:
    """--resume [auto] and --overwrite: what a run does with a directory that holds one."""
    parser.add_argument("--resume", nargs="?", const=True, default=False, choices=["auto"],
                        help="continue the run in DIR from its checkpoint.pt (same config), keeping its metrics; "
                             "'--resume auto': continue it if DIR has a checkpoint, else start afresh (for "
                             "torchrun's elastic restarts)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the run in DIR (without it, a DIR holding a run is refused)")


def train(cfg: Config, out, resume=False, overwrite: bool = False, log=print) -> list[dict]:
    """Train cfg's models into `out`, continuing or refusing as `continues` decides; the records on rank 0, []
    on the other ranks."""
    out = Path(out)
    resume = continues(out, resume, overwrite)
    if dist.is_available() and dist.is_initialized():
        dist.barrier()  # every rank has looked at the directory before rank 0 writes into it
    trainer = CoupledTrainer(cfg, out)
    if trainer.rank == 0:
        cfg.save(out)
    records = trainer.run(resume=resume)
    if trainer.rank == 0:
        write_csv(records, out / "metrics.csv")
        log(f"metrics: {out / METRICS_FILE} ({len(records)} evaluations)")
        log(write_report(out))
    return records
