"""Tool calling through `oel serve` with the real `openai` client: tools and tool messages in, tool_calls out.

The tiny model cannot choose a tool, so the served backend answers the scripted question with `<tool_call>`
text (tests/logtools/scripted.py); everything from there on is the server's: parsing the calls, the
response and stream shapes, and the next request's tool messages rendered into the prompt.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "logtools"))
from agent import ASK, RUN_TOOL  # noqa: E402
from scripted import ToolCallingBackend  # noqa: E402

from oel.backends.tiny import tiny_chat_model  # noqa: E402
from oel.serving.chat_server import ChatServer, ServeConfig  # noqa: E402
from oel.serving.protocol import ChatCompletionRequest  # noqa: E402

KEY = "test-key-" + "s" * 24


@pytest.fixture(scope="module")
def client() -> Iterator[object]:
    openai = pytest.importorskip("openai")
    model, tok = tiny_chat_model(seed=1, dtype=torch.float32)
    cfg = ServeConfig(port=0, batch_window_s=0.0, max_tokens_limit=32, api_keys=[f"tests:{KEY}"], api_keys_env="")
    with ChatServer(ToolCallingBackend(model, tok, model_id="tiny-served", max_batch_size=2), cfg) as srv:
        yield openai.OpenAI(base_url=srv.url, api_key=KEY, max_retries=0)


def test_tool_calls_come_back_as_tool_calls_streamed_or_not(client: object) -> None:
    messages = [{"role": "user", "content": ASK}]
    done = client.chat.completions.create(model="m", messages=messages, tools=[RUN_TOOL], max_tokens=8)  # type: ignore
    choice = done.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert (call.function.name, json.loads(call.function.arguments)) == ("run", {"cmd": "ls /srv/app"})
    chunks = list(client.chat.completions.create(model="m", messages=messages, tools=[RUN_TOOL],  # type: ignore
                                                 max_tokens=8, stream=True))
    deltas = [c.choices[0].delta.tool_calls for c in chunks if c.choices and c.choices[0].delta.tool_calls]
    assert [d[0].function.name for d in deltas] == ["run"]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    # Without tools the same text is plain content: the server reads calls only when tools were offered.
    plain = client.chat.completions.create(model="m", messages=messages, max_tokens=8)  # type: ignore
    assert plain.choices[0].message.content.startswith("<tool_call>")


def test_tool_messages_are_rendered_into_the_prompt_with_the_tools_name() -> None:
    body = {"messages": [{"role": "user", "content": "q"},
                         {"role": "assistant", "content": None, "tool_calls": [
                             {"id": "c1", "type": "function", "function": {"name": "run", "arguments": '{"cmd": "ls"}'}}]},
                         {"role": "tool", "tool_call_id": "c1", "content": "a.txt"}], "tools": [RUN_TOOL]}
    prompt = ChatCompletionRequest.parse(body, 32).chat()
    assert [m.role for m in prompt] == ["system", "user", "assistant", "user"]
    assert '"name": "run"' in prompt[0].content  # the offered tools, listed for the model
    assert prompt[2].content == '<tool_call>{"name": "run", "arguments": {"cmd": "ls"}}</tool_call>'
    assert prompt[3].content == '<tool_result name="run">a.txt</tool_result>'


def test_the_gateway_stitches_a_tool_calling_conversation(tmp_path: Path) -> None:
    """Every request of a tool-calling agent that sends no session id lands in one stitched session: the stored
    answer is the text the next request renders (calls re-rendered), not the model's own spacing."""
    openai = pytest.importorskip("openai")
    from agent import FOLLOW_UP, RESULTS

    from oel.online.gateway import Gateway, GatewayConfig

    model, tok = tiny_chat_model(seed=1, dtype=torch.float32)
    cfg = GatewayConfig(store=str(tmp_path / "store.sqlite"), port=0, api_keys_env="", api_keys=[f"a:{KEY}"],
                        admin_api_keys_env="", max_tokens_limit=32)
    with Gateway(cfg, backend=ToolCallingBackend(model, tok, model_id="tiny", max_batch_size=2)) as gw:
        client = openai.OpenAI(base_url=gw.url, api_key=KEY, max_retries=0)
        history: list[dict] = [{"role": "user", "content": ASK}]
        sessions = []
        for _ in range(3):
            raw = client.chat.completions.with_raw_response.create(model="m", messages=history, tools=[RUN_TOOL],
                                                                   max_tokens=6)
            sessions.append(raw.headers["x-oel-session"])
            message = raw.parse().choices[0].message
            history.append(message.model_dump(exclude_none=True))
            for c in message.tool_calls or []:
                history.append({"role": "tool", "tool_call_id": c.id,
                                "content": RESULTS[json.loads(c.function.arguments)["cmd"]]})
            if not message.tool_calls:
                history.append({"role": "user", "content": FOLLOW_UP})
    assert len(set(sessions)) == 1, sessions
