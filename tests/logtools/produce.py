"""Run the agent (agent.py) through one real logging tool against a live `oel serve`; the tool writes the log.

    python tests/logtools/produce.py TOOL BASE_URL OUT.jsonl HISTORIES.json [OTLP_URL]

TOOL is one of `TOOLS`. OTel instrumentations and Langfuse export OTLP to OTLP_URL (otlp_receiver.py
writes OUT.jsonl); LiteLLM's logging callback writes its standard logging payload to OUT.jsonl. The
API key is read from $OEL_TEST_KEY. Writes the agent's final histories to HISTORIES.json (what the
test expects the import to give back). Run in its own process: instrumentations patch `openai` for good.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from agent import MAX_TOKENS, play

MODEL = "tiny-served"
FLUSH_WAIT_S = 10.0


def _message_dict(message: Any) -> dict[str, Any]:
    """An openai ChatCompletionMessage (or LiteLLM's) as the dict an agent sends back in its history."""
    out: dict[str, Any] = {"role": "assistant", "content": message.content}
    if message.tool_calls:
        out["tool_calls"] = [{"id": c.id, "type": "function",
                              "function": {"name": c.function.name, "arguments": c.function.arguments}}
                             for c in message.tool_calls]
    return out


def _streamed(chunks: Iterator[Any]) -> dict[str, Any]:
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return {"role": "assistant", "content": text}


def openai_chat(client: Any, session_scope: Callable[[str], Any]) -> Callable[..., dict[str, Any]]:
    def chat(messages: list[dict[str, Any]], *, session: str, stream: bool = False, tools: Any = None,
             max_tokens: int = MAX_TOKENS) -> dict[str, Any]:
        kwargs = {"tools": tools} if tools else {}
        with session_scope(session):
            reply = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=max_tokens,
                                                   temperature=0, seed=7, stream=stream, **kwargs)
            return _streamed(reply) if stream else _message_dict(reply.choices[0].message)
    return chat


def otel_provider(otlp_url: str) -> Any:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": "oel-test-agent"}))
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=f"{otlp_url}/v1/traces")))
    return provider


def run_otel(tool: str, base_url: str, otlp_url: str) -> dict[str, Any]:
    """The openai client under one OTel instrumentation; each session's calls under one root span (one trace)."""
    import openai
    from opentelemetry import context, trace

    provider = otel_provider(otlp_url)
    tracer = provider.get_tracer("oel-test-agent")
    if tool == "otel-genai":
        from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor

        def scope(session: str) -> Any:
            return nullcontext()
    elif tool == "openllmetry":
        from opentelemetry.instrumentation.openai import OpenAIInstrumentor

        def scope(session: str) -> Any:
            return nullcontext()
    else:
        from openinference.instrumentation import using_session
        from openinference.instrumentation.openai import OpenAIInstrumentor

        scope = using_session
    OpenAIInstrumentor().instrument(tracer_provider=provider)
    client = openai.OpenAI(base_url=base_url, api_key=os.environ["OEL_TEST_KEY"], max_retries=0)
    inner = openai_chat(client, scope)

    roots: dict[str, Any] = {}

    def chat(messages: list[dict[str, Any]], *, session: str, **kw: Any) -> dict[str, Any]:
        root = roots.setdefault(session, tracer.start_span(f"agent {session}"))
        token = context.attach(trace.set_span_in_context(root))
        try:
            return inner(messages, session=session, **kw)
        finally:
            context.detach(token)
    histories = play(chat)
    for root in roots.values():
        root.end()
    provider.force_flush()
    return histories


def run_langfuse(base_url: str, otlp_url: str) -> dict[str, Any]:
    """Langfuse's OpenAI drop-in; its SDK exports OTLP to `{host}/api/public/otel/v1/traces`."""
    from langfuse import Langfuse, propagate_attributes
    from langfuse.openai import OpenAI

    langfuse = Langfuse(public_key="pk-lf-test", secret_key="sk-lf-test", host=otlp_url, flush_at=1)
    client = OpenAI(base_url=base_url, api_key=os.environ["OEL_TEST_KEY"], max_retries=0)

    def scope(session: str) -> Any:
        return propagate_attributes(session_id=session)
    histories = play(openai_chat(client, scope))
    langfuse.flush()
    return histories


def run_litellm(base_url: str, out: Path) -> dict[str, Any]:
    """LiteLLM's SDK with a logging callback that writes each call's StandardLoggingPayload as a line."""
    os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"  # its bundled copy: no fetch from the network
    import litellm
    from litellm.integrations.custom_logger import CustomLogger

    written: list[int] = []

    class PayloadFile(CustomLogger):
        def _write(self, kwargs: dict[str, Any]) -> None:
            with out.open("a", encoding="utf-8") as f:
                f.write(json.dumps(kwargs["standard_logging_object"], ensure_ascii=False, default=str) + "\n")
            written.append(1)

        def log_success_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
            self._write(kwargs)

        def log_failure_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
            self._write(kwargs)

    litellm.callbacks = [PayloadFile()]

    def chat(messages: list[dict[str, Any]], *, session: str, stream: bool = False, tools: Any = None,
             max_tokens: int = MAX_TOKENS) -> dict[str, Any]:
        kwargs = {"tools": tools} if tools else {}
        reply = litellm.completion(model=f"openai/{MODEL}", api_base=base_url, api_key=os.environ["OEL_TEST_KEY"],
                                   messages=messages, max_tokens=max_tokens, temperature=0, seed=7, stream=stream,
                                   litellm_session_id=session, num_retries=0, **kwargs)
        return _streamed(reply) if stream else _message_dict(reply.choices[0].message)
    histories = play(chat)
    deadline = time.monotonic() + FLUSH_WAIT_S
    while len(written) < EXPECTED_CALLS and time.monotonic() < deadline:  # callbacks run on LiteLLM's threads
        time.sleep(0.05)
    return histories


EXPECTED_CALLS = 7
"""Calls the agent makes: 4 in the shell session, 2 streamed, 1 refused."""
TOOLS = ("otel-genai", "openllmetry", "openinference", "litellm", "langfuse")


def main() -> None:
    tool, base_url, out, histories_file = sys.argv[1], sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4])
    otlp_url = sys.argv[5] if len(sys.argv) > 5 else ""
    if tool == "litellm":
        histories = run_litellm(base_url, out)
    elif tool == "langfuse":
        histories = run_langfuse(base_url, otlp_url)
    else:
        histories = run_otel(tool, base_url, otlp_url)
    histories_file.write_text(json.dumps(histories, ensure_ascii=False), encoding="utf-8")


if __name__ == "__main__":
    main()
