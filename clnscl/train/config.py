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
import difflib
import math
import os
import re
import tempfile
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

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


class ConfigError(ValueError):
    """A bad configuration key or value; the message names the key."""


def _opt(default: Any, help: str, choices: Iterable[str] | None = None, **kw: Any) -> Any:
    meta = {"help": help}
    if choices is not None:
        meta["choices"] = tuple(choices)
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta, **kw)
    return field(default=default, metadata=meta, **kw)


@dataclass
class AugmentConfig:
    """Parameters of `clnscl.train.data.Augment` (same names)."""

    crop_scale: tuple[float, float] = _opt((0.6, 1.0), "random resized crop: range of the window's area fraction")
    crop_ratio: tuple[float, float] = _opt((3 / 4, 4 / 3), "random resized crop: range of the window's aspect ratio")
    rotation: float = _opt(15.0, "random rotation: maximum angle in degrees (uniform in ±rotation)")
    hflip_p: float = _opt(0.0, "probability of a horizontal flip (0 for digits)")
    brightness: float = _opt(0.4, "brightness jitter: factor uniform in 1 ± brightness")
    contrast: float = _opt(0.4, "contrast jitter: factor uniform in 1 ± contrast")
    jitter_p: float = _opt(0.8, "probability of applying the brightness/contrast jitter")
    noise_std: float = _opt(0.05, "standard deviation of the additive Gaussian noise")
    padding_mode: str = _opt("zeros", "fill outside the image after crop/rotation",
                             choices=("zeros", "border", "reflection"))

    def __post_init__(self) -> None:
        _coerce_all(self, "augment.")
        lo, hi = self.crop_scale
        if not 0.0 < lo <= hi <= 1.0:
            raise ConfigError(f"config key 'augment.crop_scale': invalid value {list(self.crop_scale)}; "
                              "need 0 < low <= high <= 1")
        lo, hi = self.crop_ratio
        if not 0.0 < lo <= hi:
            raise ConfigError(f"config key 'augment.crop_ratio': invalid value {list(self.crop_ratio)}; "
                              "need 0 < low <= high")
        _check_range("augment.rotation", self.rotation, 0.0, 180.0)
        _check_range("augment.hflip_p", self.hflip_p, 0.0, 1.0)
        _check_range("augment.jitter_p", self.jitter_p, 0.0, 1.0)
        _check_range("augment.brightness", self.brightness, 0.0, 1.0, hi_open=True)
        _check_range("augment.contrast", self.contrast, 0.0, 1.0, hi_open=True)
        _check_range("augment.noise_std", self.noise_std, 0.0, None)


@dataclass
class Config:
    """Everything a coupled training run needs. Construct directly, with `load_config`, or with
    `dataclasses.replace`; values are coerced and validated on construction (ConfigError naming the key)."""

    objectives: list[str] = _opt(["cl", "nscl", "supcon", "ce"],
                                 "models to train, one per objective; the first is the anchor the others are "
                                 "compared with and must be contrastive", choices=OBJECTIVES)
    temperature: float = _opt(0.5, "temperature τ of the contrastive losses (> 0)")
    decoupled: bool = _opt(False, "decoupled denominators (DCL; NSCL as in the paper's formula), DESIGN.md §2")
    batch_size: int = _opt(256, "samples per step (each seen in 2 augmented views), global across ranks")
    epochs: int = _opt(30, "training epochs")
    optimizer: str = _opt("sgd", "optimiser (SGD with momentum, AdamW, LARS)", choices=("sgd", "adamw", "lars"))
    lr: float = _opt(0.1, f"peak learning rate at batch size {BASE_BATCH_SIZE} (see lr_scaling)")
    lr_scaling: str = _opt("none", f"scale lr with batch_size / {BASE_BATCH_SIZE}: not, linearly, by its square "
                                   "root or its fourth root", choices=("none", "linear", "sqrt", "fourth_root"))
    momentum: float = _opt(0.9, "momentum of SGD and LARS (AdamW's beta1)")
    weight_decay: float = _opt(5e-4, "weight decay (not applied to biases and norm layers)")
    warmup_epochs: int = _opt(2, "linear warm-up epochs before the per-step cosine schedule")
    sampler: str = _opt("uniform", "batch sampler: uniform shuffling or exactly class-stratified batches "
                                   "(batch_size must then be a multiple of the number of classes)",
                        choices=("uniform", "stratified"))
    seed: int = _opt(0, "seed of everything: split, class subset, initialisation, batches, augmentations")
    dataset: str = _opt("digits", "dataset: the digits embedded in scikit-learn (no download), CIFAR-10/100 "
                                  "(torchvision, from data_root) or an ImageFolder tree at data_root",
                        choices=("digits", "cifar10", "cifar100", "imagefolder"))
    data_root: Optional[str] = _opt(None, "dataset directory (required unless dataset is digits)")
    image_size: int = _opt(64, "imagefolder: every image is resized to image_size × image_size")
    stream: bool = _opt(False, "imagefolder: decode the images of each batch from disk instead of holding the "
                               "dataset in memory (ImageNet-1k)")
    loader_workers: int = _opt(8, "stream: threads decoding the images of a batch")
    num_classes: Optional[int] = _opt(None, "train on a seeded subset of this many classes (null: all classes)")
    reference_fraction: float = _opt(0.2, "fraction of each class held out as the fixed reference set")
    reference_size: Optional[int] = _opt(None, "use only the first this-many reference samples, a fixed set "
                                               "(null: the whole held-out split)")
    model: str = _opt("small_cnn", "encoder (ViTs: torchvision's VisionTransformer, patch 16 above 64 px, "
                                   "else 4, or 2 below 16 px)",
                      choices=("small_cnn", "resnet18", "resnet50", "vit_tiny", "vit_small", "vit_base"))
    hidden_dim: int = _opt(128, "hidden width of the 2-layer projector")
    projector_dim: int = _opt(64, "output dimension of the projector (the embedding z the losses see)")
    eval_every: int = _opt(20, "evaluate alignment every this many steps")
    knn_k: int = _opt(20, "neighbours of the k-NN accuracy")
    gap_batches: int = _opt(4, "evaluation batches of the CL − NSCL loss gap: up to this many batches of "
                               "batch_size reference samples, fixed seeded order and views")
    probe_size: Optional[int] = _opt(None, "labelled training samples (a fixed seeded stratified subset) that "
                                           "NCC and k-NN accuracies use (null: the whole training split)")
    checkpoint_every: int = _opt(50, "write RUN_DIR/checkpoint.pt (atomically) every this many steps and at the end")
    out: str = _opt("runs/default", "run directory (metrics, figures, checkpoints, config.yaml)")
    amp: bool = _opt(True, "on CUDA: bf16 autocast and channels_last memory format (ignored on the CPU)")
    device: str = _opt("auto", "auto (CUDA if available, else CPU), cpu, cuda, cuda:N or mps")
    augment: AugmentConfig = field(default_factory=AugmentConfig,
                                   metadata={"help": "augmentations (see AugmentConfig)"})

    def __post_init__(self) -> None:
        if isinstance(self.augment, dict):
            self.augment = _section_from_dict(AugmentConfig, self.augment, "augment.")
        elif not isinstance(self.augment, AugmentConfig):
            raise ConfigError(f"config key 'augment': expected a mapping of augmentation settings, "
                              f"got {self.augment!r}")
        _coerce_all(self, "")
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
        _check_min("loader_workers", self.loader_workers, 1)
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
        _check_min("checkpoint_every", self.checkpoint_every, 1)
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


# ------------------------------------------------------------------------------------------- coercion
def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_section(tp: Any) -> bool:
    return dataclasses.is_dataclass(tp) and isinstance(tp, type)


def _type_name(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union:
        inner = [a for a in args if a is not type(None)]
        return f"{_type_name(inner[0])} or null"
    if origin is list:
        return f"list of {_type_name(args[0])}"
    if origin is tuple:
        return f"{len(args)} × {_type_name(args[0])}"
    return getattr(tp, "__name__", str(tp))


def _bad(key: str, value: Any, expected: str) -> ConfigError:
    return ConfigError(f"config key '{key}': invalid value {value!r}; expected {expected}")


def _coerce(key: str, value: Any, tp: Any, choices: tuple[str, ...] | None = None) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union:  # Optional[X]
        inner = [a for a in args if a is not type(None)][0]
        if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null", "~")):
            return None
        return _coerce(key, value, inner, choices)
    if value is None:
        raise ConfigError(f"config key '{key}': must not be null; expected {_type_name(tp)}")
    if origin in (list, tuple):
        items = value
        if isinstance(items, str):
            items = [s.strip() for s in items.strip().strip("[]").split(",") if s.strip()]
        if not isinstance(items, (list, tuple)):
            items = [items]
        if origin is tuple:
            if len(items) != len(args):
                raise _bad(key, value, f"{len(args)} values ({_type_name(tp)})")
            return tuple(_coerce(key, v, a) for v, a in zip(items, args))
        return [_coerce(key, v, args[0], choices) for v in items]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in ("true", "false", "yes", "no", "on", "off", "1", "0"):
            return value.strip().lower() in ("true", "yes", "on", "1")
        raise _bad(key, value, "true or false")
    if tp is int:
        if isinstance(value, bool):
            raise _bad(key, value, "an integer")
        if isinstance(value, int):
            return value
        try:
            number = float(value) if not isinstance(value, str) else float(value.replace("_", ""))
        except (TypeError, ValueError):
            raise _bad(key, value, "an integer") from None
        if not math.isfinite(number) or not number.is_integer():
            raise _bad(key, value, "an integer")
        return int(number)
    if tp is float:
        if isinstance(value, bool):
            raise _bad(key, value, "a number")
        try:
            number = float(value.replace("_", "")) if isinstance(value, str) else float(value)
        except (TypeError, ValueError):
            raise _bad(key, value, "a number") from None
        if not math.isfinite(number):
            raise _bad(key, value, "a finite number")
        return number
    if tp is str:
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise _bad(key, value, "a string" + (f", one of {', '.join(choices)}" if choices else ""))
        text = str(value)
        if choices is not None:
            if text.lower() not in choices:
                raise ConfigError(f"config key '{key}': invalid value {text!r}; valid choices: {', '.join(choices)}")
            return text.lower()
        return text
    raise TypeError(f"config key '{key}': unsupported field type {tp!r}")  # pragma: no cover


def _coerce_all(obj: Any, prefix: str) -> None:
    types = _field_types(type(obj))
    for f in dataclasses.fields(obj):
        if _is_section(types[f.name]):
            continue
        value = _coerce(prefix + f.name, getattr(obj, f.name), types[f.name], f.metadata.get("choices"))
        setattr(obj, f.name, value)


def _check_min(key: str, value: int, lo: int) -> None:
    if value < lo:
        raise ConfigError(f"config key '{key}': invalid value {value!r}; must be >= {lo}")


def _check_range(key: str, value: float, lo: float | None, hi: float | None, *, lo_open: bool = False,
                 hi_open: bool = False) -> None:
    ok = True
    if lo is not None:
        ok = ok and (value > lo if lo_open else value >= lo)
    if hi is not None:
        ok = ok and (value < hi if hi_open else value <= hi)
    if ok:
        return
    if hi is None:
        rule = f"{'>' if lo_open else '>='} {lo:g}"
    else:
        rule = f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    raise ConfigError(f"config key '{key}': invalid value {value!r}; must be {rule}")


# ------------------------------------------------------------------------------------ keys, overrides
def _all_keys(cls: type = Config, prefix: str = "") -> list[str]:
    keys = []
    types = _field_types(cls)
    for f in dataclasses.fields(cls):
        if _is_section(types[f.name]):
            keys.extend(_all_keys(types[f.name], f"{prefix}{f.name}."))
        else:
            keys.append(prefix + f.name)
    return keys


def _unknown_key(key: str, where: str = "") -> ConfigError:
    valid = _all_keys()
    guesses = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    if not guesses:  # a leaf name without its section, or a section name alone
        leaf = key.rsplit(".", 1)[-1]
        by_leaf = {k.rsplit(".", 1)[-1]: k for k in valid}
        close = difflib.get_close_matches(leaf, list(by_leaf), n=1, cutoff=0.6)
        guesses = [by_leaf[close[0]]] if close else []
    hint = f" (did you mean '{guesses[0]}'?)" if guesses else ""
    return ConfigError(f"unknown config key '{key}'{where}{hint}; valid keys: {', '.join(valid)}")


def _section_from_dict(cls: type, mapping: dict, prefix: str) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    for k in mapping:
        if k not in names:
            raise _unknown_key(f"{prefix}{k}")
    return cls(**mapping)


def _set_in(tree: dict, key: str, value: Any, where: str = "") -> None:
    """Set dotted `key` in the nested dict `tree` (a Config.to_dict() layout), checking it exists."""
    parts = key.split(".")
    node: dict = tree
    cls: type = Config
    for i, part in enumerate(parts):
        types = _field_types(cls)
        if part not in types:
            raise _unknown_key(key, where)
        tp = types[part]
        last = i == len(parts) - 1
        if _is_section(tp):
            if last:
                if not isinstance(value, dict):
                    raise ConfigError(f"config key '{key}'{where} is a section; set its keys "
                                      f"({', '.join(k for k in _all_keys() if k.startswith(key + '.'))}) "
                                      f"or give a mapping, not {value!r}")
                for sub, subvalue in value.items():
                    _set_in(tree, f"{key}.{sub}", subvalue, where)
                return
            node = node.setdefault(part, {})
            cls = tp
        elif not last:
            raise _unknown_key(key, where)
        else:
            node[part] = value


def _parse_override(text: str) -> tuple[str, Any]:
    import yaml

    if not isinstance(text, str) or "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value (e.g. temperature=0.1)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r} has no key; expected key=value")
    types = _leaf_type(key)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw.strip()
    # strings keep the text as typed ("out=0x10" is a directory name, not 16)
    if types is not None and _base_type(types) is str and not isinstance(value, str) and raw.strip():
        if not (value is None and _is_optional(types)):
            value = raw.strip()
    return key, value


def _leaf_type(key: str) -> Any:
    cls: Any = Config
    for part in key.split("."):
        if not _is_section(cls):
            return None
        types = _field_types(cls)
        if part not in types:
            return None
        cls = types[part]
    return None if _is_section(cls) else cls


def _is_optional(tp: Any) -> bool:
    return typing.get_origin(tp) is typing.Union and type(None) in typing.get_args(tp)


def _base_type(tp: Any) -> Any:
    if _is_optional(tp):
        return [a for a in typing.get_args(tp) if a is not type(None)][0]
    return tp


def apply_overrides(config: Config, overrides: Iterable[str] = (), mapping: dict | None = None,
                    where: str = "") -> Config:
    """A new, validated Config: `config` with the keys of `mapping` (nested dict, e.g. from YAML) and then
    the `key=value` strings of `overrides` applied."""
    tree = config.to_dict()
    if mapping:
        for key, value in mapping.items():
            if not isinstance(key, str):
                raise ConfigError(f"config key {key!r}{where} must be a string")
            _set_in(tree, key, value, where)
    if isinstance(overrides, str):
        overrides = [overrides]
    for text in overrides:
        key, value = _parse_override(text)
        _set_in(tree, key, value)
    return Config(**tree)


def load_config(path: str | os.PathLike | None = None, overrides: Iterable[str] = ()) -> Config:
    """The defaults, updated by the YAML file at `path` (if given; a mapping, nested for sections, dotted
    keys also accepted) and then by the `key=value` overrides in order. Raises ConfigError naming the key
    for an unknown key or a bad value, FileNotFoundError for a missing file."""
    mapping: dict = {}
    where = ""
    if path is not None:
        import yaml

        path = Path(path)
        where = f" in {path}"
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise FileNotFoundError(f"config file not found: {path}") from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping of keys to values, got {type(loaded).__name__}")
        mapping = loaded
    return apply_overrides(Config(), overrides, mapping, where)


def describe() -> str:
    """Help text: every key (dotted for sections) with its type, default, choices and meaning."""
    lines = []

    def walk(cls: type, prefix: str, defaults: Any) -> None:
        types = _field_types(cls)
        for f in dataclasses.fields(cls):
            tp = types[f.name]
            if _is_section(tp):
                walk(tp, f"{prefix}{f.name}.", getattr(defaults, f.name))
                continue
            default = getattr(defaults, f.name)
            if isinstance(default, tuple):
                default = list(default)
            shown = "null" if default is None else (
                "[" + ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in default) + "]"
                if isinstance(default, list) else (str(default).lower() if isinstance(default, bool) else str(default)))
            head = f"  {prefix}{f.name} ({_type_name(tp)}, default {shown})"
            choices = f.metadata.get("choices")
            text = f.metadata.get("help", "")
            if choices:
                text += f" [choices: {', '.join(choices)}]"
            lines.append(head)
            lines.append(f"      {text}")

    walk(Config, "", Config())
    return "configuration keys (set with --set key=value; nested keys are dotted):\n" + "\n".join(lines)
