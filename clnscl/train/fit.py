"""`fit`: a `Coupled` trained on any iterable of (views, labels) batches into a run directory.

RUN_DIR holds metrics.jsonl (one record per evaluation, appended as made) and metrics.csv, checkpoint.pt
(written atomically every `checkpoint_every` steps and at the end), the loggers' files, classes.json and the
report's figures and summary.md (`clnscl report`), written at the end. A directory
that holds a run is never written over by accident (`continues`).

Long runs on shared clusters: SIGTERM or SIGUSR1 (SLURM's warning before a preemption) lets the current step
finish, writes the checkpoint and raises `Preempted`, a SystemExit whose code is PREEMPTED_EXIT_CODE (75,
sysexits' EX_TEMPFAIL: try again); the same call with resume=True (or "auto") ends with the records of the
uninterrupted run. A non-finite loss or gradient raises `NonFiniteError` at that step (no model takes it and no
checkpoint is written), or with on_nonfinite="skip" skips the step for every model; weights that a step made
non-finite raise it when a checkpoint is due, which is then not written.

Under a process group every rank must draw the same random stream (seed every rank alike): the checkpoint
holds rank 0's random state and every rank continues from it. Resuming mid-epoch: an iterable with
state_dict() / load_state_dict() (torchdata's StatefulDataLoader, the command line's samplers) is restored
from its state; any other is iterated afresh from the random state it started its epoch with (a DataLoader's
shuffling and workers' seeds come from it; `set_epoch(epoch)` is called on it or its sampler when it has one,
as DistributedSampler needs) and the batches it had given are skipped.
"""
from __future__ import annotations

import contextlib
import json
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterable

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from .checkpoint import CHECKPOINT_FILE, load_checkpoint, save_checkpoint
from .coupled import NONFINITE, Coupled, check_evaluation_options
from .loggers import Logger, make_loggers
from .records import METRICS_FILE, append_record, read_records, rewrite_records, write_csv
from .report import write_report

RESUME_MODES = (False, True, "auto")
PREEMPTED_EXIT_CODE = 75
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGUSR1") if hasattr(signal, name))


class Preempted(SystemExit):
    """Raised by `fit` after a stop signal, once the checkpoint is written; its code is PREEMPTED_EXIT_CODE (75).

    Args:
        step: the last step taken (the checkpoint's).
        signame: the signal's name, "SIGTERM" or "SIGUSR1".

    Examples:
        >>> from clnscl.train import Preempted
        >>> stop = Preempted(12, "SIGTERM")
        >>> stop.code, stop.step, stop.signame
        (75, 12, 'SIGTERM')
    """

    def __init__(self, step: int, signame: str):
        super().__init__(PREEMPTED_EXIT_CODE)
        self.step, self.signame = step, signame


def continues(out: Path, resume=False, overwrite: bool = False) -> bool:
    """Whether a run into `out` continues the one there (True) or starts afresh (False).

    Raises:
        ValueError: `out` holds a run and neither resume nor overwrite says what to do with it; an unknown
            resume mode; resume together with overwrite.
    """
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


class _StopSignals:
    """Records SIGTERM / SIGUSR1 while installed (main thread only); the previous handlers come back on exit."""

    def __init__(self):
        self.received: str | None = None
        self._old: dict = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.received = signal.Signals(signum).name

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _positive(name: str, value, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def fit(coupled: Coupled, train: Iterable, reference: Iterable, *, out: str | Path, eval_every: int,
        epochs: int | None = None, steps: int | None = None, checkpoint_every: int | None = None,
        resume: bool | str = False, overwrite: bool = False, loggers: Iterable[str | Logger] | None = None,
        progress: bool = True, probe: Iterable | None = None, gap: Iterable | None = None,
        on_nonfinite: str = "stop", knn_k: int = 20, linear_probe: bool = False, theory_delta: float = 0.05,
        snapshot_epochs: Iterable[int] = (), extra_records: Callable[[Coupled], dict] | None = None,
        checkpoint_extra: dict | None = None, identity: dict | None = None, until: int | None = None,
        log: Callable[[str], object] | None = None) -> list[dict]:
    """Train `coupled` on `train` into the run directory `out`, evaluating on `reference`.

    Args:
        coupled: the models (`Coupled`).
        train: an iterable of (views (B, V, ...), labels (B,)) batches — or views alone for ("cl",) — re-iterated
            every epoch (a DataLoader; under a process group, this rank's shard of every batch).
        reference: the reference set of `Coupled.evaluate`.
        out: the run directory.
        eval_every: evaluate every this many steps (and after the first and the last).
        epochs: how many epochs (needs len(train)); exactly one of epochs and steps.
        steps: how many steps; exactly one of epochs and steps.
        checkpoint_every: write the checkpoint every this many steps (None: at every evaluation) and at the end.
        resume: continue the run in `out` from its checkpoint (True), or when it has one ("auto").
        overwrite: replace a run in `out`.
        loggers: a sequence of "tensorboard", "wandb" or objects with log(record) and close(); None: TensorBoard
            when installed.
        progress: a progress bar over the steps (rank 0).
        probe: the probe set of `Coupled.evaluate`.
        gap: the loss-gap set of `Coupled.evaluate`.
        on_nonfinite: "stop" (raise NonFiniteError) or "skip" a step with a non-finite loss or gradient.
        knn_k: passed to `Coupled.evaluate`.
        linear_probe: passed to `Coupled.evaluate`.
        theory_delta: passed to `Coupled.evaluate`.
        snapshot_epochs: also keep the checkpoint of the end of these epochs as snapshots/epoch_<E>.pt.
        extra_records: called with `coupled` at every evaluation (every rank); its keys join the record.
        checkpoint_extra: more entries of every checkpoint (plain data: what a reader of the run needs).
        identity: more keys of the run's identity (plain data), stored in the checkpoint's "run" and checked
            on resume where the checkpoint has them.
        until: train only up to this step of the schedule (a part of the run; the checkpoints are those due, the
            report waits for the end, and resume continues).
        log: where the run's messages go (default: tqdm.write to stderr).

    Returns:
        The records (rank 0; [] on the other ranks): step, epoch (with len(train)), time, samples_per_s,
        data_wait_s (seconds spent waiting for batches since the record before), lr, loss/<objective>,
        skipped_steps, anchor and `Coupled.evaluate`'s keys.

    Raises:
        Preempted: a stop signal arrived; the checkpoint is written.
        NonFiniteError: a non-finite loss or gradient with on_nonfinite="stop".
        ValueError: bad arguments (named), a directory holding a run, or a checkpoint of another run.
        TypeError: a knn_k that is not an integer or a theory_delta that is not a real number.
    """
    log = log or (lambda msg: tqdm.write(msg, file=sys.stderr))
    if (epochs is None) == (steps is None):
        raise ValueError("fit: pass exactly one of epochs and steps")
    for name, value in (("eval_every", eval_every), ("checkpoint_every", checkpoint_every), ("epochs", epochs),
                        ("steps", steps), ("until", until)):
        _positive(name, value, allow_none=name != "eval_every")
    if on_nonfinite not in NONFINITE:
        raise ValueError(f"on_nonfinite must be one of {NONFINITE}, got {on_nonfinite!r}")
    check_evaluation_options(knn_k=knn_k, theory_delta=theory_delta)  # before the first step, not at the first eval
    if isinstance(loggers, str):
        raise ValueError(f"loggers must be a sequence, e.g. [{loggers!r}], got the string {loggers!r}")
    epoch_len = len(train) if hasattr(train, "__len__") else None
    if (epochs is not None or snapshot_epochs) and not epoch_len:
        raise ValueError("epochs, snapshot_epochs: train has no len() (or is empty); pass steps instead")
    total = steps if steps is not None else epochs * epoch_len
    checkpoint_every = checkpoint_every or eval_every
    snapshot_epochs = set(snapshot_epochs)
    out = Path(out)
    lead = coupled.rank == 0
    resumed = continues(out, resume, overwrite)
    if coupled.group is not None:
        dist.barrier(group=coupled.group)  # every rank has looked at the directory before rank 0 writes into it
    out.mkdir(parents=True, exist_ok=True)
    run = {**(identity or {}), "objectives": coupled.names, "temperature": coupled.temperature,
           "decoupled": coupled.decoupled, "total_steps": total}
    metrics = out / METRICS_FILE
    records: list[dict] = []
    elapsed, position = 0.0, None
    if resumed:
        elapsed, position = restore(coupled, out / CHECKPOINT_FILE, run)
        records = read_records(metrics)[0] if metrics.exists() else []
        if lead:
            rewrite_records(metrics, records)  # without a line cut short by the kill
    elif lead:  # a new run (or the replaced one's files gone: a resume must not find them)
        metrics.unlink(missing_ok=True)
        (out / CHECKPOINT_FILE).unlink(missing_ok=True)
    written = {r["step"] for r in records}
    sinks = make_loggers(loggers, out, coupled.steps + 1 if resumed else None) if lead else []
    for rec in records:
        if rec["step"] > coupled.steps:  # recorded after the checkpoint: the purge dropped their events
            for sink in sinks:
                sink.log(rec)
    start = time.perf_counter() - elapsed
    end = total if until is None else min(until, total)
    bar = tqdm(total=total, initial=coupled.steps, unit="step", dynamic_ncols=True, disable=not (progress and lead))
    batches = Batches(train, position, epoch_len)

    def save(*paths: Path) -> None:
        """One checkpoint of the run as it stands, written to each of `paths` (rank 0)."""
        coupled.check_weights()  # never a checkpoint of non-finite weights
        state = checkpoint_state(coupled, batches, run, time.perf_counter() - start, checkpoint_extra)
        for path in paths if lead else ():
            save_checkpoint(state, path)

    with _StopSignals() as stop, bar, (metrics.open("a") if lead else contextlib.nullcontext()) as sink, \
            contextlib.ExitStack() as closing:
        for s in sinks:
            closing.callback(s.close)
        since, samples, waited = time.perf_counter(), 0, 0.0
        while coupled.steps < end:
            t0 = time.perf_counter()
            views, labels = batches.next()
            waited += time.perf_counter() - t0
            losses = coupled.step(views, labels, on_nonfinite=on_nonfinite)
            samples += len(views) * coupled.world
            step = coupled.steps
            bar.update(1)
            bar.set_postfix({k: f"{v:.3f}" for k, v in losses.items()}, refresh=False)
            if (step % eval_every == 0 or step == total or step == 1) and step not in written:
                now = time.perf_counter()
                rec = {"step": step, **({"epoch": step / epoch_len} if epoch_len else {}), "time": now - start,
                       "samples_per_s": samples / max(now - since, 1e-9), "data_wait_s": waited,
                       "lr": coupled.last_lr, **{f"loss/{n}": v for n, v in losses.items()},
                       "skipped_steps": coupled.skipped,
                       **evaluation(coupled, reference, probe, gap=gap, knn_k=knn_k, linear_probe=linear_probe,
                                    theory_delta=theory_delta, extra_records=extra_records)}
                records.append(rec)
                if lead:
                    append_record(sink, rec)
                    write_csv(records, out / "metrics.csv")
                    for s in sinks:
                        s.log(rec)
                    log(_progress_line(rec, total, coupled.names))
                since, samples, waited = time.perf_counter(), 0, 0.0
            signame = _agreed_stop(stop.received, coupled)
            epoch, in_epoch = divmod(step, epoch_len) if epoch_len else (0, 1)
            paths = [out / CHECKPOINT_FILE] if signame or step % checkpoint_every == 0 or step == total else []
            if in_epoch == 0 and epoch in snapshot_epochs:
                paths.append(out / "snapshots" / f"epoch_{epoch}.pt")
            if paths:
                save(*paths)
            if signame:
                if coupled.group is not None:
                    dist.barrier(group=coupled.group)
                log(f"{signame}: stopped after step {step} of {total}; checkpoint {out / CHECKPOINT_FILE} written. "
                    f"Run the same command with --resume (resume=True) to continue.")
                raise Preempted(step, signame)
    if lead and coupled.steps == total:
        write_csv(records, out / "metrics.csv")
        _write_classes(out, coupled)
        log(write_report(out))
    return records if lead else []


def evaluation(coupled: Coupled, reference: Iterable, probe: Iterable | None = None, *,
               gap: Iterable | None = None, knn_k: int = 20, linear_probe: bool = False, theory_delta: float = 0.05,
               extra_records: Callable[[Coupled], dict] | None = None) -> dict:
    """The evaluation keys of one record: `Coupled.evaluate`'s, `extra_records(coupled)`'s and the anchor."""
    return {**coupled.evaluate(reference, probe, gap=gap, knn_k=knn_k, linear_probe=linear_probe,
                               theory_delta=theory_delta),
            **(extra_records(coupled) if extra_records is not None else {}), "anchor": coupled.anchor}


def _write_classes(out: Path, coupled: Coupled) -> None:
    """RUN_DIR/classes.json (the class indices, when no names were written there) for the report's chance
    level: num_classes, else the classes the training labels reached."""
    path = out / "classes.json"
    classes = coupled.num_classes or coupled.classes_seen
    if classes and not path.exists():
        path.write_text(json.dumps([str(c) for c in range(classes)]))


def checkpoint_state(coupled: Coupled, batches: "Batches", run: dict, elapsed: float,
                     extra: dict | None = None) -> dict:
    """A run's checkpoint: step, the run's identity, elapsed seconds, the models' state dicts (in objective
    order), `Coupled.state_dict()`, the data position and `extra`."""
    return {"step": coupled.steps, "run": run, "elapsed": elapsed,
            "models": [m.state_dict() for m in coupled.models.values()], "coupled": coupled.state_dict(),
            "position": batches.position(), **(extra or {})}


def restore(coupled: Coupled, path: Path, run: dict | None = None) -> tuple[float, dict]:
    """Load the checkpoint at `path` into `coupled` (checking `run`, the identity it must have, on the keys the
    checkpoint has); its elapsed seconds and data position."""
    path, state = load_checkpoint(path)
    if "coupled" not in state:
        raise ValueError(f"checkpoint {path} was written by an older clnscl (before Coupled and fit) and cannot be "
                         "continued; start the run afresh (--overwrite)")
    differ = [k for k in run or {} if k in state["run"] and state["run"][k] != run[k]]
    if differ:
        raise ValueError(f"checkpoint {path} belongs to another run: {', '.join(differ)} differ (checkpoint "
                         f"{[state['run'].get(k) for k in differ]}, this run {[run[k] for k in differ]})")
    coupled.load_state_dict(state["coupled"])
    return float(state.get("elapsed", 0.0)), state["position"]


def _agreed_stop(received: str | None, coupled: Coupled) -> str | None:
    """The stop signal's name if any rank received one (every rank then stops after the same step)."""
    if coupled.group is None:
        return received
    flag = torch.tensor([1.0 if received else 0.0], device=coupled.device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=coupled.group)
    return (received or "SIGTERM") if flag.item() else None


class Batches:
    """The training batches across epochs, with the position a checkpoint needs to continue them (None: the
    start)."""

    def __init__(self, train, position: dict | None, epoch_len: int | None):
        position = position or {"epoch": 0, "batch": 0, "epoch_rng": None, "train": None}
        self.train, self.epoch_len = train, epoch_len
        self.epoch, self.batch = int(position["epoch"]), int(position["batch"])
        self.epoch_rng, self._train_state = position["epoch_rng"], position["train"]
        self.it = None

    def _stateful(self) -> bool:
        return callable(getattr(self.train, "state_dict", None)) and callable(getattr(self.train, "load_state_dict",
                                                                                    None))

    def _start(self) -> None:
        """Iterate the current epoch from its start, or from where a checkpoint left it."""
        for target in (self.train, getattr(self.train, "sampler", None), getattr(self.train, "batch_sampler", None)):
            if callable(getattr(target, "set_epoch", None)):
                target.set_epoch(self.epoch)
                break
        if self._stateful() and self._train_state is not None:
            self.train.load_state_dict(self._train_state)
            self.it, self._train_state = iter(self.train), None
            return
        if self.batch == 0 or self.epoch_rng is None:
            self.epoch_rng = torch.get_rng_state()
            self.batch = 0
            self.it = iter(self.train)
            return
        now = torch.get_rng_state()  # mid-epoch without a state: replay the epoch's start, skip what was given
        torch.set_rng_state(self.epoch_rng)
        self.it = iter(self.train)
        for _ in range(self.batch):
            next(self.it)
        torch.set_rng_state(now)

    def next(self):
        """(views, labels or None) of the next batch, starting a new epoch when one ends."""
        while True:
            if self.it is None:
                self._start()
            try:
                batch = next(self.it)
            except StopIteration:
                if self.batch == 0:
                    raise ValueError("train: an epoch gave no batches") from None
                self.epoch, self.batch, self.it = self.epoch + 1, 0, None
                continue
            self.batch += 1
            if isinstance(batch, torch.Tensor):
                return batch, None
            if isinstance(batch, (tuple, list)) and len(batch) >= 1:
                return batch[0], (batch[1] if len(batch) > 1 else None)
            raise ValueError(f"train: expected batches (views, labels), got {type(batch).__name__}")

    def position(self) -> dict:
        """Where the batches are: epoch, batches given in it, the random state it started with, and the
        iterable's own state when it has one."""
        return {"epoch": self.epoch, "batch": self.batch, "epoch_rng": self.epoch_rng,
                "train": self.train.state_dict() if self._stateful() else None}


def _progress_line(rec: dict, total: int, names: list[str]) -> str:
    losses = "  ".join(f"{n} {rec[f'loss/{n}']:.3f}" for n in names)
    align = "  ".join(f"cka/{n} {rec[f'cka_cosine/{n}']:.3f}" for n in names[1:] if f"cka_cosine/{n}" in rec)
    return f"step {rec['step']:5d}/{total}  {rec['time']:6.1f}s  loss: {losses}  |  {align}"
