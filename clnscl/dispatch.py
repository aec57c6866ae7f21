"""The backend rule, one for the loss and the metrics alike.

A family of backends (the loss's masked log-sum-exp, the metrics' pairwise passes) names each backend; a
backend says why it cannot run on this machine (`unavailable`) or on this input (`unsupported`), or None.
An explicit choice that cannot run raises RuntimeError with the reason. "auto" takes the first fused backend
listed for the input's device that can run, and otherwise the family's materialised reference (O(N²)
memory), with a warning that gives the reasons, once per reason.
"""
from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import torch

from .checks import check_choice

_warned: set[tuple[str, str]] = set()


class Backend:
    name = ""

    def unavailable(self) -> str | None:
        """Why this backend cannot run on this machine at all, or None."""
        return None

    def unsupported(self, x: torch.Tensor) -> str | None:
        """Why this backend cannot run this input, or None."""
        return None


class Registry:
    """The backends of one family; `auto[device type]` lists the fused ones to try, in order ("cpu" for any
    device type not listed), and `fallback` names the materialised reference."""

    def __init__(self, family: str, backends: Sequence[Backend], auto: Mapping[str, Sequence[str]], fallback: str):
        self.family = family
        self.backends = {b.name: b for b in backends}
        self.names = ("auto", *self.backends)
        self.auto = auto
        self.fallback = fallback

    def __getitem__(self, name: str) -> Backend:
        return self.backends[name]

    def status(self) -> dict[str, str | None]:
        """name -> None if the backend is available on this machine, else the reason."""
        return {name: b.unavailable() for name, b in self.backends.items()}

    def resolve(self, backend: str, x: torch.Tensor) -> Backend:
        """The backend to run x with (see the module's rule)."""
        check_choice("backend", backend, self.names)
        if backend != "auto":
            chosen = self.backends[backend]
            why = chosen.unavailable() or chosen.unsupported(x)
            if why:
                raise RuntimeError(f"backend {backend!r} is unavailable: {why}")
            return chosen
        reasons = []
        for name in self.auto.get(x.device.type, self.auto["cpu"]):
            why = self.backends[name].unavailable() or self.backends[name].unsupported(x)
            if why is None:
                return self.backends[name]
            reasons.append(f"{name}: {why}")
        key = ", ".join(reasons)
        if (self.family, key) not in _warned:
            _warned.add((self.family, key))
            warnings.warn(f"clnscl {self.family}: no fused backend for this input ({key}); using the materialised "
                          f"reference (O(N²) memory)")
        return self.backends[self.fallback]
