"""Where a run's records go besides RUN_DIR/metrics.jsonl: one small interface, `Logger.log(record)` and
`close()`, with TensorBoard event files and Weights & Biases (offline or online) behind it.

`make_loggers(specs, out, resume_step)` turns `fit`'s `loggers` argument — names ("tensorboard", "wandb") or
objects with `log` and `close` — into loggers. A resumed run's TensorBoard events after its checkpoint are
dropped (purge_step, the first step after it) and written again; a resumed W&B run continues the run whose
id RUN_DIR/wandb_id holds.
"""
from __future__ import annotations

import secrets
from pathlib import Path
from typing import Iterable, Protocol


class Logger(Protocol):
    """Receives every record of a run (on rank 0): a dict with "step" and numbers."""

    def log(self, record: dict) -> None: ...

    def close(self) -> None: ...


def _numbers(record: dict) -> dict[str, float]:
    return {k: v for k, v in record.items() if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}


class TensorBoardLogger:
    """Every number of a record as a TensorBoard scalar at its step, in event files under `directory`.

    Raises:
        ImportError: the tensorboard package is missing (`pip install 'clnscl[tensorboard]'`).
    """

    def __init__(self, directory, purge_step: int | None = None):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise ImportError("the tensorboard logger needs the tensorboard package "
                              "(pip install 'clnscl[tensorboard]')") from exc
        self.writer = SummaryWriter(str(directory), purge_step=purge_step)

    def log(self, record: dict) -> None:
        for key, value in _numbers(record).items():
            self.writer.add_scalar(key, value, record["step"])
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbLogger:
    """Every number of a record to a Weights & Biases run, files under `directory` (mode "offline" syncs
    nothing: `wandb sync` uploads later). The run id is kept in `directory`/wandb_id so that a resumed run
    continues the same W&B run.

    Raises:
        ImportError: the wandb package is missing (`pip install 'clnscl[wandb]'`).
    """

    def __init__(self, directory, project: str = "clnscl", mode: str | None = None, config: dict | None = None,
                 resume: bool = False):
        try:
            import wandb
        except ImportError as exc:
            raise ImportError("the wandb logger needs the wandb package (pip install 'clnscl[wandb]')") from exc
        directory = Path(directory)
        id_file = directory / "wandb_id"
        run_id = id_file.read_text().strip() if resume and id_file.exists() else secrets.token_hex(8)
        id_file.write_text(run_id)
        self.run = wandb.init(project=project, dir=str(directory), id=run_id, resume="allow", mode=mode,
                              config=config, reinit="create_new")

    def log(self, record: dict) -> None:
        self.run.log(_numbers(record), step=record["step"])

    def close(self) -> None:
        self.run.finish()


def make_loggers(specs: Iterable | None, out: Path, resume_step: int | None) -> list:
    """The loggers of `specs`: "tensorboard" (event files in out/tensorboard), "wandb" (offline unless
    WANDB_MODE says otherwise, files in out), or objects with log(record) and close(). None: TensorBoard when
    its package is installed, else none."""
    if specs is None:
        try:
            import torch.utils.tensorboard  # noqa: F401
        except ImportError:
            return []
        specs = ("tensorboard",)
    made = []
    try:
        for spec in specs:
            made.append(_make(spec, out, resume_step))
    except BaseException:
        for logger in made:  # those started before the one that failed
            logger.close()
        raise
    return made


def _make(spec, out: Path, resume_step: int | None):
    if spec == "tensorboard":
        return TensorBoardLogger(out / "tensorboard", purge_step=resume_step)
    if spec == "wandb":
        import os

        return WandbLogger(out, mode=os.environ.get("WANDB_MODE", "offline"), resume=resume_step is not None)
    if callable(getattr(spec, "log", None)) and callable(getattr(spec, "close", None)):
        return spec
    raise ValueError(f"loggers: {spec!r} is neither 'tensorboard', 'wandb' nor an object with log(record) and "
                     "close()")
