"""`oel import-logs` on small real files of each format (tests/data/logs, sources in its README).

Each fixture holds the same shell-helper conversation (a tool call, its result, an answer, a
follow-up) plus records that must be skipped; the tests check the trajectories field by field.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from oel.cli import main
from oel.collect.importers import Report, import_logs, trajectories
from oel.errors import DataError
from oel.trajectory import Message, read_trajectories

LOGS = Path(__file__).parent / "data" / "logs"
SYSTEM = Message(role="system", content="You are a shell helper. Use the run tool to run commands.")
QUESTION = Message(role="user", content="How many files are in /srv/app?")
TOOL_CALL = '<tool_call>{"name": "run", "arguments": {"cmd": "ls /srv/app"}}</tool_call>'
ANSWER = "There are two files: a.txt and b.txt."
FOLLOW_UP = "Thanks. Now show a.txt."


def load(fmt: str, **kw: object) -> tuple[list, Report]:
    report = Report(fmt)
    return list(trajectories(LOGS / f"{fmt}.jsonl", report=report, **kw)), report


def check_shell_turns(turns: list, tool_result: str, *, third: bool = True, last_feedback: str = "") -> None:
    """The shared conversation: tool call -> its result -> answer -> follow-up -> answer."""
    assert turns[0].prompt == [SYSTEM, QUESTION] and turns[0].observation == QUESTION.content
    assert turns[0].response == TOOL_CALL and turns[0].feedback == tool_result
    assert turns[1].prompt == [SYSTEM, QUESTION, Message(role="assistant", content=TOOL_CALL),
                               Message(role="user", content=tool_result)]
    assert turns[1].observation == tool_result and turns[1].response == ANSWER
    if third:
        assert turns[1].feedback == FOLLOW_UP
        assert turns[2].prompt[-1] == Message(role="user", content=FOLLOW_UP)
        assert (turns[2].response, turns[2].feedback) == ("hello from a.txt", last_feedback)


def test_litellm_stitches_by_prefix_and_groups_by_session() -> None:
    (shell, french), report = load("litellm")
    assert report.format == "litellm" and report.calls == 4
    assert report.skipped == {"failed call (status 'failure')": 1, "not a chat completion (call_type 'aembedding')": 1}
    assert len(shell.turns) == 3 and shell.source == "import" and shell.model_id == "gpt-4o-mini"
    check_shell_turns(shell.turns, '<tool_result name="run">a.txt\nb.txt</tool_result>')
    assert (shell.turns[0].prompt_tokens, shell.turns[0].response_tokens) == (40, 12)
    assert shell.meta["import"] | {} == {"format": "litellm", "group": None, "stitched": True, "calls": 3,
                                         "lines": [1, 6], "model_ids": ["gpt-4o-mini"], "scores": {}}
    assert shell.outcome.startswith("unknown") and shell.passed is False
    assert french.meta["import"]["group"] == "sess-fr" and french.turns[0].response == "Bonjour !"


def test_langfuse_sessions_and_scores() -> None:
    (session, single), report = load("langfuse")
    assert report.skipped == {"trace without a generation": 1}
    check_shell_turns(session.turns, '<tool_result name="run">a.txt\nb.txt</tool_result>')
    assert session.outcome == "user-feedback: solved it, thanks"
    # Numbers are for evaluation only: kept in meta, never in the outcome, `passed` untouched.
    assert session.meta["import"]["scores"] == {"user-feedback": 1.0, "helpfulness": 0.8}
    assert session.passed is False and session.reward is None
    assert session.meta["import"]["group"] == "sess-1" and session.meta["import"]["lines"] == [1, 3]
    assert single.meta["import"]["group"] is None  # a trace of one generation groups nothing: stitched
    assert [(t.observation, t.response) for t in single.turns] == [("Say hi in French.", "Bonjour !")]


def test_otel_semconv_messages_and_openllmetry_attributes() -> None:
    (conv, stitched), report = load("otel")
    assert report.skipped == {"model call span without message content (content capture off)": 1,
                              "not a model call span ('execute_tool')": 1}
    assert conv.meta["import"]["group"] == "conv-7" and conv.model_id == "gpt-4o-mini-2024-07-18"
    # The tool result names the tool: the span gives only the call id, looked up in the call before it.
    check_shell_turns(conv.turns, '<tool_result name="run">a.txt\nb.txt</tool_result>', third=False)
    assert conv.turns[1].feedback == ""
    assert stitched.meta["import"]["stitched"] is True
    assert [(t.response, t.feedback) for t in stitched.turns] == [("Bonjour !", "Now in German."), ("Hallo!", "")]
    assert (stitched.turns[0].prompt_tokens, stitched.turns[0].response_tokens) == (9, 4)


def test_openai_records_keep_their_fields() -> None:
    (shell, french), report = load("openai", model_id=None)
    assert report.skipped == {"no assistant message: nothing the model said": 1}
    check_shell_turns(shell.turns, '<tool_result name="run">a.txt\nb.txt</tool_result>', last_feedback="perfect")
    assert (shell.id, shell.passed, shell.outcome) == ("shell-1", True, "perfect")
    assert (french.id, french.model_id, french.seed) == ("import-3", "m-fr", 3)


@pytest.mark.parametrize("fmt", ["litellm", "langfuse", "otel", "openai"])
def test_cli_detects_the_format_and_reports_skips(tmp_path: Path, fmt: str, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "t.jsonl"
    assert main(["import-logs", str(LOGS / f"{fmt}.jsonl"), str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"imported 2 trajectories (4 model calls, format {fmt}: ")  # and the shape seen
    assert lines[0].endswith(f") -> {out}")
    assert all(line.startswith("skipped 1 record: ") for line in lines[1:]) and len(lines) > 1
    assert len(read_trajectories(out)) == 2
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600  # users' conversations


def test_a_file_of_another_format_is_refused_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src = LOGS / "langfuse.jsonl"
    assert main(["import-logs", str(src), str(tmp_path / "t.jsonl"), "--format", "otel"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"oel: error: {src}:1: not a otel log: expected an OTLP JSON ExportTraceServiceRequest per "
                   "line (resourceSpans); it looks like langfuse")
    assert not (tmp_path / "t.jsonl").exists()
    (tmp_path / "x.jsonl").write_text('{"hello": 1}\n')
    with pytest.raises(DataError, match=r"x.jsonl:1: not a log format oel reads \(litellm, langfuse, otel, openai-responses, openai-batch, openai\): a JSON object with keys hello"):
        import_logs(tmp_path / "x.jsonl", tmp_path / "t.jsonl")


@pytest.mark.parametrize("fmt, line, bad, expected", [
    ("litellm", 3, lambda r: {**r, "messages": {"role": "user"}}, "messages: expected a list of chat messages, got dict"),
    ("litellm", 3, lambda r: {**r, "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role: expected"),
    ("langfuse", 2, lambda r: {**r, "observations": "none"}, "observations: expected a list"),
    ("otel", 2, lambda r: {"resourceSpans": {}}, "resourceSpans: expected a list"),
    ("openai", 2, lambda r: {**r, "messages": [{"role": "user", "content": 3}]}, "message content: expected a string"),
    ("openai", 3, lambda r: {**r, "passed": "maybe"}, "passed: expected true or false, got 'maybe'"),
])
def test_a_malformed_record_is_skipped_named_and_counted_or_aborts_with_strict(tmp_path: Path, fmt: str, line: int,
                                                                              bad, expected: str) -> None:
    lines = (LOGS / f"{fmt}.jsonl").read_text().splitlines()
    lines[line - 1] = json.dumps(bad(json.loads(lines[line - 1])))
    src = tmp_path / f"{fmt}.jsonl"
    src.write_text("\n".join(lines) + "\n")
    report = import_logs(src, tmp_path / "t.jsonl", format=fmt)
    assert report.bad_count == 1 and report.bad[0].startswith(f"{src}:{line}: ") and expected in report.bad[0]
    assert "\n" not in report.bad[0] and report.trajectories >= 1  # the other records are imported
    with pytest.raises(DataError) as e:
        import_logs(src, tmp_path / "strict.jsonl", format=fmt, strict=True)
    assert str(e.value).startswith(f"{src}:{line}: ") and expected in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "strict.jsonl").exists()


def test_invalid_json_a_truncated_last_line_and_an_empty_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src = tmp_path / "l.jsonl"
    good = (LOGS / "litellm.jsonl").read_text()
    src.write_text(good + "{not json\n" + good.splitlines()[0][:50])  # a log still being written
    out = tmp_path / "t.jsonl"
    assert main(["import-logs", str(src), str(out)]) == 0
    printed = capsys.readouterr().out
    assert "2 bad records skipped" in printed and f"{src}:7: invalid JSON (Expecting property name" in printed
    assert f"{src}:8: truncated last line (no newline at the end" in printed
    assert len(read_trajectories(out)) == 2
    assert main(["import-logs", str(src), str(out), "--strict"]) == 2
    assert capsys.readouterr().err.startswith(f"oel: error: {src}:7: invalid JSON")
    src.write_text("\n")
    with pytest.raises(DataError, match=rf"{src}:1: file is empty"):
        import_logs(src, tmp_path / "t.jsonl")
