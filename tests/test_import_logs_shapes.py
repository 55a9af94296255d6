"""Every shape of the measured list, built from each tool's published schema, imports right or fails by name.

The real tools write most shapes in tests/test_import_logs_tools.py; these are the ones the pinned
releases do not write (OpenLLMetry's older indexed attributes, the span-event convention), the
server-side exports no tool here can produce (Langfuse's API; its observation rows are checked
against the Fern models Langfuse generates from its OpenAPI file), and the edge cases.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from oel.cli import main
from oel.collect.importers import Report, import_logs, trajectories
from oel.errors import DataError

CALL = '<tool_call>{"name": "run", "arguments": {"cmd": "ls"}}</tool_call>'
RESULT = '<tool_result name="run">a.txt</tool_result>'


def write(tmp_path: Path, records: list[dict[str, Any]] | str, name: str = "log.jsonl") -> Path:
    path = tmp_path / name
    path.write_text(records if isinstance(records, str) else
                    "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def load(path: Path, **kw: Any) -> tuple[list, Report]:
    report = Report("auto")
    return list(trajectories(path, report=report, **kw)), report


def span(attrs: dict[str, Any], *, trace: str = "ab" * 16, parent: str = "", events: list | None = None,
         start: int = 1) -> dict[str, Any]:
    def value(v: Any) -> dict[str, Any]:
        return {"intValue": str(v)} if isinstance(v, int) else {"stringValue": v}
    body = {"traceId": trace, "spanId": f"{start:016x}", "parentSpanId": parent, "name": "chat",
            "startTimeUnixNano": str(start * 10**9), "attributes": [{"key": k, "value": value(v)} for k, v in attrs.items()],
            "events": events or []}
    return {"resourceSpans": [{"scopeSpans": [{"scope": {"name": "opentelemetry.instrumentation.openai.v1",
                                                         "version": "0.33.9"}, "spans": [body]}]}]}


def test_openllmetry_indexed_tool_calls_keep_one_conversation(tmp_path: Path) -> None:
    first = {"llm.request.type": "chat", "gen_ai.prompt.0.role": "system", "gen_ai.prompt.0.content": "Be brief.",
             "gen_ai.prompt.1.role": "user", "gen_ai.prompt.1.content": "files?",
             "gen_ai.completion.0.role": "assistant", "gen_ai.completion.0.tool_calls.0.id": "c1",
             "gen_ai.completion.0.tool_calls.0.name": "run", "gen_ai.completion.0.tool_calls.0.arguments": '{"cmd": "ls"}'}
    second = {k: v for k, v in first.items() if k.startswith("gen_ai.prompt") or k == "llm.request.type"}
    second |= {"gen_ai.prompt.2.role": "assistant", "gen_ai.prompt.2.tool_calls.0.id": "c1",
               "gen_ai.prompt.2.tool_calls.0.name": "run", "gen_ai.prompt.2.tool_calls.0.arguments": '{"cmd": "ls"}',
               "gen_ai.prompt.3.role": "tool", "gen_ai.prompt.3.tool_call_id": "c1", "gen_ai.prompt.3.content": "a.txt",
               "gen_ai.completion.0.role": "assistant", "gen_ai.completion.0.content": "One file."}
    (traj,), report = load(write(tmp_path, [span(first), span(second, start=2)]))
    assert [(t.response, t.feedback) for t in traj.turns] == [(CALL, RESULT), ("One file.", "")]
    assert "OpenLLMetry indexed attributes" in report.shape and "0.33.9" in report.shape


def test_span_events_and_system_instructions(tmp_path: Path) -> None:
    events = [{"name": "gen_ai.content.prompt", "attributes": [{"key": "gen_ai.prompt", "value": {
        "stringValue": json.dumps([{"role": "user", "content": "Salut ?"}])}}]},
              {"name": "gen_ai.content.completion", "attributes": [{"key": "gen_ai.completion", "value": {
                  "stringValue": json.dumps([{"role": "assistant", "content": "Bonjour !"}])}}]}]
    semconv = {"gen_ai.operation.name": "chat", "gen_ai.system_instructions": json.dumps([{"type": "text",
                                                                                           "content": "Sois bref."}]),
               "gen_ai.input.messages": json.dumps([{"role": "user", "parts": [{"type": "text", "content": "2+2?"}]}]),
               "gen_ai.output.messages": json.dumps([{"role": "assistant", "parts": [{"type": "text", "content": "4"}]}])}
    trajs, _ = load(write(tmp_path, [span({"gen_ai.operation.name": "chat"}, events=events), span(semconv, start=2)]))
    assert trajs[0].turns[0].response == "Bonjour !"
    assert [m.content for m in trajs[1].turns[0].prompt] == ["Sois bref.", "2+2?"]  # system instructions kept


def litellm(messages: list, response: Any, **kw: Any) -> dict[str, Any]:
    return {"id": kw.pop("id", "x"), "trace_id": kw.pop("trace_id", "2f1c6a0e-6f9d-4d8e-9d1c-0c7f2b8e4a11"),
            "call_type": "acompletion", "status": "success", "messages": messages, "response": response,
            "startTime": kw.pop("startTime", 1.0), "model": "m", "metadata": {}, **kw}


def test_litellm_sessions_responses_api_and_spend_logs(tmp_path: Path) -> None:
    q1, q2 = {"role": "user", "content": "hi"}, {"role": "user", "content": "new topic"}
    records = [
        litellm([q1], {"choices": [{"message": {"role": "assistant", "content": "hello"}}]}, trace_id="s-1"),
        litellm([q2], {"choices": [{"message": {"role": "assistant", "content": "ok"}}]}, trace_id="s-1", startTime=2.0),
        litellm([{"role": "user", "content": "hey"}], {"choices": [{"message": {"content": "yo"}}]}, session_id="s-2",
                trace_id="s-2b"),
        {**litellm([{"role": "user", "content": "hm"}], {"choices": [{"message": {"content": "ah"}}]}),
         "metadata": {"requester_metadata": {"session_id": "s-4"}}},
        {**litellm("Résume ceci.", {"output": [{"type": "message", "content": [{"type": "output_text",
                                                                               "text": "Résumé."}]}]}),
         "call_type": "aresponses"},
        {"request_id": "r1", "spend": 0.1, "call_type": "acompletion", "messages": {}, "response": {},
         "session_id": "s-3", "startTime": "2026-01-01T00:00:00Z", "model": "m"},
    ]
    trajs, report = load(write(tmp_path, records))
    groups = {t.meta["import"]["group"]: t for t in trajs}
    # One session, two calls that do not continue each other: two trajectories of the same group.
    assert [t.meta["import"]["group"] for t in trajs].count("s-1") == 2 and groups["s-2"].turns[0].response == "yo"
    assert groups["s-4"].turns[0].response == "ah"  # the caller's session in metadata
    assert any(t.meta["import"]["group"] is None for t in trajs)  # LiteLLM's random UUID4 trace_id groups nothing
    assert any(t.turns[0].response == "Résumé." for t in trajs)  # the Responses API call
    assert report.skipped == {"spend-log row without the prompt (the proxy stores it only with "
                              "store_prompts_in_spend_logs)": 1}


def test_litellm_bucket_object_pretty_printed(tmp_path: Path) -> None:
    record = litellm([{"role": "user", "content": "hi"}], {"choices": [{"message": {"content": "hello"}}]})
    (traj,), report = load(write(tmp_path, json.dumps(record, indent=4)))
    assert traj.turns[0].response == "hello" and report.source == "one pretty-printed JSON document"


def langfuse_trace(observations: list, **kw: Any) -> dict[str, Any]:
    return {"id": kw.pop("id", "t-1"), "timestamp": "2026-01-01T00:00:00Z", "observations": observations, "scores": [],
            **kw}


def test_langfuse_langchain_tool_calls_rewrite_and_answer_and_trace_list_rows(tmp_path: Path) -> None:
    ask = {"role": "user", "content": "files?"}
    lc_call = {"role": "assistant", "content": "", "tool_calls": [{"name": "run", "args": {"cmd": "ls"}, "id": "c1",
                                                                  "type": "tool_call"}]}
    gens = [{"id": "g1", "type": "GENERATION", "startTime": "2026-01-01T00:00:01Z", "input": [ask], "output": lc_call},
            {"id": "g2", "type": "GENERATION", "startTime": "2026-01-01T00:00:02Z",
             "input": [ask, lc_call, {"role": "tool", "content": "a.txt", "tool_call_id": "c1"}],
             "output": {"role": "assistant", "content": "One file."}}]
    rewrite = [{"id": "r", "type": "GENERATION", "startTime": "2026-01-01T00:00:01Z",
                "input": [{"role": "system", "content": "Rewrite the query."}, {"role": "user", "content": "q?"}],
                "output": "better q"},
               {"id": "a", "type": "GENERATION", "startTime": "2026-01-01T00:00:02Z",
                "input": [{"role": "system", "content": "Answer."}, {"role": "user", "content": "better q"}],
                "output": "answer"}]
    path = write(tmp_path, [langfuse_trace(gens), langfuse_trace(rewrite, id="t-2")])
    tools, first, second = load(path)[0]
    assert [(t.response, t.feedback) for t in tools.turns] == [(CALL, RESULT), ("One file.", "")]
    # Two generations of one trace that do not continue each other: two trajectories, no borrowed feedback.
    assert [(t.turns[0].response, t.turns[0].feedback) for t in (first, second)] == [("better q", ""), ("answer", "")]
    listed = write(tmp_path, [langfuse_trace(["obs-1", "obs-2"])], "list.jsonl")
    with pytest.raises(DataError, match=r"0 trajectories from 1 records: saw Langfuse traces-list row .* "
                                        r"1 bad records .*its observations are ids only"):
        import_logs(listed, tmp_path / "t.jsonl")


def test_langfuse_observation_rows_follow_langfuses_published_schema(tmp_path: Path) -> None:
    rows = [{"id": f"o{i}", "traceId": f"t{i}", "sessionId": "s-9", "type": "GENERATION", "projectId": "p",
             "startTime": f"2026-01-01T00:00:0{i}Z", "input": msgs, "output": out, "model": "m",
             "usageDetails": {"input": 5, "output": 2}}
            for i, (msgs, out) in enumerate([([{"role": "user", "content": "hi"}], "hello"),
                                             ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                                               {"role": "user", "content": "bye"}], "ciao")], start=1)]
    schema = pytest.importorskip("langfuse.api.commons.types.observation_v2", reason="langfuse is not installed")
    from langfuse.api.core.pydantic_utilities import parse_obj_as

    for row in rows:  # the v2 observations API's row, as Langfuse's client generated from its OpenAPI file reads it
        parsed = parse_obj_as(schema.ObservationV2, row)
        assert (parsed.session_id, parsed.type, parsed.trace_id) == ("s-9", "GENERATION", row["traceId"])
    (traj,), _ = load(write(tmp_path, rows))
    assert [(t.response, t.feedback) for t in traj.turns] == [("hello", "bye"), ("ciao", "")]
    assert (traj.meta["import"]["group"], traj.turns[0].prompt_tokens) == ("s-9", 5)


def test_openai_greeting_empty_arguments_and_string_booleans(tmp_path: Path) -> None:
    messages = [{"role": "assistant", "content": "Bonjour, que puis-je faire ?"}, {"role": "user", "content": "ls"},
                {"role": "assistant", "content": None, "tool_calls": [{"id": "c", "type": "function",
                                                                        "function": {"name": "run", "arguments": ""}}]},
                {"role": "tool", "tool_call_id": "c", "content": "a.txt"}, {"role": "assistant", "content": "done"}]
    (traj,), _ = load(write(tmp_path, [{"messages": messages, "passed": "false"}]))
    assert traj.passed is False and len(traj.turns) == 2
    call = traj.turns[0].response
    assert json.loads(call.removeprefix("<tool_call>").removesuffix("</tool_call>")) == {"name": "run", "arguments": ""}
    assert traj.turns[0].feedback == '<tool_result name="run">a.txt</tool_result>'
    assert traj.turns[0].prompt[0].content == "" and traj.turns[0].prompt[1].role == "assistant"  # greeting kept


def test_openai_responses_objects_and_batch_output(tmp_path: Path) -> None:
    response = {"id": "resp_1", "object": "response", "status": "completed", "instructions": "Be brief.",
                "input": [{"role": "user", "content": "files?"}],
                "output": [{"type": "function_call", "name": "run", "arguments": '{"cmd": "ls"}', "call_id": "c"}]}
    chained = {"id": "resp_2", "object": "response", "status": "completed", "previous_response_id": "resp_1",
               "output": [{"type": "message", "content": [{"type": "output_text", "text": "x"}]}]}
    (traj,), report = load(write(tmp_path, [response, chained]))
    assert traj.turns[0].response == CALL and [m.content for m in traj.turns[0].prompt] == ["Be brief.", "files?"]
    assert list(report.skipped) == ["response without its request's input (its earlier turns are on OpenAI's "
                                    "servers: log the whole input)"]
    inputs = write(tmp_path, [{"custom_id": "r1", "method": "POST", "url": "/v1/chat/completions",
                               "body": {"model": "m", "messages": [{"role": "user", "content": "2+2?"}]}}], "in.jsonl")
    output = write(tmp_path, [{"id": "b1", "custom_id": "r1", "error": None, "response": {
        "status_code": 200, "body": {"model": "m", "choices": [{"message": {"role": "assistant", "content": "4"}}]}}}],
        "out.jsonl")
    (batch,), _ = load(output, batch_input=inputs)
    assert batch.turns[0].response == "4"
    with pytest.raises(DataError, match="give the batch's input file with --batch-input"):
        import_logs(output, tmp_path / "t.jsonl", strict=True)


def test_zero_trajectories_from_a_non_empty_log_exits_non_zero_naming_the_shape(tmp_path: Path,
                                                                                  capsys: pytest.CaptureFixture) -> None:
    src = write(tmp_path, [{**litellm([{"role": "user", "content": "x"}], {}), "status": "failure"}])
    assert main(["import-logs", str(src), str(tmp_path / "t.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "0 trajectories from 1 records: saw LiteLLM StandardLoggingPayload (call_type 'acompletion') (format " \
           "litellm); skipped: 1 failed call (status 'failure'); expected a LiteLLM" in err
    assert not (tmp_path / "t.jsonl").exists()
