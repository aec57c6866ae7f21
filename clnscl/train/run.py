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

from .config import Config, ConfigError
from .fit import continues
from .loop import CoupledTrainer
from .records import METRICS_FILE


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
    if cfg.seeds is not None:
        raise ConfigError(f"config key 'seeds' ({cfg.seeds}) belongs to `clnscl sweep --seeds`; one run trains with "
                          "`seed`: drop seeds, or run the sweep")
    out = Path(out)
    resume = continues(out, resume, overwrite)
    if dist.is_available() and dist.is_initialized():
        dist.barrier()  # every rank has looked at the directory before rank 0 writes into it
    trainer = CoupledTrainer(cfg, out, log=log)
    if trainer.rank == 0:
        cfg.save(out)
    records = trainer.run(resume=resume)
    if trainer.rank == 0:
        log(f"metrics: {out / METRICS_FILE} ({len(records)} evaluations)")
    return records
