"""The command line's coupled run: its configuration's batteries — data, splits, model, augmentations,
samplers, optimiser and schedule — plugged into `Coupled` and trained by `fit`.

Every model starts from the same initial weights, sees the same batches in the same order and the same
augmented views, and has its own optimiser and schedule with the same hyper-parameters. The first objective
is the anchor: at every evaluation the other models are compared with it on a fixed reference set (never
subsampled), and a record goes to metrics.jsonl.

Under torchrun every process draws the same global batch (same sampler and augmentation generators) and
loads, augments and trains on its contiguous shard (`batches.TrainBatches`); stratified batches interleave the
classes, so the shards are balanced too. Evaluation is shared the same way: each process passes its part of
the reference and probe sets and of the loss gap's batches to `Coupled.evaluate`; rank 0 writes.
"""
from __future__ import annotations

import json
import os
import sys
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from ..metrics import layer_alignment
from .augment import Augment
from .batches import GapBatches, SourceBatches, TrainBatches, part
from .checkpoint import CHECKPOINT_FILE, load_checkpoint, save_checkpoint
from .config import run_keys
from .coupled import Coupled
from .fit import Batches, checkpoint_state, evaluation, fit, restore
from .models import build_model, encoder_blocks
from .optim import build_optimizer, schedule
from .samplers import StratifiedBatches, UniformBatches
from .splits import run_data

TENSORBOARD = {None: None, True: ("tensorboard",), False: ()}  # config key 'tensorboard' → fit's loggers


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


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
    """One run of the command line: `coupled` (the models), `batches` (this rank's training views), the
    evaluation sets; `run()` trains and records through `fit`."""

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
        ref, probe = self.data.reference, self.data.probe
        if len(ref) < self.world:
            raise ValueError(f"config key 'reference_size': {len(ref)} reference samples cannot be "
                             f"shared by {self.world} processes")
        self.num_classes = self.data.num_classes
        self.image_px = self.data.train.size
        torch.manual_seed(cfg.seed)
        init = build_model(cfg.model, self.data.train.channels, self.num_classes, cfg.hidden_dim, cfg.projector_dim,
                           image_size=self.image_px)
        amp = cfg.amp and self.device.type == "cuda"  # bf16 autocast and channels_last
        init = init.to(self.device, memory_format=torch.channels_last if amp else torch.preserve_format)
        self.names = list(cfg.objectives)
        self.sample_gen = torch.Generator().manual_seed(cfg.seed + 1)
        self.augment_gen = torch.Generator().manual_seed(cfg.seed + 2)
        if cfg.sampler == "stratified":
            self.sampler = StratifiedBatches(self.data.train.labels, cfg.batch_size, self.sample_gen)
        else:
            self.sampler = UniformBatches(len(self.data.train), cfg.batch_size, self.sample_gen)
        self.augment = Augment(cfg.augment)
        self.total_steps = cfg.epochs * self.sampler.epoch_length
        warmup = cfg.warmup_epochs * self.sampler.epoch_length
        self.coupled = Coupled(
            init, self.names, num_classes=self.num_classes, temperature=cfg.temperature, decoupled=cfg.decoupled,
            optimizer=partial(build_optimizer, cfg), grad_clip=cfg.grad_clip, amp=amp, compile=cfg.compile,
            scheduler=partial(schedule, warmup_steps=warmup, total_steps=self.total_steps),
            process_group=dist.group.WORLD if self.world > 1 else None,
            class_priors=torch.bincount(self.data.train.labels.cpu()))
        self.batches = TrainBatches(self.data.train, self.sampler, self.augment, self.augment_gen, rank=self.rank,
                                    world=self.world, device=self.device, workers=cfg.loader_workers,
                                    gpu_decode=cfg.gpu_decode, image_px=self.image_px)
        self.reference = SourceBatches(ref, part(len(ref), self.rank, self.world))
        self.probe = SourceBatches(probe, part(len(probe), self.rank, self.world))
        self.gap = GapBatches(ref, self.augment, seed=cfg.seed, batch_size=cfg.batch_size, count=cfg.gap_batches,
                              rank=self.rank, world=self.world)
        self._steps = Batches(self.batches, None, len(self.batches))  # train_step's
        self.config_changes: dict[str, list] = {}
        self._unrecorded_changes = False

    # the models, as the tests and benchmarks reach them
    @property
    def models(self) -> list:
        return list(self.coupled.models.values())

    @property
    def optimizers(self) -> list:
        return list(self.coupled.optimizers.values())

    @property
    def step(self) -> int:
        return self.coupled.steps

    def train_step(self) -> dict[str, float]:
        """One step of every model on the next batch: {loss/<objective>: value}."""
        views, labels = self._steps.next()
        return {f"loss/{n}": v for n, v in self.coupled.step(views, labels).items()}

    def close(self) -> None:
        """Stop the data loader's workers (a later step starts them again)."""
        self.batches.close()

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """One record of alignment, weight divergence, loss gap and accuracies (every rank takes part)."""
        cfg = self.cfg
        return evaluation(self.coupled, self.reference, self.probe, gap=self.gap, knn_k=cfg.knn_k,
                          linear_probe=cfg.linear_probe, theory_delta=cfg.theory_delta,
                          extra_records=self._extra_records)

    def _extra_records(self, coupled: Coupled) -> dict:
        """The per-layer records (layer_alignment) and, at the first evaluation after a resume that changed
        configuration keys, those changes."""
        rec = self._layer_records(coupled) if self.cfg.layer_alignment else {}
        if self._unrecorded_changes:
            rec["config_changes"] = json.dumps(self.config_changes)
            self._unrecorded_changes = False
        return rec

    def _layer_records(self, coupled: Coupled) -> dict[str, float]:
        """layer_cka/<model>/<block>: the anchor's block against the same block of every other model (linear
        CKA, exact, pooled block outputs; this rank's reference rows, the statistics all-reduced)."""
        models = list(coupled.models.values())
        blocks, pool = encoder_blocks(models[0], self.cfg.model)
        out = {}
        for name, model in zip(self.names[1:], models[1:]):
            batches = (x.to(self.device, non_blocking=True) for x, _ in self.reference)
            res = layer_alignment(models[0], model, batches, blocks, blocks, method="exact", pool=pool,
                                  pairs="matching", process_group=coupled.group, progress=False)
            out.update({f"layer_cka/{name}/{b}": float(res.cka[i, i]) for i, b in enumerate(blocks)})
        return out

    # ---------------------------------------------------------------------------------------------- checkpoints
    def _identity(self) -> dict:
        cfg = self.cfg.to_dict()
        return {k: cfg[k] for k in run_keys()}

    def _checkpoint_extra(self) -> dict:
        """What a reader of the run needs beside the models: the whole config, where its data are, image size."""
        cfg = self.cfg
        return {"config": cfg.to_dict(), "data_root": cfg.data_root, "eval_root": cfg.eval_root,
                "stream": cfg.stream, "image_px": self.image_px}

    def state_dict(self) -> dict:
        """The checkpoint of the run as it stands (what `fit` writes)."""
        return checkpoint_state(self.coupled, Batches(self.batches, None, len(self.batches)), self._identity(), 0.0,
                                self._checkpoint_extra())

    def save_checkpoint(self) -> Path:
        """RUN_DIR/checkpoint.pt (atomically)."""
        return save_checkpoint(self.state_dict(), self.out / CHECKPOINT_FILE)

    def check_checkpoint(self, path: Path) -> None:
        """Refuse the checkpoint at `path` unless it belongs to this run (the same `config.run_keys()`; a key a
        checkpoint predates had its default); the other keys may change: `config_changes` maps each changed one
        to [checkpoint's, now], named on stderr by rank 0 and recorded at the next evaluation."""
        path, state = load_checkpoint(path)
        run, cfg = state["run"], self.cfg.to_dict()
        defaults = type(self.cfg)().to_dict()
        differ = [k for k in run_keys() if run.get(k, defaults[k]) != cfg[k]]
        if differ:
            raise ValueError(f"checkpoint {path} belongs to another run: {', '.join(differ)} differ "
                             f"(checkpoint {[run.get(k) for k in differ]}, config {[cfg[k] for k in differ]})")
        self.config_changes = self.cfg.changes_since(state.get("config"))
        self._unrecorded_changes = bool(self.config_changes)
        if self.config_changes and self.rank == 0:
            changes = ", ".join(f"{k} {json.dumps(old)} → {json.dumps(new)}" for k, (old, new) in
                                self.config_changes.items())
            print(f"resuming {path} with changed config keys: {changes}", file=sys.stderr)

    def load_checkpoint(self, path: Path) -> None:
        """Continue from the checkpoint at `path` (checked by `check_checkpoint`): models, optimisers, schedules,
        random states, sampler and augmentation generator."""
        self.check_checkpoint(path)
        _, position = restore(self.coupled, path)
        self.batches.load_state_dict(position["train"])

    # -------------------------------------------------------------------------------------------------- the run
    def run(self, resume: bool = False, stop_after: int | None = None) -> list[dict]:
        """Train to the end (or, for tests, stop after `stop_after` steps as a killed run would). With resume,
        continue from RUN_DIR/checkpoint.pt; records already in metrics.jsonl are kept, not written twice."""
        cfg = self.cfg
        if resume:
            self.check_checkpoint(self.out / CHECKPOINT_FILE)
        try:
            return fit(self.coupled, self.batches, self.reference, out=self.out, eval_every=cfg.eval_every,
                       epochs=cfg.epochs, checkpoint_every=cfg.checkpoint_every, resume=bool(resume),
                       overwrite=not resume, loggers=TENSORBOARD[cfg.tensorboard], progress=sys.stderr.isatty(),
                       probe=self.probe, gap=self.gap, knn_k=cfg.knn_k, linear_probe=cfg.linear_probe,
                       theory_delta=cfg.theory_delta, snapshot_epochs=cfg.snapshot_epochs,
                       on_nonfinite=cfg.on_nonfinite,
                       extra_records=self._extra_records, checkpoint_extra=self._checkpoint_extra(),
                       identity=self._identity(), until=stop_after, log=self.log)
        finally:
            self.close()
