"""Crash-safe file primitives: atomic whole-file writes and append-only JSONL.

Every artifact oel writes goes through here, so that a process killed at any instant
leaves either the old file or the new one (atomic writes), or a JSONL file whose
complete lines are all valid (appends). A torn final line -- the only damage a kill
can do to an append -- is cut off by :func:`repair_jsonl_tail` before resuming.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from oel.errors import DataError

T = TypeVar("T")


def _default_file_mode() -> int:
    """rw for whoever the umask allows: mkstemp's own 0600 would hide results from other users."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


FILE_MODE = _default_file_mode()
PRIVATE_FILE_MODE = 0o600
PRIVATE_DIR_MODE = 0o700
"""Files holding users' conversations (the online store, its exports, round trajectories) and the
directories created for them: readable by their owner only, whatever the umask."""


def make_dirs(path: str | os.PathLike, *, private: bool = False) -> Path:
    """mkdir -p; the directories it creates get PRIVATE_DIR_MODE when `private` (existing ones are left)."""
    p = Path(path)
    missing = [q for q in (p, *p.parents) if not q.exists()]
    for q in reversed(missing):
        try:
            q.mkdir(mode=PRIVATE_DIR_MODE if private else 0o777)
        except FileExistsError:
            pass
        except OSError as e:
            raise DataError(f"{q}: cannot create the directory ({e.strerror})") from None
    return p


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, private: bool = False) -> None:
    """Write `data` to `path` via a temp file in the same directory + fsync + rename.

    `private`: the file is created PRIVATE_FILE_MODE (0600) and new folders 0700 (conversations)."""
    path = _writable(path, private=private)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise DataError(f"{path}: cannot write here ({e.strerror})") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, PRIVATE_FILE_MODE if private else FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_writable_file(path: str | os.PathLike, what: str = "output file") -> Path:
    """Refuse an output file path that cannot become a file, before anything is written.

    A directory AT the path, or a file where one of its folders should be, is a one-line
    DataError; nothing is created, so a refused command leaves nothing behind.
    """
    p = Path(path)
    if p.is_dir():
        raise DataError(f"{p}: is a directory, expected a path for the {what}")
    for q in p.parents:
        if q.exists():
            if not q.is_dir():
                raise DataError(f"{p}: sits under {q}, which is a file; expected a path for the {what}")
            _probe_writable(q, p, what)
            break
    return p


def check_writable_dir(path: str | os.PathLike, what: str = "output directory") -> Path:
    """Refuse an output directory that is a file (or sits under one), without creating it."""
    p = Path(path)
    for q in (p, *p.parents):
        if q.exists():
            if not q.is_dir():
                where = "is a file" if q == p else f"sits under {q}, which is a file"
                raise DataError(f"{p}: {where}; expected the {what} to be a directory")
            _probe_writable(q, p, what)
            break
    return p


def _probe_writable(folder: Path, target: Path, what: str) -> None:
    """Create and remove a temporary file in `folder`, the nearest existing folder of `target`.

    os.access answers for permission bits only: it says yes to root on a read-only bind mount or
    sysfs and on folders ACLs deny. Trying is the only answer that holds, and it costs one create
    and one unlink, so a command refuses an unwritable output before it loads a model.
    """
    try:
        fd, tmp = tempfile.mkstemp(prefix=".oel-write-check.", dir=folder)
    except OSError as e:
        raise DataError(f"{folder}: cannot create the {what} {target} here ({e.strerror or e})") from None
    os.close(fd)
    os.unlink(tmp)


def _writable(path: str | os.PathLike, *, private: bool = False) -> Path:
    """`path` checked as an output file (see `check_writable_file`), its folder made."""
    p = check_writable_file(path)
    make_dirs(p.parent, private=private)
    return p


def read_bytes(path: str | os.PathLike, what: str = "file") -> bytes:
    """The bytes of a file the user named; every way of not being one -> a one-line DataError."""
    p = Path(path)
    try:
        return p.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{p}: {what} not found") from None
    except IsADirectoryError:
        raise DataError(f"{p}: is a directory, expected {what}") from None
    except PermissionError:
        raise DataError(f"{p}: permission denied reading {what}") from None
    except OSError as e:
        raise DataError(f"{p}: cannot read {what} ({e.strerror})") from None


def decode_text(data: bytes, path: str | os.PathLike, what: str = "file", *, first_line: int = 1) -> str:
    """UTF-8 text (a BOM allowed); binary data or another encoding -> DataError at its line."""
    nul = data.find(b"\0")
    if nul >= 0:
        line = first_line + data.count(b"\n", 0, nul)
        raise DataError(f"{path}:{line}: binary data (a NUL byte), expected {what} as UTF-8 text")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = first_line + data.count(b"\n", 0, e.start)
        raise DataError(f"{path}:{line}: not UTF-8 text (byte 0x{data[e.start]:02x}), expected {what} "
                        "as UTF-8") from None


def read_text(path: str | os.PathLike, what: str = "file") -> str:
    """The whole text of a file: the one reader every file oel reads goes through."""
    return decode_text(read_bytes(path, what), path, what)


def read_text_file(path: str | os.PathLike, what: str, *, allow_empty: bool = False) -> str:
    """A stripped text file (a knowledge text, say); missing or empty -> DataError naming it."""
    text = read_text(path, what).strip()
    if not text and not allow_empty:
        raise DataError(f"{path}: {what} is empty")
    return text


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    """A JSON file oel wrote (a marker, a key, a result); unreadable or invalid -> DataError naming it."""
    try:
        return json.loads(read_text(path, what))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: not a valid {what} ({e.msg})") from None


def atomic_write_text(path: str | os.PathLike, text: str, *, private: bool = False) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), private=private)


def atomic_write_json(path: str | os.PathLike, obj: Any, *, private: bool = False) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n", private=private)


def append_jsonl(path: str | os.PathLike, record: dict[str, Any], *, private: bool = False) -> None:
    """Append one record as one line, in a single write, then fsync.

    One `write` of a line shorter than the pipe buffer is not split by the OS, and the
    fsync makes a completed append durable before the caller moves on. `private`: a new file
    is created PRIVATE_FILE_MODE (its new folders 0700).
    """
    path = _writable(path, private=private)
    line = json.dumps(record, ensure_ascii=False) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, PRIVATE_FILE_MODE if private else 0o666)
    with open(fd, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def repair_jsonl_tail(path: str | os.PathLike, *, private: bool = False) -> bool:
    """Cut a torn final line (no trailing newline) left by a killed writer.

    Returns True if something was cut. Only the bytes after the last newline go; every
    complete line stays untouched. `private`: the rewritten file is PRIVATE_FILE_MODE.
    """
    path = Path(path)
    if not path.exists():
        return False
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return False
    keep = data[: data.rfind(b"\n") + 1]
    atomic_write_bytes(path, keep, private=private)
    return True


def iter_jsonl(path: str | os.PathLike, *, complete_lines_only: bool = False) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line_number, object) for each non-blank line; bad JSON -> DataError `file:line`.

    `complete_lines_only`: stop at a last line without its newline (a file another process
    may be appending to, or a torn tail) instead of parsing it.
    """
    data = read_bytes(path, "JSONL file")
    for lineno, raw in enumerate(data.splitlines(keepends=True), start=1):
        if complete_lines_only and not raw.endswith(b"\n"):
            break
        line = decode_text(raw, path, "JSONL file", first_line=lineno)
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(obj, dict):
            raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
        yield lineno, obj


def read_jsonl(
    path: str | os.PathLike,
    parse: Callable[[dict[str, Any]], T],
    *,
    allow_empty: bool = False,
) -> list[T]:
    """Read and validate every line with `parse`; any error names `file:line`.

    `parse` raises ValueError/TypeError/KeyError (or pydantic's ValidationError, a
    ValueError) for a bad record; the message is prefixed with the location.
    """
    out: list[T] = []
    for lineno, obj in iter_jsonl(path):
        try:
            out.append(parse(obj))
        except (ValueError, TypeError, KeyError) as e:
            msg = " ".join(str(e).split())
            raise DataError(f"{path}:{lineno}: {msg}") from None
    if not out and not allow_empty:
        raise DataError(f"{path}:1: file is empty, expected at least one record")
    return out
