"""Argument checks shared by the functional loss and the modules: each error names the argument."""
from __future__ import annotations

import math
import numbers

import torch

from ._spec import OBJECTIVES, REDUCTIONS

FLOAT_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def check_features(z) -> None:
    if not isinstance(z, torch.Tensor):
        raise TypeError(f"z must be a torch.Tensor of shape (B, V, d), got {type(z).__name__}")
    if z.ndim != 3:
        raise ValueError(f"z must have shape (B, V, d) (3 dimensions), got shape {tuple(z.shape)}")
    b, v, d = z.shape
    if v < 2:
        raise ValueError(f"z must hold V >= 2 views per sample (shape (B, V, d)), got V = {v}")
    if b == 0:
        raise ValueError("z is an empty batch (B = 0); a contrastive loss needs at least one sample")
    if d == 0:
        raise ValueError("z has feature dimension d = 0")
    if z.dtype not in FLOAT_DTYPES:
        raise TypeError(f"z must be float32, float64, bfloat16 or float16, got {z.dtype}")


def check_labels(labels, z: torch.Tensor, needs_labels: bool, objective: str) -> None:
    if labels is None:
        if needs_labels:
            raise ValueError(f"objective {objective!r} needs labels; only 'cl'/'dcl' accept labels=None")
        return
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels must be a torch.Tensor of shape (B,), got {type(labels).__name__}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise TypeError(f"labels must have an integer dtype, got {labels.dtype}")
    if labels.ndim != 1 or labels.shape[0] != z.shape[0]:
        raise ValueError(
            f"labels must have shape (B,) = ({z.shape[0]},) to match z, got shape {tuple(labels.shape)}"
        )
    if labels.device != z.device:
        raise ValueError(f"labels are on {labels.device} but z is on {z.device}; put both on one device")


def check_temperature(temperature) -> float:
    if isinstance(temperature, torch.Tensor):
        if temperature.numel() != 1:
            raise ValueError("temperature must be a scalar")
        temperature = temperature.item()
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real):
        raise TypeError(f"temperature must be a real number, got {type(temperature).__name__}")
    t = float(temperature)
    if not math.isfinite(t) or t <= 0:
        raise ValueError(f"temperature must be finite and > 0, got {temperature}")
    return t


def check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")


def check_options(objective, reduction) -> None:
    check_choice("objective", objective, OBJECTIVES)
    check_choice("reduction", reduction, REDUCTIONS)
