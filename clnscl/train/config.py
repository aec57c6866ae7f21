"""Run configuration of the coupled trainer on OmegaConf structured configs: `Config` and its section
`AugmentConfig` (key `augment`) are dataclasses whose defaults train on the embedded digits in a few minutes on
2 CPU cores; `load_config` merges them with a YAML file and then with `--set key=value` overrides.

    cfg = load_config("cifar10.yaml", ["temperature=0.1", "augment.rotation=0", "objectives=[cl,nscl]"])
    cfg.save(run_dir)            # run_dir/config.yaml, loadable with load_config
    print(describe())            # every key with its type, default, choices and meaning

OmegaConf parses, merges and checks the types (`1e-3` is a float, `null` clears an optional key). Two steps of
ours come before it: a list key's value may leave out the brackets (`objectives=cl,nscl`), and a string key
keeps its text as typed (`out=0x10` is a directory name, not 16). The rules about values (choices, ranges,
combinations of keys) are checked whenever a `Config` is built, also directly or by `dataclasses.replace`.
Every mistake raises `ConfigError` (a ValueError) naming the dotted key, with a did-you-mean for an unknown
key. Setting `augment.preset` resets the augment keys to that preset; keys set after it, or beside it in one
mapping, change it. The fields declared with `run=True` (`run_keys()`) are those a resumed run must share with
its checkpoint.
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import io
import os
import re
import tempfile
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Optional

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from ..checks import check_int, check_real

__all__ = [
    "Config",
    "AugmentConfig",
    "ConfigError",
    "load_config",
    "describe",
    "entries",
    "run_keys",
    "setting",
    "PRESETS",
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
_EXPECTED = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


class ConfigError(ValueError):
    """A bad configuration key or value; the message names the key."""


def setting(default: Any, help: str, choices: Iterable[str] | None = None, run: bool = False) -> Any:
    """A dataclass field with its help text, the strings it may take, and whether a resumed run must keep it.

    Args:
        default: the value of the key when nothing sets it (a list is copied for every instance).
        help: the key's meaning, shown by `describe()`.
        choices: the strings the key (or each item of a list key) may take, matched case-insensitively.
        run: the key must be the checkpoint's when a run resumes (`run_keys()`).
    """
    meta = {"help": help, "run": run}
    if choices is not None:
        meta["choices"] = tuple(choices)
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


# ------------------------------------------------------------------------------------------- value rules
def _check_range(key: str, value: float, lo: float | None, hi: float | None, *, lo_open: bool = False,
                 hi_open: bool = False) -> None:
    """The key's value is a finite number in the interval (`clnscl.checks.check_real`'s rule)."""
    try:
        check_real(value, f"config key '{key}'", lo, hi, lo_open=lo_open, hi_open=hi_open)
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc)) from None


def _check_min(key: str, value: int, lo: int) -> None:
    """The key's value is an integer >= lo (`clnscl.checks.check_int`'s rule)."""
    try:
        check_int(value, f"config key '{key}'", lo)
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc)) from None


def _check_choices(obj: Any, prefix: str) -> None:
    """Lower-case the values of `obj`'s fields that have choices (each item of a list) and check them."""
    for f in dataclasses.fields(obj):
        choices = f.metadata.get("choices")
        if choices is None:
            continue
        value = getattr(obj, f.name)
        items = [v.lower() if isinstance(v, str) else v for v in (value if isinstance(value, list) else [value])]
        for item in items:
            if item not in choices:
                raise ConfigError(f"config key '{prefix}{f.name}': invalid value {item!r}; valid choices: "
                                  f"{', '.join(choices)}")
        setattr(obj, f.name, items if isinstance(value, list) else items[0])


def _pair(key: str, value: Any) -> tuple:
    """A (low, high) setting as a tuple (OmegaConf holds it as a list)."""
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ConfigError(f"config key '{key}': invalid value {value!r}; expected 2 values (low, high)")
    return tuple(value)


def _seeds(value: Any) -> list[int]:
    """The `seeds` key's value as a list: non-empty, of distinct integers >= 0."""
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"config key 'seeds': invalid value {value!r}; expected a list of integers, e.g. "
                          "seeds=[0,1,2]")
    if not value:
        raise ConfigError("config key 'seeds': must not be empty; list the seeds to repeat every value with, e.g. "
                          "seeds=[0,1,2], or set seeds=null for one run with `seed`")
    for seed in value:
        _check_min("seeds", seed, 0)
    dupes = sorted({s for s in value if list(value).count(s) > 1})
    if dupes:
        raise ConfigError(f"config key 'seeds': duplicate seed(s) {', '.join(map(str, dupes))} in {list(value)}; "
                          "list each seed once")
    return [int(s) for s in value]


# ------------------------------------------------------------------------------------------- the schema
PRESETS: dict[str, dict] = {
    # the 8x8 digits: mild crops, small rotations, brightness/contrast jitter, pixel noise (the dataclass defaults)
    "digits": {},
    # SimCLR's CIFAR augmentations (Chen et al. 2020, appendix B.9; the NSCL authors' "cifar" transform):
    # crop (0.08, 1), flip 0.5, colour jitter (0.4, 0.4, 0.4, 0.1) with p = 0.8, grayscale p = 0.2, no blur
    "simclr_cifar": dict(crop_scale=(0.08, 1.0), rotation=0.0, hflip_p=0.5, brightness=0.4, contrast=0.4,
                         saturation=0.4, hue=0.1, jitter_p=0.8, grayscale_p=0.2, noise_std=0.0),
    # SimCLR's ImageNet augmentations (its appendix A): colour strength 1 (0.8, 0.8, 0.8, 0.2) with p = 0.8,
    # grayscale p = 0.2, Gaussian blur p = 0.5 with σ in (0.1, 2) and a kernel 10% of the image side
    "simclr_imagenet": dict(crop_scale=(0.08, 1.0), rotation=0.0, hflip_p=0.5, brightness=0.8, contrast=0.8,
                            saturation=0.8, hue=0.2, jitter_p=0.8, grayscale_p=0.2, blur_p=0.5, blur_sigma=(0.1, 2.0),
                            blur_kernel=0, noise_std=0.0),
}


@dataclass
class AugmentConfig:
    """The parameters of `augment.Augment` (the config section `augment`), checked on construction
    (ConfigError naming the key). `preset` names the values the other keys start from
    (`AugmentConfig(preset="simclr_cifar", hflip_p=0.0)`: the SimCLR CIFAR values with no flip); in a config
    file or an override, setting `augment.preset` resets every augment key to that preset, and keys set after
    it change it."""

    preset: str = setting("digits", "the named set of values the other augment keys start from",
                          choices=tuple(PRESETS))
    crop_scale: tuple[float, float] = setting((0.6, 1.0), "random resized crop: range of the window's area fraction")
    crop_ratio: tuple[float, float] = setting((3 / 4, 4 / 3), "random resized crop: range of the window's aspect ratio")
    rotation: float = setting(15.0, "random rotation: maximum angle in degrees (uniform in ±rotation)")
    hflip_p: float = setting(0.0, "probability of a horizontal flip (0 for digits)")
    brightness: float = setting(0.4, "colour jitter: brightness factor uniform in [max(0, 1 − b), 1 + b]")
    contrast: float = setting(0.4, "colour jitter: contrast factor uniform in [max(0, 1 − c), 1 + c]")
    saturation: float = setting(0.0, "colour jitter: saturation factor uniform in [max(0, 1 − s), 1 + s] "
                                     "(no effect on one-channel images)")
    hue: float = setting(0.0, "colour jitter: hue shift uniform in ±hue turns, at most 0.5 (no effect on one "
                              "channel)")
    jitter_p: float = setting(0.8, "probability of applying the colour jitter (its four parts in a random order)")
    grayscale_p: float = setting(0.0, "probability of converting to grayscale")
    blur_p: float = setting(0.0, "probability of a Gaussian blur")
    blur_sigma: tuple[float, float] = setting((0.1, 2.0), "Gaussian blur: σ uniform in this range, in pixels")
    blur_kernel: int = setting(0, "Gaussian blur: odd kernel side in pixels; 0 for 10% of the image's shorter "
                                  "side (the odd number nearest it)")
    solarize_p: float = setting(0.0, "probability of solarizing (1 − x where x >= solarize_threshold)")
    solarize_threshold: float = setting(0.5, "solarize: the threshold")
    noise_std: float = setting(0.05, "standard deviation of the additive Gaussian noise")
    padding_mode: str = setting("zeros", "fill of the area a rotation brings in from outside the image",
                                choices=("zeros", "border", "reflection"))

    PRESETS: ClassVar[dict[str, dict]] = PRESETS

    def __post_init__(self) -> None:
        _check_choices(self, "augment.")
        for name in ("crop_scale", "crop_ratio", "blur_sigma"):
            setattr(self, name, _pair(f"augment.{name}", getattr(self, name)))
        lo, hi = self.crop_scale
        if not 0.0 < lo <= hi <= 1.0:
            raise ConfigError(f"config key 'augment.crop_scale': invalid value {list(self.crop_scale)}; "
                              "need 0 < low <= high <= 1")
        lo, hi = self.crop_ratio
        if not 0.0 < lo <= hi:
            raise ConfigError(f"config key 'augment.crop_ratio': invalid value {list(self.crop_ratio)}; "
                              "need 0 < low <= high")
        lo, hi = self.blur_sigma
        if not 0.0 < lo <= hi:
            raise ConfigError(f"config key 'augment.blur_sigma': invalid value {list(self.blur_sigma)}; "
                              "need 0 < low <= high")
        if self.blur_kernel < 0 or (self.blur_kernel and self.blur_kernel % 2 == 0):
            raise ConfigError(f"config key 'augment.blur_kernel': invalid value {self.blur_kernel}; need an odd "
                              "number of pixels, or 0 for 10% of the image side")
        _check_range("augment.rotation", self.rotation, 0.0, 180.0)
        for key in ("hflip_p", "jitter_p", "grayscale_p", "blur_p", "solarize_p", "solarize_threshold"):
            _check_range(f"augment.{key}", getattr(self, key), 0.0, 1.0)
        for key in ("brightness", "contrast", "saturation", "noise_std"):
            _check_range(f"augment.{key}", getattr(self, key), 0.0, None)
        _check_range("augment.hue", self.hue, 0.0, 0.5)


def _preset_init(init):
    """AugmentConfig's constructor with the keys not given taken from the preset."""
    def __init__(self, preset: str = "digits", **values) -> None:
        if preset not in PRESETS:
            raise ConfigError(f"config key 'augment.preset': invalid value {preset!r}; choose from "
                              f"{', '.join(PRESETS)}")
        init(self, preset=preset, **{**PRESETS[preset], **values})
    __init__.__doc__ = init.__doc__
    return __init__


AugmentConfig.__init__ = _preset_init(AugmentConfig.__init__)


@dataclass
class Config:
    """Everything a coupled training run needs. Construct it directly, with `load_config`, `Config.from_dict`
    or `dataclasses.replace`; its values are checked on construction (ConfigError naming the key)."""

    objectives: list[str] = setting(["cl", "nscl", "supcon", "ce"],
                                    "models to train, one per objective; the first is the anchor the others are "
                                    "compared with and must be contrastive", choices=OBJECTIVES, run=True)
    temperature: float = setting(0.5, "temperature τ of the contrastive losses (> 0)", run=True)
    decoupled: bool = setting(False, "decoupled denominators (DCL; NSCL as in the paper's formula; docs/design.md)",
                              run=True)
    batch_size: int = setting(256, "samples per step (each seen in 2 augmented views), global across ranks", run=True)
    epochs: int = setting(30, "training epochs", run=True)
    optimizer: str = setting("sgd", "optimiser (SGD with momentum, AdamW, LARS)", choices=("sgd", "adamw", "lars"),
                             run=True)
    lr: float = setting(0.1, f"peak learning rate at batch size {BASE_BATCH_SIZE} (see lr_scaling)", run=True)
    lr_scaling: str = setting("none", f"scale lr with batch_size / {BASE_BATCH_SIZE}: not, linearly, by its square "
                                      "root or its fourth root", choices=("none", "linear", "sqrt", "fourth_root"),
                             run=True)
    momentum: float = setting(0.9, "momentum of SGD and LARS (AdamW's beta1)", run=True)
    weight_decay: float = setting(5e-4, "weight decay (not applied to biases and norm layers)", run=True)
    warmup_epochs: int = setting(2, "linear warm-up epochs before the per-step cosine schedule", run=True)
    sampler: str = setting("uniform", "batch sampler: uniform shuffling or exactly class-stratified batches "
                                      "(batch_size must then be a multiple of the number of classes)",
                           choices=("uniform", "stratified"), run=True)
    seed: int = setting(0, "seed of everything: split, class subset, initialisation, batches, augmentations", run=True)
    seeds: Optional[list[int]] = setting(None, "clnscl sweep: run every value of the factor once per seed of this "
                                               "list (distinct, >= 0), into OUT/<factor>=<value>/seed=<s>, and give "
                                               "the mean and spread over the seeds (null: one run per value with "
                                               "`seed`, into OUT/<factor>=<value>); clnscl train refuses it")
    dataset: str = setting("digits", "dataset: the digits embedded in scikit-learn (no download), CIFAR-10/100 "
                                     "(torchvision, from data_root) or an ImageFolder tree at data_root",
                           choices=("digits", "cifar10", "cifar100", "imagefolder"), run=True)
    data_root: Optional[str] = setting(None, "dataset directory (required unless dataset is digits)")
    image_size: int = setting(64, "imagefolder: every image's shorter side is resized to image_size and its "
                                  "central image_size × image_size square kept", run=True)
    stream: bool = setting(False, "imagefolder: decode the images from disk when needed instead of holding the "
                                  "dataset in memory (mini-ImageNet, ImageNet-1k)")
    loader_workers: int = setting(8, "stream: DataLoader worker processes decoding the training images ahead "
                                     "of the steps (0: in the training process), and threads decoding the "
                                     "evaluation images")
    decode_size: Optional[int] = setting(None, "stream: the training images' shorter side when decoded (null: "
                                               "image_size); their random resized crop is resampled to image_size",
                                         run=True)
    decode_aspect: float = setting(1.0, "stream: the widest aspect ratio a training image keeps when decoded (its "
                                        "longer side cut about the centre beyond it): 1 keeps the central square; "
                                        "4/3 (1.334) lets the random resized crop see the whole of most ImageNet "
                                        "images, on canvases of int(decode_size · decode_aspect)² pixels", run=True)
    gpu_decode: bool = setting(False, "stream on CUDA: the loader workers only read the training files, and the "
                                      "JPEGs are decoded and resized on the GPU (torchvision.io.decode_jpeg)", run=True)
    eval_cache_gib: float = setting(8.0, "keep the decoded images of an evaluation set (reference, probe) in memory "
                                         "after the first evaluation when the set takes at most this many GiB "
                                         "(3·image_size² bytes an image; 0: decode them at every evaluation)")
    num_classes: Optional[int] = setting(None, "train on a seeded subset of this many classes (null: all classes)",
                                         run=True)
    eval_split: str = setting("holdout", "where the reference set of the evaluations comes from: a held-out part "
                                         "of the training split (reference_fraction), or the dataset's test "
                                         "split (CIFAR's test batch; for imagefolder the eval_root tree), with "
                                         "the whole training split training", choices=("holdout", "test"), run=True)
    eval_root: Optional[str] = setting(None, "imagefolder with eval_split=test: the held-out tree (e.g. "
                                             "ImageNet's val/ in class folders named as data_root's)")
    reference_fraction: float = setting(0.2, "eval_split=holdout: fraction of each class held out as the fixed "
                                             "reference set", run=True)
    reference_size: Optional[int] = setting(None, "use only this many reference samples, a fixed set (holdout: the "
                                                  "first of the held-out part; test: a seeded stratified subset of "
                                                  "the test split; null: all of it)", run=True)
    model: str = setting("small_cnn", "encoder (ViTs: torchvision's VisionTransformer, patch 16 above 64 px, "
                                      "else 4, or 2 below 16 px)",
                         choices=("small_cnn", "resnet18", "resnet50", "vit_tiny", "vit_small", "vit_base"), run=True)
    hidden_dim: int = setting(128, "hidden width of the 2-layer projector", run=True)
    projector_dim: int = setting(64, "output dimension of the projector (the embedding z the losses see)", run=True)
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
                                  "batch_size reference samples, fixed seeded order and views", run=True)
    probe_size: Optional[int] = setting(None, "labelled training samples (a fixed seeded stratified subset) that "
                                              "NCC and k-NN accuracies use (null: the whole training split)", run=True)
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
    on_nonfinite: str = setting("stop", "a step whose loss or gradient is not finite: stop the run there, naming the "
                                        "step, the objective and its last finite loss (exit code 3), or skip the "
                                        "step for every model (counted in skipped_steps)", choices=("stop", "skip"))
    deterministic: bool = setting(False, "deterministic algorithms for the run's process: torch's (warning where an "
                                         "op has none), cuDNN's, cuBLAS's workspace, the loss's Triton kernels "
                                         "without atomics; false: cuDNN's autotuner (benchmark mode) on CUDA")
    compile: bool = setting(False, "torch.compile each model's training forward and backward")
    device: str = setting("auto", "auto (CUDA if available, else CPU), cpu, cuda, cuda:N or mps")
    augment: AugmentConfig = field(default_factory=AugmentConfig,
                                   metadata={"help": "augmentations (see AugmentConfig)", "run": True})

    def __post_init__(self) -> None:
        if isinstance(self.augment, Mapping):
            self.augment = _instance(_merge(OmegaConf.structured(Config), {"augment": self.augment}).augment)
        elif not isinstance(self.augment, AugmentConfig):
            raise _not_a_mapping("augment", self.augment)
        _check_choices(self, "")
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
        _check_range("temperature", self.temperature, 0.0, None, lo_open=True)
        _check_min("batch_size", self.batch_size, 2)
        _check_min("epochs", self.epochs, 1)
        _check_range("lr", self.lr, 0.0, None, lo_open=True)
        _check_range("momentum", self.momentum, 0.0, 1.0, hi_open=True)
        _check_range("weight_decay", self.weight_decay, 0.0, None)
        _check_min("warmup_epochs", self.warmup_epochs, 0)
        if self.warmup_epochs > self.epochs:
            raise ConfigError(f"config key 'warmup_epochs': {self.warmup_epochs} exceeds epochs={self.epochs}")
        _check_min("seed", self.seed, 0)
        if self.seeds is not None:
            self.seeds = _seeds(self.seeds)
        if self.dataset != "digits" and self.data_root is None:
            raise ConfigError(f"config key 'data_root': required for dataset={self.dataset} (the directory holding "
                              "the data; only dataset=digits is embedded)")
        known = DATASET_CLASSES.get(self.dataset)
        if self.num_classes is not None:
            _check_min("num_classes", self.num_classes, 2)
            if known is not None and self.num_classes > known:
                raise ConfigError(f"config key 'num_classes': {self.num_classes} exceeds the {known} classes of "
                                  f"dataset={self.dataset}")
        classes = self.num_classes if self.num_classes is not None else known
        if self.sampler == "stratified" and classes is not None and self.batch_size % classes != 0:
            lower = max(classes, self.batch_size - self.batch_size % classes)
            raise ConfigError(f"config key 'batch_size': {self.batch_size} is not divisible by the {classes} classes, "
                              f"which sampler=stratified needs; use e.g. {lower} or {lower + classes}")
        _check_range("reference_fraction", self.reference_fraction, 0.0, 1.0, lo_open=True, hi_open=True)
        if self.reference_size is not None:
            _check_min("reference_size", self.reference_size, 4)
        _check_min("image_size", self.image_size, 8)
        _check_min("loader_workers", self.loader_workers, 0)
        if self.decode_size is not None:
            _check_min("decode_size", self.decode_size, 8)
        _check_range("decode_aspect", self.decode_aspect, 1.0, None)
        _check_range("eval_cache_gib", self.eval_cache_gib, 0.0, None)
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
            _check_min("probe_size", self.probe_size, 2)
        _check_min("hidden_dim", self.hidden_dim, 1)
        _check_min("projector_dim", self.projector_dim, 1)
        _check_min("eval_every", self.eval_every, 1)
        _check_min("knn_k", self.knn_k, 1)
        _check_min("gap_batches", self.gap_batches, 1)
        _check_range("theory_delta", self.theory_delta, 0.0, 1.0, lo_open=True, hi_open=True)
        _check_min("checkpoint_every", self.checkpoint_every, 1)
        for e in self.snapshot_epochs:
            _check_range("snapshot_epochs", e, 1, self.epochs)
        if self.grad_clip is not None:
            _check_range("grad_clip", self.grad_clip, 0.0, None, lo_open=True)
        if not self.out.strip():
            raise ConfigError("config key 'out': must not be empty")
        if not _DEVICE_RE.match(self.device):
            raise ConfigError(f"config key 'device': invalid value {self.device!r}; valid: auto, cpu, cuda, "
                              "cuda:N, mps")

    # -------------------------------------------------------------------------------------- helpers
    @property
    def anchor(self) -> str:
        """The first objective, whose model the others are compared with."""
        return self.objectives[0]

    def scaled_lr(self) -> float:
        """`lr` scaled for `batch_size` by `lr_scaling` relative to BASE_BATCH_SIZE (256)."""
        ratio = self.batch_size / BASE_BATCH_SIZE
        power = {"none": 0.0, "linear": 1.0, "sqrt": 0.5, "fourth_root": 0.25}[self.lr_scaling]
        return self.lr * ratio ** power

    def to_dict(self) -> dict:
        """Plain nested dict (lists, no tuples) that YAML/JSON can hold and `load_config` reads back."""
        return OmegaConf.to_container(OmegaConf.structured(self))

    @classmethod
    def from_dict(cls, mapping: Mapping) -> Config:
        """A Config from a nested mapping of keys such as `to_dict()` returns; a key it lacks has its default.

        Raises:
            ConfigError: an unknown key or a bad value, naming the key.
        """
        return _instance(_merge(OmegaConf.structured(cls), mapping))

    def changes_since(self, saved: Mapping | None) -> dict[str, list]:
        """The keys outside `run_keys()` whose values differ from `saved` (the `to_dict()` of an earlier config,
        e.g. a checkpoint's; None: nothing to compare with), each as [old, new]; a key `saved` predates had its
        default."""
        if saved is None:
            return {}
        now, defaults, run = self.to_dict(), type(self)().to_dict(), set(run_keys())
        old = {key: saved.get(key, defaults[key]) for key in now}
        return {key: [old[key], value] for key, value in now.items() if key not in run and old[key] != value}

    def save(self, path: str | os.PathLike) -> Path:
        """Write the config as YAML to `path`, or to `path/config.yaml` when `path` is a directory (or has
        no suffix); atomic (temporary file + rename). Returns the file written."""
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


def run_keys() -> tuple[str, ...]:
    """The keys a resumed run must share with its checkpoint: Config's fields declared with `run=True`."""
    return tuple(f.name for f in dataclasses.fields(Config) if f.metadata.get("run"))


# ------------------------------------------------------------------------------- loading, on OmegaConf
def load_config(path: str | os.PathLike | None = None, overrides: Iterable[str] = ()) -> Config:
    """The defaults merged with the YAML file at `path` (if given; a mapping, nested for sections, dotted
    keys also accepted) and then with the `key=value` overrides in order.

    Raises:
        ConfigError: an unknown key or a bad value, naming the key.
        FileNotFoundError: no file at `path`.
    """
    conf = OmegaConf.structured(Config)
    if path is not None:
        conf = _merge(conf, _read_yaml(Path(path)), f" in {path}")
    for text in [overrides] if isinstance(overrides, str) else overrides:
        conf = _merge(conf, _parse_override(text))
    return _instance(conf)


def _read_yaml(path: Path) -> DictConfig:
    """The mapping of a YAML config file (read by OmegaConf: `1e-3` is a float), its dotted keys nested."""
    text = path.read_text(encoding="utf-8")
    try:
        loaded = OmegaConf.load(io.StringIO(text))
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    except OSError:  # OmegaConf refuses a document that is a single value
        loaded = None
    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"config file {path} must hold a mapping of keys to values")
    nested = OmegaConf.create()
    for key, value in loaded.items():
        OmegaConf.update(nested, str(key), value, merge=True)
    return nested


def _parse_override(text: str) -> DictConfig:
    """One `key=value` override as a nested mapping, parsed by OmegaConf's dotlist after our two steps: a list
    key's value without brackets is comma-separated, and a string key's value is quoted to keep its text."""
    if not isinstance(text, str) or "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value (e.g. temperature=0.1)")
    key, raw = (part.strip() for part in text.split("=", 1))
    if not key:
        raise ConfigError(f"override {text!r} has no key; expected key=value")
    leaves, sections = _schema()
    if key not in leaves and key not in sections:
        raise _unknown_key(key)
    tp = _base_type(leaves[key][1]) if key in leaves else None
    if raw not in ("", "~") and raw.lower() != "null":
        if typing.get_origin(tp) in (list, tuple) and not raw.startswith("["):
            raw = f"[{raw}]"
        elif tp is str:
            raw = "'" + raw.replace("'", "''") + "'"  # a YAML single-quoted string: the text as typed
    try:
        return OmegaConf.from_dotlist([f"{key}={raw}"])
    except (yaml.YAMLError, OmegaConfBaseException) as exc:
        raise ConfigError(f"config key '{key}': invalid value {raw!r}: {exc}") from None


def _merge(conf: DictConfig, update: Mapping, where: str = "") -> DictConfig:
    """`conf` merged with the nested mapping `update`; a preset given for a section first resets it."""
    for name, section in _schema()[1].items():
        if name not in update:
            continue
        if not isinstance(update[name], Mapping):
            raise _not_a_mapping(name, update[name], where)
        if "preset" in update[name] and hasattr(section, "PRESETS"):
            conf = OmegaConf.merge(conf, {name: section(preset=update[name]["preset"])})
    try:
        return OmegaConf.merge(conf, update)
    except OmegaConfBaseException as exc:
        raise _error(exc, where) from None


def _instance(conf: DictConfig) -> Any:
    """The dataclass object of a structured config (its checks run on construction)."""
    try:
        return OmegaConf.to_object(conf)
    except OmegaConfBaseException as exc:
        raise _error(exc) from None


# --------------------------------------------------------------------------------------------- messages
@functools.cache
def _schema() -> tuple[dict[str, tuple[dataclasses.Field, Any]], dict[str, type]]:
    """Every key of Config (sections' keys dotted) with its field and type; the sections with their classes."""
    leaves, sections = {}, {}

    def walk(cls: type, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(hints[f.name]):
                sections[prefix + f.name] = hints[f.name]
                walk(hints[f.name], f"{prefix}{f.name}.")
            else:
                leaves[prefix + f.name] = (f, hints[f.name])

    walk(Config, "")
    return leaves, sections


def _is_optional(tp: Any) -> bool:
    return typing.get_origin(tp) is typing.Union and type(None) in typing.get_args(tp)


def _base_type(tp: Any) -> Any:
    """The type of an Optional's values, else the type."""
    return next(a for a in typing.get_args(tp) if a is not type(None)) if _is_optional(tp) else tp


def _type_name(tp: Any) -> str:
    """The type as `describe()` shows it: "int or null", "list of str", "2 × float"."""
    args = typing.get_args(tp)
    if _is_optional(tp):
        return f"{_type_name(_base_type(tp))} or null"
    if typing.get_origin(tp) is list:
        return f"list of {_type_name(args[0])}"
    if typing.get_origin(tp) is tuple:
        return f"{len(args)} × {_type_name(args[0])}"
    return tp.__name__


def _expected(tp: Any) -> str:
    """What a value of the type looks like, for an error message."""
    if _is_optional(tp):
        return f"{_expected(_base_type(tp))} or null"
    return _EXPECTED.get(tp) or _type_name(tp)


def _unknown_key(key: str, where: str = "") -> ConfigError:
    """An unknown key, with the closest valid key (by its dotted name or its last part) and the valid keys."""
    valid = list(_schema()[0])
    guesses = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    if not guesses:  # a leaf name without its section, or a section name alone
        by_leaf = {k.rsplit(".", 1)[-1]: k for k in valid}
        close = difflib.get_close_matches(key.rsplit(".", 1)[-1], list(by_leaf), n=1, cutoff=0.6)
        guesses = [by_leaf[close[0]]] if close else []
    hint = f" (did you mean '{guesses[0]}'?)" if guesses else ""
    return ConfigError(f"unknown config key '{key}'{where}{hint}; valid keys: {', '.join(valid)}")


def _not_a_mapping(name: str, value: Any, where: str = "") -> ConfigError:
    """A section given something other than a mapping of its keys."""
    keys = [k for k in _schema()[0] if k.startswith(name + ".")]
    return ConfigError(f"config key '{name}'{where} is a section; set its keys ({', '.join(keys)}) or give a "
                       f"mapping, not {value!r}")


def _error(exc: OmegaConfBaseException, where: str = "") -> ConfigError:
    """OmegaConf's error as a ConfigError naming the dotted key (an item's index left out)."""
    key = re.sub(r"\[\d+\]", "", exc.full_key or "")
    if isinstance(exc, ConfigKeyError):
        return _unknown_key(key, where)
    leaf = _schema()[0].get(key)
    expected = f"; expected {_expected(leaf[1])}" if leaf else ""
    if not isinstance(exc, ValidationError):
        return ConfigError(f"config key '{key}'{where}: {exc.msg}{expected}")
    if exc.value is None:
        return ConfigError(f"config key '{key}'{where}: must not be null{expected}")
    value = OmegaConf.to_container(exc.value) if isinstance(exc.value, (DictConfig, ListConfig)) else exc.value
    return ConfigError(f"config key '{key}'{where}: invalid value {value!r}{expected}")


def _shown(value: Any) -> str:
    """A default as `describe()` shows it: null, true, [0.6, 1], 0.5."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value) + "]"
    return str(value)


def entries() -> list[dict[str, Any]]:
    """Every key of Config (dotted for sections) as {key, type, default, choices, help, run}: what `describe()`
    prints and the docs site's configuration reference shows."""
    defaults = Config().to_dict()
    out = []
    for key, (f, tp) in _schema()[0].items():
        default = functools.reduce(lambda node, part: node[part], key.split("."), defaults)
        out.append({"key": key, "type": _type_name(tp), "default": _shown(default),
                    "choices": tuple(f.metadata.get("choices") or ()), "help": f.metadata["help"],
                    "run": f.metadata["run"]})
    return out


def describe() -> str:
    """Help text: every key (dotted for sections) with its type, default, choices and meaning."""
    lines = []
    for e in entries():
        text = e["help"] + (f" [choices: {', '.join(e['choices'])}]" if e["choices"] else "")
        lines += [f"  {e['key']} ({e['type']}, default {e['default']})", f"      {text}"]
    return "configuration keys (set with --set key=value; nested keys are dotted):\n" + "\n".join(lines)
