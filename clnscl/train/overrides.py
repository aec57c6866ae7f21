"""Typed settings from YAML and `key=value` overrides: the generic engine behind the trainer's `Config`.

A settings class is a dataclass whose fields are made with `setting(default, help, choices)`; a field whose
type is itself a dataclass is a section, its keys dotted (`augment.crop_scale`). Values are coerced to the
field's type on construction (`coerce_fields`): YAML scalars or lists (`[cl, nscl]`, or a comma-separated
`cl,nscl`), `1e-3` a float even though YAML 1.1 reads it as a string, `null` or `none` clearing an optional key.
Every mistake raises `ConfigError` (a ValueError) naming the key, with a did-you-mean for unknown keys.
A section whose class has `PRESETS` and a key `preset`: setting `preset` clears the section's other keys (its
constructor fills them from the preset), and keys set after it change it.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import os
import typing
from dataclasses import field
from pathlib import Path
from typing import Any, Iterable

from ..checks import in_range, range_rule


class ConfigError(ValueError):
    """A bad configuration key or value; the message names the key."""


def setting(default: Any, help: str, choices: Iterable[str] | None = None, **kw: Any) -> Any:
    """A dataclass field with its help text (and the strings it may take)."""
    meta = {"help": help}
    if choices is not None:
        meta["choices"] = tuple(choices)
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta, **kw)
    return field(default=default, metadata=meta, **kw)


# ------------------------------------------------------------------------------------------- coercion
def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def is_section(tp: Any) -> bool:
    return dataclasses.is_dataclass(tp) and isinstance(tp, type)


def _is_optional(tp: Any) -> bool:
    return typing.get_origin(tp) is typing.Union and type(None) in typing.get_args(tp)


def _base_type(tp: Any) -> Any:
    if _is_optional(tp):
        return [a for a in typing.get_args(tp) if a is not type(None)][0]
    return tp


def _type_name(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if _is_optional(tp):
        return f"{_type_name(_base_type(tp))} or null"
    if origin is list:
        return f"list of {_type_name(args[0])}"
    if origin is tuple:
        return f"{len(args)} × {_type_name(args[0])}"
    return getattr(tp, "__name__", str(tp))


def _bad(key: str, value: Any, expected: str) -> ConfigError:
    return ConfigError(f"config key '{key}': invalid value {value!r}; expected {expected}")


def _coerce(key: str, value: Any, tp: Any, choices: tuple[str, ...] | None = None) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if _is_optional(tp):
        if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null", "~")):
            return None
        return _coerce(key, value, _base_type(tp), choices)
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


def coerce_fields(obj: Any, prefix: str) -> None:
    """Coerce every (non-section) field of the settings object `obj` to its type; keys named `prefix + name`."""
    types = _field_types(type(obj))
    for f in dataclasses.fields(obj):
        if is_section(types[f.name]):
            continue
        value = _coerce(prefix + f.name, getattr(obj, f.name), types[f.name], f.metadata.get("choices"))
        setattr(obj, f.name, value)


def check_min(key: str, value: int, lo: int) -> None:
    if value < lo:
        raise ConfigError(f"config key '{key}': invalid value {value!r}; must be >= {lo}")


def check_range(key: str, value: float, lo: float | None, hi: float | None, *, lo_open: bool = False,
                hi_open: bool = False) -> None:
    if not in_range(value, lo, hi, lo_open, hi_open):
        raise ConfigError(f"config key '{key}': invalid value {value!r}; must be {range_rule(lo, hi, lo_open, hi_open)}")


# ------------------------------------------------------------------------------------ keys, overrides
def all_keys(cls: type, prefix: str = "") -> list[str]:
    """Every key of the settings class, sections' keys dotted."""
    keys = []
    types = _field_types(cls)
    for f in dataclasses.fields(cls):
        if is_section(types[f.name]):
            keys.extend(all_keys(types[f.name], f"{prefix}{f.name}."))
        else:
            keys.append(prefix + f.name)
    return keys


def unknown_key(root: type, key: str, where: str = "") -> ConfigError:
    valid = all_keys(root)
    guesses = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    if not guesses:  # a leaf name without its section, or a section name alone
        leaf = key.rsplit(".", 1)[-1]
        by_leaf = {k.rsplit(".", 1)[-1]: k for k in valid}
        close = difflib.get_close_matches(leaf, list(by_leaf), n=1, cutoff=0.6)
        guesses = [by_leaf[close[0]]] if close else []
    hint = f" (did you mean '{guesses[0]}'?)" if guesses else ""
    return ConfigError(f"unknown config key '{key}'{where}{hint}; valid keys: {', '.join(valid)}")


def section_from_dict(root: type, cls: type, mapping: dict, prefix: str) -> Any:
    """The section `cls` of the settings class `root` built from a mapping of its keys."""
    names = {f.name for f in dataclasses.fields(cls)}
    for k in mapping:
        if k not in names:
            raise unknown_key(root, f"{prefix}{k}")
    return cls(**mapping)


def _set_in(root: type, tree: dict, key: str, value: Any, where: str = "") -> None:
    """Set dotted `key` in the nested dict `tree` (the layout of `to_dict()`), checking it exists."""
    parts = key.split(".")
    node: dict = tree
    cls: type = root
    for i, part in enumerate(parts):
        types = _field_types(cls)
        if part not in types:
            raise unknown_key(root, key, where)
        tp = types[part]
        last = i == len(parts) - 1
        if is_section(tp):
            if last:
                if not isinstance(value, dict):
                    raise ConfigError(f"config key '{key}'{where} is a section; set its keys "
                                      f"({', '.join(k for k in all_keys(root) if k.startswith(key + '.'))}) "
                                      f"or give a mapping, not {value!r}")
                for sub in sorted(value, key=lambda k: k != "preset"):  # a preset first: the other keys change it
                    _set_in(root, tree, f"{key}.{sub}", value[sub], where)
                return
            node = node.setdefault(part, {})
            cls = tp
        elif not last:
            raise unknown_key(root, key, where)
        else:
            if part == "preset" and hasattr(cls, "PRESETS"):
                node.clear()  # a section's preset resets its keys to the preset's values
            node[part] = value


def _leaf_type(root: type, key: str) -> Any:
    cls: Any = root
    for part in key.split("."):
        if not is_section(cls):
            return None
        types = _field_types(cls)
        if part not in types:
            return None
        cls = types[part]
    return None if is_section(cls) else cls


def _parse_override(root: type, text: str) -> tuple[str, Any]:
    import yaml

    if not isinstance(text, str) or "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value (e.g. temperature=0.1)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r} has no key; expected key=value")
    tp = _leaf_type(root, key)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw.strip()
    # strings keep the text as typed ("out=0x10" is a directory name, not 16)
    if tp is not None and _base_type(tp) is str and not isinstance(value, str) and raw.strip():
        if not (value is None and _is_optional(tp)):
            value = raw.strip()
    return key, value


def apply_overrides(config: Any, overrides: Iterable[str] = (), mapping: dict | None = None, where: str = "") -> Any:
    """A new, validated settings object: `config` with the keys of `mapping` (nested dict, e.g. from YAML;
    dotted keys too) and then the `key=value` strings of `overrides` applied."""
    root = type(config)
    tree = config.to_dict()
    if mapping:
        for key, value in mapping.items():
            if not isinstance(key, str):
                raise ConfigError(f"config key {key!r}{where} must be a string")
            _set_in(root, tree, key, value, where)
    if isinstance(overrides, str):
        overrides = [overrides]
    for text in overrides:
        key, value = _parse_override(root, text)
        _set_in(root, tree, key, value)
    return root(**tree)


def load(root: type, path: str | os.PathLike | None = None, overrides: Iterable[str] = ()) -> Any:
    """The defaults of `root`, updated by the YAML file at `path` (if given) and then by the overrides in order.
    ConfigError naming the key for an unknown key or a bad value, FileNotFoundError for a missing file."""
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
    return apply_overrides(root(), overrides, mapping, where)


def describe(root: type) -> str:
    """Help text: every key (dotted for sections) with its type, default, choices and meaning."""
    lines = []

    def walk(cls: type, prefix: str, defaults: Any) -> None:
        types = _field_types(cls)
        for f in dataclasses.fields(cls):
            tp = types[f.name]
            if is_section(tp):
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

    walk(root, "", root())
    return "configuration keys (set with --set key=value; nested keys are dotted):\n" + "\n".join(lines)
