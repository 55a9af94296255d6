"""Text the gateway must keep or refuse, over real loopback sockets, on both stores (SQLite, PostgreSQL).

U+0000 in an answer, an outcome or a session id is kept as SQLite keeps it (PostgreSQL's text
cannot hold it); X-OEL-Session is UTF-8 text or refused; a posted body nested deeper than any
request needs is a 400 naming the field, never a 500 from the serializer.
"""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from oel.backends.hf import HFBackend
from oel.backends.tiny import tiny_chat_model
from oel.online.gateway import Gateway, GatewayConfig

pytestmark = pytest.mark.usefixtures("one_thread")

KEY = "gail-key-" + "g" * 24
AUTH = {"Authorization": f"Bearer {KEY}"}
WAIT_S = 30.0
NUL_PROMPT = "q"
"""The tiny model (seed 5, greedy, 16 tokens) answers this with a U+0000 in its third character."""
DEEP = 300
SHALLOW = 60


@pytest.fixture(scope="module")
def backend() -> HFBackend:
    model, tok = tiny_chat_model(seed=5, dtype=torch.float32)
    return HFBackend(model, tok, model_id="tiny", prefix_cache_bytes=0)


@pytest.fixture
def gw(store_url: str, backend: HFBackend) -> Iterator[Gateway]:
    config = GatewayConfig(store=store_url, port=0, api_keys=[f"gail:{KEY}"], api_keys_env="", admin_api_keys_env="",
                           max_tokens_limit=16)
    with Gateway(config, backend=backend) as g:
        yield g


def call(g: Gateway, path: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> tuple[int, Any, Any]:
    host, port = g.httpd.server_address
    conn = http.client.HTTPConnection(host, port, timeout=WAIT_S)
    conn.request("POST", path, body=json.dumps(body).encode(), headers={**AUTH, **(headers or {})})
    resp = conn.getresponse()
    out = resp.status, resp.headers, json.loads(resp.read())
    conn.close()
    return out


def raw_post(g: Gateway, path: str, body: dict[str, Any], extra_head: bytes) -> tuple[int, dict[str, Any]]:
    """POST with header bytes as given (a client that sends latin-1 or a header twice)."""
    data = json.dumps(body).encode()
    with socket.create_connection(g.httpd.server_address, timeout=WAIT_S) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n".encode() + extra_head +
                     f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
        resp = http.client.HTTPResponse(sock)
        resp.begin()
        return resp.status, json.loads(resp.read())


def chat(content: str = NUL_PROMPT) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": content}], "max_tokens": 16, "temperature": 0, "seed": 1}


# ---- U+0000 ------------------------------------------------------------------------------------

def test_u0000_in_an_answer_an_outcome_and_a_session_id_is_kept(gw: Gateway) -> None:
    status, headers, answer = call(gw, "/v1/chat/completions", chat(), {"X-OEL-Session": "s1"})
    text = answer["choices"][0]["message"]["content"] if status == 200 else ""
    assert status == 200 and "\u0000" in text, answer
    ended = call(gw, "/v1/sessions/s1/end", {"outcome": "done\u0000"})
    assert ended[0] == 201, ended[2]
    again = call(gw, "/v1/sessions/s1/end", {"outcome": "done\u0000"})
    assert again[0] == 200 and again[2] == {"id": ended[2]["id"], "duplicate": True}
    assert call(gw, "/v1/sessions/a%00b/end", {"outcome": "x\u0000"})[0] == 404
    [stored] = gw.store.trajectories()
    assert stored.turns[0].response == text and stored.outcome == "done\u0000"


# ---- X-OEL-Session is UTF-8 text ---------------------------------------------------------------

def test_a_session_header_that_is_not_utf8_is_refused_and_utf8_is_read_as_such(gw: Gateway) -> None:
    status, err = raw_post(gw, "/v1/chat/completions", chat("hi"), b"X-OEL-Session: caf\xe9\r\n")
    assert status == 400 and err["error"]["param"] == "X-OEL-Session", err
    assert gw.store.stats()["exchanges_recorded"] == 0
    status, _ = raw_post(gw, "/v1/chat/completions", chat("hi"), "X-OEL-Session: café\r\n".encode())
    assert status == 200
    assert call(gw, "/v1/sessions/caf%C3%A9/end", {"outcome": "ok"})[0] == 201
    assert gw.store.trajectories()[0].meta["online"]["session"] == "café"


def test_a_session_header_sent_twice_is_refused(gw: Gateway) -> None:
    status, err = raw_post(gw, "/v1/chat/completions", chat("hi"), b"X-OEL-Session: a\r\nX-OEL-Session: b\r\n")
    assert status == 400 and "sent more than once" in err["error"]["message"]
    assert gw.store.stats()["exchanges_recorded"] == 0


# ---- nesting ---------------------------------------------------------------------------------------

def nested(depth: int) -> dict[str, Any]:
    inner: dict[str, Any] = {}
    for _ in range(depth - 1):
        inner = {"a": inner}
    return inner


def trajectory(meta: dict[str, Any]) -> dict[str, Any]:
    return {"id": "t", "env_id": "x", "seed": 0, "model_id": "m", "outcome": "done", "passed": True, "meta": meta,
            "turns": [{"prompt": [{"role": "user", "content": "hi"}], "observation": "hi", "response": "ok"}]}


def test_a_trajectory_nested_too_deep_is_a_400_naming_meta(gw: Gateway) -> None:
    status, _, err = call(gw, "/v1/trajectories", trajectory(nested(DEEP)), {"Idempotency-Key": "deep"})
    assert status == 400 and err["error"]["param"] == "meta" and "nested deeper" in err["error"]["message"]
    status, _, ok = call(gw, "/v1/trajectories", trajectory(nested(SHALLOW)), {"Idempotency-Key": "shallow"})
    assert status == 201, ok
    assert gw.store.stats()["trajectories_stored"] == 1
