"""Progress bars for long passes: a tqdm bar on stderr when it is a terminal (progress=None), or forced on (True) or
off (False)."""
from __future__ import annotations

from collections.abc import Iterable

from tqdm.auto import tqdm


def progress_bar(iterable: Iterable | None = None, *, progress: bool | None, desc: str, total: int | None = None,
                 unit: str = "it") -> tqdm:
    """A tqdm bar over `iterable` (or a manual one, updated with `.update(k)`, when it is None).

    Args:
        iterable: what to iterate over; None for a bar advanced by hand.
        progress: None shows the bar only when stderr is a terminal; True or False force it on or off.
        desc: the bar's label.
        total: the number of steps (taken from len(iterable) where it has one).
        unit: the name of one step.

    Raises:
        TypeError: progress is not None, True or False.
    """
    if progress is not None and not isinstance(progress, bool):
        raise TypeError(f"progress must be None (a bar when stderr is a terminal), True or False, got {progress!r}")
    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        total = len(iterable)
    return tqdm(iterable, desc=desc, total=total, unit=unit, disable=None if progress is None else not progress,
                leave=False, dynamic_ncols=True)
