"""Strict construction of typed dataclass configs from YAML/dicts and ``key=value`` overrides.

Unknown keys and wrong types raise :class:`ConfigError` naming the key and the valid choices; nothing
is coerced silently except an int where a float is expected.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import types
import typing
from typing import Any, Literal, Union

import yaml


class ConfigError(ValueError):
    """A configuration value or key is invalid; the message names it and the fix."""


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, option, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(f"{key}: {value!r} fits none of {', '.join(_type_name(a) for a in args)}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return from_dict(tp, value, prefix=f"{key}.")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        item_type = args[0] if args else Any
        items = [_coerce(v, item_type, f"{key}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        value_type = args[1] if len(args) == 2 else Any
        return {str(k): _coerce(v, value_type, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported config type {_type_name(tp)}")


def _default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None


def _merged(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``update`` applied key by key, recursing where both sides are dicts."""
    merged = dict(base)
    for key, value in update.items():
        merged[key] = (_merged(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict)
                       else value)
    return merged


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass ``cls`` from ``data``; missing keys keep their defaults."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    removed = [key for key in unknown if key in getattr(cls, "REMOVED_KEYS", {})]
    if removed:
        raise ConfigError(f"config key '{prefix}{removed[0]}' was removed: {cls.REMOVED_KEYS[removed[0]]}; "
                          "delete it from your config")
    if unknown:
        raise ConfigError(
            f"unknown config key '{prefix}{unknown[0]}'; valid keys under "
            f"'{prefix.rstrip('.') or '<top level>'}': {', '.join(sorted(fields))}"
        )
    kwargs = {}
    for name, value in data.items():
        default = _default(fields[name])
        if isinstance(value, dict) and dataclasses.is_dataclass(default):
            # A partial section keeps the PARENT's defaults for this field (e.g. the tiny learning rate a
            # default_factory sets), not the nested class's own.
            value = _merged(dataclasses.asdict(default), value)
        kwargs[name] = _coerce(value, hints[name], f"{prefix}{name}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{prefix.rstrip('.') or cls.__name__}: {err}") from err


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` -> (['a','b','c'], parsed value); the value is read as YAML (1e-3, true, [1,2])."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key=value, for example cognate.train.lr=1e-3")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"--set {text!r}: the key is empty")
    try:
        value = yaml.load(raw, Loader=ConfigLoader) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {text!r}: cannot parse the value ({err})") from err
    return key.split("."), value


def apply_override(data: dict[str, Any], path: list[str], value: Any) -> None:
    node = data
    for part in path[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {'.'.join(path)}: '{part}' is not a section")
        node = child
    node[path[-1]] = value


class ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader reading numbers as YAML 1.2 (and JSON) do: ``1e-3`` is a float, not the string
    YAML 1.1 makes of an exponent without a dot. A run's config.json then reloads as ``--config``."""


ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[0-9][0-9_]*[eE][-+]?[0-9]+"
               r"|\.[0-9_]+(?:[eE][-+]?[0-9]+)?|\.(?:inf|Inf|INF))$|^\.(?:nan|NaN|NAN)$"),
    list("-+0123456789."))


def load_yaml(path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as handle:
        data = yaml.load(handle, Loader=ConfigLoader) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of config keys")
    return data


def config_hash(obj: Any) -> str:
    """Stable SHA-256 of a config (dataclass or plain data), for manifests and resume checks."""
    if dataclasses.is_dataclass(obj):
        obj = dataclasses.asdict(obj)
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()
