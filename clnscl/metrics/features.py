"""Stream models over a DataLoader straight into the alignment accumulators.

Only the Gram statistics are kept unless the features themselves are asked for (pairwise metrics); those are
stored on the device in a compact dtype (fp16 by default: half of fp32, ample for similarity statistics).
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable

import torch
from torch import nn

from .streaming import StreamingAlignment


def _inputs(batch):
    """A batch is `inputs` or `(inputs, labels, ...)`."""
    return batch[0] if isinstance(batch, (list, tuple)) else batch


@contextlib.contextmanager
def _eval_mode(*models: nn.Module):
    modes = [m.training for m in models]
    try:
        for m in models:
            m.eval()
        yield
    finally:
        for m, mode in zip(models, modes):
            m.train(mode)


@torch.no_grad()
def extract_features(model: nn.Module, loader: Iterable, *, device=None, dtype=torch.float16,
                     select: Callable | None = None) -> torch.Tensor:
    """model(inputs) for every batch of `loader`, in eval mode, concatenated on `device` in `dtype`.

    select picks the representation from the model's output (e.g. `lambda out: out[1]`).
    """
    parts = []
    with _eval_mode(model):
        for batch in loader:
            out = model(_inputs(batch).to(device) if device is not None else _inputs(batch))
            out = select(out) if select is not None else out
            parts.append(out.detach().flatten(1).to(dtype))
    if not parts:
        raise ValueError("loader: yielded no batches")
    return torch.cat(parts)


@torch.no_grad()
def align_models(model_a: nn.Module, model_b: nn.Module, loader: Iterable, *, device=None,
                 keep_features: bool = False, dtype=torch.float16, select: Callable | None = None):
    """Run both models on the same batches (eval mode) and accumulate their alignment statistics.

    Returns (StreamingAlignment, features) where features is None, or, with keep_features=True, the pair
    (features_a, features_b) kept on the device in `dtype` for the pairwise metrics.
    """
    acc = StreamingAlignment()
    kept: tuple[list, list] = ([], [])
    with _eval_mode(model_a, model_b):
        for batch in loader:
            x = _inputs(batch)
            x = x.to(device) if device is not None else x
            fa, fb = model_a(x), model_b(x)
            if select is not None:
                fa, fb = select(fa), select(fb)
            fa, fb = fa.detach().flatten(1), fb.detach().flatten(1)
            acc.update(fa, fb)
            if keep_features:
                kept[0].append(fa.to(dtype))
                kept[1].append(fb.to(dtype))
    if acc.n == 0:
        raise ValueError("loader: yielded no batches")
    return acc, (torch.cat(kept[0]), torch.cat(kept[1])) if keep_features else None
