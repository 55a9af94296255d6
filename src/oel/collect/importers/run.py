"""`oel import-logs`: a log file -> conversations -> trajectory JSONL, in two streamed passes.

Pass 1 reads the file line by line, turns each record into calls (`formats`), and assigns every
call to a conversation: by the session / conversation id the log gives, else by the gateway's
stitching rule (a request that starts with an earlier request plus its response continues it,
`oel.sessions`). It keeps only where each call is (byte offset, record index) and one key
per stitched call, never the calls themselves. Pass 2 re-reads each conversation's records by
offset, orders its calls by start time, and builds the trajectory the gateway would have built
(the session's path, each turn's feedback the next user message), appending it to the output.
Memory grows with the number of calls (about 0.2 kB each), not with their text.

The outcome is the feedback text the log holds (a score's comment, the openai format's
`outcome`, or the user's last words after the final response), else an explicit unknown; numeric
scores go to `meta.import.scores` for evaluation only -- no learning stage reads them, as none
reads `passed`.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from oel.collect.importers.base import Call, RecordError, Skip, iter_lines, parse_line
from oel.collect.importers.formats import FORMATS, LogFormat, detect
from oel.errors import DataError
from oel.io import PRIVATE_FILE_MODE, check_writable_file, make_dirs
from oel.sessions import Candidate, Exchange, choose_conversation, prefix_keys, session_turns, tail_key
from oel.trajectory import Trajectory

NO_OUTCOME = "unknown: the log records no outcome for this conversation"


@dataclass
class Report:
    """What an import did: the format, trajectories written, calls used, and records skipped by why."""

    format: str
    trajectories: int = 0
    calls: int = 0
    skipped: Counter[str] = field(default_factory=Counter)

    def lines(self) -> list[str]:
        return [f"skipped {n} record{'s' if n != 1 else ''}: {kind}" for kind, n in sorted(self.skipped.items())]


LINE_BITS, INDEX_BITS = 24, 16
"""A call's place packed in one int: byte offset, line number (< 2**24), index in the record (< 2**16)."""


def _pack(offset: int, lineno: int, index: int) -> int:
    if lineno >= 1 << LINE_BITS or index >= 1 << INDEX_BITS:
        raise DataError(f"line {lineno}: more than {1 << LINE_BITS} lines or {1 << INDEX_BITS} calls in one record")
    return (offset << (LINE_BITS + INDEX_BITS)) | (lineno << INDEX_BITS) | index


def _unpack(place: int) -> tuple[int, int, int]:
    return (place >> (LINE_BITS + INDEX_BITS), (place >> INDEX_BITS) & ((1 << LINE_BITS) - 1),
            place & ((1 << INDEX_BITS) - 1))


def _short(key: str) -> bytes:
    """A stitching key in 16 bytes (a 128-bit prefix of its sha256): pass 1 keeps one per stitched call."""
    return bytes.fromhex(key[:32])


@dataclass(slots=True)
class _Conversation:
    group: str | None
    places: list[int] = field(default_factory=list)
    """Its calls' places (`_pack`), in file order."""

    @property
    def calls(self) -> list[tuple[int, int, int]]:
        """(byte offset, line number, index of the call among the record's items)."""
        return [_unpack(p) for p in self.places]


class _Grouper:
    """Pass 1's state: conversations by id, and the stitching index of conversations without one.

    Kept small (about 0.2 kB per call): places packed in ints, stitching keys in 16 bytes, a key's
    one (conversation, call) in one int unless several calls share it."""

    def __init__(self) -> None:
        self.conversations: list[_Conversation] = []
        self._by_group: dict[str, int] = {}
        self._by_tail: dict[bytes, int | list[int]] = {}
        self._latest: list[int] = []

    def add(self, call: Call, where: tuple[int, int, int]) -> None:
        if call.group is not None:
            conv = self._by_group.get(call.group)
            if conv is None:
                conv = self._by_group[call.group] = self._new(call.group)
        else:
            keys = prefix_keys(call.messages)
            candidates = [Candidate(c, key, self._latest[c] == n) for key in keys
                          for c, n in self._entries(_short(key))]
            conv = choose_conversation(keys, candidates)
            conv = self._new(None) if conv is None else conv
            number = len(self.conversations[conv].places)
            self._remember(_short(tail_key(Exchange(call.messages, call.response))), (conv << 32) | number)
            self._latest[conv] = number
        self.conversations[conv].places.append(_pack(*where))

    def _entries(self, key: bytes) -> list[tuple[int, int]]:
        found = self._by_tail.get(key)
        packed = [] if found is None else found if isinstance(found, list) else [found]
        return [(p >> 32, p & 0xFFFFFFFF) for p in packed]

    def _remember(self, key: bytes, packed: int) -> None:
        found = self._by_tail.get(key)
        if found is None:
            self._by_tail[key] = packed
        elif isinstance(found, list):
            found.append(packed)
        else:
            self._by_tail[key] = [found, packed]

    def _new(self, group: str | None) -> int:
        self.conversations.append(_Conversation(group))
        self._latest.append(-1)
        return len(self.conversations) - 1


def _items(fmt: LogFormat, path: str | os.PathLike, lineno: int, obj: Mapping[str, Any]) -> list[Call | Skip]:
    try:
        return list(fmt.records(obj, lineno))
    except (RecordError, TypeError, KeyError, AttributeError, ValueError) as e:
        raise DataError(f"{path}:{lineno}: {' '.join(str(e).split())}") from None


def _choose_format(path: str | os.PathLike, lineno: int, obj: Mapping[str, Any], name: str | None) -> LogFormat:
    seen = detect(obj)
    if name is None:
        if seen is None:
            raise DataError(f"{path}:{lineno}: not a log format oel reads ({', '.join(FORMATS)}); give --format")
        return FORMATS[seen]
    fmt = FORMATS[name]
    if not fmt.looks_like(obj):
        looks = f"; it looks like {seen}" if seen else ""
        raise DataError(f"{path}:{lineno}: not a {name} log: expected {fmt.expected}{looks}")
    return fmt


def _first_pass(path: str | os.PathLike, name: str | None, report_skips: Counter[str]) -> tuple[LogFormat, _Grouper]:
    fmt: LogFormat | None = None
    grouper = _Grouper()
    for lineno, offset, raw in iter_lines(path):
        obj = parse_line(path, lineno, raw)
        if obj is None:
            continue
        fmt = fmt or _choose_format(path, lineno, obj, name)
        for index, item in enumerate(_items(fmt, path, lineno, obj)):
            if isinstance(item, Skip):
                report_skips[item.kind] += 1
            else:
                grouper.add(item, (offset, lineno, index))
    if fmt is None:
        raise DataError(f"{path}:1: file is empty, expected at least one record")
    return fmt, grouper


def _calls_of(path: str | os.PathLike, fmt: LogFormat, conv: _Conversation) -> list[Call]:
    """Pass 2: re-read a conversation's records (each line once), its calls in start order."""
    found: list[tuple[float, int, int, Call]] = []
    by_line: dict[int, list[tuple[int, int]]] = {}
    for offset, lineno, index in conv.calls:
        by_line.setdefault(offset, []).append((lineno, index))
    with open(path, "rb") as f:
        for offset, wanted in by_line.items():
            f.seek(offset)
            lineno = wanted[0][0]
            items = _items(fmt, path, lineno, parse_line(path, lineno, f.readline()) or {})
            found.extend((items[i].start, lineno, i, items[i]) for _, i in wanted)  # type: ignore[union-attr]
    return [c for *_, c in sorted(found, key=lambda x: x[:3])]


def _trajectory(fmt: LogFormat, n: int, conv: _Conversation, calls: list[Call], *, env_id: str,
                model_id: str | None) -> Trajectory:
    exchanges = [Exchange(c.messages, c.response, c.model_id, c.prompt_tokens, c.response_tokens) for c in calls]
    outcomes = [c.outcome for c in calls if c.outcome]
    scores = {k: v for c in calls for k, v in c.scores.items()}
    models = list(dict.fromkeys(c.model_id for c in calls))
    lines = [line for _, line, _ in conv.calls]
    meta = {"format": fmt.name, "group": conv.group, "stitched": conv.group is None, "calls": len(calls),
            "lines": [min(lines), max(lines)], "model_ids": models, "scores": scores}
    return Trajectory(id=f"{fmt.name}-{n}", env_id=env_id, seed=n, model_id=model_id or models[0],
                      turns=session_turns(exchanges), outcome=outcomes[-1] if outcomes else NO_OUTCOME,
                      passed=False, source="import", meta={"import": meta})


def _openai_fields(path: str | os.PathLike, conv: _Conversation, traj: Trajectory) -> Trajectory:
    """The openai format's per-record fields (id, env_id, seed, model_id, passed), as `oel import-logs`
    always read them."""
    offset, lineno, _ = conv.calls[0]
    with open(path, "rb") as f:
        f.seek(offset)
        obj = parse_line(path, lineno, f.readline()) or {}
    try:
        update = {"id": str(obj.get("id", f"import-{lineno}")), "seed": int(obj.get("seed", lineno)),
                  "passed": bool(obj.get("passed", False))}
    except (TypeError, ValueError) as e:
        raise DataError(f"{path}:{lineno}: {e}") from None
    for key in ("env_id", "model_id"):
        if key in obj:
            update[key] = str(obj[key])
    if traj.outcome != NO_OUTCOME and not obj.get("outcome"):  # the user's words after the last response
        last = traj.turns[-1].model_copy(update={"feedback": traj.outcome})
        update["turns"] = [*traj.turns[:-1], last]
    return traj.model_copy(update=update)


def trajectories(path: str | os.PathLike, *, format: str | None = None, env_id: str = "imported",
                 model_id: str | None = None, report: Report | None = None) -> Iterator[Trajectory]:
    """Stream the trajectories of a log file; `report` (if given) is filled with the format and skips."""
    if format is not None and format not in FORMATS:
        raise DataError(f"--format: expected one of {', '.join(FORMATS)}, got {format!r}")
    report = report if report is not None else Report(format or "auto")
    fmt, grouper = _first_pass(path, format, report.skipped)
    report.format = fmt.name
    for n, conv in enumerate(grouper.conversations, start=1):
        calls = _calls_of(path, fmt, conv)
        try:
            traj = _trajectory(fmt, n, conv, calls, env_id=env_id, model_id=model_id)
        except ValueError as e:
            raise DataError(f"{path}:{conv.calls[0][1]}: {' '.join(str(e).split())}") from None
        if fmt.name == "openai":
            traj = _openai_fields(path, conv, traj)
        report.calls += len(calls)
        report.trajectories += 1
        yield traj


def import_logs(path: str | os.PathLike, output: str | os.PathLike, *, format: str | None = None,
                env_id: str = "imported", model_id: str | None = None) -> Report:
    """Write the log's trajectories to `output` (0600: users' conversations), atomically; returns the report."""
    out = check_writable_file(output, "trajectory file")
    make_dirs(out.parent)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    report = Report(format or "auto")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE_MODE)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for traj in trajectories(path, format=format, env_id=env_id, model_id=model_id, report=report):
                f.write(json.dumps(traj.model_dump(mode="json"), ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return report
