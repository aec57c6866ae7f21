"""A run's checkpoint, RUN_DIR/checkpoint.pt: written atomically, loaded with `weights_only=True` (tensors and
plain containers only: loading a checkpoint never runs code from the file)."""
from __future__ import annotations

import os
from pathlib import Path

import torch

CHECKPOINT_FILE = "checkpoint.pt"
REQUIRED_KEYS = ("step", "run", "models")


def save_checkpoint(state: dict, path) -> Path:
    """`state` to `path`, through a temporary file and a rename: a kill never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".pt.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path, map_location="cpu") -> tuple[Path, dict]:
    """(the file, its state) of a checkpoint file or of a run directory holding one. FileNotFoundError when
    there is none; ValueError naming the file when it is not a clnscl checkpoint."""
    path = Path(path)
    path = path / CHECKPOINT_FILE if path.is_dir() else path
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
        missing = [k for k in REQUIRED_KEYS if k not in state]
    except Exception as exc:  # any unreadable file: say which and why
        why = f"{type(exc).__name__}: {exc}"
        raise ValueError(f"checkpoint {path} is corrupt or not a clnscl checkpoint ({why})") from exc
    if missing:
        raise ValueError(f"checkpoint {path} is corrupt or not a clnscl checkpoint (no {', '.join(missing)})")
    return path, state
