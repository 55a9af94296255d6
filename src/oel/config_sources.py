"""Where a config's plain data comes from: YAML files (with their `base:` chain) and dotted overrides.

    load_config_data("configs/x.yaml", ["consolidate.lr=5e-6"])  ->  {"consolidate": {"lr": 5e-06, ...}, ...}

`oel.config` validates the result against a config class.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from oel.errors import ConfigError, DataError
from oel.io import read_text


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b.c=VALUE` -> (['a','b','c'], value parsed as YAML: 5e-6 -> float, true -> bool)."""
    if "=" not in text:
        raise ConfigError(f"{text}: an override must look like key.path=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not p for p in key.split(".")):
        raise ConfigError(f"{text}: empty key in override")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    # YAML 1.1 reads '5e-6' as a string; a user writing a number means a number.
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value.lower() for c in ".e") else value
        except ValueError:
            pass
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set each `a.b=VALUE` in `data` (nested mappings are created; a value cannot get children)."""
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for i, part in enumerate(path[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"{'.'.join(path[: i + 1])}: is a value, cannot set {'.'.join(path)}")
            node = child
        node[path[-1]] = value
    return data


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """A YAML file's top-level mapping; one-line ConfigErrors name the file (and line) otherwise."""
    path = Path(path)
    try:
        text = read_text(path, "config file")
    except DataError as e:
        raise ConfigError(str(e)) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{where}: invalid YAML ({getattr(e, 'problem', e)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys at the top level")
    return data


BASE_KEY = "base"
"""A config file may start from another: `base: ../frozenlake/fl-0.5b.yaml` (path relative to the file)."""


def deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """`top` over `base`, mapping by mapping (a key of `top` replaces a non-mapping of `base`)."""
    out = dict(base)
    for k, v in top.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_yaml_with_base(path: str | os.PathLike, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A YAML config with its `base:` chain merged underneath (the file's own keys win)."""
    path = Path(path).resolve()
    if path in _seen:
        raise ConfigError(f"{path}: `{BASE_KEY}` chain loops back to this file")
    data = load_yaml(path)
    base = data.pop(BASE_KEY, None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"{path}: {BASE_KEY}: expected a path to another YAML config, got {base!r}")
    return deep_merge(load_yaml_with_base(path.parent / base, (*_seen, path)), data)


def load_config_data(path: str | os.PathLike | None, overrides: list[str] | None = None) -> dict[str, Any]:
    """A YAML file (optional, with its `base:` chain) with the dotted overrides applied on top."""
    data = load_yaml_with_base(path) if path else {}
    return apply_overrides(data, list(overrides or []))
