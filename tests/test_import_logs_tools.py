"""The real logging tools, run against a live `oel serve`, and `oel import-logs` on what they wrote.

Each tool runs the same agent (tests/logtools/agent.py: a French shell-helper session with a tool
call, its result, an answer, two parallel tool calls, an answer; a streamed session of two turns;
one call the server refuses) in its own process, through the `openai` client under the OpenTelemetry
GenAI instrumentation, OpenLLMetry, OpenInference, Langfuse's drop-in, or through LiteLLM's SDK.
OTLP goes to a local receiver that writes the collector file exporter's JSON; LiteLLM's logging
callback writes its StandardLoggingPayload. The import must give back exactly the conversations
the agent had: the turns in order, each session one trajectory, the tool calls and the tool's name
on each result, the failed call skipped. The tiny random model's answers are noise, but they are
the answers the logs hold.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "logtools"))
from agent import SHELL_SESSION, STREAM_SESSION  # noqa: E402
from otlp_receiver import OtlpReceiver  # noqa: E402
from scripted import ToolCallingBackend  # noqa: E402

from oel.backends.tiny import tiny_chat_model  # noqa: E402
from oel.cli import main  # noqa: E402
from oel.serving.chat_server import ChatServer, ServeConfig  # noqa: E402
from oel.tool_text import render_tool_call, render_tool_result  # noqa: E402
from oel.trajectory import read_trajectories  # noqa: E402

PRODUCER = Path(__file__).parent / "logtools" / "produce.py"
KEY = "test-key-" + "t" * 24
MAX_TOKENS_LIMIT = 64
PRODUCER_TIMEOUT_S = 240
TOOL_PACKAGES = {"otel-genai": "opentelemetry.instrumentation.openai_v2", "openllmetry": "opentelemetry.instrumentation.openai",
                 "openinference": "openinference.instrumentation.openai", "litellm": "litellm", "langfuse": "langfuse"}
CONTENT_ENV = {"OTEL_SEMCONV_STABILITY_OPT_IN": "gen_ai_latest_experimental",
               "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "span_only", "TRACELOOP_TRACE_CONTENT": "true"}
"""How each OTel instrumentation is told to record message content (all are off or partial by default)."""


@pytest.fixture(scope="module")
def server() -> Iterator[ChatServer]:
    model, tok = tiny_chat_model(seed=1, dtype=torch.float32)
    backend = ToolCallingBackend(model, tok, model_id="tiny-served", max_batch_size=4)
    cfg = ServeConfig(port=0, batch_window_s=0.0, max_tokens_limit=MAX_TOKENS_LIMIT, api_keys=[f"tests:{KEY}"],
                      api_keys_env="")
    with ChatServer(backend, cfg) as srv:
        yield srv


def produce(tool: str, server: ChatServer, tmp_path: Path) -> tuple[Path, dict]:
    """Run the agent through `tool`; (the log it wrote, the histories the agent ended with)."""
    if importlib.util.find_spec(TOOL_PACKAGES[tool].split(".")[0]) is None or \
            importlib.util.find_spec(TOOL_PACKAGES[tool]) is None:
        pytest.skip(f"{TOOL_PACKAGES[tool]} is not installed (pip install -e '.[logs-test]')")
    log, histories = tmp_path / f"{tool}.jsonl", tmp_path / f"{tool}.histories.json"
    with OtlpReceiver(log) as receiver:
        done = subprocess.run([sys.executable, str(PRODUCER), tool, server.url, str(log), str(histories), receiver.url],
                              env={**os.environ, **CONTENT_ENV, "OEL_TEST_KEY": KEY}, capture_output=True, text=True,
                              timeout=PRODUCER_TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-3000:]
    return log, json.loads(histories.read_text(encoding="utf-8"))


def expected_turns(history: list[dict]) -> list[tuple[str, str]]:
    """(response, feedback) of every model turn of an agent's final history, in oel's text convention."""
    names = {}
    texts: list[tuple[str, str]] = []
    for m in history:
        if m["role"] == "assistant":
            calls = []
            for c in m.get("tool_calls") or []:
                names[c["id"]] = c["function"]["name"]
                calls.append(render_tool_call(c["function"]["name"], c["function"]["arguments"]))
            texts.append(("assistant", "\n".join([m["content"], *calls] if m["content"] else calls)))
        elif m["role"] == "tool":
            texts.append(("user", render_tool_result(names[m["tool_call_id"]], m["content"])))
        else:
            texts.append((m["role"], m["content"]))
    joined: list[tuple[str, str]] = []
    for role, text in texts:
        joined[-1:] = [(role, f"{joined[-1][1]}\n\n{text}")] if joined and joined[-1][0] == role else \
            [*joined[-1:], (role, text)]
    responses = [k for k, (role, _) in enumerate(joined) if role == "assistant"]
    return [(joined[k][1], joined[k + 1][1] if k + 1 < len(joined) else "") for k in responses]


@pytest.mark.slow
@pytest.mark.parametrize("tool", list(TOOL_PACKAGES))
def test_a_real_tool_log_imports_as_the_conversations_the_agent_had(tool: str, server: ChatServer, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture) -> None:
    log, histories = produce(tool, server, tmp_path)
    out = tmp_path / "trajectories.jsonl"
    assert main(["import-logs", str(log), str(out), "--strict"]) == 0
    printed = capsys.readouterr().out
    assert "failed call" in printed  # the refused request: skipped, and said so
    trajs = read_trajectories(out)
    assert len(trajs) == 2, [t.meta["import"] for t in trajs]
    by_first = {t.turns[0].observation: t for t in trajs}
    for session in (SHELL_SESSION, STREAM_SESSION):
        history = histories[session]
        traj = by_first[next(m["content"] for m in history if m["role"] == "user")]
        got = [(t.response, t.feedback) for t in traj.turns]
        assert got == expected_turns(history), session
        assert all(t.prompt[-1].content == t.observation for t in traj.turns)
        if tool != "openllmetry" and tool != "otel-genai":  # these carry no session id: grouped by the agent's trace
            assert traj.meta["import"]["group"] == session
    shell = by_first["Combien de fichiers dans /srv/app ? 📁"]
    assert len(shell.turns) == 4 and shell.turns[2].response.count("<tool_call>") == 2  # parallel calls
    assert shell.turns[2].feedback.count('<tool_result name="run">') == 2  # each result names its tool
    assert main(["import-logs", "--explain", str(log)]) == 0
    assert "format " in capsys.readouterr().out
