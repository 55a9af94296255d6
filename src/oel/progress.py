"""Progress of the long parts of a stage: items done / total, tokens/s, ETA.

Stages and engines report here and know nothing about screens: a stage opens a `task` for its
unit of work (episodes, extraction steps, probes, training steps) and advances it; an engine adds
the tokens it generates to every task that is open. Where the output goes is the CLI's choice: it
installs a `Display` (a rich bar in a terminal); without one, each task logs one line every
`LOG_EVERY_S` seconds, so that a run piped to a file never goes silent for long.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol

log = logging.getLogger(__name__)

LOG_EVERY_S = 30.0
"""Without a display, a running task logs its state at most this often."""


@dataclass
class Task:
    """One unit of work being counted."""

    name: str
    total: int | None
    done: int = 0
    tokens: int = 0
    started: float = field(default_factory=time.monotonic)
    last_logged: float = field(default_factory=time.monotonic)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def eta_s(self) -> float | None:
        """Seconds left at the pace so far (None before the first item, or without a total)."""
        if not self.total or not self.done:
            return None
        return self.elapsed / self.done * max(0, self.total - self.done)

    def line(self) -> str:
        count = f"{self.done}/{self.total}" if self.total else f"{self.done}"
        eta = self.eta_s
        parts = [f"{self.name}: {count}", f"{self.elapsed:.0f}s"]
        if self.tokens:
            parts.append(f"{self.tokens_per_s:.1f} tok/s")
        if eta is not None:
            parts.append(f"ETA {eta:.0f}s")
        return ", ".join(parts)


class Display(Protocol):
    """Where task updates go when the CLI shows them (a rich progress bar)."""

    def opened(self, task: Task) -> None: ...
    def updated(self, task: Task) -> None: ...
    def closed(self, task: Task) -> None: ...


_lock = threading.Lock()
_open: list[Task] = []
_display: Display | None = None


def set_display(display: Display | None) -> None:
    """Route task updates to `display` (None: log lines every LOG_EVERY_S)."""
    global _display
    _display = display


def _changed(task: Task) -> None:
    if _display is not None:
        _display.updated(task)
    elif time.monotonic() - task.last_logged >= LOG_EVERY_S:
        task.last_logged = time.monotonic()
        log.info("%s", task.line())


@contextmanager
def task(name: str, total: int | None = None) -> Iterator[Task]:
    """Count a unit of work for as long as the block runs."""
    t = Task(name, total)
    with _lock:
        _open.append(t)
    if _display is not None:
        _display.opened(t)
    try:
        yield t
    finally:
        with _lock:
            _open.remove(t)
        if _display is not None:
            _display.closed(t)
        elif t.elapsed >= LOG_EVERY_S:
            log.info("%s (finished)", t.line())


def advance(t: Task, n: int = 1) -> None:
    """`n` more items of `t` done."""
    t.done += n
    _changed(t)


def add_tokens(n: int) -> None:
    """Tokens an engine generated: counted by every open task (a stage and the part of it running),
    shown for the innermost."""
    with _lock:
        for t in _open:
            t.tokens += n
        inner = _open[-1] if _open else None
    if inner is not None:
        _changed(inner)
