"""Layer-by-layer alignment of two models: `layer_alignment(model_a, model_b, loader, layers_a, layers_b)`, every
chosen layer of one model against every chosen layer of the other, from forward hooks, with one forward pass
of each model per batch (both in eval mode; hooks removed and modes restored whatever happens). A layer's
output is flattened to (b, p) per sample, after an optional pooling: `pool="avg"` or `"max"` over the
dimensions after the channels of (b, C, *spatial) outputs, `"tokens"` the mean over the tokens of (b, T, D)
outputs (transformer blocks). `pairs="matching"` compares layer i with layer i only (the result's other
entries are NaN), for layer lists of equal length.

Methods, for layers of widths pᵢ (model a) and qⱼ (model b) over N samples in batches of b:

- ``exact``: the whole data set's linear or cosine CKA (biased HSIC, Kornblith et al.) and, with `rsa`, the
  Pearson RSA of the cosine RDMs, from the streaming Gram statistics of `StreamingAlignment` in float64: the
  sums of XᵢᵀXᵢ per layer and XᵢᵀYⱼ per pair (of the rows minus the first batch's mean, and of the
  normalised rows), so each layer's own sums are computed once and reused against every layer of the other
  model. Memory 16·(Σpᵢ² + Σqⱼ² + Σᵢⱼ pᵢqⱼ) bytes whatever N; time O(N·(Σpᵢ)·(Σqⱼ)).
- ``minibatch``: the estimator of Nguyen, Raghu and Kornblith (2021): per batch, each layer's b × b Gram matrix
  (of the rows, or of the normalised rows for `kernel="cosine"`) is made once, the unbiased HSIC (Song et al.)
  of every pair follows from the stacked Grams, and CKA = Σ HSIC(K, L) / √(Σ HSIC(K, K) · Σ HSIC(L, L)) over
  the batches. The rows are centred per batch first (the unbiased HSIC is exactly translation-invariant), so
  the Gram product runs in the features' dtype and the sums in float64 keep what the estimator's
  cancellations need; an uncentred float32 computation loses it (0.06–0.1 on ResNet blocks, see BENCHMARKS).
  It estimates CKA (its value depends on the batching), needs b ≥ 4, memory O((L_a + L_b)·b²), time
  O(N·b·(Σpᵢ + Σqⱼ) + N·b·L_a·L_b). pytorch-cka computes the same sums and clamps the ratio to [0, 1].
- ``sketch``: `exact` on the layers' features after a seeded CountSketch to k = `sketch_dim` columns for
  every layer wider than k (coordinate c goes to column h(c) with sign s(c); memory O(p) per layer, time
  O(N·p)). Inner products are preserved in expectation, and the sketched Gram matrix K̂ = XSSᵀXᵀ satisfies
  E‖K̂ − K‖²_F ≤ 2‖X‖⁴_F/k. A Gram matrix whose centred error ‖H(K̂ − K)H‖_F is at most δ·‖HKH‖_F turns by
  an angle of at most arcsin δ, so |CKA_sketch − CKA| ≤ arcsin δ_a + arcsin δ_b; with probability ≥ 1 − η
  (Markov) δ ≤ ‖X‖²_F·√(2/(k·η)) / ‖HKH‖_F, which `sketch_error_bound` evaluates. The bound is loose when
  the features are far from centred (‖X‖²_F ≫ ‖HKH‖_F); the measured error is usually much smaller.
- ``auto`` (the default): the first of these that fits `budget_gib`, judged on the first batch's layer widths:
  `exact`; `sketch` at `sketch_dim`; `minibatch`, when the call allows it (no `rsa`, `pairs="all"`, a first
  batch of at least 4 samples — under a process group every rank's) and a batch's Gram stacks fit (about 32·b²
  bytes per distinct layer); `sketch` at the largest k below `sketch_dim` that fits. A choice other than `exact`
  is announced by a warning giving the GiB each method needs against the budget, and the result's `method` and
  `sketch_dim` name it; when not even k = 1 fits, a ValueError names the fixes. It never pools on its own: the
  layout of a 3-D output, (b, C, L) or (b, T, D), is the caller's to say (`pool`).

`model_b=None` compares model_a with itself: one forward pass per batch, and each unordered layer pair
computed once (the result is symmetric). Under `process_group` every rank passes its own part of the data
and the sums are all-reduced (every rank must see at least one batch), giving one process's result.
"""
from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import warnings
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from ..progress import progress_bar
from .features import _eval_mode, _inputs
from .streaming import StreamingAlignment, _augmented, _cross_from, _gram, _own_from

METHODS = ("auto", "exact", "minibatch", "sketch")
_GRAM_COLUMNS = 8192  # minibatch: feature columns centred and multiplied at a time
KERNELS = ("linear", "cosine")
POOLS = (None, "avg", "max", "tokens")
PAIRS = ("all", "matching")
AUTO_LAYERS_WARN = 64  # automatic layer choice: warn above this many leaf modules


# ------------------------------------------------------------------------------------------------- layers


def resolve_layers(model: nn.Module, layers, which: str = "layers") -> dict[str, nn.Module]:
    """The modules to hook, by name: `layers` is None (every leaf module, with a warning above
    AUTO_LAYERS_WARN), or a name, a module type, or a sequence of them (a type stands for every module of that
    type, in `named_modules()` order)."""
    named = {n: m for n, m in model.named_modules() if n}
    if layers is None:
        leaves = {n: m for n, m in named.items() if next(m.children(), None) is None}
        if len(leaves) > AUTO_LAYERS_WARN:
            warnings.warn(f"{which}: {len(leaves)} leaf modules chosen automatically; pass layer names or types "
                          "to compare fewer", stacklevel=3)
        if not leaves:
            raise ValueError(f"{which}: the model has no sub-modules to hook; name the layers")
        return leaves
    if isinstance(layers, (str, type)):
        layers = [layers]
    aliases = {n: m for n, m in model.named_modules(remove_duplicate=False) if n}  # a module under two names
    out: dict[str, nn.Module] = {}
    for spec in layers:
        if isinstance(spec, str):
            if spec not in aliases:
                close = [n for n in named if spec in n or n in spec][:3]
                raise ValueError(f"{which}: no layer named {spec!r} (model.named_modules() lists them"
                                 + (f"; e.g. {', '.join(close)}" if close else "") + ")")
            out[spec] = aliases[spec]
        elif isinstance(spec, type) and issubclass(spec, nn.Module):
            found = {n: m for n, m in named.items() if isinstance(m, spec)}
            if not found:
                raise ValueError(f"{which}: the model has no layer of type {spec.__name__}")
            out.update(found)
        else:
            raise TypeError(f"{which}: a layer is given by its name or its module type, got {type(spec).__name__}")
    return out


def _keep(store: dict, name: str, pool, module, inputs, output) -> None:
    out = output[0] if isinstance(output, (tuple, list)) and output else output
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"layer {name!r}: its output is a {type(output).__name__}, not a tensor")
    if name in store:
        raise ValueError(f"layer {name!r} ran twice in one forward pass (a shared module); hook another one")
    if pool == "tokens" and out.dim() == 3:  # (b, tokens, dim): the mean token
        out = out.mean(1)
    elif pool in ("avg", "max") and out.dim() > 2:  # (b, C, *spatial)
        dims = tuple(range(2, out.dim()))
        out = out.mean(dims) if pool == "avg" else out.amax(dims)
    else:  # a copy: a later in-place op (ReLU(inplace=True) after a norm layer) would change the output
        out = out.detach().clone()
    store[name] = out.detach().flatten(1)


@contextlib.contextmanager
def _hooks(modules: dict[str, nn.Module], store: dict, pool):
    handles = []
    try:
        for name, module in modules.items():
            handles.append(module.register_forward_hook(partial(_keep, store, name, pool)))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _forward(model: nn.Module, x: torch.Tensor) -> None:
    dev = _device_of(model)
    model(x.to(dev) if dev is not None else x)


def _once(model: nn.Module, modules: dict[str, nn.Module], x: torch.Tensor, which: str) -> dict[str, nn.Module]:
    """The automatically chosen modules that run exactly once in a forward pass on x (a module called several
    times, like a ResNet block's shared ReLU, or never, has no one output to compare); the others are left out
    with a warning."""
    calls = dict.fromkeys(modules, 0)

    def count(name, *_):
        calls[name] += 1

    handles = [m.register_forward_hook(partial(count, n)) for n, m in modules.items()]
    try:
        _forward(model, x)
    finally:
        for h in handles:
            h.remove()
    dropped = [n for n, c in calls.items() if c != 1]
    if dropped:
        warnings.warn(f"{which}: {len(dropped)} automatically chosen module(s) left out because they do not run "
                      f"exactly once per forward pass (e.g. {', '.join(dropped[:3])})", stacklevel=3)
    kept = {n: m for n, m in modules.items() if calls[n] == 1}
    if not kept:
        raise ValueError(f"{which}: no module runs exactly once per forward pass; name the layers")
    return kept


def _device_of(model: nn.Module):
    p = next(model.parameters(), None)
    return p.device if p is not None else None


# ------------------------------------------------------------------------------------------------- results


@dataclass
class LayerAlignment:
    """The L_a × L_b matrices of a `layer_alignment` call (float64, rows: model a's layers).

    Args:
        names_a: model a's layer names (the rows).
        names_b: model b's layer names (the columns).
        cka: the (L_a, L_b) CKA matrix; NaN where not computed (pairs="matching") or undefined.
        rsa: the (L_a, L_b) cosine-RDM Pearson RSA matrix, or None when not asked for.
        method: the method that ran ("exact", "minibatch" or "sketch"; never "auto").
        kernel: the CKA's kernel, "linear" or "cosine".
        samples: the number of samples the matrices are computed over.
        sketch_dim: the sketch's k when `method` is "sketch" (what `method="auto"` chose, or the `sketch_dim`
            asked for), else None.

    Raises:
        TypeError: a missing or unknown field (the dataclass constructor's own check; the values are not
            validated).
    """
    names_a: list[str]
    names_b: list[str]
    cka: torch.Tensor
    rsa: torch.Tensor | None
    method: str
    kernel: str
    samples: int
    sketch_dim: int | None = None

    def to_dict(self) -> dict:
        """The names, settings and matrices as lists, ready for JSON.

        Returns:
            {"names_a", "names_b", "method", "kernel", "samples", "cka", and "sketch_dim", "rsa" when set}; the
                matrices as lists of rows, an entry not computed or undefined None.
        """
        def rows(m: torch.Tensor) -> list:
            return [[None if math.isnan(v) else v for v in row] for row in m.tolist()]

        out = {"names_a": self.names_a, "names_b": self.names_b, "method": self.method, "kernel": self.kernel,
               "samples": self.samples, "cka": rows(self.cka)}
        if self.sketch_dim is not None:
            out["sketch_dim"] = self.sketch_dim
        if self.rsa is not None:
            out["rsa"] = rows(self.rsa)
        return out

    def save_json(self, path: str | os.PathLike) -> Path:
        """Write `to_dict()` as JSON.

        Args:
            path: the file to write (replaced if it exists).

        Returns:
            The path written.

        Raises:
            OSError: the file cannot be written.
        """
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=1))
        return path

    def save_csv(self, path: str | os.PathLike) -> Path:
        """Write one row per layer pair: layer_a, layer_b, cka (and rsa), after a header.

        Args:
            path: the file to write (replaced if it exists).

        Returns:
            The path written.

        Raises:
            OSError: the file cannot be written.
        """
        path = Path(path)
        head = "layer_a,layer_b,cka" + (",rsa" if self.rsa is not None else "")
        rows = [head]
        for i, a in enumerate(self.names_a):
            for j, b in enumerate(self.names_b):
                vals = [repr(float(self.cka[i, j]))] + ([repr(float(self.rsa[i, j]))] if self.rsa is not None else [])
                rows.append(",".join([_csv_field(a), _csv_field(b), *vals]))
        path.write_text("\n".join(rows) + "\n")
        return path

    def heatmap(self, path: str | os.PathLike, metric: Literal["cka", "rsa"] = "cka", annotate: bool | None = None,
                title: str | None = None, labels: tuple[str, str] = ("model a", "model b")) -> Path:
        """Draw a PNG of one matrix, layer names on the axes (needs matplotlib).

        Args:
            path: the PNG file to write.
            metric: "cka", or "rsa" when the RSA was computed.
            annotate: write the values in the cells (None: when there are at most 16 × 16 cells).
            title: the figure's title (None: the metric, kernel, method and number of samples).
            labels: the axis labels of the rows' and the columns' model.

        Returns:
            The path written.

        Raises:
            ValueError: an unknown metric, or "rsa" when it was not computed.
            ImportError: matplotlib is missing.
            OSError: the file cannot be written.
        """
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        values = {"cka": self.cka, "rsa": self.rsa}.get(metric)
        if values is None:
            raise ValueError("metric: choose 'cka'" + (" or 'rsa'" if self.rsa is not None else "")
                             + f", got {metric!r}")
        la, lb = values.shape
        annotate = la <= 16 and lb <= 16 if annotate is None else annotate
        fig = Figure(figsize=(min(2.0 + 0.45 * lb, 24), min(1.6 + 0.4 * la, 24)), layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.subplots()
        im = ax.imshow(values.numpy(), vmin=min(0.0, float(values.nan_to_num(0).min())), vmax=1.0, cmap="magma",
                       aspect="auto", origin="lower")
        ax.set_xticks(range(lb), self.names_b, rotation=90, fontsize=7)
        ax.set_yticks(range(la), self.names_a, fontsize=7)
        ax.set_xlabel(labels[1])
        ax.set_ylabel(labels[0])
        fig.colorbar(im, ax=ax, shrink=0.8)
        if annotate:
            for i in range(la):
                for j in range(lb):
                    v = float(values[i, j])
                    ax.text(j, i, "nan" if math.isnan(v) else f"{v:.2f}", ha="center", va="center", fontsize=6,
                            color="white" if not v > 0.6 else "black")
        ax.set_title(title or f"{metric.upper()} ({self.kernel}, {self.method}, {self.samples} samples)", fontsize=9)
        path = Path(path)
        fig.savefig(path, dpi=120)
        return path


def _csv_field(text: str) -> str:
    return '"' + text.replace('"', '""') + '"' if any(c in text for c in ',"\n') else text


# ------------------------------------------------------------------------------------------------- methods


def count_sketch(x: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """x (b, p) → (b, k): column c of x added, with the sign s(c), to column h(c); h, s drawn from `seed`."""
    gen = torch.Generator().manual_seed(seed)
    p = x.shape[1]
    h = torch.randint(0, k, (p,), generator=gen).to(x.device)
    s = (torch.randint(0, 2, (p,), generator=gen) * 2 - 1).to(device=x.device, dtype=x.dtype)
    return torch.zeros(x.shape[0], k, dtype=x.dtype, device=x.device).index_add_(1, h, x * s)


def sketch_error_bound(x: torch.Tensor, k: int, eta: float = 0.05) -> float:
    """δ for features x (N, p) sketched to k columns: ‖X‖²_F·√(2/(k·η)) / ‖HXXᵀH‖_F (see the module's
    docstring); |CKA_sketch − CKA| ≤ arcsin(min(1, δ_a)) + arcsin(min(1, δ_b)) with probability ≥ 1 − 2η."""
    x = x.double()
    xc = x - x.mean(0)
    centred = torch.linalg.matrix_norm(xc.T @ xc)  # ‖HXXᵀH‖_F = ‖XᶜᵀXᶜ‖_F
    return float(x.square().sum() * math.sqrt(2.0 / (k * eta)) / centred) if centred > 0 else math.inf


def _layer_seed(seed: int, key: str) -> int:
    """The sketch seed of a layer (its key names the model when two are compared): fixed by `seed` and the key."""
    return (seed * 1_000_003 + zlib.crc32(key.encode())) % (2**63)


def _sum_into(table: dict, key, sums: list[dict]) -> None:
    """table[key] += sums (a tuple of dicts of tensors, summed key by key), or = sums the first time."""
    if key not in table:
        table[key] = tuple(sums)
        return
    for mine, new in zip(table[key], sums):
        for k in mine:
            mine[k] += new[k]


class _Exact:
    """Per layer its own sums, per pair the cross sums (of the shifted rows and of the normalised rows)."""

    def __init__(self, group):
        self.group, self.n = group, 0
        self.shift: dict[str, torch.Tensor] = {}
        self.own: dict[str, tuple[dict, dict]] = {}
        self.cross: dict[tuple[str, str], tuple[dict, dict]] = {}

    @staticmethod
    def bytes_needed(widths: dict[str, int], pairs: list[tuple[str, str]]) -> int:
        return 16 * (sum(p * p + 2 * p for p in widths.values()) + sum(widths[a] * widths[b] + widths[a]
                                                                       + widths[b] for a, b in pairs))

    def _first(self, feats: dict[str, torch.Tensor]) -> None:
        for name, f in feats.items():
            shift = f.mean(0)
            if self.group is not None:
                import torch.distributed as dist
                dist.broadcast(shift, src=dist.get_global_rank(self.group, 0), group=self.group)
            self.shift[name] = shift

    def add(self, feats: dict[str, torch.Tensor], pairs: list[tuple[str, str]]) -> None:
        feats = {n: f.double() for n, f in feats.items()}
        if not self.shift:
            self._first(feats)
        rows = {}
        for name, f in feats.items():
            rows[name] = [_augmented(f, shift=self.shift[name]), _augmented(f, unit=True)]
            _sum_into(self.own, name, [_own_from(_gram(r.big, r.big, None), r.width, "x") for r in rows[name]])
        for a, b in pairs:
            _sum_into(self.cross, (a, b), [_cross_from(_gram(ra.big, rb.big, None), ra.width, rb.width)
                                           for ra, rb in zip(rows[a], rows[b])])
        self.n += next(iter(feats.values())).shape[0]

    def all_reduce(self) -> None:
        import torch.distributed as dist
        tensors = [v for sums in (*self.own.values(), *self.cross.values()) for part in sums for v in part.values()]
        flat = torch.cat([t.reshape(-1) for t in tensors] + [torch.tensor([float(self.n)], dtype=torch.float64,
                                                                           device=tensors[0].device)])
        dist.all_reduce(flat, group=self.group)
        offset = 0
        for t in tensors:
            t.copy_(flat[offset:offset + t.numel()].view_as(t))
            offset += t.numel()
        self.n = int(flat[-1])

    def metrics(self, a: str, b: str, keys: list[str]) -> dict[str, float]:
        n = torch.tensor(float(self.n), dtype=torch.float64, device=self.shift[a].device)
        sides = []
        for k in range(2):  # shifted rows, normalised rows
            ya = {key.replace("x", "y"): v for key, v in self.own[b][k].items()}
            sides.append({"n": n, **self.own[a][k], **ya, **self.cross[(a, b)][k]})
        acc = StreamingAlignment.from_sums(sides[0], sides[1], (self.shift[a], self.shift[b]))
        return acc.compute(keys)


class _Minibatch:
    """Per pair the sums over batches of the unbiased HSIC of the batch's Gram matrices."""

    def __init__(self, group, names_a: list[str], names_b: list[str]):
        self.group, self.n, self.skipped = group, 0, 0
        self.names_a, self.names_b = names_a, names_b
        self.xy = self.xx = self.yy = None

    @staticmethod
    def bytes_needed(la: int, lb: int, b: int, same: bool) -> int:
        """For batches of b samples: the Gram stacks of the distinct layers (la + lb, or la for a model against
        itself) with their temporaries (list, stack, diagonal, difference: 4 (L, b, b) float64 tensors), and
        the sums."""
        return 8 * (4 * (la if same else la + lb) * b * b + la * lb + la + lb)

    @staticmethod
    def _grams(feats: dict[str, torch.Tensor], names: list[str], kernel: str) -> torch.Tensor:
        """The zero-diagonal Grams K̃ (L, b, b) in float64 of the batch's rows (normalised for the cosine kernel)
        minus their batch mean: the unbiased HSIC is exactly invariant to translating the rows, and centred rows
        keep the Gram's entries small, so the product runs in the features' own dtype without losing what the
        estimator's cancellations need."""
        grams = []
        for n in names:
            f = feats[n]
            exact = f if f.dtype in (torch.float32, torch.float64) else f.float()
            scale = 1.0 / torch.linalg.vector_norm(exact, dim=1, keepdim=True).clamp_min(1e-12) \
                if kernel == "cosine" else None
            g = torch.zeros(f.shape[0], f.shape[0], dtype=torch.float64, device=f.device)
            for start in range(0, f.shape[1], _GRAM_COLUMNS):  # column blocks: temporaries O(b · block)
                blk = f[:, start:start + _GRAM_COLUMNS]
                blk = blk.float() if blk.dtype in (torch.float16, torch.bfloat16) else blk
                blk = blk * scale.to(blk.dtype) if scale is not None else blk
                blk = blk - blk.mean(0)
                g += (blk @ blk.T).double()
            grams.append(g)
        g = torch.stack(grams)
        return g - torch.diag_embed(torch.diagonal(g, dim1=1, dim2=2))

    @staticmethod
    def _hsic(ka: torch.Tensor, kb: torch.Tensor) -> torch.Tensor:
        """Unbiased HSIC of every pair of zero-diagonal Grams ka (A, b, b), kb (B, b, b): (A, B)."""
        b = ka.shape[1]
        trace = ka.flatten(1) @ kb.flatten(1).T
        sa, sb = ka.sum((1, 2)), kb.sum((1, 2))
        ca, cb = ka.sum(1), kb.sum(1)
        return (trace + torch.outer(sa, sb) / ((b - 1) * (b - 2)) - 2.0 / (b - 2) * (ca @ cb.T)) / (b * (b - 3))

    @staticmethod
    def _hsic_self(k: torch.Tensor) -> torch.Tensor:
        """Unbiased HSIC(K, K) of each zero-diagonal Gram k (L, b, b): the diagonal of `_hsic(k, k)`."""
        b = k.shape[1]
        s, c = k.sum((1, 2)), k.sum(1)
        trace = k.square().sum((1, 2))
        return (trace + s * s / ((b - 1) * (b - 2)) - 2.0 / (b - 2) * c.square().sum(1)) / (b * (b - 3))

    def add(self, feats: dict[str, torch.Tensor], kernel: str) -> None:
        b = next(iter(feats.values())).shape[0]
        if b < 4:  # e.g. a DataLoader's last batch: the unbiased HSIC needs 4 samples
            warnings.warn(f"method='minibatch': a batch of {b} sample(s) left out (the unbiased HSIC needs at "
                          "least 4 samples a batch)", stacklevel=4)
            self.skipped += b
            return
        ka = self._grams(feats, self.names_a, kernel)
        kb = ka if self.names_b == self.names_a else self._grams(feats, self.names_b, kernel)
        xy = self._hsic(ka, kb)
        xx = torch.diagonal(xy).clone() if kb is ka else self._hsic_self(ka)
        yy = xx if kb is ka else self._hsic_self(kb)
        if self.xy is None:
            self.xy, self.xx, self.yy = xy, xx, yy.clone()
        else:
            self.xy += xy
            self.xx += xx
            self.yy += yy
        self.n += b

    def all_reduce(self) -> None:
        import torch.distributed as dist
        flat = torch.cat([self.xy.flatten(), self.xx, self.yy,
                          torch.tensor([float(self.n)], dtype=torch.float64, device=self.xy.device)])
        dist.all_reduce(flat, group=self.group)
        la, lb = self.xy.shape
        self.xy, self.xx = flat[:la * lb].view(la, lb), flat[la * lb:la * lb + la]
        self.yy, self.n = flat[la * lb + la:la * lb + la + lb], int(flat[-1])

    def cka(self) -> torch.Tensor:
        if self.xy is None:
            raise ValueError(f"method='minibatch': no batch of at least 4 samples (all {self.skipped} left out)")
        den = torch.sqrt(self.xx[:, None] * self.yy[None, :])
        bad = ~(den > 0)
        if bool(bad.any()):
            warnings.warn(f"method='minibatch': {int(bad.sum())} layer pair(s) with a non-positive HSIC(K, K) "
                          "sum (a constant layer, or too few samples): NaN", stacklevel=3)
        return torch.where(bad, torch.full_like(den, math.nan), self.xy / den.clamp_min(1e-300)).cpu()


# ------------------------------------------------------------------------------------------------- entry point


@torch.no_grad()
def layer_alignment(model_a: nn.Module, model_b: nn.Module | None, loader: Iterable,
                    layers_a: str | type[nn.Module] | Sequence[str | type[nn.Module]] | None = None,
                    layers_b: str | type[nn.Module] | Sequence[str | type[nn.Module]] | None = None, *,
                    method: Literal["auto", "exact", "minibatch", "sketch"] = "auto",
                    kernel: Literal["linear", "cosine"] = "linear", rsa: bool = False,
                    pool: Literal["avg", "max", "tokens"] | None = None, pairs: Literal["all", "matching"] = "all",
                    sketch_dim: int = 4096, seed: int = 0, budget_gib: float = 4.0,
                    process_group: torch.distributed.ProcessGroup | None = None,
                    progress: bool | None = None) -> LayerAlignment:
    """CKA (`kernel` "linear" or "cosine"; and with `rsa`, the cosine-RDM Pearson RSA) of every layer of
    `layers_a` in model_a against every layer of `layers_b` in model_b over the batches of `loader` (inputs,
    or (inputs, labels, ...)); see the module's docstring for the layers, methods and costs.

    Args:
        model_a: the first model (its layers are the rows); its training mode is restored afterwards.
        model_b: the second model; None (or model_a) compares model_a with itself.
        loader: batches of `inputs` or `(inputs, labels, ...)`.
        layers_a: model_a's layers: names, module types, or None for every leaf module that runs once per
            forward pass.
        layers_b: model_b's layers, likewise (None when model_a is compared with itself: those of `layers_a`).
        method: "auto" (the first of exact, sketch at `sketch_dim`, minibatch, a smaller sketch that fits
            `budget_gib`, with a warning when it is not exact), "exact", "minibatch" or "sketch".
        kernel: the CKA's kernel, "linear" or "cosine" (on L2-normalised rows).
        rsa: also compute the Pearson RSA of the cosine RDMs (not with "minibatch").
        pool: None (the output flattened as it is), "avg" or "max" over the dimensions after the channels of
            (b, C, *spatial) outputs, "tokens" the mean token of (b, T, D) outputs.
        pairs: "all" (every layer against every layer) or "matching" (layer i with layer i only, for layer lists
            of equal length; the other entries NaN).
        sketch_dim: the sketch's k (columns a wider layer is sketched to).
        seed: seeds the sketch's hashes and signs.
        budget_gib: the memory the statistics may take; an explicit "exact" or "sketch" above it is an error.
        process_group: every rank passes its own part of the data and the sums are all-reduced (every rank
            must see at least one batch).
        progress: a tqdm bar over the batches (None: when stderr is a terminal; True or False force it).

    Returns:
        The matrices, with the method that ran (and the sketch's k) in `method` and `sketch_dim`.

    Raises:
        TypeError: a layer given by something other than a name or a module type; a layer output that is not a
            tensor; progress not None, True or False.
        ValueError: a bad argument (named), a layer that cannot be compared, an explicit method over
            `budget_gib`, or `auto` when not even a sketch to one column fits it.

    Examples:
        A model against itself: every layer has CKA 1 with itself.

        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> loader = [torch.randn(16, 4) for _ in range(2)]
        >>> res = clnscl.metrics.layer_alignment(model, None, loader, ["0", "2"], progress=False)
        >>> res.names_a, res.cka.shape, res.method
        (['0', '2'], torch.Size([2, 2]), 'exact')
        >>> torch.allclose(res.cka.diagonal(), torch.ones(2, dtype=torch.float64))
        True
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
    if pairs not in PAIRS:
        raise ValueError(f"pairs must be one of {PAIRS}, got {pairs!r}")
    if isinstance(sketch_dim, bool) or not isinstance(sketch_dim, int) or sketch_dim < 1:
        raise ValueError(f"sketch_dim must be an integer >= 1, got {sketch_dim!r}")
    if not budget_gib > 0:
        raise ValueError(f"budget_gib must be > 0, got {budget_gib!r}")
    if rsa and method == "minibatch":
        raise ValueError("rsa: the minibatch estimator is CKA's only; use method='exact', 'sketch' or 'auto'")
    same = model_b is None or model_b is model_a
    model_b = model_a if model_b is None else model_b
    mods_a = resolve_layers(model_a, layers_a, "layers_a")
    mods_b = mods_a if same and layers_b is None else resolve_layers(model_b, layers_b, "layers_b")
    if pairs == "matching" and method == "minibatch":
        raise ValueError("pairs='matching': the minibatch estimator computes every pair; use method='exact'")
    batches = iter(loader)
    first = next(batches, None)
    if first is None:
        raise ValueError("loader: yielded no batches")
    total = len(loader) if hasattr(loader, "__len__") else None
    batches = progress_bar(itertools.chain([first], batches), progress=progress, desc="layer alignment",
                           total=total, unit="batch")
    with _eval_mode(*({model_a, model_b})), contextlib.ExitStack() as stack:
        if layers_a is None:  # automatic choice: only the leaves that run once per forward pass
            mods_a = _once(model_a, mods_a, _inputs(first), "layers_a")
            mods_b = mods_a if same and layers_b is None else mods_b
        if layers_b is None and not same:
            mods_b = _once(model_b, mods_b, _inputs(first), "layers_b")
        names_a, names_b = list(mods_a), list(mods_b)
        if pairs == "matching" and len(names_a) != len(names_b):
            raise ValueError(f"pairs='matching' needs as many layers on both sides, got {len(names_a)} and "
                             f"{len(names_b)}")
        # the pairs whose statistics are kept: with one model, each unordered pair once
        wanted = zip(names_a, names_b) if pairs == "matching" else ((a, b) for a in names_a for b in names_b)
        kept, seen = [], set()
        for a, b in wanted:
            key = frozenset((a, b)) if same else (a, b)
            if key not in seen:
                seen.add(key)
                kept.append((a, b))
        store_a: dict[str, torch.Tensor] = {}
        store_b = store_a if same else {}
        stack.enter_context(_hooks({**mods_a, **mods_b} if same else mods_a, store_a, pool))
        if not same:
            stack.enter_context(_hooks(mods_b, store_b, pool))
        chosen, k, acc = method, None, None
        for batch in batches:
            x = _inputs(batch)
            _forward(model_a, x)
            if not same:
                _forward(model_b, x)
            feats = {**{("a", n): store_a[n] for n in names_a if n in store_a},
                     **{("b", n): store_b[n] for n in names_b if n in store_b}}
            missing = [n for n in names_a if n not in store_a] + [n for n in names_b if n not in store_b]
            if missing:
                raise ValueError(f"layer {missing[0]!r} produced no output in the forward pass")
            if acc is None:
                chosen, k, acc = _start(method, feats, kept, same, budget_gib, process_group, names_a, names_b,
                                        sketch_dim, rsa, pairs == "matching")
            _add(acc, chosen, feats, kept, same, kernel, k, seed)
            del feats  # no batch's outputs outlive it: the next forward pass starts from the hooks' empty stores
            store_a.clear()
            store_b.clear()
    pairs = kept
    if process_group is not None:
        acc.all_reduce()
    return _result(acc, chosen, k, names_a, names_b, pairs, same, kernel, rsa)


def _key(side: str, name: str, same: bool) -> str:
    return name if same else f"{side}:{name}"


def _flat(feats: dict, same: bool) -> dict[str, torch.Tensor]:
    return {_key(side, name, same): f for (side, name), f in feats.items()}


def _gib(n: float) -> str:
    return f"{n / 2**30:.3g} GiB"


def _start(method, feats, pairs, same, budget_gib, group, names_a, names_b, sketch_dim, rsa, matching):
    """The method the call runs (`auto` resolved by `_auto`), the sketch's k (None when it does not sketch) and
    its accumulator; an explicit `exact` or `sketch` whose statistics exceed `budget_gib` is a ValueError."""
    def minibatch():
        return _Minibatch(group, [_key("a", n, same) for n in names_a], [_key("b", n, same) for n in names_b])

    if method == "minibatch":
        return method, None, minibatch()
    widths = {k: f.shape[1] for k, f in _flat(feats, same).items()}
    kpairs = [(_key("a", a, same), _key("b", b, same)) for a, b in pairs]

    def need(k: int | None = None) -> int:  # bytes of the exact statistics, of features sketched to k columns
        return _Exact.bytes_needed(widths if k is None else {n: min(w, k) for n, w in widths.items()}, kpairs)

    def minibatch_fits() -> tuple[bool, str]:  # whether this call can run the minibatch estimator, and why
        if rsa:
            return False, "gives no rsa"
        if matching:
            return False, "computes every pair, not pairs='matching'"
        small, large = _batch_sizes(feats, group)
        if small < 4:
            return False, f"needs batches of at least 4 samples (a first batch has {small})"
        cost = _Minibatch.bytes_needed(len(names_a), len(names_b), large, same)
        return cost <= budget_gib * 2**30, f"needs {_gib(cost)} for a batch's Gram stacks (b = {large})"

    if method == "auto":
        method, sketch_dim = _auto(need, max(widths.values()), sketch_dim, budget_gib, minibatch_fits)
        return method, sketch_dim, minibatch() if method == "minibatch" else _Exact(group)
    sketch_dim = sketch_dim if method == "sketch" else None
    if need(sketch_dim) > budget_gib * 2**30:
        raise ValueError(f"method={method!r} needs {_gib(need(sketch_dim))} of statistics for these layers (widest "
                         f"{max(widths.values())} features), above budget_gib={budget_gib}; pool the layers "
                         "(pool='avg'), use method='minibatch' or 'auto', a smaller sketch_dim, or raise budget_gib")
    return method, sketch_dim, _Exact(group)


def _batch_sizes(feats: dict, group) -> tuple[int, int]:
    """The smallest and the largest first batch over the process group's ranks (this batch's size without one),
    so that every rank makes the same choice."""
    first = next(iter(feats.values()))
    b = first.shape[0]
    if group is None:
        return b, b
    import torch.distributed as dist
    sizes = torch.tensor([-b, b], device=first.device)
    dist.all_reduce(sizes, op=dist.ReduceOp.MAX, group=group)
    return -int(sizes[0]), int(sizes[1])


def _auto(need, widest: int, sketch_dim: int, budget_gib: float, minibatch_fits) -> tuple[str, int | None]:
    """method='auto': ("exact", None), ("sketch", k) or ("minibatch", None), the first that fits `budget_gib` in
    the module docstring's order, with a warning naming the choice and the numbers when it is not `exact`.

    Args:
        need: k ↦ the bytes of the exact statistics of the features sketched to k columns (None: not sketched).
        widest: the widest layer's features, for the messages.
        minibatch_fits: () ↦ (whether the minibatch estimator can run within the budget, what it needs or why
            not); called only when neither `exact` nor `sketch` at `sketch_dim` fits.

    Raises:
        ValueError: when not even a sketch to k = 1 column fits; it names the fixes.
    """
    budget = budget_gib * 2**30
    if need() <= budget:
        return "exact", None
    why = (f"method='exact' needs {_gib(need())} of statistics for these layers (widest {widest} features), above "
           f"budget_gib={budget_gib}")
    if need(sketch_dim) <= budget:
        choice, k, why = "sketch", sketch_dim, f"{why}; the sketch needs {_gib(need(sketch_dim))}"
    else:
        why += f", and method='sketch' needs {_gib(need(sketch_dim))} at sketch_dim={sketch_dim}"
        fits, minibatch = minibatch_fits()
        if fits:
            choice, k = "minibatch", None
            why += f"; the minibatch estimator (its CKA depends on the batching) {minibatch}"
        else:
            lo, hi = 0, sketch_dim - 1  # the largest k in [1, sketch_dim) that fits, 0 when none does
            while lo < hi:
                mid = (lo + hi + 1) // 2
                lo, hi = (mid, hi) if need(mid) <= budget else (lo, mid - 1)
            if lo == 0:
                raise ValueError(f"method='auto': no method fits budget_gib={budget_gib}: {why} and {_gib(need(1))} "
                                 f"even at sketch_dim=1, and method='minibatch' {minibatch}; raise budget_gib, name "
                                 "fewer layers, or pool them (pool='avg')")
            choice, k = "sketch", lo
            why += (f", and method='minibatch' {minibatch}; k = {lo}, the largest that fits ({_gib(need(lo))}), "
                    "is less accurate (the CKA error bound grows as 1/sqrt(k), the RSA has none): raise budget_gib, "
                    "name fewer layers, or pool them (pool='avg' or 'tokens') for a closer estimate")
    warnings.warn(f"method='auto' chose method={choice!r}" + (f" with sketch_dim={k}" if k else "") + f": {why}",
                  stacklevel=5)
    return choice, k


def _add(acc, method, feats, pairs, same, kernel, sketch_dim, seed) -> None:
    flat = _flat(feats, same)
    if method == "minibatch":
        acc.add(flat, kernel)
        return
    if method == "sketch":
        flat = {k: count_sketch(f.double(), sketch_dim, _layer_seed(seed, k))
                if f.shape[1] > sketch_dim else f for k, f in flat.items()}
    acc.add(flat, [(_key("a", a, same), _key("b", b, same)) for a, b in pairs])


def _result(acc, method, sketch_dim, names_a, names_b, pairs, same, kernel, rsa) -> LayerAlignment:
    la, lb = len(names_a), len(names_b)
    if method == "minibatch":
        return LayerAlignment(names_a, names_b, acc.cka(), None, method, kernel, acc.n)
    cka = torch.full((la, lb), math.nan, dtype=torch.float64)
    rsas = torch.full((la, lb), math.nan, dtype=torch.float64) if rsa else None
    keys = [f"cka_{kernel}"] + (["rsa_pearson"] if rsa else [])
    got = {}
    for a, b in pairs:
        got[(a, b)] = acc.metrics(_key("a", a, same), _key("b", b, same), keys)
    for i, a in enumerate(names_a):
        for j, b in enumerate(names_b):
            m = got.get((a, b)) or (got.get((b, a)) if same else None)
            if m is None:  # pairs="matching": not computed
                continue
            cka[i, j] = m[f"cka_{kernel}"]
            if rsa:
                rsas[i, j] = m["rsa_pearson"]
    return LayerAlignment(names_a, names_b, cka, rsas, method, kernel, acc.n, sketch_dim)
