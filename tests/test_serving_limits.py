"""Issue 25's failures, each against a real server on 127.0.0.1 over real sockets (a tiny random model).

A bad row never fails its batch-mates (surrogates refused at the edge; a row that still fails
in generation fails alone); slow-header and slow-body clients are closed at the deadline;
keyless trickling connections do not delay an authenticated request; an over-long prompt is a
400 before any compute; streaming delivers text before the last token is generated, and the
same text as without streaming; the official `openai` client works against `oel serve`.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import torch

from oel.backends.hf import HFBackend
from oel.backends.tiny import TINY_MAX_POSITIONS, tiny_chat_model
from oel.online.gateway import Gateway, GatewayConfig
from oel.serving.chat_server import ChatServer, ServeConfig
from oel.serving.admission import EVICT_GRACE_S
from oel.serving.connection import LINGER_S

pytestmark = pytest.mark.usefixtures("one_thread")

KEY = "carol-key-" + "c" * 24
AUTH = {"Authorization": f"Bearer {KEY}"}
WAIT_S = 30.0
DEADLINE_S = 1.0
SLACK_S = 1.0
"""Scheduling slack on a shared 2-core machine, on top of a deadline."""
POISON = "poison-row"


class HookedBackend(HFBackend):
    """The HF backend, with hooks: every generate_rows call is recorded; a row holding POISON fails
    in generation (a failure the edge cannot see); `gate`, while clear, holds every token after the
    first of a streamed row, and `hold`, while clear, holds the whole batch (to build one batch)."""

    def setup(self) -> HookedBackend:
        self.calls: list[list[str]] = []
        self.gate, self.hold, self.entered = threading.Event(), threading.Event(), threading.Event()
        self.gate.set()
        self.hold.set()
        return self

    def generate_rows(self, rows):  # type: ignore[no-untyped-def]
        self.calls.append([r.messages[-1].content for r in rows])
        self.entered.set()
        assert self.hold.wait(WAIT_S)
        if any(POISON in r.messages[-1].content for r in rows):
            raise RuntimeError("generation failed for a poisoned row")
        return super().generate_rows([_gated(r, self.gate) for r in rows])


def _gated(row: Any, gate: threading.Event) -> Any:
    if row.on_token is None:
        return row
    inner = row.on_token

    def on_token(step: int, token: int) -> None:
        inner(step, token)
        if step == 0:
            assert gate.wait(WAIT_S), "test left the gate closed"

    return type(row)(row.messages, row.params, row.seed, on_token)


@pytest.fixture(scope="module")
def backend() -> HookedBackend:
    model, tok = tiny_chat_model(seed=5, dtype=torch.float32)
    return HookedBackend(model, tok, model_id="tiny", max_batch_size=8, prefix_cache_bytes=0).setup()


@pytest.fixture(scope="module")
def srv(backend: HookedBackend) -> Iterator[ChatServer]:
    config = ServeConfig(port=0, api_keys=[f"carol:{KEY}"], api_keys_env="", client_timeout_s=DEADLINE_S,
                         max_connections=6, batch_window_s=0.05, max_tokens_limit=16)
    with ChatServer(backend, config) as s:
        yield s


def chat(content: str = "go", **fields: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": content}], "max_tokens": 6, "temperature": 0, "seed": 1, **fields}


def post(s: ChatServer, body: dict[str, Any] | bytes, path: str = "/v1/chat/completions") -> tuple[int, dict[str, Any]]:
    host, port = s.httpd.server_address
    conn = http.client.HTTPConnection(host, port, timeout=WAIT_S)
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    conn.request("POST", path, body=data, headers={"Content-Type": "application/json", **AUTH})
    resp = conn.getresponse()
    out = resp.status, json.loads(resp.read())
    conn.close()
    return out


def closed_after(sock: socket.socket, trickle: bytes, every_s: float = 0.1) -> tuple[float, bytes]:
    """Send `trickle` a byte at a time until the server closes; (seconds until closed, what it answered)."""
    start, answer = time.monotonic(), b""
    sock.setblocking(False)
    for i in range(len(trickle)):
        try:
            sock.send(trickle[i:i + 1])
        except OSError:
            break
        deadline = time.monotonic() + every_s
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except BlockingIOError:
                time.sleep(0.01)
                continue
            except OSError:
                return time.monotonic() - start, answer
            if not chunk:
                return time.monotonic() - start, answer
            answer += chunk
    return time.monotonic() - start, answer


# ---- a bad row never fails its batch-mates -------------------------------------------------

def in_one_batch(s: ChatServer, backend: HookedBackend, bodies: list[Any]) -> list[tuple[int, dict[str, Any]]]:
    """Hold the worker on a plug request, send `bodies` at once, release: the valid ones form one batch."""
    backend.hold.clear()
    backend.entered.clear()
    out: list[Any] = [None] * (len(bodies) + 1)

    def send(i: int, body: Any) -> None:
        out[i] = post(s, body)

    threads = [threading.Thread(target=send, args=(0, chat("plug")))]
    threads[0].start()
    assert backend.entered.wait(WAIT_S)
    threads += [threading.Thread(target=send, args=(i + 1, b)) for i, b in enumerate(bodies)]
    for t in threads[1:]:
        t.start()
    deadline = time.monotonic() + WAIT_S
    while s.batcher.queue_depth() < sum(1 for b in bodies if isinstance(b, dict)) and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)  # the surrogate request is answered at the edge meanwhile
    backend.hold.set()
    for t in threads:
        t.join(WAIT_S)
    return out[1:]


def test_a_surrogate_is_a_400_at_the_edge_and_its_batch_mates_are_answered(srv: ChatServer,
                                                                         backend: HookedBackend) -> None:
    surrogate = b'{"messages": [{"role": "user", "content": "a\\ud800b"}], "max_tokens": 4}'
    answers = in_one_batch(srv, backend, [chat(f"valid {i}") for i in range(4)] + [surrogate])
    assert [a[0] for a in answers] == [200, 200, 200, 200, 400]
    assert answers[-1][1]["error"]["param"] == "messages[0].content"
    assert "surrogate" in answers[-1][1]["error"]["message"]
    assert not any("\ud800" in c for call in backend.calls for c in call)  # never reached the model


def test_a_row_failing_in_generation_fails_alone(srv: ChatServer, backend: HookedBackend) -> None:
    backend.calls.clear()
    answers = in_one_batch(srv, backend, [chat(f"valid {i}") for i in range(3)] + [chat(POISON)])
    assert [a[0] for a in answers] == [200, 200, 200, 500]
    assert len(backend.calls[1]) == 4  # they were one batch, then rerun one by one
    assert all(a[1]["choices"][0]["message"]["content"] == post(srv, chat(f"valid {i}"))[1]["choices"][0]["message"]["content"]
               for i, a in enumerate(answers[:3]))


def test_a_surrogate_in_a_posted_trajectory_is_a_400_naming_the_field(tmp_path: Path) -> None:
    config = GatewayConfig(store=str(tmp_path / "s.sqlite"), port=0, responder="none", api_keys=[f"carol:{KEY}"],
                           api_keys_env="", admin_api_keys_env="")
    with Gateway(config) as gw:
        host, port = gw.httpd.server_address
        conn = http.client.HTTPConnection(host, port, timeout=WAIT_S)
        conn.request("POST", "/v1/trajectories", body=b'{"id": "t", "outcome": "x\\udc00"}', headers=AUTH)
        resp = conn.getresponse()
        err = json.loads(resp.read())
        assert resp.status == 400 and err["error"]["param"] == "outcome"
        assert gw.store.stats()["trajectories_stored"] == 0


# ---- slow clients --------------------------------------------------------------------------

def test_a_slow_header_client_is_closed_at_the_deadline(srv: ChatServer) -> None:
    with socket.create_connection(srv.httpd.server_address, timeout=WAIT_S) as sock:
        head = f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n".encode() * 4
        seconds, _ = closed_after(sock, head)
    assert seconds < DEADLINE_S + SLACK_S, seconds


def test_a_slow_body_client_gets_408_and_is_closed(srv: ChatServer) -> None:
    with socket.create_connection(srv.httpd.server_address, timeout=WAIT_S) as sock:
        body = json.dumps(chat("x" * 200)).encode()
        sock.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
                     f"Content-Length: {len(body)}\r\n\r\n".encode())
        seconds, answer = closed_after(sock, body)
    assert answer.startswith(b"HTTP/1.1 408 ") and b"body: not received within" in answer
    assert seconds < DEADLINE_S + LINGER_S + SLACK_S, seconds


def test_keyless_trickling_connections_do_not_delay_an_authenticated_request(srv: ChatServer) -> None:
    """max_connections=6, 6 keyless connections sending header bytes: an authenticated client is served at once."""
    socks = [socket.create_connection(srv.httpd.server_address, timeout=WAIT_S) for _ in range(6)]
    stop = threading.Event()

    def trickle() -> None:
        while not stop.wait(0.1):
            for sock in socks:
                try:
                    sock.send(b"X")
                except OSError:
                    pass

    for sock in socks:
        sock.send(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n")
    t = threading.Thread(target=trickle, daemon=True)
    t.start()
    try:
        time.sleep(EVICT_GRACE_S + 0.1)
        assert srv.httpd.open_connections == 6
        start = time.monotonic()
        host, port = srv.httpd.server_address
        conn = http.client.HTTPConnection(host, port, timeout=WAIT_S)
        conn.request("GET", "/healthz")
        assert conn.getresponse().status == 200
        conn.close()
        status, body = post(srv, chat())
        assert status == 200 and body["usage"]["completion_tokens"] >= 1
        assert time.monotonic() - start < 2.0
    finally:
        stop.set()
        t.join()
        for sock in socks:
            sock.close()


# ---- prompt length ---------------------------------------------------------------------------

def test_a_prompt_over_the_context_is_a_400_before_any_compute(srv: ChatServer, backend: HookedBackend) -> None:
    backend.calls.clear()
    status, err = post(srv, chat("x" * (TINY_MAX_POSITIONS + 10)))
    assert status == 400 and err["error"]["param"] == "messages"
    assert f"context of {TINY_MAX_POSITIONS} tokens" in err["error"]["message"]
    assert backend.calls == []


# ---- streaming ---------------------------------------------------------------------------------

def test_streaming_sends_text_before_the_last_token_is_generated(srv: ChatServer, backend: HookedBackend) -> None:
    whole = post(srv, chat("stream me", max_tokens=8))[1]
    assert whole["usage"]["completion_tokens"] >= 3
    backend.gate.clear()  # after its first token the row waits: the rest is not generated yet
    try:
        host, port = srv.httpd.server_address
        conn = http.client.HTTPConnection(host, port, timeout=WAIT_S)
        conn.request("POST", "/v1/chat/completions", body=json.dumps(chat("stream me", max_tokens=8, stream=True)),
                     headers=AUTH)
        resp = conn.getresponse()
        assert resp.status == 200 and resp.getheader("Content-Type").startswith("text/event-stream")
        pieces = []
        while not pieces:
            line = resp.readline().decode()
            if line.startswith("data: {"):
                pieces += [c["delta"].get("content") for c in json.loads(line[6:])["choices"] if c["delta"].get("content")]
        assert not backend.gate.is_set()  # text arrived while generation is held after the first token
    finally:
        backend.gate.set()
    rest = resp.read().decode()
    conn.close()
    events = [json.loads(line[6:]) for line in rest.splitlines() if line.startswith("data: {")]
    pieces += [e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"]]
    assert "".join(pieces) == whole["choices"][0]["message"]["content"]
    assert rest.rstrip().endswith("data: [DONE]")


def test_openai_client_against_oel_serve_streaming_and_not(srv: ChatServer) -> None:
    client = openai.OpenAI(base_url=srv.url, api_key=KEY, max_retries=0)
    assert [m.id for m in client.models.list()] == ["tiny"]
    answer = client.chat.completions.create(model="tiny", **chat("hello", max_tokens=6))
    stream = client.chat.completions.create(model="tiny", **chat("hello", max_tokens=6), stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == answer.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == answer.usage.completion_tokens
    host, port = srv.httpd.server_address
    conn = http.client.HTTPConnection(host, port, timeout=WAIT_S)
    conn.request("GET", "/metrics", headers=AUTH)
    page = conn.getresponse().read().decode()
    assert "oel_serve_first_token_seconds_count" in page and "oel_serve_requests_total" in page


def test_oversized_headers_are_431_and_closed(srv: ChatServer) -> None:
    with socket.create_connection(srv.httpd.server_address, timeout=WAIT_S) as sock:
        sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n")
        resp = http.client.HTTPResponse(sock)
        resp.begin()
        err = json.loads(resp.read())
    assert resp.status == 431 and err["error"]["message"].startswith("request headers")


@pytest.mark.parametrize("key", [KEY, None])
def test_a_body_over_the_limit_is_answered_not_reset(srv: ChatServer, key: str | None) -> None:
    """A 5 MiB body: 413 with a key (over max_body_bytes), 401 without; either way the client, which
    writes its whole body before reading, reads the answer instead of a broken pipe."""
    host, port = srv.httpd.server_address
    conn = http.client.HTTPConnection(host, port, timeout=WAIT_S)
    conn.request("POST", "/v1/chat/completions", body=b'{"x": "' + b"x" * (5 << 20) + b'"}',
                 headers={"Authorization": f"Bearer {key}"} if key else {})
    resp = conn.getresponse()
    err = json.loads(resp.read())
    conn.close()
    assert resp.status == (413 if key else 401), err
    assert err["error"]["message"].startswith("request body of" if key else "missing or invalid API key")


@pytest.mark.parametrize("bad", [{"max_queue": 0}, {"max_keyless_per_ip": 0}, {"max_prompt_tokens": -1},
                                 {"client_timeout_s": 0.0}, {"batch_window_s": float("inf")},
                                 {"keyless_rate_limit_per_s": -1.0}, {"port": 70000}])
def test_both_servers_refuse_a_bad_shared_limit_by_name(tmp_path: Path, bad: dict[str, Any]) -> None:
    name = next(iter(bad))
    with pytest.raises(ValueError, match=rf"^{name}: must"):
        ServeConfig(api_keys_env="", **bad)
    with pytest.raises(ValueError, match=rf"^{name}: must"):
        GatewayConfig(store=str(tmp_path / "s.sqlite"), **bad)
    # and each its own: the serving batch, the gateway's per-client burst
    with pytest.raises(ValueError, match=r"^max_batch_tokens: must be >= 1"):
        ServeConfig(api_keys_env="", max_batch_tokens=0)
    with pytest.raises(ValueError, match=r"^rate_limit_burst: must be >= 1"):
        GatewayConfig(store=str(tmp_path / "s.sqlite"), rate_limit_burst=0)
