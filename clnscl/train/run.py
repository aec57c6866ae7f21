"""One coupled run from its configuration to a complete run directory: config.yaml, metrics.jsonl and
metrics.csv, checkpoint.pt and the report's figures, with the report's summary logged. Under torchrun every
process calls it; rank 0 writes and gets the records."""
from __future__ import annotations

from pathlib import Path

from .config import Config
from .loop import CoupledTrainer
from .records import METRICS_FILE, write_csv
from .report import write_report


def train(cfg: Config, out, resume: bool = False, log=print) -> list[dict]:
    """Train cfg's models into `out` (continuing from its checkpoint with `resume`); the records on rank 0,
    [] on the other ranks."""
    out = Path(out)
    trainer = CoupledTrainer(cfg, out)
    if trainer.rank == 0:
        cfg.save(out)
    records = trainer.run(resume=resume)
    if trainer.rank == 0:
        write_csv(records, out / "metrics.csv")
        log(f"metrics: {out / METRICS_FILE} ({len(records)} evaluations)")
        log(write_report(out))
    return records
