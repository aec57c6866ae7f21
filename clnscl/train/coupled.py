"""`Coupled`: one model trained once per objective under shared randomness, the trainer's core as a library.

Every objective gets a deep copy of the user's model (identical initial weights, checked), its own optimiser and
schedule, and at every step the same views (B, V, ...) and the same random numbers: the global RNG (and the
views' CUDA generator) is put back to one state before each model's forward, so dropout and drop-path draw the
same masks in every model. "ce" trains a linear head on z beside its copy. `evaluate` compares the first
objective's model (the anchor) with the others on a fixed reference set through `clnscl.metrics`.

It knows only `nn.Module`s, optimisers and batches: no dataset, augmentation or model builder.
"""
from __future__ import annotations

import copy
import math
from functools import partial
from typing import Callable, Iterable, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .. import contrastive_loss
from ..checks import check_int, check_real, check_weights
from ..collectives import all_gather_rows, local_sizes
from ..metrics import (
    StreamingAlignment,
    knn_accuracy,
    linear_probe_accuracy,
    loss_gap_bound,
    nccc_accuracy,
    weight_divergence,
)
from .global_bn import convert_global_batchnorm
from .theory_records import same_class_max, theory_record

OBJECTIVES = ("cl", "nscl", "supcon", "ce")
CONTRASTIVE = ("cl", "nscl", "supcon")
NONFINITE = ("stop", "skip")


class NonFiniteError(FloatingPointError):
    """A non-finite loss, gradient or weight: the step, the objective and its last finite loss are in the message
    and in the attributes `step`, `objective`, `last_finite`.

    Args:
        step: the step (1-based) whose loss or gradient, or after which the weights, are not finite.
        objective: the objective of the model concerned.
        what: "loss", "gradient norm" or "weights".
        last_finite: that model's last finite loss (None before its first).

    Examples:
        >>> from clnscl.train import NonFiniteError
        >>> error = NonFiniteError(3, "nscl", "loss", 1.25)
        >>> error.step, error.objective, error.last_finite
        (3, 'nscl', 1.25)
    """

    def __init__(self, step: int, objective: str, what: str, last_finite: float | None):
        self.step, self.objective, self.last_finite = step, objective, last_finite
        last = "none yet" if last_finite is None else f"{last_finite:.6g}"
        taken = ("its step left them so; no checkpoint holds them" if what == "weights" else
                 "no model took this step")
        verb = "are" if what == "weights" else "is"
        super().__init__(f"step {step}: the {objective} model's {what} {verb} not finite (its last finite loss: "
                         f"{last}); {taken}. Lower the learning rate, set grad_clip, or skip such steps "
                         "(on_nonfinite='skip')")


def _default_optimizer(params) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=0.1, momentum=0.9)


class _Tower(nn.Module):
    """A coupled model and, for "ce", its classifier (the model's own `logits(z)`, or a linear head on z):
    forward → (h or None, z, logits or None)."""

    def __init__(self, model: nn.Module, head: nn.Module | None, classify: bool):
        super().__init__()
        self.model, self.head, self.classify = model, head, classify

    def forward(self, x):
        h, z = _split(self.model(x))
        if not self.classify:
            return h, z, None
        return h, z, (self.head(z) if self.head is not None else self.model.logits(z))


def _split(out):
    """(h, z) of a forward's output: a pair (h, z) or z alone (h None)."""
    if isinstance(out, (tuple, list)):
        if len(out) != 2:
            raise ValueError(f"model: forward must return z or (h, z); got a sequence of {len(out)}")
        return out[0], out[1]
    return None, out


def _seeded_linear(d: int, classes: int, seed: int) -> nn.Linear:
    """nn.Linear(d, classes) drawn as nn.Linear's defaults (U(±1/√d)) from its own generator: the global random
    stream, which dropout shares across the models, is not touched."""
    head = nn.utils.skip_init(nn.Linear, d, classes)  # nn.Linear's own init would draw from the global stream
    gen = torch.Generator().manual_seed(seed)
    bound = 1.0 / math.sqrt(d)
    with torch.no_grad():
        head.weight.copy_(torch.rand(classes, d, generator=gen) * 2 * bound - bound)
        head.bias.copy_(torch.rand(classes, generator=gen) * 2 * bound - bound)
    return head


def _same_weights(models: list[nn.Module]) -> bool:
    first = models[0].state_dict()
    return all(torch.equal(first[k], m.state_dict()[k]) for m in models[1:] for k in first)


def weight_matrices(model: nn.Module, names: set[str] | None = None) -> dict[str, torch.Tensor]:
    """The parameters of 2+ dimensions (matrices, kernels; biases and norm parameters start at 0 or 1, which
    makes a relative distance between them meaningless) that the anchor trains (`names`; None: all)."""
    return {n: p for n, p in model.named_parameters() if p.ndim > 1 and (names is None or n in names)}


class Coupled:
    """One model per objective, trained under shared randomness and compared with the anchor.

    Args:
        model: any ``nn.Module`` whose forward maps a batch of inputs to z (N, d) or to (h, z); it is deep-copied
            once per objective (the argument itself is never trained). Put it on its device first. A model with
            a ``logits(z)`` method classifies with it under "ce" (its parameters frozen in the other copies);
            else "ce" adds a linear head on z.
        objectives: the objectives, one model each, from "cl", "nscl", "supcon", "ce"; the first (the anchor, the
            model the others are compared with) must be contrastive.
        num_classes: the classes of the labels; needed by "ce" (its head's outputs).
        temperature: τ of the contrastive losses.
        decoupled: decoupled denominators (DCL; NSCL as in the paper's formula).
        optimizer: a callable mapping an iterable of parameters to an optimiser (default: SGD, lr 0.1, momentum
            0.9); called once per model.
        scheduler: None or a callable mapping an optimiser to a learning-rate scheduler, stepped once per step.
        grad_clip: clip each model's gradient norm to this value before its step (None: no clipping).
        amp: bf16 autocast on the views' device for the training forward passes.
        process_group: under torchrun, the group whose ranks each pass their shard of every batch: the models are
            wrapped in DDP, batch norm normalises over the global batch, the contrastive losses take negatives
            from every rank and `evaluate` shares the reference set. None: one process.
        class_priors: the training distribution's class frequencies (for the theory records' π_max); None: the
            frequencies of the labels seen by `step` so far.
        compile: ``torch.compile`` each model's training forward (evaluation uses the modules as they are).

    Raises:
        ValueError: an unknown or repeated objective, a non-contrastive anchor, "ce" without num_classes, a
            non-positive temperature or grad_clip, a model without parameters, class_priors that are not
            non-negative weights with a positive sum.
        TypeError: a model that is not an ``nn.Module``, an optimizer or scheduler that is not callable (an
            optimiser instead of the callable that makes one).
        RuntimeError: deep copies of the model that differ (a module whose state deepcopy does not copy).

    Examples:
        >>> from clnscl.train import Coupled
        >>> coupled = Coupled(torch.nn.Linear(8, 4), ["cl", "nscl"], temperature=0.5)
        >>> views, labels = torch.randn(6, 2, 8), torch.tensor([0, 0, 1, 1, 2, 2])
        >>> sorted(coupled.step(views, labels))
        ['cl', 'nscl']
        >>> coupled.steps, coupled.anchor
        (1, 'cl')
    """

    def __init__(self, model: nn.Module, objectives: Iterable[str] = OBJECTIVES, *, num_classes: int | None = None,
                 temperature: float = 0.5, decoupled: bool = False,
                 optimizer: Callable[..., torch.optim.Optimizer] = _default_optimizer,
                 scheduler: Callable | None = None, grad_clip: float | None = None, amp: bool = False,
                 process_group: dist.ProcessGroup | None = None,
                 class_priors: Sequence[float] | torch.Tensor | None = None, compile: bool = False):
        names = list(objectives)
        _check_objectives(names)
        if "ce" in names and (num_classes is None or int(num_classes) < 2):
            raise ValueError(f"num_classes: the 'ce' objective needs the number of classes (≥ 2), got {num_classes}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if grad_clip is not None and not grad_clip > 0:
            raise ValueError(f"grad_clip must be > 0 or None, got {grad_clip}")
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        for name, make in (("optimizer", optimizer), ("scheduler", scheduler)):
            if make is not None and not callable(make):
                raise TypeError(f"{name} must be a callable that makes one per model (e.g. lambda params: "
                                f"torch.optim.SGD(params, lr=0.1)), got a {type(make).__name__} instance")
        self.names = names
        self.num_classes = None if num_classes is None else int(num_classes)
        self.temperature, self.decoupled, self.grad_clip, self.amp = float(temperature), bool(decoupled), grad_clip, amp
        self.group = process_group
        self.world = dist.get_world_size(process_group) if process_group is not None else 1
        self.rank = dist.get_rank(process_group) if process_group is not None else 0
        self._make_optimizer, self._make_scheduler, self._compile = optimizer, scheduler, compile
        first = next(model.parameters(), None)
        if first is None:
            raise ValueError("model: it has no parameters to train")
        self.device = first.device
        models = [copy.deepcopy(model) for _ in names]
        if not _same_weights(models):
            raise RuntimeError("model: its deep copies differ (a module whose state is not copied by deepcopy)")
        self._own_logits = callable(getattr(model, "logits", None))
        if self._own_logits:  # the classifier is trained by "ce" only
            for name, m in zip(names, models):
                if name != "ce":
                    _classifier_params(m).requires_grad_(False)
        if process_group is not None:
            bn = (partial(nn.SyncBatchNorm.convert_sync_batchnorm, process_group=process_group)
                  if self.device.type == "cuda" else partial(convert_global_batchnorm, group=process_group))
            models = [bn(m) for m in models]
        for m in models:
            m.train()
        self.models: dict[str, nn.Module] = dict(zip(names, models))
        self.heads: dict[str, nn.Linear] = {}
        self._head_seed = torch.initial_seed() % (2**63)
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.schedulers: dict = {}
        self._trained: dict[str, nn.Module] = {}
        self.steps = 0  # optimiser steps taken (skipped steps included)
        self.last_lr: float | None = None  # the anchor's rate at the last step (its first parameter group's)
        self.skipped = 0
        self.last_finite: dict[str, float] = {}
        self._priors = None if class_priors is None else check_weights(class_priors, "class_priors")
        self._class_counts = torch.zeros(0, dtype=torch.float64)
        self._same_class_seen, self._eta_sum, self._batch = 0.0, 0.0, 0
        if "ce" not in names or self._own_logits:  # else the head waits for z's width, at the first step
            self._setup()

    @property
    def anchor(self) -> str:
        """The first objective: the model the others are compared with."""
        return self.names[0]

    @property
    def classes_seen(self) -> int:
        """The number of classes the training labels reached so far (largest label + 1)."""
        return len(self._class_counts)

    # ------------------------------------------------------------------------------------------ set-up
    def _setup(self, z_dim: int | None = None) -> None:
        """The heads, optimisers, schedules and DDP wrappers, once (the head needs z's width)."""
        if self.optimizers:
            return
        if "ce" in self.names and not self._own_logits:
            if z_dim is None:
                raise RuntimeError("the 'ce' head is made at the first step (it needs z's width)")
            self.heads["ce"] = _seeded_linear(z_dim, self.num_classes, self._head_seed).to(self.device)
        for name, model in self.models.items():
            tower = _Tower(model, self.heads.get(name), classify=name == "ce")
            self.optimizers[name] = self._make_optimizer([p for p in tower.parameters() if p.requires_grad])
            self.schedulers[name] = self._make_scheduler(self.optimizers[name]) if self._make_scheduler else None
            if self.group is not None:
                tower = nn.parallel.DistributedDataParallel(tower, process_group=self.group)
            self._trained[name] = torch.compile(tower) if self._compile else tower

    # ---------------------------------------------------------------------------------------- training
    def step(self, views: torch.Tensor, labels: torch.Tensor | None = None, *,
             on_nonfinite: str = "stop") -> dict[str, float]:
        """One optimiser step of every model on the same views.

        Args:
            views: (B, V, ...) the V ≥ 2 augmented views of B samples (this rank's shard under a process group),
                moved to the models' device.
            labels: (B,) integer classes; needed by "nscl", "supcon" and "ce".
            on_nonfinite: "stop" raises NonFiniteError when a loss or gradient is not finite, "skip" skips the
                step for every model; either way no model takes it.

        Returns:
            {objective: loss} (under a process group, the mean over the ranks).

        Raises:
            NonFiniteError: a non-finite loss or gradient norm with on_nonfinite="stop".
            ValueError: views of fewer than 2 views, labels missing, of the wrong length or not integers, an
                unknown on_nonfinite.
        """
        if on_nonfinite not in NONFINITE:
            raise ValueError(f"on_nonfinite must be one of {NONFINITE}, got {on_nonfinite!r}")
        views, labels = self._inputs(views, labels)
        b, v = views.shape[:2]
        flat = views.flatten(0, 1)
        if not self.optimizers:  # the first step: z's width makes the "ce" head
            self._setup(z_dim=self._z_dim(flat) if "ce" in self.names and not self._own_logits else None)
        rng = _rng_state(self.device)
        losses, norms = {}, {}
        for name in self.names:
            _set_rng_state(rng, self.device)  # the same dropout masks in every model
            tower, opt = self._trained[name], self.optimizers[name]
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                _, z, logits = tower(flat)
            loss = self._loss(name, z.view(b, v, -1), logits, labels, v)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            params = [p for g in opt.param_groups for p in g["params"] if p.grad is not None]
            norms[name] = nn.utils.clip_grad_norm_(params, self.grad_clip if self.grad_clip else math.inf)
            losses[name] = loss.detach().float()
        stacked = torch.stack([torch.stack([losses[n], norms[n].float()]) for n in self.names])
        if self.group is not None:  # a non-finite value on any rank makes the sum non-finite everywhere
            dist.all_reduce(stacked, group=self.group)
            stacked[:, 0] /= self.world
        values = {n: row for n, row in zip(self.names, stacked.tolist())}
        self.last_lr = float(self.optimizers[self.anchor].param_groups[0]["lr"])
        bad = next((n for n, (loss, norm) in values.items() if not (math.isfinite(loss) and math.isfinite(norm))),
                   None)
        if bad is not None:
            for opt in self.optimizers.values():
                opt.zero_grad(set_to_none=True)
            if on_nonfinite == "stop":
                what = "loss" if not math.isfinite(values[bad][0]) else "gradient norm"
                raise NonFiniteError(self.steps + 1, bad, what, self.last_finite.get(bad))
            self.steps += 1
            self.skipped += 1
            return {n: row[0] for n, row in values.items()}
        self._observe(labels, v)
        self._eta_sum += self.last_lr
        for name in self.names:
            self.optimizers[name].step()
            if self.schedulers[name] is not None:
                self.schedulers[name].step()
        self.steps += 1
        self.last_finite = {n: row[0] for n, row in values.items()}
        return dict(self.last_finite)

    def check_weights(self) -> None:
        """Check that every model's parameters and floating buffers (batch-norm statistics) are finite (a step can
        overflow them from a finite gradient).

        Raises:
            NonFiniteError: naming the first model whose weights are not all finite.
        """
        for name, model in self.models.items():
            tensors = [*model.parameters(), *(b for b in model.buffers() if b.is_floating_point()),
                       *(self.heads[name].parameters() if name in self.heads else ())]
            if not all(bool(torch.isfinite(t).all()) for t in tensors):
                raise NonFiniteError(self.steps, name, "weights", self.last_finite.get(name))

    def _z_dim(self, flat: torch.Tensor) -> int:
        """z's width, from a forward of the anchor in eval mode on two inputs (random streams untouched)."""
        model = self.models[self.anchor]
        with torch.no_grad(), _forked_rng(self.device):
            model.eval()
            try:
                return int(_split(model(flat[:2]))[1].shape[-1])
            finally:
                model.train()

    def _inputs(self, views, labels):
        if not isinstance(views, torch.Tensor) or views.dim() < 3 or views.shape[1] < 2:
            shape = tuple(views.shape) if isinstance(views, torch.Tensor) else type(views).__name__
            raise ValueError(f"views: expected a tensor (B, V, ...) of V ≥ 2 views of B samples, got {shape}")
        needs = [n for n in self.names if n != "cl"]
        if labels is None and needs:
            raise ValueError(f"labels: the {', '.join(needs)} objective(s) need the (B,) integer labels")
        views = views.to(self.device, non_blocking=True)
        if labels is not None:
            labels = torch.as_tensor(labels).to(self.device, non_blocking=True)
            if labels.shape != views.shape[:1] or labels.dtype.is_floating_point:
                raise ValueError(f"labels: expected {views.shape[0]} integer labels (one per sample), got "
                                 f"{tuple(labels.shape)} {labels.dtype}")
        return views, labels

    def _loss(self, name: str, z: torch.Tensor, logits, labels, v: int) -> torch.Tensor:
        if name == "ce":
            return F.cross_entropy(logits.float(), labels.repeat_interleave(v))
        return contrastive_loss(z, labels, objective=name, temperature=self.temperature, decoupled=self.decoupled,
                                process_group=self.group)

    def _observe(self, labels, views: int) -> None:
        """The batch's classes for the theory records: class counts and the largest same-class fraction of the
        global batch."""
        if labels is None:
            return
        labels = labels.detach()
        if self.group is not None:
            labels = all_gather_rows(labels, local_sizes(len(labels), self.group, labels.device), self.group)
        labels = labels.cpu()
        self._batch = len(labels)
        counts = torch.bincount(labels).double()
        if len(counts) > len(self._class_counts):
            counts, self._class_counts = self._class_counts, counts
        self._class_counts[: len(counts)] += counts
        self._same_class_seen = max(self._same_class_seen, same_class_max(labels, views, self.decoupled))

    # --------------------------------------------------------------------------------------- evaluation
    @torch.no_grad()
    def evaluate(self, reference: Iterable, probe: Iterable | None = None, *, gap: Iterable | None = None,
                 knn_k: int = 20, linear_probe: bool = False, theory_delta: float = 0.05) -> dict[str, float]:
        """The anchor against every other model on a fixed reference set, in eval mode (RNG untouched).

        Args:
            reference: re-iterable batches x or (x, labels, ...) (a DataLoader without shuffling; this rank's
                part under a process group).
            probe: batches (x, labels) of labelled samples: the bank of the NCC, k-NN (and linear-probe)
                accuracies, scored on the reference samples (which then need labels).
            gap: batches (views (B, V, ...), labels) on which the anchor's CL − NSCL loss gap and its bound are
                averaged (a fixed set: the same views at every evaluation).
            knn_k: neighbours of the k-NN accuracy.
            linear_probe: also the linear probe's accuracy.
            theory_delta: failure probability δ of the theory/ bounds.

        Returns:
            cka_cosine/<objective>, cka_linear/…, rsa_pearson/…, gap_relative/… of z (and under h/ when the model
            returns h), weight_div/…, with gap: loss_gap and loss_gap_bound, with cl and nscl trained (one the
            anchor): theory/… (see `theory_records`), with a probe: nccc/…, knn/… (linear/…) of every model.

        Raises:
            ValueError: an empty reference, reference or probe batches without labels where the accuracies need
                them, gap without batches, knn_k < 1, theory_delta outside (0, 1).
            TypeError: a knn_k that is not an integer or a theory_delta that is not a real number.
        """
        check_evaluation_options(knn_k=knn_k, theory_delta=theory_delta)
        with _forked_rng(self.device):
            modes = {n: m.training for n, m in self.models.items()}
            if self.group is not None:  # batch-norm running statistics: rank 0's everywhere
                for model in self.models.values():
                    for buf in model.buffers():
                        dist.broadcast(buf, dist.get_global_rank(self.group, 0), group=self.group)
            try:
                for m in self.models.values():
                    m.eval()
                return self._evaluate(reference, probe, gap, knn_k, linear_probe, theory_delta)
            finally:
                for n, m in self.models.items():
                    m.train(modes[n])

    def _evaluate(self, reference, probe, gap, knn_k, linear_probe, delta) -> dict[str, float]:
        rec: dict[str, float] = {}
        others = self.names[1:]
        accs = {"": [StreamingAlignment() for _ in others], "h/": [StreamingAlignment() for _ in others]}
        kept, ref_labels, n_ref = [], [], 0
        for batch in reference:
            x, y = _batch_xy(batch)
            x = x.to(self.device, non_blocking=True)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                feats = [tuple(None if t is None else t.float() for t in _split(m(x))) for m in self.models.values()]
            n_ref += len(x)
            for prefix, k in (("", 1), ("h/", 0)):
                if feats[0][k] is not None and others:
                    StreamingAlignment.update_shared(accs[prefix], feats[0][k], [f[k] for f in feats[1:]])
            if probe is not None:
                kept.append([f[0] if f[0] is not None else f[1] for f in feats])
                if y is None:
                    raise ValueError("reference: the accuracies score the reference samples, whose batches must "
                                     "then be (x, labels)")
                ref_labels.append(y)
        if n_ref == 0:
            raise ValueError("reference: no samples (an empty iterable, or one already consumed)")
        for prefix, group in accs.items():
            for name, acc in zip(others, group):
                if acc.n == 0:
                    continue
                if self.group is not None:
                    acc.all_reduce(self.group)
                out = acc.compute()
                for key in ("cka_cosine", "cka_linear", "rsa_pearson", "gap_relative"):
                    rec[f"{prefix}{key}/{name}"] = out[key]
        trained = {n for n, p in self.models[self.anchor].named_parameters() if p.requires_grad}
        for name in others:
            rec[f"weight_div/{name}"] = weight_divergence(weight_matrices(self.models[self.anchor], trained),
                                                          weight_matrices(self.models[name], trained))["mean"]
        if gap is not None:
            rec["loss_gap"], rec["loss_gap_bound"] = self._loss_gap(gap)
        pair = self._theory_pair()
        if pair is not None:
            rec.update(self._theory(accs[""][others.index(pair)].coupling_terms(), self._total(n_ref), delta))
        if probe is not None:
            rec.update(self._accuracies(kept, torch.cat(ref_labels), probe, knn_k, linear_probe))
        return rec

    def _total(self, n: int) -> int:
        if self.group is None:
            return n
        t = torch.tensor([n], dtype=torch.int64, device=self.device)
        dist.all_reduce(t, group=self.group)
        return int(t)

    def _theory_pair(self) -> str | None:
        """The model the theory records compare with the anchor: nscl for a cl anchor, cl for an nscl anchor."""
        if {"cl", "nscl"} <= set(self.names) and self.anchor in ("cl", "nscl"):
            return "nscl" if self.anchor == "cl" else "cl"
        return None

    def _theory(self, terms: dict, n_ref: int, delta: float) -> dict[str, float]:
        if self._priors is not None:
            pi_max = float(self._priors.max() / self._priors.sum())
        elif self._class_counts.sum() > 0:
            pi_max = float(self._class_counts.max() / self._class_counts.sum())
        else:
            return {}
        return theory_record(terms, step=self.steps - self.skipped, eta_sum=self._eta_sum,
                             batch_size=max(self._batch, 2), temperature=self.temperature, delta=delta,
                             pi_max=pi_max, same_class_seen=self._same_class_seen, reference_size=n_ref)

    def _loss_gap(self, batches: Iterable) -> tuple[float, float]:
        """Mean over the batches of the anchor's CL − NSCL loss (this run's `decoupled`) and of its bound."""
        sums = torch.zeros(3, dtype=torch.float64, device=self.device)
        model = self.models[self.anchor]
        for views, labels in batches:
            views, labels = self._inputs(views, labels)
            b, v = views.shape[:2]
            z = _split(model(views.flatten(0, 1)))[1].view(b, v, -1)
            kw = {"temperature": self.temperature, "decoupled": self.decoupled}
            gap = contrastive_loss(z, labels, objective="cl", **kw) - contrastive_loss(z, labels, objective="nscl",
                                                                                        **kw)
            sums += torch.stack([gap.double(), sums.new_tensor(loss_gap_bound(labels, self.temperature)),
                                 sums.new_tensor(1.0)])
        if self.group is not None:
            dist.all_reduce(sums, group=self.group)
        if sums[2] == 0:
            raise ValueError("gap: no batches")
        return float(sums[0] / sums[2]), float(sums[1] / sums[2])

    def _accuracies(self, kept, ref_y, probe, knn_k: int, linear_probe: bool) -> dict[str, float]:
        """NCC, k-NN (linear probe) of every model: the probe features (gathered over the ranks) are the bank,
        this rank's reference features the queries, the correct answers summed over the ranks."""
        bank, bank_y = [[] for _ in self.names], []
        for batch in probe:
            x, y = _batch_xy(batch)
            if y is None:
                raise ValueError("probe: expected batches (x, labels)")
            for out, m in zip(bank, self.models.values()):
                h, z = _split(m(x.to(self.device, non_blocking=True)))
                out.append((h if h is not None else z).float())
            bank_y.append(y)
        bank_y = self._gather(torch.cat(bank_y).to(self.device))
        ref_y = ref_y.to(self.device)
        scores = {"nccc": nccc_accuracy, "knn": partial(knn_accuracy, k=knn_k)}
        if linear_probe:
            scores["linear"] = linear_probe_accuracy
        rec = {}
        for i, name in enumerate(self.names):
            feats, queries = self._gather(torch.cat(bank[i])), torch.cat([k[i] for k in kept])
            for key, score in scores.items():
                rec[f"{key}/{name}"] = self._sharded(score, feats, bank_y, queries, ref_y)
        return rec

    def _gather(self, t: torch.Tensor) -> torch.Tensor:
        if self.group is None:
            return t
        return all_gather_rows(t, local_sizes(t.shape[0], self.group, t.device), self.group)

    def _sharded(self, score, bank, bank_y, queries, query_y) -> float:
        if self.group is None:
            return score(bank, bank_y, queries, query_y)
        n = len(queries)
        counts = torch.tensor([round(score(bank, bank_y, queries, query_y) * n) if n else 0, n],
                              dtype=torch.float64, device=self.device)
        dist.all_reduce(counts, group=self.group)
        return float(counts[0] / counts[1])

    # -------------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict:
        """Models, heads, optimisers, schedules, RNG states and the counters: what `load_state_dict` continues
        from (tensors and plain containers only).

        Returns:
            The state: objectives, steps, skipped, models, heads, optimizers, schedulers, rng, last_finite,
            last_lr and theory (the counters of the theory records).
        """
        return {
            "objectives": list(self.names), "steps": self.steps, "skipped": self.skipped,
            "models": {n: m.state_dict() for n, m in self.models.items()},
            "heads": {n: h.state_dict() for n, h in self.heads.items()},
            "optimizers": {n: o.state_dict() for n, o in self.optimizers.items()},
            "schedulers": {n: s.state_dict() for n, s in self.schedulers.items() if s is not None},
            "rng": _rng_state(self.device),
            "last_finite": dict(self.last_finite), "last_lr": self.last_lr,
            "theory": {"class_counts": self._class_counts, "same_class_seen": self._same_class_seen,
                       "eta_sum": self._eta_sum, "batch": self._batch},
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue from `state` (a `state_dict` of a Coupled of the same objectives and model).

        Args:
            state: what `state_dict` returned.

        Raises:
            ValueError: a state that is not a `state_dict` (entries missing) or holds other objectives.
        """
        keys = ("objectives", "steps", "skipped", "models", "heads", "optimizers", "schedulers", "rng",
                "last_finite", "theory")
        missing = [k for k in keys if k not in state] if isinstance(state, dict) else list(keys)
        if missing:
            raise ValueError(f"state: not a Coupled.state_dict() (missing {', '.join(missing)})")
        if list(state["objectives"]) != self.names:
            raise ValueError(f"state: its objectives {list(state['objectives'])} are not these {self.names}")
        for name, model in self.models.items():
            model.load_state_dict(state["models"][name])
        if state["optimizers"]:
            head = state["heads"].get("ce")
            self._setup(z_dim=None if head is None else head["weight"].shape[1])
            for name, head_model in self.heads.items():
                head_model.load_state_dict(state["heads"][name])
            for name, opt in self.optimizers.items():
                opt.load_state_dict(state["optimizers"][name])
            for name, sched in self.schedulers.items():
                if sched is not None:
                    sched.load_state_dict(state["schedulers"][name])
        self.steps, self.skipped = int(state["steps"]), int(state["skipped"])
        self.last_finite = dict(state["last_finite"])
        self.last_lr = state.get("last_lr")
        th = state["theory"]
        self._class_counts, self._same_class_seen = th["class_counts"].double(), float(th["same_class_seen"])
        self._eta_sum, self._batch = float(th["eta_sum"]), int(th["batch"])
        _set_rng_state(state["rng"], self.device)


def _classifier_params(model: nn.Module) -> nn.Module:
    """The module holding a model's own classifier: its `head` (what `logits` applies)."""
    head = getattr(model, "head", None)
    if not isinstance(head, nn.Module):
        raise ValueError("model: a model with its own logits(z) must hold the classifier as `model.head`")
    return head


def _check_objectives(names: list[str]) -> None:
    if not names:
        raise ValueError(f"objectives: must not be empty; choose from {', '.join(OBJECTIVES)}")
    unknown = [n for n in names if n not in OBJECTIVES]
    if unknown:
        raise ValueError(f"objectives: unknown {unknown}; choose from {', '.join(OBJECTIVES)}")
    if len(set(names)) != len(names):
        raise ValueError(f"objectives: each at most once, got {names}")
    if names[0] not in CONTRASTIVE:
        raise ValueError(f"objectives: the anchor (the first) must be contrastive, one of {', '.join(CONTRASTIVE)}; "
                         f"got {names[0]!r}")


def _batch_xy(batch):
    """(x, labels or None) of a batch given as x, (x,), or (x, labels, ...)."""
    if isinstance(batch, torch.Tensor):
        return batch, None
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0], (torch.as_tensor(batch[1]) if len(batch) > 1 else None)
    raise ValueError(f"expected a batch x or (x, labels), got {type(batch).__name__}")


def check_evaluation_options(*, knn_k: int, theory_delta: float) -> None:
    """The checks of `Coupled.evaluate`'s options (fit runs them before its first step): knn_k ≥ 1, theory_delta
    in (0, 1)."""
    check_int(knn_k, "knn_k", 1)
    check_real(theory_delta, "theory_delta", 0.0, 1.0, lo_open=True, hi_open=True)


def _rng_state(device: torch.device) -> dict:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _forked_rng(device: torch.device):
    """torch.random.fork_rng over the CPU stream and, on CUDA, `device`'s: what runs inside leaves them as they
    were."""
    return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
