"""The coupled training loop: several models, one per objective, under shared randomness.

Every model starts from the same initial weights (checked at step 0), sees the same batches in the same order
and the same augmented views, and has its own optimiser and schedule with the same hyper-parameters. The
first objective is the anchor: at every evaluation the other models are compared with it on a fixed
reference set (never subsampled) through the library's own metrics, and a record goes to metrics.jsonl.

Under torchrun every process draws the same global batch (same sampler and augmentation generators) and
loads, augments and trains on its contiguous shard; stratified batches interleave the classes, so the shards
are balanced too. Evaluation is shared the same way: each process extracts the features of its part of the
reference and probe sets, Gram statistics are all-reduced, the accuracies see the gathered features, the
evaluation batches of the loss gap are dealt out; rank 0 writes.
"""
from __future__ import annotations

import contextlib
import copy
import json
import os
import sys
import time
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .. import contrastive_loss
from ..collectives import all_gather_rows, local_sizes
from ..metrics import (StreamingAlignment, knn_accuracy, layer_alignment, linear_probe_accuracy, loss_gap_bound,
                       nccc_accuracy, weight_divergence)
from .augment import Augment
from .checkpoint import CHECKPOINT_FILE, load_checkpoint, save_checkpoint
from .config import run_keys
from .global_bn import convert_global_batchnorm
from .models import build_model, encoder_blocks
from .optim import build_optimizer, schedule
from .pipeline import StepImages
from .records import METRICS_FILE, append_record, open_tensorboard, read_records, rewrite_records, write_csv
from .samplers import StratifiedBatches, UniformBatches
from .splits import run_data
from .theory_records import TheoryRecords

VIEWS = 2  # augmented views of every training sample


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _objective_loss(model, objective: str, views: torch.Tensor, labels: torch.Tensor, cfg, group=None):
    """Loss of one model on the shared views (B, V, C, H, W); with a process group, negatives are global."""
    b, v = views.shape[:2]
    _, z = model(views.flatten(0, 1))
    z = z.view(b, v, -1)
    if objective == "ce":
        head = model.module.logits if hasattr(model, "module") else model.logits
        return F.cross_entropy(head(z).flatten(0, 1), labels.repeat_interleave(v))
    return contrastive_loss(z, labels, objective=objective, temperature=cfg.temperature, decoupled=cfg.decoupled,
                            process_group=group)


@torch.no_grad()
def _features(models, source, idx: torch.Tensor, device, amp: bool = False, batch: int = 512):
    """[(h, z)] of every model for the samples `idx` of an image source, in eval mode, float32 on `device`:
    each batch loaded (decoded) once and fed to every model, under bf16 autocast with `amp` (CUDA)."""
    for model in models:
        model.eval()
    outs = [([], []) for _ in models]
    for part in idx.split(batch):
        x = source.load(part).to(device, non_blocking=True)
        for (hs, zs), model in zip(outs, models):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                h, z = model(x)
            hs.append(h.float())
            zs.append(z.float())
    for model in models:
        model.train()
    return [(torch.cat(hs), torch.cat(zs)) for hs, zs in outs]


def _sharded_accuracy(accuracy, bank, bank_y, queries, query_y, world: int) -> float:
    """`accuracy(bank, bank_y, queries, query_y)` over the queries of every process (each scores its own
    against the whole bank): correct answers and queries summed over the processes."""
    if world == 1:
        return accuracy(bank, bank_y, queries, query_y)
    n = len(queries)
    counts = torch.tensor([round(accuracy(bank, bank_y, queries, query_y) * n) if n else 0, n],
                          dtype=torch.float64, device=bank.device)
    dist.all_reduce(counts)
    return float(counts[0] / counts[1])


def _part(n: int, rank: int, world: int) -> torch.Tensor:
    """This process's contiguous part of range(n) (parts differ in size by at most one)."""
    return torch.arange(n).tensor_split(world)[rank]


def _gather_rows(t: torch.Tensor, world: int) -> torch.Tensor:
    """The rows of every process's `t` (sizes may differ by process), concatenated in rank order."""
    if world == 1:
        return t
    return all_gather_rows(t, local_sizes(t.shape[0], dist.group.WORLD, t.device), dist.group.WORLD)


def _weight_matrices(model: nn.Module) -> dict[str, torch.Tensor]:
    """The weight tensors the models share a role for: encoder and projector matrices and kernels (biases and
    norm parameters start at 0 or 1, which makes their relative distance meaningless; the CE head is trained
    by the CE model only)."""
    return {n: p for n, p in model.named_parameters() if p.ndim > 1 and not n.startswith("head.")}


def _same_weights(models) -> bool:
    first = models[0].state_dict()
    return all(torch.equal(first[k], m.state_dict()[k]) for m in models[1:] for k in first)


def set_algorithms(deterministic: bool, device: torch.device) -> None:
    """The process's algorithm choice for a run: deterministic (torch, warning where an op has no deterministic
    implementation; cuDNN; cuBLAS's reproducible workspace; the loss's Triton ops then avoid their atomic
    schedules) or, on CUDA, cuDNN's autotuner."""
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic and device.type == "cuda"


class CoupledTrainer:
    """Holds the models, data, samplers and generators of one run; `run()` trains and records."""

    def __init__(self, cfg, out_dir: Path, log=tqdm.write):
        self.cfg, self.out, self.log = cfg, Path(out_dir), log
        self.world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        self.rank = dist.get_rank() if self.world > 1 else 0
        if cfg.batch_size % self.world:
            raise ValueError(f"config key 'batch_size': {cfg.batch_size} must divide by the {self.world} processes")
        self.device = _device(cfg.device)
        set_algorithms(cfg.deterministic, self.device)
        if cfg.gpu_decode and self.device.type != "cuda":
            raise ValueError(f"config key 'gpu_decode': decodes on a CUDA device, and this run's is {self.device}")
        self.out.mkdir(parents=True, exist_ok=True)
        self.data = run_data(cfg)
        if cfg.num_classes is not None and self.rank == 0:
            (self.out / "classes.json").write_text(json.dumps(self.data.classes))
        if len(self.data.reference) < self.world:
            raise ValueError(f"config key 'reference_size': {len(self.data.reference)} reference samples cannot be "
                             f"shared by {self.world} processes")
        self.num_classes = self.data.num_classes
        self.image_px = self.data.train.size
        torch.manual_seed(cfg.seed)
        init = build_model(cfg.model, self.data.train.channels, self.num_classes, cfg.hidden_dim, cfg.projector_dim,
                           image_size=self.image_px)
        self.names = list(cfg.objectives)
        self.amp = cfg.amp and self.device.type == "cuda"  # bf16 autocast and channels_last
        memory_format = torch.channels_last if self.amp else torch.preserve_format
        self.models = [copy.deepcopy(init).to(self.device, memory_format=memory_format) for _ in self.names]
        if not _same_weights(self.models):
            raise RuntimeError("the coupled models do not start from identical weights")
        self.sample_gen = torch.Generator().manual_seed(cfg.seed + 1)
        self.augment_gen = torch.Generator().manual_seed(cfg.seed + 2)
        if cfg.sampler == "stratified":
            self.sampler = StratifiedBatches(self.data.train.labels, cfg.batch_size, self.sample_gen)
        else:
            self.sampler = UniformBatches(len(self.data.train), cfg.batch_size, self.sample_gen)
        self.augment = Augment(cfg.augment)
        self.total_steps = cfg.epochs * self.sampler.epoch_length
        warmup = cfg.warmup_epochs * self.sampler.epoch_length
        for name, model in zip(self.names, self.models):
            model.head.requires_grad_(name == "ce")  # the classifier head is trained by the CE objective only
        # under torchrun: DDP (averaged gradients) and batch norm over the global batch (PyTorch's SyncBatchNorm
        # on GPUs, GlobalBatchNorm elsewhere): the same gradients as one process holding the whole batch
        self.trained = self.models
        if self.world > 1:
            if self.device.type == "cuda":
                self.models = [nn.SyncBatchNorm.convert_sync_batchnorm(m) for m in self.models]
            else:
                self.models = [convert_global_batchnorm(m) for m in self.models]
            self.trained = [nn.parallel.DistributedDataParallel(m) for m in self.models]
        if cfg.compile:  # the training forward and backward; evaluation and checkpoints use the modules as they are
            self.trained = [torch.compile(m) for m in self.trained]
        self.optimizers = [build_optimizer(cfg, m) for m in self.models]
        self.schedules = [schedule(o, warmup, self.total_steps) for o in self.optimizers]
        base, factor = self.schedules[0].base_lrs[0], self.schedules[0].lr_lambdas[0]
        self.theory = TheoryRecords(cfg, self.names, self.data.train.labels, len(self.data.reference),
                                    lambda t: base * factor(t))
        self._images_of = None  # StepImages, made at the first step (after a resume has restored the sampler)
        self.step = 0
        self.start = time.perf_counter()
        self._since, self._images, self._data_wait, self._lr = self.start, 0, 0.0, cfg.scaled_lr()

    def train_step(self) -> dict[str, float]:
        if self._images_of is None:
            self._images_of = StepImages(self.data.train, self.sampler, self._shard, self.device,
                                         self.cfg.loader_workers, gpu_decode=self.cfg.gpu_decode)
        idx = self.sampler.next_batch()  # the global batch: every rank draws it and takes its shard
        mine = self._shard(idx)
        t0 = time.perf_counter()
        x, extent = self._images_of.next(mine)
        self._data_wait += time.perf_counter() - t0
        self._images += len(idx)
        self._lr = self.optimizers[0].param_groups[0]["lr"]  # this step's (the schedules share one curve)
        per = len(mine)
        y = self.data.train.labels[mine].to(self.device)
        self.theory.observe(self.data.train.labels[idx], VIEWS)
        views = torch.stack(self.augment.views(x, self.augment_gen, VIEWS, batch_size=len(idx),
                                               offset=self.rank * per, extent=extent,
                                               size=(self.image_px, self.image_px)), 1)
        group = dist.group.WORLD if self.world > 1 else None
        losses = {}
        for name, model, opt, sched in zip(self.names, self.trained, self.optimizers, self.schedules):
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                loss = _objective_loss(model, name, views, y, self.cfg, group)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if self.cfg.grad_clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), self.cfg.grad_clip)
            opt.step()
            sched.step()
            losses[f"loss/{name}"] = loss.detach()
        if self.world > 1:  # the logged loss: mean over the ranks' shards
            stacked = torch.stack(list(losses.values()))
            dist.all_reduce(stacked)
            losses = dict(zip(losses, (stacked / self.world).tolist()))
        else:
            losses = {k: v.item() for k, v in losses.items()}
        self.step += 1
        return losses

    def _shard(self, idx: torch.Tensor) -> torch.Tensor:
        per = len(idx) // self.world
        return idx[self.rank * per : (self.rank + 1) * per]

    def close(self) -> None:
        """Stop the data loader's workers (a later step starts them again)."""
        images_of, self._images_of = self._images_of, None
        if images_of is not None:
            images_of.close()

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """One record of alignment, weight divergence, loss gap and accuracies (every rank takes part)."""
        cfg, rec, world = self.cfg, {}, self.world
        if world > 1:  # BN running statistics: rank 0's everywhere (DDP broadcasts them at every forward)
            for model in self.models:
                for buf in model.buffers():
                    dist.broadcast(buf, 0)
        ref, probe = self.data.reference, self.data.probe
        mine = _part(len(ref), self.rank, world)
        feats = _features(self.models, ref, mine, self.device, self.amp)
        probe_h = [h for h, _ in _features(self.models, probe, _part(len(probe), self.rank, world), self.device,
                                           self.amp)]
        for prefix, k in (("", 1), ("h/", 0)):  # the anchor against every other model, its statistics once
            accs = [StreamingAlignment() for _ in self.names[1:]]
            StreamingAlignment.update_shared(accs, feats[0][k], [f[k] for f in feats[1:]])
            for name, acc in zip(self.names[1:], accs):
                if world > 1:
                    acc.all_reduce()
                out = acc.compute()
                for key in ("cka_cosine", "cka_linear", "rsa_pearson", "gap_relative"):
                    rec[f"{prefix}{key}/{name}"] = out[key]
                if prefix == "" and name == self.theory.other:
                    rec.update(self.theory.record(self.step, acc.coupling_terms()))
        for i, name in enumerate(self.names[1:], start=1):
            rec[f"weight_div/{name}"] = weight_divergence(
                _weight_matrices(self.models[0]), _weight_matrices(self.models[i]))["mean"]
        rec["loss_gap"], rec["loss_gap_bound"] = self._loss_gap()
        if cfg.layer_alignment:
            rec.update(self._layer_records(ref, mine))
        ref_y, probe_y = ref.labels[mine].to(self.device), probe.labels.to(self.device)
        for name, (h, _), ph in zip(self.names, feats, probe_h):  # the bank gathered, the queries this rank's
            ph = _gather_rows(ph, world)
            rec[f"nccc/{name}"] = _sharded_accuracy(nccc_accuracy, ph, probe_y, h, ref_y, world)
            rec[f"knn/{name}"] = _sharded_accuracy(partial(knn_accuracy, k=cfg.knn_k), ph, probe_y, h, ref_y, world)
            if cfg.linear_probe:
                rec[f"linear/{name}"] = _sharded_accuracy(linear_probe_accuracy, ph, probe_y, h, ref_y, world)
        rec["anchor"] = self.names[0]
        return rec

    def _layer_records(self, ref, mine: torch.Tensor) -> dict[str, float]:
        """layer_cka/<model>/<block>: the anchor's block against the same block of every other model (linear
        CKA, exact, pooled block outputs; this rank's reference rows, the statistics all-reduced)."""
        blocks, pool = encoder_blocks(self.models[0], self.cfg.model)
        group = dist.group.WORLD if self.world > 1 else None
        out = {}
        for name, model in zip(self.names[1:], self.models[1:]):
            batches = (ref.load(part).to(self.device, non_blocking=True) for part in mine.split(512))
            res = layer_alignment(self.models[0], model, batches, blocks, blocks, method="exact", pool=pool,
                                  pairs="matching", process_group=group)
            out.update({f"layer_cka/{name}/{b}": float(res.cka[i, i]) for i, b in enumerate(blocks)})
        return out

    @torch.no_grad()
    def _loss_gap(self) -> tuple[float, float]:
        """CL − NSCL loss of the anchor model (eval mode, same `decoupled` flag) and the bound of the gap,
        each averaged over the evaluation batches: the reference set in a fixed seeded order, cut into
        ⌈n / batch_size⌉ batches with fixed seeded views, the first `gap_batches` of them (the bound holds
        batch by batch, so for the means)."""
        cfg, ref = self.cfg, self.data.reference
        order = torch.randperm(len(ref), generator=torch.Generator().manual_seed(cfg.seed + 3))
        batches = order.tensor_split(-(-len(ref) // cfg.batch_size))[: cfg.gap_batches]
        sums = torch.zeros(2, dtype=torch.float64, device=self.device)
        kw = {"temperature": cfg.temperature, "decoupled": cfg.decoupled}
        model = self.models[0].eval()
        for b, idx in enumerate(batches):
            if b % self.world != self.rank:
                continue
            gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + 1000 + b)
            x, y = ref.load(idx).to(self.device), ref.labels[idx].to(self.device)
            views = torch.stack(self.augment.views(x, gen), dim=1)
            z = model(views.flatten(0, 1))[1].view(len(idx), views.shape[1], -1)
            gap = contrastive_loss(z, y, objective="cl", **kw) - contrastive_loss(z, y, objective="nscl", **kw)
            sums += torch.stack([gap.double(), torch.tensor(loss_gap_bound(y, cfg.temperature), device=self.device,
                                                            dtype=torch.float64)])
        model.train()
        if self.world > 1:
            dist.all_reduce(sums)
        mean = sums / len(batches)
        return float(mean[0]), float(mean[1])

    # ---------------------------------------------------------------------------------------------- checkpoints

    def state_dict(self) -> dict:
        cfg = self.cfg.to_dict()
        return {
            "step": self.step, "elapsed": time.perf_counter() - self.start,
            "run": {k: cfg[k] for k in run_keys()}, "config": cfg,
            "data_root": self.cfg.data_root, "eval_root": self.cfg.eval_root, "stream": self.cfg.stream,
            "image_px": self.image_px,
            "models": [m.state_dict() for m in self.models],
            "optimizers": [o.state_dict() for o in self.optimizers],
            "schedules": [s.state_dict() for s in self.schedules],
            "sampler": self.sampler.state_dict(),
            "augment_rng": self.augment_gen.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "same_class_max": self.theory.seen,
        }

    def save_checkpoint(self) -> Path:
        """RUN_DIR/checkpoint.pt (atomically)."""
        return save_checkpoint(self.state_dict(), self.out / CHECKPOINT_FILE)

    def load_checkpoint(self, path: Path) -> None:
        """Continue from the checkpoint at `path`, which must belong to this run (the same `config.run_keys()`).
        The other keys may change: `config_changes` maps each changed one to [checkpoint's, now], and rank 0
        names them on stderr (a checkpoint without its whole config has none)."""
        path, state = load_checkpoint(path)  # on the CPU: load_state_dict moves what it takes
        step, run = state["step"], state["run"]
        cfg = self.cfg.to_dict()
        defaults = type(self.cfg)().to_dict()  # a key a checkpoint predates had its default then
        differ = [k for k in run_keys() if run.get(k, defaults[k]) != cfg[k]]
        if differ:
            raise ValueError(f"checkpoint {path} belongs to another run: {', '.join(differ)} differ "
                             f"(checkpoint {[run.get(k) for k in differ]}, config {[cfg[k] for k in differ]})")
        self.config_changes = self.cfg.changes_since(state.get("config"))
        if self.config_changes and self.rank == 0:
            changes = ", ".join(f"{k} {json.dumps(old)} → {json.dumps(new)}" for k, (old, new) in
                                self.config_changes.items())
            print(f"resuming {path} with changed config keys: {changes}", file=sys.stderr)
        for target, key in ((self.models, "models"), (self.optimizers, "optimizers"), (self.schedules, "schedules")):
            for obj, sd in zip(target, state[key]):
                obj.load_state_dict(sd)
        self.close()  # the loader runs ahead of the sampler restored here
        self.sampler.load_state_dict(state["sampler"])
        self.augment_gen.set_state(state["augment_rng"])
        torch.set_rng_state(state["torch_rng"])
        if state.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.theory.seen = state.get("same_class_max", 0.0)  # absent from checkpoints before the theory records
        self.step = step
        self.start = time.perf_counter() - state["elapsed"]

    # -------------------------------------------------------------------------------------------------- the run

    def run(self, resume: bool = False, stop_after: int | None = None) -> list[dict]:
        """Train to the end (or, for tests, stop after `stop_after` steps as a killed run would). With resume,
        continue from RUN_DIR/checkpoint.pt; records already in metrics.jsonl are kept, not written twice."""
        metrics_path = self.out / METRICS_FILE
        records = []
        if resume:
            self.load_checkpoint(self.out / CHECKPOINT_FILE)
            if metrics_path.exists():
                records = read_records(metrics_path)[0]
            if self.rank == 0:
                rewrite_records(metrics_path, records)  # without a line cut short by the kill
        elif self.rank == 0:
            metrics_path.unlink(missing_ok=True)
        written = {r["step"] for r in records}
        lead = self.rank == 0  # under torchrun, rank 0 writes; every rank trains and takes part in evaluations
        bar = tqdm(total=self.total_steps, initial=self.step, unit="step", dynamic_ncols=True,
                   disable=not (lead and sys.stderr.isatty()))
        # TensorBoard: a resumed run's events from its checkpoint on are dropped (purge_step) and written again
        board = open_tensorboard(self.cfg.tensorboard, self.out / "tensorboard", self.step if resume else None) \
            if lead else None
        for rec in records if board is not None else ():
            if rec["step"] >= self.step:  # recorded after the checkpoint: the purge dropped their events
                _add_scalars(board, rec)
        self._since, self._images, self._data_wait = time.perf_counter(), 0, 0.0
        with (metrics_path.open("a") if lead else contextlib.nullcontext()) as sink, bar, \
                (board or contextlib.nullcontext()), contextlib.closing(self):
            while self.step < self.total_steps and (stop_after is None or self.step < stop_after):
                last = self.train_step()
                bar.update(1)
                bar.set_postfix({k.split("/")[1]: f"{v:.3f}" for k, v in last.items()}, refresh=False)
                if self.step % self.cfg.eval_every == 0 or self.step == self.total_steps or self.step == 1:
                    if self.step not in written:
                        now = time.perf_counter()
                        rec = {"step": self.step, "epoch": self.step / self.sampler.epoch_length,
                               "time": now - self.start, "lr": self._lr,
                               "images_per_s": self._images / max(now - self._since, 1e-9),
                               "data_wait_s": self._data_wait, **last, **self.evaluate()}
                        records.append(rec)
                        if lead:
                            append_record(sink, rec)
                            write_csv(records, self.out / "metrics.csv")
                            if board is not None:
                                _add_scalars(board, rec)
                            self.log(_progress_line(rec, self.total_steps, self.names))
                    self._since, self._images, self._data_wait = time.perf_counter(), 0, 0.0
                if lead and (self.step % self.cfg.checkpoint_every == 0 or self.step == self.total_steps):
                    self.save_checkpoint()
                epoch, end_of_epoch = divmod(self.step, self.sampler.epoch_length)
                if lead and end_of_epoch == 0 and epoch in self.cfg.snapshot_epochs:
                    save_checkpoint(self.state_dict(), self.out / "snapshots" / f"epoch_{epoch}.pt")
        return records if lead else []


def _add_scalars(board, rec: dict) -> None:
    """Every number of a record as a TensorBoard scalar at its step."""
    for key, value in rec.items():
        if key != "step" and isinstance(value, (int, float)):
            board.add_scalar(key, value, rec["step"])
    board.flush()


def _progress_line(rec: dict, total: int, names: list[str]) -> str:
    losses = "  ".join(f"{n} {rec[f'loss/{n}']:.3f}" for n in names)
    align = "  ".join(f"cka/{n} {rec[f'cka_cosine/{n}']:.3f}" for n in names[1:])
    return (f"step {rec['step']:5d}/{total}  {rec['time']:6.1f}s  loss: {losses}  |  {align}  "
            f"gap {rec['loss_gap']:.3f} ≤ {rec['loss_gap_bound']:.3f}")
