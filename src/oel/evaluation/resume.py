"""Idempotent, resumable evaluation directories: a key says what a directory's results were made with.

Every evaluation writes a key (model id, settings, prompt, knowledge hash, ...) before it
produces anything, and its result file carries the same key. On a rerun:

* result present with the same key -> return it, do nothing (idempotent);
* partial results with the same key -> resume (collection and IF-Eval append as they go);
* anything made with another key -> refuse, naming the keys that differ, unless `overwrite`,
  which deletes the old files first. Mixing episodes of two settings into one number is the
  failure this guards against.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from oel.errors import ConfigError, DataError
from oel.io import atomic_write_json


def diff_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted names of the entries that differ between two JSON-like values."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for k in sorted(set(old) | set(new), key=str):
            out += diff_keys(old.get(k), new.get(k), f"{prefix}{k}.")
        return out
    return [] if old == new else [prefix.rstrip(".") or "(value)"]


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: invalid JSON ({e.msg} at line {e.lineno})") from None


def _plain(key: dict[str, Any]) -> Any:
    """The key as it reads back from JSON (tuples become lists), so comparisons are fair."""
    return json.loads(json.dumps(key))


def load_result(path: Path, key: dict[str, Any]) -> dict[str, Any] | None:
    """The saved result at `path` if it exists and was made with `key`; else None."""
    if not path.exists():
        return None
    data = _read_json(path)
    return data if isinstance(data, dict) and data.get("key") == _plain(key) else None


def claim_dir(key_path: Path, key: dict[str, Any], outputs: Iterable[Path], *, overwrite: bool) -> None:
    """Make `key_path` hold `key`, refusing if `outputs` already hold results of another key.

    Outputs without a key file are of unknown provenance and are refused too. With
    `overwrite`, stale outputs are deleted before the new key is written.
    """
    existing = [p for p in outputs if p.exists()]
    old = _read_json(key_path) if key_path.exists() else None
    if old == _plain(key):
        return
    if existing or old is not None:
        if not overwrite:
            differing = diff_keys(old, _plain(key)) if old is not None else ["(no key file)"]
            raise ConfigError(f"{key_path.parent}: holds results made with other settings "
                              f"(differing: {', '.join(differing)}); use another directory or overwrite=true")
        for p in existing:
            p.unlink()
    atomic_write_json(key_path, key)
