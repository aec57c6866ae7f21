"""A run's records: RUN_DIR/metrics.jsonl, one JSON object per evaluation appended as it is made (so a killed
run keeps what it recorded), and RUN_DIR/metrics.csv, the same records as a table, rewritten (atomically) with
every record. TIMINGS are the keys that measure the machine rather than the run (wall time, throughput, data
wait): two runs of one config agree on everything else."""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

METRICS_FILE = "metrics.jsonl"
TIMINGS = ("time", "samples_per_s", "data_wait_s")


def without_timings(record: dict) -> dict:
    """The record without its TIMINGS: what a rerun of the same config reproduces."""
    return {k: v for k, v in record.items() if k not in TIMINGS}


def read_records(path) -> tuple[list[dict], list[str]]:
    """The records of a metrics.jsonl file and notes about what was skipped.

    A last line that does not parse (a run killed while writing it) is skipped with a note; a bad line anywhere
    else or a missing file raises (ValueError / FileNotFoundError naming the file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no metrics file at {path} (run `clnscl train --out DIR` first)")
    lines = [(i, line) for i, line in enumerate(path.read_text().splitlines(), start=1) if line.strip()]
    records, notes = [], []
    for j, (lineno, line) in enumerate(lines):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            if j == len(lines) - 1:
                notes.append(f"skipped the truncated last line ({lineno}) of {path}: the run was probably "
                             "interrupted while writing it")
                continue
            raise ValueError(f"{path}, line {lineno}: not valid JSON ({exc.msg})") from exc
        if not isinstance(rec, dict) or "step" not in rec:
            raise ValueError(f"{path}, line {lineno}: expected a JSON object with a 'step' key")
        records.append(rec)
    return records, notes


def append_record(sink, record: dict) -> None:
    """One record as one line of an open metrics.jsonl, flushed."""
    sink.write(json.dumps(record) + "\n")
    sink.flush()


def rewrite_records(path, records: list[dict]) -> None:
    """metrics.jsonl holding exactly `records`, replaced atomically (temporary file + rename)."""
    path = Path(path)
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    os.replace(tmp, path)


def open_tensorboard(setting, path, purge_step=None):
    """A SummaryWriter of event files at `path`, or None: setting None opens one when the tensorboard package is
    installed, True requires it (ImportError saying how to install it), False opens none."""
    if setting is False:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        if setting:
            raise ImportError("config key 'tensorboard': true needs the tensorboard package "
                              "(pip install 'clnscl[tensorboard]')") from exc
        return None
    return SummaryWriter(str(path), purge_step=purge_step)


def write_csv(records: list[dict], path) -> None:
    """The records as a CSV table, one column per key (in order of first appearance), replaced atomically."""
    keys = list(dict.fromkeys(k for rec in records for k in rec))
    path = Path(path)
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(records)
    os.replace(tmp, path)
