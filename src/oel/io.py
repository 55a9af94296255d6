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


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` via a temp file in the same directory + fsync + rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_text_file(path: str | os.PathLike, what: str, *, allow_empty: bool = False) -> str:
    """A stripped text file (a knowledge text, say); missing or empty -> DataError naming it."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{path}: {what} not found")
    text = p.read_text(encoding="utf-8").strip()
    if not text and not allow_empty:
        raise DataError(f"{path}: {what} is empty")
    return text


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    """A JSON file oel wrote (a marker, a key, a result); unreadable or invalid -> DataError naming it."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not a valid {what} ({e})") from None


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def append_jsonl(path: str | os.PathLike, record: dict[str, Any]) -> None:
    """Append one record as one line, in a single write, then fsync.

    One `write` of a line shorter than the pipe buffer is not split by the OS, and the
    fsync makes a completed append durable before the caller moves on.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(record, ensure_ascii=False) + "\n"
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def repair_jsonl_tail(path: str | os.PathLike) -> bool:
    """Cut a torn final line (no trailing newline) left by a killed writer.

    Returns True if something was cut. Only the bytes after the last newline go; every
    complete line stays untouched.
    """
    path = Path(path)
    if not path.exists():
        return False
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return False
    keep = data[: data.rfind(b"\n") + 1]
    atomic_write_bytes(path, keep)
    return True


def iter_jsonl(path: str | os.PathLike, *, complete_lines_only: bool = False) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line_number, object) for each non-blank line; bad JSON -> DataError `file:line`.

    `complete_lines_only`: stop at a last line without its newline (a file another process
    may be appending to, or a torn tail) instead of parsing it.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if complete_lines_only and not line.endswith("\n"):
                break
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
