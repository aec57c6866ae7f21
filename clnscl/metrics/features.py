"""Stream models over a DataLoader straight into the alignment accumulators.

Only the Gram statistics are kept unless the features themselves are asked for (pairwise metrics); those are
stored on the device in a compact dtype (fp16 by default: half of fp32, ample for similarity statistics).
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable

import torch
from torch import nn

from ..progress import progress_bar
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
def extract_features(model: nn.Module, loader: Iterable, *, device: torch.device | str | None = None,
                     dtype: torch.dtype = torch.float16, select: Callable | None = None,
                     progress: bool | None = None) -> torch.Tensor:
    """model(inputs) for every batch of `loader`, in eval mode under no_grad, concatenated on `device` in `dtype`.

    Args:
        model: any module; its training mode is restored afterwards.
        loader: batches of `inputs` or `(inputs, labels, ...)`.
        device: where the inputs go (None: where they are).
        dtype: the dtype the features are kept in.
        select: picks the representation from the model's output (e.g. `lambda out: out[1]`).
        progress: a tqdm bar over the batches (None: when stderr is a terminal).

    Returns:
        The features (N, D), each output flattened.

    Raises:
        TypeError: progress is not None, True or False.
        ValueError: the loader yielded no batches.

    Examples:
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU())
        >>> loader = [torch.randn(8, 4) for _ in range(3)]
        >>> feats = clnscl.metrics.extract_features(model, loader, progress=False)
        >>> feats.shape, feats.dtype
        (torch.Size([24, 3]), torch.float16)
    """
    parts = []
    with _eval_mode(model):
        for batch in progress_bar(loader, progress=progress, desc="features", unit="batch"):
            out = model(_inputs(batch).to(device) if device is not None else _inputs(batch))
            out = select(out) if select is not None else out
            parts.append(out.detach().flatten(1).to(dtype))
    if not parts:
        raise ValueError("loader: yielded no batches")
    return torch.cat(parts)


@torch.no_grad()
def align_models(model_a: nn.Module, model_b: nn.Module, loader: Iterable, *,
                 device: torch.device | str | None = None, keep_features: bool = False,
                 dtype: torch.dtype = torch.float16, select: Callable | None = None,
                 progress: bool | None = None) -> tuple[StreamingAlignment, tuple[torch.Tensor, torch.Tensor] | None]:
    """Run both models on the same batches (eval mode, no_grad) and accumulate their alignment statistics.

    Args:
        model_a: any module; its training mode is restored afterwards.
        model_b: another module, run on the same batches (likewise restored).
        loader: batches of `inputs` or `(inputs, labels, ...)`.
        device: where the inputs go (None: where they are).
        keep_features: also keep both models' features (for the pairwise metrics).
        dtype: the dtype kept features are stored in.
        select: picks the representation from a model's output (e.g. `lambda out: out[1]`).
        progress: a tqdm bar over the batches (None: when stderr is a terminal).

    Returns:
        (StreamingAlignment, features) where features is None, or, with keep_features=True, the pair
            (features_a, features_b) kept on the device in `dtype`.

    Raises:
        TypeError: progress is not None, True or False; a model's output is not a floating tensor.
        ValueError: the loader yielded no batches, or the models' outputs differ in their number of rows.

    Examples:
        >>> model = torch.nn.Linear(4, 3)
        >>> loader = [torch.randn(8, 4) for _ in range(3)]
        >>> acc, feats = clnscl.metrics.align_models(model, model, loader, progress=False)
        >>> acc.n, feats, round(acc.compute()["cka_linear"], 4)
        (24, None, 1.0)
    """
    acc = StreamingAlignment()
    kept: tuple[list, list] = ([], [])
    with _eval_mode(model_a, model_b):
        for batch in progress_bar(loader, progress=progress, desc="features", unit="batch"):
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
