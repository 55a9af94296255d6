"""Reading a log file record by record: JSONL streamed, or one pretty-printed JSON document.

Most tools write one JSON object per line; bucket loggers (LiteLLM's S3 / GCS loggers, exports
saved from an API) write one pretty-printed object, or a list of them, per file. The first
non-blank line decides: a line that is not JSON by itself, in a file that parses whole as JSON, is
such a document (read into memory; these files hold one or a few records).

A line that is not a JSON object is a bad record (`Bad`), reported with its line number and
skipped by the importer (or fatal with --strict); a last line that is cut off (no newline at the
end, not valid JSON) is reported as truncated: a log still being written.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from oel.errors import DataError
from oel.io import decode_text

WHAT = "log file"
DOCUMENT_MAX_BYTES = 256 * 2**20
"""A pretty-printed log larger than this is refused: it would be read whole (JSONL streams)."""


@dataclass(frozen=True)
class Bad:
    """A line that is no record: why, in one line."""

    why: str


class LogSource:
    """A log file's records as (line number, key, object or Bad); `at(key)` reads one again (pass 2)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.document: list[Any] | None = None
        self.kind = "JSONL"
        self._reader: Any = None
        try:
            with self.path.open("rb") as f:
                head = f.read(1 << 16)
        except FileNotFoundError:
            raise DataError(f"{self.path}: {WHAT} not found") from None
        except IsADirectoryError:
            raise DataError(f"{self.path}: is a directory, expected a {WHAT}") from None
        except OSError as e:
            raise DataError(f"{self.path}: cannot read {WHAT} ({e.strerror})") from None
        first = next((line for line in head.splitlines() if line.strip()), b"").strip()
        if first[:1] in (b"{", b"[") and not _parses(first):
            self._try_document()

    def _try_document(self) -> None:
        if self.path.stat().st_size > DOCUMENT_MAX_BYTES:
            return
        try:
            whole = json.loads(decode_text(self.path.read_bytes(), self.path, WHAT))
        except ValueError:
            return
        self.document = whole if isinstance(whole, list) else [whole]
        self.kind = "one pretty-printed JSON document"

    def records(self) -> Iterator[tuple[int, int, dict[str, Any] | Bad | None]]:
        """(line number, key, record / Bad / None for a blank line)."""
        if self.document is not None:
            for i, obj in enumerate(self.document):
                yield 1, i, obj if isinstance(obj, dict) else Bad(f"expected a JSON object, got {type(obj).__name__}")
            return
        with self.path.open("rb") as f:
            offset = 0
            for lineno, raw in enumerate(f, start=1):
                yield lineno, offset, parse(self.path, lineno, raw)
                offset += len(raw)

    def at(self, key: int, lineno: int) -> dict[str, Any]:
        """The record at `key` again (pass 2), through one file handle kept open until `close`."""
        if self.document is not None:
            return self.document[key]
        if self._reader is None:
            self._reader = self.path.open("rb")
        self._reader.seek(key)
        obj = parse(self.path, lineno, self._reader.readline())
        if not isinstance(obj, dict):
            raise DataError(f"{self.path}:{lineno}: the record changed while it was imported")
        return obj


    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None


def _parses(line: bytes) -> bool:
    try:
        json.loads(line)
    except ValueError:
        return False
    return True


def parse(path: Path, lineno: int, raw: bytes) -> dict[str, Any] | Bad | None:
    """One JSONL line as an object, None for a blank line, or Bad saying why it is none."""
    try:
        text = decode_text(raw, path, WHAT, first_line=lineno)
    except DataError as e:
        return Bad(str(e).split(": ", 2)[-1])
    if not text.strip():
        return None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        if not raw.endswith(b"\n"):
            return Bad(f"truncated last line (no newline at the end, invalid JSON: {e.msg}): a log still being "
                       "written?")
        return Bad(f"invalid JSON ({e.msg} at column {e.colno})")
    if not isinstance(obj, dict):
        return Bad(f"expected a JSON object, got {type(obj).__name__}")
    return obj
