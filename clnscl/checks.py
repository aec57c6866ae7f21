"""Argument checks shared by the loss, the metrics and the trainer; every error names the argument.

One policy everywhere: a value of the wrong type (not a tensor, a float where an integer belongs, labels of a
floating dtype) raises TypeError; a value of the right type but the wrong shape, size, device or range raises
ValueError.
"""
from __future__ import annotations

import functools
import inspect
import math
import numbers

import numpy as np
import torch

FLOAT_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def accepts_numpy(*names: str):
    """A decorator: the arguments `names` of the function may be numpy arrays, taken as tensors sharing their
    memory (`torch.from_numpy`: float64 stays float64, integer labels stay integers)."""

    def wrap(fn):
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            for name in names:
                if name in bound.arguments:
                    bound.arguments[name] = as_tensor(bound.arguments[name])
            return fn(*bound.args, **bound.kwargs)

        return wrapper

    return wrap


def as_tensor(x):
    """A numpy array as a tensor sharing its memory (its dtype kept); anything else as it is."""
    return torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x


def check_tensor(x, name: str, shape: str) -> None:
    """x is a torch.Tensor (`shape` only describes what is expected, e.g. "(B, V, d)")."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape {shape}, got {type(x).__name__}")


def check_float(x: torch.Tensor, name: str) -> None:
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, float64, bfloat16 or float16, got {x.dtype}")


def check_matrix(x, name: str, finite: bool = False) -> None:
    """x is a floating (N, p) tensor (and, with `finite`, holds no NaN or infinity)."""
    check_tensor(x, name, "(N, p)")
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D (N, p), got shape {tuple(x.shape)}")
    check_float(x, name)
    if finite and x.numel() and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or infinite values")


def check_labels(y, name: str, n: int | None = None, device=None, against: str = "", unit: str = "rows") -> None:
    """y is a 1-D integer tensor; with n, of length n (`against` holds n `unit`); with device, on that device."""
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"{name} must be a 1-D integer torch.Tensor, got {type(y).__name__}")
    if y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        raise TypeError(f"{name} must have an integer dtype, got {y.dtype}")
    if y.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(y.shape)}")
    if n is not None and y.shape[0] != n:
        raise ValueError(f"{name} has {y.shape[0]} entries but {against} holds {n} {unit}")
    if device is not None and y.device != device:
        raise ValueError(f"{name} is on {y.device} but {against} is on {device}; put both on one device")


def check_int(value, name: str, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def range_rule(lo: float | None, hi: float | None, lo_open: bool = False, hi_open: bool = False) -> str:
    """The interval as text: "> 0", ">= 0", "in [0, 1)"."""
    if hi is None:
        return f"{'>' if lo_open else '>='} {lo:g}"
    if lo is None:
        return f"{'<' if hi_open else '<='} {hi:g}"
    return f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"


def in_range(value: float, lo: float | None, hi: float | None, lo_open: bool = False, hi_open: bool = False) -> bool:
    above = lo is None or (value > lo if lo_open else value >= lo)
    below = hi is None or (value < hi if hi_open else value <= hi)
    return above and below


def check_real(value, name: str, lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
               hi_open: bool = False) -> float:
    """A finite real number (not a bool) in the interval; returned as a float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    v = float(value)
    if not math.isfinite(v) or not in_range(v, lo, hi, lo_open, hi_open):
        rule = "" if lo is None and hi is None else " and " + range_rule(lo, hi, lo_open, hi_open)
        raise ValueError(f"{name} must be finite{rule}, got {value}")
    return v


def check_temperature(temperature) -> float:
    """τ > 0, finite: a real number or a one-element floating tensor; its value."""
    if isinstance(temperature, torch.Tensor):
        check_temperature_tensor(temperature)
        temperature = temperature.detach().item()
    return check_real(temperature, "temperature", 0.0, lo_open=True)


def check_temperature_tensor(temperature: torch.Tensor, name: str = "temperature") -> None:
    """A tensor τ (or scale): one element, floating; its value finite and > 0 (checked in eager mode only:
    under torch.compile the value is data, and the ops check it when they run)."""
    if temperature.numel() != 1:
        raise ValueError(f"{name} must be a scalar, got a tensor of shape {tuple(temperature.shape)}")
    if not temperature.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor, got {temperature.dtype}")
    if not torch.compiler.is_compiling():
        check_real(temperature.detach().item(), name, 0.0, lo_open=True)


def check_weights(value, name: str) -> torch.Tensor:
    """Class weights (a sequence, tensor or numpy array): non-negative with a positive sum; float64, flattened."""
    w = torch.as_tensor(value, dtype=torch.float64).flatten()
    if w.numel() == 0 or bool((w < 0).any()) or not float(w.sum()) > 0:
        raise ValueError(f"{name} must be non-negative class weights with a positive sum")
    return w


def check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")


def stack_views(first: torch.Tensor, second: torch.Tensor, names: tuple[str, str], shape: str = "(B, d)"):
    """Two views of the same rows, each 2-D and of one shape, as one (B, 2, d) tensor."""
    for t, name in zip((first, second), names):
        check_tensor(t, name, shape)
        if t.ndim != 2:
            raise ValueError(f"{name} must have shape {shape}, got {tuple(t.shape)}")
    if second.shape != first.shape:
        raise ValueError(f"{names[1]} must have the shape of {names[0]} {tuple(first.shape)}, got "
                         f"{tuple(second.shape)}")
    if second.device != first.device:
        raise ValueError(f"{names[0]} is on {first.device} and {names[1]} on {second.device}: move both to one "
                         f"device (e.g. {names[1]}.to({names[0]}.device))")
    if second.dtype != first.dtype:
        raise ValueError(f"{names[0]} is {first.dtype} and {names[1]} {second.dtype}: give both the same dtype "
                         f"(e.g. {names[1]}.to({names[0]}.dtype))")
    return torch.stack((first, second), dim=1)
