"""`oel import-logs`: a log file -> conversations -> trajectory JSONL, in two streamed passes.

Pass 1 reads the file record by record (`source`), turns each record into calls (`formats`), and
assigns every call to a conversation (`grouping`), keeping only where each call is and two short
keys per call, never the calls themselves. Pass 2 re-reads each conversation's records, orders its
calls by start time, and builds the trajectory the gateway would have built (the session's path,
each turn's feedback the next user message), appending it to the output.

Nothing is lost silently: a record that cannot be read (bad JSON, a malformed field, a record of
another format, a truncated last line) is skipped and reported as `file:line: why` and counted, or
aborts the import with `strict`; a non-empty log that yields no trajectory is an error naming the
shape it saw and what was expected.

The outcome is the feedback text the log holds (a score's comment, the openai format's `outcome`,
or the user's last words after the final response), else an explicit unknown; numeric scores go to
`meta.import.scores` for evaluation only -- no learning stage reads them, as none reads `passed`.
"""

from __future__ import annotations

import functools
import json
import os
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from oel.collect.importers import openai_logs
from oel.collect.importers.base import Call, RecordError, Skip, boolean
from oel.collect.importers.formats import FORMATS, LogFormat, describe_unknown, detect
from oel.collect.importers.grouping import Conversation, Grouper
from oel.collect.importers.source import Bad, LogSource
from oel.errors import DataError
from oel.io import PRIVATE_FILE_MODE, check_writable_file, make_dirs
from oel.sessions import Exchange, session_turns
from oel.trajectory import Trajectory

NO_OUTCOME = "unknown: the log records no outcome for this conversation"
SHOWN_BAD_RECORDS = 20
"""Bad records listed one per line in the report; the rest are counted."""


@dataclass
class Report:
    """What an import did: the format and shape, trajectories written, calls used, records skipped and bad."""

    format: str
    shape: str = ""
    source: str = "JSONL"
    trajectories: int = 0
    calls: int = 0
    records: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    bad: list[str] = field(default_factory=list)
    bad_count: int = 0

    def add_bad(self, line: str) -> None:
        self.bad_count += 1
        if len(self.bad) < SHOWN_BAD_RECORDS:
            self.bad.append(line)

    def lines(self) -> list[str]:
        out = [f"skipped {n} record{'s' if n != 1 else ''}: {kind}" for kind, n in sorted(self.skipped.items())]
        if self.bad_count:
            out.append(f"{self.bad_count} bad record{'s' if self.bad_count != 1 else ''} skipped "
                       f"(--strict aborts on the first):")
            out += [f"  {line}" for line in self.bad]
            if self.bad_count > len(self.bad):
                out.append(f"  ... and {self.bad_count - len(self.bad)} more")
        return out


def _items(fmt: LogFormat, lineno: int, obj: Mapping[str, Any]) -> list[Call | Skip]:
    try:
        return list(fmt.records(obj, lineno))
    except (RecordError, TypeError, KeyError, AttributeError, ValueError) as e:
        raise RecordError(" ".join(str(e).split())) from None


def _choose_format(obj: Mapping[str, Any], name: str | None) -> LogFormat:
    seen = detect(obj)
    if name is None:
        if seen is None:
            raise RecordError(f"not a log format oel reads ({', '.join(FORMATS)}): {describe_unknown(obj)}; "
                              "see `oel import-logs --help`")
        return FORMATS[seen]
    fmt = FORMATS[name]
    if not fmt.looks_like(obj):
        looks = f"; it looks like {seen}" if seen else f"; it is {describe_unknown(obj)}"
        raise RecordError(f"not a {name} log: expected {fmt.expected}{looks}")
    return fmt


def _with_batch_input(fmt: LogFormat, batch_input: str | os.PathLike | None) -> LogFormat:
    if fmt.name != "openai-batch" or batch_input is None:
        return fmt
    source = LogSource(batch_input)
    lines = ((n, obj) for n, _, obj in source.records() if isinstance(obj, dict))
    try:
        requests = openai_logs.batch_requests(lines)
    except RecordError as e:
        raise DataError(f"{batch_input}: {e}") from None
    return replace(fmt, records=functools.partial(_batch, requests=requests))


def _batch(obj: Mapping[str, Any], lineno: int, requests: Mapping[str, Any]) -> Iterator[Call | Skip]:
    return openai_logs.batch_records(obj, lineno, requests)


@dataclass
class _Pass1:
    fmt: LogFormat | None = None
    grouper: Grouper = field(default_factory=Grouper)


def _first_pass(source: LogSource, name: str | None, report: Report, strict: bool,
                batch_input: str | os.PathLike | None) -> _Pass1:
    state = _Pass1()
    for lineno, key, obj in source.records():
        if obj is None:
            continue
        report.records += 1
        try:
            if isinstance(obj, Bad):
                raise RecordError(obj.why)
            if state.fmt is None:
                try:
                    chosen = _choose_format(obj, name)
                except RecordError as e:
                    if name is not None:  # the format the user named is not this file's: nothing will match
                        raise DataError(f"{source.path}:{lineno}: {e}") from None
                    raise
                state.fmt = _with_batch_input(chosen, batch_input)
                report.format, report.shape = state.fmt.name, state.fmt.shape(obj)
            elif not state.fmt.looks_like(obj):
                raise RecordError(f"not a {state.fmt.name} record like the first one: expected {state.fmt.expected}")
            items = _items(state.fmt, lineno, obj)
        except RecordError as e:
            if strict:
                raise DataError(f"{source.path}:{lineno}: {e}") from None
            report.add_bad(f"{source.path}:{lineno}: {e}")
            continue
        for index, item in enumerate(items):
            if isinstance(item, Skip):
                report.skipped[item.kind] += 1
            else:
                state.grouper.add(item, (key, lineno, index))
    return state


def _nothing_imported(path: str | os.PathLike, report: Report) -> DataError:
    if report.records == 0:
        return DataError(f"{path}:1: file is empty, expected at least one record")
    if report.format == "auto":
        first = report.bad[0] if report.bad else ""
        if report.bad_count == 1:  # the one record says it all
            return DataError(first)
        return DataError(f"{path}: no record could be read ({report.bad_count} bad); first: {first}")
    skipped = "; ".join(f"{n} {kind}" for kind, n in report.skipped.most_common()) or "none"
    bad = f"; {report.bad_count} bad records (first: {report.bad[0]})" if report.bad_count else ""
    return DataError(f"{path}: 0 trajectories from {report.records} records: saw {report.shape} (format "
                     f"{report.format}); skipped: {skipped}{bad}; expected {FORMATS[report.format].expected}, "
                     "with at least one successful model call that has its messages and response")


def _calls_of(source: LogSource, fmt: LogFormat, conv: Conversation) -> list[Call]:
    """Pass 2: re-read a conversation's records (each once), its calls in start order."""
    found: list[tuple[float, int, int, Call]] = []
    by_key: dict[int, list[tuple[int, int]]] = {}
    for key, lineno, index in conv.calls:
        by_key.setdefault(key, []).append((lineno, index))
    for key, wanted in by_key.items():
        lineno = wanted[0][0]
        items = _items(fmt, lineno, source.at(key, lineno))
        found.extend((items[i].start, lineno, i, items[i]) for _, i in wanted)  # type: ignore[union-attr]
    return [c for *_, c in sorted(found, key=lambda x: x[:3])]


def _trajectory(fmt: LogFormat, n: int, conv: Conversation, calls: list[Call], *, env_id: str,
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


def _openai_fields(source: LogSource, conv: Conversation, traj: Trajectory) -> Trajectory:
    """The openai chat format's per-record fields (id, env_id, seed, model_id, passed)."""
    key, lineno, _ = conv.calls[0]
    obj = source.at(key, lineno)
    try:
        update = {"id": str(obj.get("id", f"import-{lineno}")), "seed": int(obj.get("seed", lineno)),
                  "passed": bool(boolean(obj.get("passed"), "passed"))}
    except (TypeError, ValueError) as e:
        raise DataError(f"{source.path}:{lineno}: {e}") from None
    for k in ("env_id", "model_id"):
        if k in obj:
            update[k] = str(obj[k])
    if traj.outcome != NO_OUTCOME and not obj.get("outcome"):  # the user's words after the last response
        last = traj.turns[-1].model_copy(update={"feedback": traj.outcome})
        update["turns"] = [*traj.turns[:-1], last]
    return traj.model_copy(update=update)


def trajectories(path: str | os.PathLike, *, format: str | None = None, env_id: str = "imported",
                 model_id: str | None = None, report: Report | None = None, strict: bool = False,
                 batch_input: str | os.PathLike | None = None) -> Iterator[Trajectory]:
    """Stream the trajectories of a log file; `report` (if given) is filled with the format, skips and bad records.
    A non-empty log that yields none raises DataError naming the shape seen and the one expected."""
    if format is not None and format not in FORMATS:
        raise DataError(f"--format: expected one of {', '.join(FORMATS)}, got {format!r}")
    report = report if report is not None else Report("auto")
    report.format = "auto"
    source = LogSource(path)
    report.source = source.kind
    state = _first_pass(source, format, report, strict, batch_input)
    if state.fmt is None or not state.grouper.conversations:
        raise _nothing_imported(path, report)
    try:
        yield from _second_pass(source, state, report, env_id=env_id, model_id=model_id)
    finally:
        source.close()


def _second_pass(source: LogSource, state: _Pass1, report: Report, *, env_id: str,
                 model_id: str | None) -> Iterator[Trajectory]:
    assert state.fmt is not None
    path = source.path
    for n, conv in enumerate(state.grouper.conversations, start=1):
        calls = _calls_of(source, state.fmt, conv)
        try:
            traj = _trajectory(state.fmt, n, conv, calls, env_id=env_id, model_id=model_id)
            if state.fmt.name == "openai":
                traj = _openai_fields(source, conv, traj)
        except (ValueError, RecordError) as e:
            raise DataError(f"{path}:{conv.calls[0][1]}: {' '.join(str(e).split())}") from None
        report.calls += len(calls)
        report.trajectories += 1
        yield traj


def import_logs(path: str | os.PathLike, output: str | os.PathLike, *, format: str | None = None,
                env_id: str = "imported", model_id: str | None = None, strict: bool = False,
                batch_input: str | os.PathLike | None = None) -> Report:
    """Write the log's trajectories to `output` (0600: users' conversations), atomically; returns the report."""
    out = check_writable_file(output, "trajectory file")
    make_dirs(out.parent)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    report = Report(format or "auto")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE_MODE)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for traj in trajectories(path, format=format, env_id=env_id, model_id=model_id, report=report,
                                     strict=strict, batch_input=batch_input):
                f.write(json.dumps(traj.model_dump(mode="json"), ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return report


def explain(path: str | os.PathLike) -> list[str]:
    """What `path` is, without importing it: the file's layout, the detected format, each record shape
    (with the tool's version where the record names it) and how many records have it."""
    source = LogSource(path)
    shapes: Counter[str] = Counter()
    fmt: LogFormat | None = None
    bad = 0
    for _, _, obj in source.records():
        if obj is None:
            continue
        if isinstance(obj, Bad) or (fmt is None and detect(obj) is None):
            bad += 1
            continue
        fmt = fmt or FORMATS[detect(obj)]  # type: ignore[index]
        try:
            shapes[fmt.shape(obj) if fmt.looks_like(obj) else f"not {fmt.name}: {describe_unknown(obj)}"] += 1
        except (RecordError, TypeError, KeyError, AttributeError, ValueError):
            bad += 1
    head = f"{path}: {source.kind}, format {fmt.name if fmt else 'unknown (none of ' + ', '.join(FORMATS) + ')'}"
    return [head, *(f"  {n} record{'s' if n != 1 else ''}: {s}" for s, n in shapes.most_common()),
            *([f"  {bad} record{'s' if bad != 1 else ''} that cannot be read"] if bad else [])]
