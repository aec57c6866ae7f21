"""Run configuration of the coupled trainer: a `Config` dataclass whose defaults train on the embedded digits
in a few minutes on 2 CPU cores, loaded from YAML and `--set key=value` overrides.

    cfg = load_config("cifar10.yaml", ["temperature=0.1", "augment.rotation=0", "objectives=[cl,nscl]"])
    cfg.save(run_dir)            # run_dir/config.yaml, loadable with load_config
    print(describe())            # every key with its type, default, choices and meaning

Keys of nested sections are dotted (`augment.crop_scale`). Override values are parsed as YAML scalars or
lists (`[cl, nscl]`; a comma-separated `cl,nscl` also works for lists) and coerced to the field's type
(`1e-3` is a float even though YAML 1.1 reads it as a string; `null` or `none` clears an optional key).
Every mistake raises `ConfigError` (a ValueError) naming the key.
"""
from __future__ import annotations

import dataclasses
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

from . import overrides as engine
from .augment import AugmentConfig
from .overrides import ConfigError, apply_overrides, check_min, check_range, coerce_fields, section_from_dict, setting

__all__ = [
    "Config",
    "AugmentConfig",
    "ConfigError",
    "load_config",
    "apply_overrides",
    "describe",
    "OBJECTIVES",
    "CONTRASTIVE_OBJECTIVES",
    "BASE_BATCH_SIZE",
    "DATASET_CLASSES",
]

OBJECTIVES = ("cl", "nscl", "supcon", "ce")
CONTRASTIVE_OBJECTIVES = ("cl", "nscl", "supcon")
BASE_BATCH_SIZE = 256  # the batch size at which `lr` applies unscaled (lr_scaling)
DATASET_CLASSES = {"digits": 10, "cifar10": 10, "cifar100": 100}  # imagefolder: known only from the tree
_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


@dataclass
class Config:
    """Everything a coupled training run needs. Construct directly, with `load_config`, or with
    `dataclasses.replace`; values are coerced and validated on construction (ConfigError naming the key)."""

    objectives: list[str] = setting(["cl", "nscl", "supcon", "ce"],
                                    "models to train, one per objective; the first is the anchor the others are "
                                    "compared with and must be contrastive", choices=OBJECTIVES)
    temperature: float = setting(0.5, "temperature τ of the contrastive losses (> 0)")
    decoupled: bool = setting(False, "decoupled denominators (DCL; NSCL as in the paper's formula; docs/design.md)")
    batch_size: int = setting(256, "samples per step (each seen in 2 augmented views), global across ranks")
    epochs: int = setting(30, "training epochs")
    optimizer: str = setting("sgd", "optimiser (SGD with momentum, AdamW, LARS)", choices=("sgd", "adamw", "lars"))
    lr: float = setting(0.1, f"peak learning rate at batch size {BASE_BATCH_SIZE} (see lr_scaling)")
    lr_scaling: str = setting("none", f"scale lr with batch_size / {BASE_BATCH_SIZE}: not, linearly, by its square "
                                      "root or its fourth root", choices=("none", "linear", "sqrt", "fourth_root"))
    momentum: float = setting(0.9, "momentum of SGD and LARS (AdamW's beta1)")
    weight_decay: float = setting(5e-4, "weight decay (not applied to biases and norm layers)")
    warmup_epochs: int = setting(2, "linear warm-up epochs before the per-step cosine schedule")
    sampler: str = setting("uniform", "batch sampler: uniform shuffling or exactly class-stratified batches "
                                      "(batch_size must then be a multiple of the number of classes)",
                           choices=("uniform", "stratified"))
    seed: int = setting(0, "seed of everything: split, class subset, initialisation, batches, augmentations")
    dataset: str = setting("digits", "dataset: the digits embedded in scikit-learn (no download), CIFAR-10/100 "
                                     "(torchvision, from data_root) or an ImageFolder tree at data_root",
                           choices=("digits", "cifar10", "cifar100", "imagefolder"))
    data_root: Optional[str] = setting(None, "dataset directory (required unless dataset is digits)")
    image_size: int = setting(64, "imagefolder: every image's shorter side is resized to image_size and its "
                                  "central image_size × image_size square kept")
    stream: bool = setting(False, "imagefolder: decode the images from disk when needed instead of holding the "
                                  "dataset in memory (mini-ImageNet, ImageNet-1k)")
    loader_workers: int = setting(8, "stream: DataLoader worker processes decoding the training images ahead "
                                     "of the steps (0: in the training process), and threads decoding the "
                                     "evaluation images")
    decode_size: Optional[int] = setting(None, "stream: the training images' shorter side when decoded (null: "
                                               "image_size); their random resized crop is resampled to image_size")
    decode_aspect: float = setting(1.0, "stream: the widest aspect ratio a training image keeps when decoded (its "
                                        "longer side cut about the centre beyond it): 1 keeps the central square; "
                                        "4/3 (1.334) lets the random resized crop see the whole of most ImageNet "
                                        "images, on canvases of int(decode_size · decode_aspect)² pixels")
    gpu_decode: bool = setting(False, "stream on CUDA: the loader workers only read the training files, and the "
                                      "JPEGs are decoded and resized on the GPU (torchvision.io.decode_jpeg)")
    eval_cache_gib: float = setting(8.0, "keep the decoded images of an evaluation set (reference, probe) in memory "
                                         "after the first evaluation when the set takes at most this many GiB "
                                         "(3·image_size² bytes an image; 0: decode them at every evaluation)")
    num_classes: Optional[int] = setting(None, "train on a seeded subset of this many classes (null: all classes)")
    eval_split: str = setting("holdout", "where the reference set of the evaluations comes from: a held-out part "
                                         "of the training split (reference_fraction), or the dataset's test "
                                         "split (CIFAR's test batch; for imagefolder the eval_root tree), with "
                                         "the whole training split training", choices=("holdout", "test"))
    eval_root: Optional[str] = setting(None, "imagefolder with eval_split=test: the held-out tree (e.g. "
                                             "ImageNet's val/ in class folders named as data_root's)")
    reference_fraction: float = setting(0.2, "eval_split=holdout: fraction of each class held out as the fixed "
                                             "reference set")
    reference_size: Optional[int] = setting(None, "use only this many reference samples, a fixed set (holdout: the "
                                                  "first of the held-out part; test: a seeded stratified subset of "
                                                  "the test split; null: all of it)")
    model: str = setting("small_cnn", "encoder (ViTs: torchvision's VisionTransformer, patch 16 above 64 px, "
                                      "else 4, or 2 below 16 px)",
                         choices=("small_cnn", "resnet18", "resnet50", "vit_tiny", "vit_small", "vit_base"))
    hidden_dim: int = setting(128, "hidden width of the 2-layer projector")
    projector_dim: int = setting(64, "output dimension of the projector (the embedding z the losses see)")
    eval_every: int = setting(20, "evaluate alignment every this many steps")
    knn_k: int = setting(20, "neighbours of the k-NN accuracy")
    theory_delta: float = setting(0.05, "failure probability δ of the theory/ records' bounds (Theorem 1 and the "
                                         "batch-composition condition hold with probability ≥ 1 − δ)")
    layer_alignment: bool = setting(False, "at every evaluation, the linear CKA on the reference set of each block of "
                                           "the anchor's encoder (then h and z) with the same block of every other "
                                           "model: layer_cka/<model>/<block> (one more pass of the two models over "
                                           "the reference set per compared model)")
    linear_probe: bool = setting(False, "also record linear/<model>: the accuracy on the reference set of a linear "
                                        "classifier fitted (L-BFGS, full batch) to the probe set's encoder features, "
                                        "at every evaluation")
    gap_batches: int = setting(4, "evaluation batches of the CL − NSCL loss gap: up to this many batches of "
                                  "batch_size reference samples, fixed seeded order and views")
    probe_size: Optional[int] = setting(None, "labelled training samples (a fixed seeded stratified subset) that "
                                              "NCC and k-NN accuracies use (null: the whole training split)")
    checkpoint_every: int = setting(50, "write RUN_DIR/checkpoint.pt (atomically) every this many steps and at the end")
    out: str = setting("runs/default", "run directory (metrics, figures, checkpoints, config.yaml)")
    amp: bool = setting(True, "on CUDA: bf16 autocast and channels_last memory format (ignored on the CPU)")
    snapshot_epochs: list[int] = setting([], "also keep the checkpoint of the end of these epochs, as "
                                             "RUN_DIR/snapshots/epoch_<E>.pt (for analysis after the run)")
    tensorboard: Optional[bool] = setting(None, "TensorBoard event files in RUN_DIR/tensorboard with every recorded "
                                                "metric (null: when the tensorboard package is installed; true: "
                                                "required)")
    grad_clip: Optional[float] = setting(None, "clip each model's gradient norm to this value before its optimiser "
                                               "step (the NSCL authors clip at 1.0; null: no clipping)")
    deterministic: bool = setting(False, "deterministic algorithms for the run's process: torch's (warning where an "
                                         "op has none), cuDNN's, cuBLAS's workspace, the loss's Triton kernels "
                                         "without atomics; false: cuDNN's autotuner (benchmark mode) on CUDA")
    compile: bool = setting(False, "torch.compile each model's training forward and backward")
    device: str = setting("auto", "auto (CUDA if available, else CPU), cpu, cuda, cuda:N or mps")
    augment: AugmentConfig = field(default_factory=AugmentConfig,
                                   metadata={"help": "augmentations (see AugmentConfig)"})

    def __post_init__(self) -> None:
        if isinstance(self.augment, dict):
            self.augment = section_from_dict(Config, AugmentConfig, self.augment, "augment.")
        elif not isinstance(self.augment, AugmentConfig):
            raise ConfigError(f"config key 'augment': expected a mapping of augmentation settings, "
                              f"got {self.augment!r}")
        coerce_fields(self, "")
        self._validate()

    # ------------------------------------------------------------------------------------- validation
    def _validate(self) -> None:
        objs = self.objectives
        if not objs:
            raise ConfigError(f"config key 'objectives': must not be empty; choose from {', '.join(OBJECTIVES)}")
        dupes = sorted({o for o in objs if objs.count(o) > 1})
        if dupes:
            raise ConfigError(f"config key 'objectives': duplicate objective(s) {', '.join(dupes)} in {objs}")
        if objs[0] not in CONTRASTIVE_OBJECTIVES:
            raise ConfigError(f"config key 'objectives': the anchor (first objective) must be contrastive, one of "
                              f"{', '.join(CONTRASTIVE_OBJECTIVES)}; got {objs[0]!r} in {objs}")
        check_range("temperature", self.temperature, 0.0, None, lo_open=True)
        check_min("batch_size", self.batch_size, 2)
        check_min("epochs", self.epochs, 1)
        check_range("lr", self.lr, 0.0, None, lo_open=True)
        check_range("momentum", self.momentum, 0.0, 1.0, hi_open=True)
        check_range("weight_decay", self.weight_decay, 0.0, None)
        check_min("warmup_epochs", self.warmup_epochs, 0)
        if self.warmup_epochs > self.epochs:
            raise ConfigError(f"config key 'warmup_epochs': {self.warmup_epochs} exceeds epochs={self.epochs}")
        check_min("seed", self.seed, 0)
        if self.dataset != "digits" and self.data_root is None:
            raise ConfigError(f"config key 'data_root': required for dataset={self.dataset} (the directory holding "
                              "the data; only dataset=digits is embedded)")
        known = DATASET_CLASSES.get(self.dataset)
        if self.num_classes is not None:
            check_min("num_classes", self.num_classes, 2)
            if known is not None and self.num_classes > known:
                raise ConfigError(f"config key 'num_classes': {self.num_classes} exceeds the {known} classes of "
                                  f"dataset={self.dataset}")
        classes = self.num_classes if self.num_classes is not None else known
        if self.sampler == "stratified" and classes is not None and self.batch_size % classes != 0:
            lower = max(classes, self.batch_size - self.batch_size % classes)
            raise ConfigError(f"config key 'batch_size': {self.batch_size} is not divisible by the {classes} classes, "
                              f"which sampler=stratified needs; use e.g. {lower} or {lower + classes}")
        check_range("reference_fraction", self.reference_fraction, 0.0, 1.0, lo_open=True, hi_open=True)
        if self.reference_size is not None:
            check_min("reference_size", self.reference_size, 4)
        check_min("image_size", self.image_size, 8)
        check_min("loader_workers", self.loader_workers, 0)
        if self.decode_size is not None:
            check_min("decode_size", self.decode_size, 8)
        check_range("decode_aspect", self.decode_aspect, 1.0, None)
        check_range("eval_cache_gib", self.eval_cache_gib, 0.0, None)
        if self.decode_aspect > 1.0 and self.augment.rotation > 0.0 and self.augment.padding_mode != "zeros":
            raise ConfigError("config key 'augment.padding_mode': images decoded with decode_aspect > 1 lie on "
                              "canvases, where a rotation can only bring in zeros; use padding_mode=zeros or "
                              "rotation=0")
        if not self.stream:
            for key, default in (("decode_size", None), ("decode_aspect", 1.0), ("gpu_decode", False)):
                if getattr(self, key) != default:
                    raise ConfigError(f"config key '{key}': applies to streamed images only (stream=true); images "
                                      "held in memory are decoded at image_size")
        if self.eval_split == "test" and self.dataset == "digits":
            raise ConfigError("config key 'eval_split': the digits have no test split; use eval_split=holdout")
        if self.eval_split == "test" and self.dataset == "imagefolder" and self.eval_root is None:
            raise ConfigError("config key 'eval_root': required for dataset=imagefolder with eval_split=test "
                              "(the held-out tree, class folders named as data_root's)")
        if self.stream and self.dataset != "imagefolder":
            raise ConfigError(f"config key 'stream': only dataset=imagefolder streams from disk "
                              f"(dataset={self.dataset} is held in memory)")
        if self.probe_size is not None:
            check_min("probe_size", self.probe_size, 2)
        check_min("hidden_dim", self.hidden_dim, 1)
        check_min("projector_dim", self.projector_dim, 1)
        check_min("eval_every", self.eval_every, 1)
        check_min("knn_k", self.knn_k, 1)
        check_min("gap_batches", self.gap_batches, 1)
        check_range("theory_delta", self.theory_delta, 0.0, 1.0, lo_open=True, hi_open=True)
        check_min("checkpoint_every", self.checkpoint_every, 1)
        for e in self.snapshot_epochs:
            check_range("snapshot_epochs", e, 1, self.epochs)
        if self.grad_clip is not None:
            check_range("grad_clip", self.grad_clip, 0.0, None, lo_open=True)
        if not self.out.strip():
            raise ConfigError("config key 'out': must not be empty")
        if not _DEVICE_RE.match(self.device):
            raise ConfigError(f"config key 'device': invalid value {self.device!r}; valid: auto, cpu, cuda, "
                              "cuda:N, mps")

    # -------------------------------------------------------------------------------------- helpers
    @property
    def anchor(self) -> str:
        return self.objectives[0]

    def scaled_lr(self) -> float:
        """`lr` scaled for `batch_size` by `lr_scaling` relative to BASE_BATCH_SIZE (256)."""
        ratio = self.batch_size / BASE_BATCH_SIZE
        power = {"none": 0.0, "linear": 1.0, "sqrt": 0.5, "fourth_root": 0.25}[self.lr_scaling]
        return self.lr * ratio ** power

    def to_dict(self) -> dict:
        """Plain nested dict (lists, no tuples) that YAML/JSON can hold and `load_config` reads back."""
        def plain(v: Any) -> Any:
            if isinstance(v, (list, tuple)):
                return [plain(x) for x in v]
            if isinstance(v, dict):
                return {k: plain(x) for k, x in v.items()}
            return v
        return plain(dataclasses.asdict(self))

    def save(self, path: str | os.PathLike) -> Path:
        """Write the config as YAML to `path`, or to `path/config.yaml` when `path` is a directory (or has
        no suffix); atomic (temporary file + rename). Returns the file written."""
        import yaml

        path = Path(path)
        if path.is_dir() or not path.suffix:
            path = path / "config.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        text = yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)
        fd, tmp = tempfile.mkstemp(prefix=".config.", suffix=".yaml.tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            os.chmod(tmp, 0o644)  # mkstemp makes the file private; a config is meant to be read
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return path


def load_config(path: str | os.PathLike | None = None, overrides: Iterable[str] = ()) -> Config:
    """The defaults, updated by the YAML file at `path` (if given; a mapping, nested for sections, dotted
    keys also accepted) and then by the `key=value` overrides in order. Raises ConfigError naming the key
    for an unknown key or a bad value, FileNotFoundError for a missing file."""
    return engine.load(Config, path, overrides)


def describe() -> str:
    """Help text: every key (dotted for sections) with its type, default, choices and meaning."""
    return engine.describe(Config)
