"""Provenance: what a result was made from, and refusing to mix results of different inputs.

One primitive serves every stage that resumes or reuses work (the loop's run dir and
`reuse_from`, the trainer's checkpoints, the experience store's manifest, the evaluation and
curve directories): a *key* is plain JSON data naming the inputs that matter; two keys are
compared with `diff_keys`, which names the dotted keys that differ; a directory holds the key
it was made with (`claim_dir`), and a result is loaded only if its key is the same
(`load_result`). Mixing episodes or steps of two settings into one number is the failure this
guards against.

* result present with the same key -> return it, do nothing (idempotent);
* partial results with the same key -> resume (the caller appends as it goes);
* anything made with another key -> refuse, naming the keys that differ, unless `overwrite`,
  which deletes the old files first.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from oel.errors import ConfigError
from oel.io import atomic_write_json, read_json


def plain(value: Any) -> Any:
    """`value` as it reads back from JSON (tuples become lists), so that comparisons are fair."""
    return json.loads(json.dumps(value))


def texts_digest(texts: Sequence[str]) -> str:
    """A content key for a list of texts (knowledge, prompts): sha256 over the NUL-joined texts."""
    return hashlib.sha256("\0".join(texts).encode()).hexdigest()


def diff_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted names of the entries that differ between two JSON-like values, sorted."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for k in sorted(set(old) | set(new), key=str):
            out += diff_keys(old.get(k), new.get(k), f"{prefix}{k}.")
        return out
    return [] if old == new else [prefix.rstrip(".") or "(value)"]


def with_new_defaults(saved: Any, defaults: Any) -> Any:
    """A saved config with the keys it lacks filled in from today's defaults, recursively.

    A config written before a key existed ran with what that key's default does (a new field
    defaults to the old behaviour), so a run made then still resumes, and its stages are still
    reused, instead of differing in every key added since."""
    if not (isinstance(saved, dict) and isinstance(defaults, dict)):
        return saved
    return {**defaults, **{k: with_new_defaults(v, defaults.get(k)) for k, v in saved.items()}}


def without_removed_keys(saved: Any, defaults: Any) -> Any:
    """A saved config without the keys today's schema no longer has, recursively: the symmetric
    rule to `with_new_defaults`.

    A key leaves a config when what it said moved elsewhere (the stage configs' run plumbing --
    paths, the model, seeds -- became arguments of the stage functions), and a config could only
    hold it at a value the code at the time required, so a run saved with it still resumes, and
    its stages are still reused, instead of differing in every key removed since. Only mappings
    both sides have are walked (a config has no free-form mapping fields)."""
    if not (isinstance(saved, dict) and isinstance(defaults, dict)):
        return saved
    return {k: without_removed_keys(v, defaults[k]) for k, v in saved.items() if k in defaults}


def as_today(saved: Any, defaults: Any) -> Any:
    """A saved config in today's schema: removed keys dropped, new keys at today's defaults."""
    return with_new_defaults(without_removed_keys(saved, defaults), defaults)


def select(data: dict[str, Any], keys: Iterable[str]) -> dict[str, Any]:
    """The entries of `data` at the given dotted keys (`section` or `section.field`), nested as
    in `data`; keys that `data` lacks are left out."""
    out: dict[str, Any] = {}
    for key in keys:
        node: Any = data
        parts = key.split(".")
        for part in parts:
            if not isinstance(node, dict) or part not in node:
                break
            node = node[part]
        else:
            target = out
            for part in parts[:-1]:
                target = target.setdefault(part, {})
            target[parts[-1]] = node
    return out


def refuse_if_different(saved: Any, now: Any, *, where: str, hint: str, ignore: Iterable[str] = (),
                        error: type[Exception] = ConfigError) -> None:
    """Raise `error` naming every differing dotted key (and both values, for a single one)."""
    skip = set(ignore)
    differing = [k for k in diff_keys(plain(saved), plain(now)) if k.split(".")[0] not in skip]
    if not differing:
        return
    if len(differing) == 1:
        key = differing[0]
        detail = f"{key}={_at(saved, key)!r}, now {key}={_at(now, key)!r}"
    else:
        detail = f"differing: {', '.join(differing)}"
    raise error(f"{where}: made with other settings ({detail}); {hint}")


def _at(data: Any, key: str) -> Any:
    for part in key.split("."):
        if not isinstance(data, dict):
            return None
        data = data.get(part)
    return data


def read_key(path: Path) -> Any:
    return read_json(path, "provenance key or result")


def load_result(path: Path, key: dict[str, Any]) -> dict[str, Any] | None:
    """The saved result at `path` if it exists and was made with `key`; else None."""
    if not path.exists():
        return None
    data = read_key(path)
    return data if isinstance(data, dict) and data.get("key") == plain(key) else None


def claim_dir(key_path: Path, key: dict[str, Any], outputs: Iterable[Path], *, overwrite: bool) -> None:
    """Make `key_path` hold `key`, refusing if `outputs` already hold results of another key.

    Outputs without a key file are of unknown provenance and are refused too. With
    `overwrite`, stale outputs are deleted before the new key is written.
    """
    existing = [p for p in outputs if p.exists()]
    old = read_key(key_path) if key_path.exists() else None
    if old == plain(key):
        return
    if existing or old is not None:
        if not overwrite:
            differing = diff_keys(old, plain(key)) if old is not None else ["(no key file)"]
            raise ConfigError(f"{key_path.parent}: holds results made with other settings "
                              f"(differing: {', '.join(differing)}); use another directory or overwrite=true")
        for p in existing:
            p.unlink()
    atomic_write_json(key_path, key)
