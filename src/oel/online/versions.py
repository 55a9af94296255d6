"""Published model versions of the online mode, and the `current` pointer the serving side follows.

    VERSIONS_DIR/
      current.json          {"version": int, "model_dir": str, "published": float}: what to serve
      history.jsonl         append-only: every publish, rollback and retention deletion
      v0000/version.json    version 0 = the base model (not copied; see below)
      v0000/_complete.json
      v0001/model/          a complete Hugging Face directory (hard links to the round's output, or copies)
      v0001/version.json    version, round, parent, metrics, gate verdict, created
      v0001/_complete.json  written last: the version is complete

Privacy: a version is a model trained on users' conversations, so the directory and everything
written here are its owner's only (folders 0700, files 0600), like the store; the serving side
must run as the same user.

The contract with the gateway: `current.json` is only ever written with `oel.io.atomic_write_json`
(a rename), and only after the version it names has its `_complete.json`, so a reader polling it
never sees a half-written file or a half-written model. `model_dir` is an absolute path, except
for version 0 when the base model is a preset or hub name: then it is that name, which
`oel.models.load_model` resolves the same way everywhere.

Publishing is idempotent per round: a round that is re-published (a scheduler killed between
publishing and finishing its round) gets back the version it already made. One process publishes
(the scheduler); `oel online rollback` may run beside it, since both only rename files.

Retention (`keep_last` N > 0): after a publish, complete versions beyond the N newest are deleted,
except version 0 (the base, which owns no files) and the current version (which may be an old one
after a rollback). History keeps naming deleted versions -- it is a log, not a reference count --
and a rollback to a deleted version is refused in one line.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from oel.errors import ConfigError, DataError
from oel.io import (
    PRIVATE_DIR_MODE,
    append_jsonl,
    atomic_write_json,
    iter_jsonl,
    make_dirs,
    read_json,
    repair_jsonl_tail,
)
from oel.layout import MARKER

CURRENT_FILE = "current.json"
HISTORY_FILE = "history.jsonl"
VERSION_FILE = "version.json"
VERSION_MODEL_DIR = "model"
VERSION_DIGITS = 4
BASE_VERSION = 0


def version_name(version: int) -> str:
    """`v0003`: zero-padded so that a directory listing is in version order."""
    return f"v{version:0{VERSION_DIGITS}d}"


def _parse_version_name(name: str) -> int | None:
    digits = name[1:]
    return int(digits) if name.startswith("v") and digits.isdigit() and len(digits) >= VERSION_DIGITS else None


def _link_or_copy(src: str, dst: str) -> None:
    """A hard link costs no disk; a copy where links cannot cross (another file system)."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _private_dirs(root: Path) -> None:
    """The copied model's folders 0700, as every folder here (copytree gives them the source's mode;
    hard-linked files keep theirs, which only the owner can now reach)."""
    for folder in (root, *(p for p in root.rglob("*") if p.is_dir())):
        folder.chmod(PRIVATE_DIR_MODE)


@dataclass(frozen=True)
class Version:
    """One complete published version, as its version.json records it."""

    version: int
    model_dir: str
    round: int | None
    parent: int | None
    metrics: dict[str, Any]
    verdict: dict[str, Any]
    created: float

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "model_dir": self.model_dir, "round": self.round, "parent": self.parent,
                "metrics": self.metrics, "verdict": self.verdict, "created": self.created}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Version:
        return cls(int(data["version"]), str(data["model_dir"]), data.get("round"), data.get("parent"),
                   dict(data.get("metrics") or {}), dict(data.get("verdict") or {}), float(data["created"]))


class Versions:
    """The versions directory: publish, read `current`, list, roll back, apply retention."""

    def __init__(self, directory: str | os.PathLike, *, keep_last: int = 0) -> None:
        if not isinstance(keep_last, int) or keep_last < 0:
            raise ConfigError(f"versions.keep_last: expected an integer >= 0 (0 = keep all), got {keep_last!r}")
        self.dir = Path(directory).absolute()
        self.keep_last = keep_last

    # ---- paths -------------------------------------------------------------------------------

    @property
    def current_file(self) -> Path:
        return self.dir / CURRENT_FILE

    @property
    def history_file(self) -> Path:
        return self.dir / HISTORY_FILE

    def version_dir(self, version: int) -> Path:
        return self.dir / version_name(version)

    def _is_complete(self, version: int) -> bool:
        return (self.version_dir(version) / MARKER).is_file()

    # ---- reading -----------------------------------------------------------------------------

    def get(self, version: int) -> Version:
        """A complete version; an incomplete or deleted one is a one-line error."""
        if not self._is_complete(version):
            raise DataError(f"{self.version_dir(version)}: version {version} does not exist (never completed, "
                            "or deleted by retention)")
        return Version.from_dict(read_json(self.version_dir(version) / VERSION_FILE, "version file"))

    def list(self) -> list[Version]:
        """Every complete version, oldest first."""
        if not self.dir.is_dir():
            return []
        numbers = sorted(n for p in self.dir.iterdir() if p.is_dir() and (n := _parse_version_name(p.name)) is not None)
        return [self.get(n) for n in numbers if self._is_complete(n)]

    def current(self) -> Version:
        """The version current.json names; before any (no base initialised) a one-line error."""
        if not self.current_file.is_file():
            raise DataError(f"{self.current_file}: no current version yet (the scheduler writes version 0 when "
                            "it starts)")
        return self.get(int(read_json(self.current_file, "current pointer")["version"]))

    def history(self) -> list[dict[str, Any]]:
        if not self.history_file.is_file():
            return []
        return [row for _, row in iter_jsonl(self.history_file, complete_lines_only=True)]

    def for_round(self, round: int) -> Version | None:
        """The version a round already published (idempotent re-publish), if any."""
        return next((v for v in self.list() if v.round == round), None)

    # ---- writing -----------------------------------------------------------------------------

    def ensure_base(self, base_model: str) -> Version:
        """Version 0 = the base model, made current when there is no current version yet."""
        if not self._is_complete(BASE_VERSION):
            path = Path(base_model)
            model_dir = str(path.absolute()) if path.exists() else base_model
            self._write_version(Version(BASE_VERSION, model_dir, None, None, {}, {}, time.time()))
        if not self.current_file.is_file():
            self._point_current(BASE_VERSION, event="base")
        return self.get(BASE_VERSION)

    def publish(self, model_dir: str | os.PathLike, round: int, metrics: dict[str, Any] | None = None,
                verdict: dict[str, Any] | None = None, *, parent: int | None = None) -> Version:
        """Copy (hard-link) a complete model dir in as the next version and make it current.

        Idempotent per round: the round's existing version is returned (and made current if a
        crash stopped between completing it and moving the pointer)."""
        existing = self.for_round(round)
        if existing is not None:
            if self._history_has_publish(existing.version):
                return existing
            self._point_current(existing.version, event="publish", round=round)
            return existing
        src = Path(model_dir)
        if not (src / "config.json").is_file():
            raise DataError(f"{src}: not a complete Hugging Face model directory (no config.json); nothing published")
        self._remove_incomplete()
        number = max((v.version for v in self.list()), default=BASE_VERSION) + 1
        vdir = self.version_dir(number)
        make_dirs(vdir, private=True)
        shutil.copytree(src, vdir / VERSION_MODEL_DIR, copy_function=_link_or_copy)
        _private_dirs(vdir / VERSION_MODEL_DIR)
        if parent is None:
            parent = self.current().version if self.current_file.is_file() else None
        version = Version(number, str(vdir / VERSION_MODEL_DIR), round, parent, dict(metrics or {}),
                          dict(verdict or {}), time.time())
        self._write_version(version)
        self._point_current(number, event="publish", round=round)
        self.apply_retention()
        return version

    def rollback(self, version: int) -> Version:
        """Point current at an earlier complete version (recorded in history.jsonl)."""
        target = self.get(version)
        before = self.current().version
        if version >= before:
            raise DataError(f"rollback: version {version} is not earlier than the current version {before}")
        self._point_current(version, event="rollback", previous=before)
        return target

    def restore(self, version: int) -> Version:
        """Point current at a LATER complete version: undo a rollback (recorded in history.jsonl).
        Separate from `rollback` so that neither can move the served model the other way by a typo."""
        target = self.get(version)
        before = self.current().version
        if version <= before:
            raise DataError(f"restore: version {version} is not later than the current version {before} "
                            "(use rollback to go back)")
        self._point_current(version, event="restore", previous=before)
        return target

    def apply_retention(self) -> list[int]:
        """Delete complete versions beyond the `keep_last` newest (never 0, never current); returns them."""
        if self.keep_last == 0:
            return []
        current = self.current().version
        published = [v.version for v in self.list() if v.version != BASE_VERSION]
        doomed = [n for n in published[:-self.keep_last] if n != current]
        for n in doomed:
            self._delete(n)
        return doomed

    def _delete(self, version: int) -> None:
        """The marker goes first, so a kill mid-deletion leaves an incomplete dir, never a broken 'complete' one."""
        vdir = self.version_dir(version)
        (vdir / MARKER).unlink()
        shutil.rmtree(vdir)
        self._append_history({"event": "delete", "version": version, "time": time.time()})

    def _remove_incomplete(self) -> None:
        """Left by a kill mid-publish: nothing ever pointed at them."""
        if not self.dir.is_dir():
            return
        for p in self.dir.iterdir():
            n = _parse_version_name(p.name)
            if p.is_dir() and n is not None and not self._is_complete(n):
                shutil.rmtree(p)

    def _write_version(self, version: Version) -> None:
        vdir = self.version_dir(version.version)
        make_dirs(vdir, private=True)
        atomic_write_json(vdir / VERSION_FILE, version.to_dict(), private=True)
        atomic_write_json(vdir / MARKER, {"version": version.version, "complete": True}, private=True)

    def _point_current(self, version: int, *, event: str, **extra: Any) -> None:
        """The only writer of current.json: an atomic rename, after the version is complete."""
        target = self.get(version)
        now = time.time()
        atomic_write_json(self.current_file, {"version": version, "model_dir": target.model_dir, "published": now},
                          private=True)
        self._append_history({"event": event, "version": version, "time": now, **extra})

    def _append_history(self, row: dict[str, Any]) -> None:
        """A torn last line (a kill mid-append) is cut first, so it never swallows the next row."""
        repair_jsonl_tail(self.history_file, private=True)
        append_jsonl(self.history_file, row, private=True)

    def _history_has_publish(self, version: int) -> bool:
        return any(row.get("event") == "publish" and row.get("version") == version for row in self.history())
