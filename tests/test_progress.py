"""oel.progress: counts, tokens/s and ETA; log lines without a display, display calls with one."""

from __future__ import annotations

import logging

import pytest

from oel import progress


def test_without_a_display_a_task_logs_its_state(monkeypatch, caplog):
    monkeypatch.setattr(progress, "LOG_EVERY_S", 0.0)
    caplog.set_level(logging.INFO, logger="oel.progress")
    with progress.task("extract round 0: steps", total=4) as t:
        progress.add_tokens(30)
        progress.advance(t)
        progress.advance(t)
    lines = [r.getMessage() for r in caplog.records]
    assert any(line.startswith("extract round 0: steps: 2/4, ") and "tok/s" in line and "ETA" in line
               for line in lines), lines
    assert lines[-1].endswith("(finished)")


def test_tokens_count_for_every_open_task_and_eta_follows_the_pace():
    with progress.task("outer", total=10) as outer:
        with progress.task("inner", total=2) as inner:
            progress.add_tokens(5)
        progress.add_tokens(3)
        assert (inner.tokens, outer.tokens) == (5, 8)
        assert outer.eta_s is None, "no ETA before the first item"
        outer.started -= 10.0  # 10 s in, 2 of 10 done: 40 s to go
        progress.advance(outer, 2)
        assert outer.eta_s == pytest.approx(40.0, rel=0.01)
    progress.add_tokens(7)  # no task open: nothing to count, no error


def test_a_display_sees_every_update():
    seen: list[tuple[str, int]] = []

    class Recorder:
        def opened(self, task):
            seen.append(("opened", task.done))

        def updated(self, task):
            seen.append(("updated", task.done))

        def closed(self, task):
            seen.append(("closed", task.done))

    progress.set_display(Recorder())
    try:
        with progress.task("games", total=2) as t:
            progress.advance(t)
            progress.advance(t)
    finally:
        progress.set_display(None)
    assert seen == [("opened", 0), ("updated", 1), ("updated", 2), ("closed", 2)]
