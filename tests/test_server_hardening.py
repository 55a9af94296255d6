"""`oel serve` hardening: API keys, request validation, overload, a loopback load, batch invariance.

Pure functions (parse_chat_request, ApiKeys) are tested directly; everything else against a
real server on 127.0.0.1 (port 0) with a tiny random model. Where a test must hold a batch
(queue full, a batch of exactly N), the backend waits on an Event inside generate_rows:
the HTTP server, the queue and the model are the real ones.
"""

from __future__ import annotations

import http.client
import json
import logging
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch

from oel.backends.hf import HFBackend
from oel.backends.tiny import tiny_chat_model
from oel.errors import ConfigError
from oel.serving.auth import ApiKeys, is_loopback, require_keys_off_loopback
from oel.serving.chat_server import ChatServer, ServeConfig
from oel.serving.protocol import RequestError, parse_chat_request

KEY = "alice-key-" + "a" * 24
OTHER_KEY = "bob-key-" + "b" * 24
LIMIT = 16
WAIT_S = 30.0
"""Upper bound on any wait for the server in these tests (they normally take milliseconds)."""
LOAD_REQUESTS = 200
LOAD_CONCURRENCY = 16


def chat(content: str = "go", **fields: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": content}], "max_tokens": 4, **fields}


# -- parse_chat_request: a pure function ---------------------------------------------------
@pytest.mark.parametrize("field,value", [
    ("max_tokens", 0), ("max_tokens", -1), ("max_tokens", True), ("max_tokens", 5.0), ("max_tokens", "5"),
    ("max_tokens", LIMIT + 1), ("max_completion_tokens", 0),
    ("temperature", float("nan")), ("temperature", float("inf")), ("temperature", -0.1), ("temperature", 2.5),
    ("temperature", True), ("temperature", "1"),
    ("top_p", float("nan")), ("top_p", float("-inf")), ("top_p", 0), ("top_p", 1.01), ("top_p", False),
    ("top_k", -1), ("top_k", 2.5), ("top_k", True), ("seed", 1.5), ("seed", True), ("seed", "7"), ("seed", -1),
    ("seed", 2**64), ("n", 2), ("n", True), ("stream", "no"), ("stream_options", "usage"), ("model", 3),
    ("stop", ["\n"]), ("tools", "all"), ("logprobs", True), ("frequency_penalty", 0.5),
    ("chat_template_kwargs", "think"),
])
def test_each_bad_field_is_a_400_naming_it(field: str, value: Any) -> None:
    with pytest.raises(RequestError) as e:
        parse_chat_request(chat(**{field: value}), LIMIT)
    assert e.value.status == 400 and e.value.param == field and str(e.value).startswith(f"{field}: ")


@pytest.mark.parametrize("messages,param", [
    (None, "messages"), ([], "messages"), ("hi", "messages"), ([1], "messages[0]"),
    ([{"role": "robot", "content": "x"}], "messages[0].role"), ([{"content": "x"}], "messages[0].role"),
    ([{"role": "user", "content": "x"}, {"role": "user", "content": 5}], "messages[1].content"),
    ([{"role": "user", "content": "x", "audio": {"id": "a"}}], "messages[0].audio"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}], "messages[0].content[0].type"),
])
def test_bad_messages_name_the_message_and_field(messages: Any, param: str) -> None:
    with pytest.raises(RequestError) as e:
        parse_chat_request({"messages": messages}, LIMIT)
    assert e.value.status == 400 and e.value.param == param


def test_thinking_switch_must_be_a_boolean() -> None:
    with pytest.raises(RequestError, match=r"^chat_template_kwargs.enable_thinking: "):
        parse_chat_request(chat(chat_template_kwargs={"enable_thinking": "yes"}), LIMIT)


def test_differing_token_limits_are_refused() -> None:
    with pytest.raises(RequestError, match="max_completion_tokens"):
        parse_chat_request(chat(max_tokens=4, max_completion_tokens=5), LIMIT)


def test_absent_null_and_neutral_fields_take_defaults() -> None:
    body = {"messages": [{"role": "system", "content": "s"},
                         {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}],
            "temperature": None, "top_p": None, "seed": None, "stream": False, "n": 1, "stop": None,
            "frequency_penalty": 0.0, "logprobs": False, "tools": [], "user": "ignored", "model": "any"}
    messages, params = parse_chat_request(body, LIMIT)
    assert [m.content for m in messages] == ["s", "ab"]
    assert (params.temperature, params.top_p, params.top_k, params.max_new_tokens) == (1.0, 1.0, 0, LIMIT)
    assert 0 <= params.seed < 2**31 and params.enable_thinking is False
    _, params = parse_chat_request(chat(max_tokens=None, max_completion_tokens=3, temperature=0, top_p=1, top_k=5, seed=2**64 - 1,
                                        chat_template_kwargs={"enable_thinking": True}), LIMIT)
    assert (params.max_new_tokens, params.temperature, params.top_k, params.seed, params.enable_thinking) == \
           (3, 0.0, 5, 2**64 - 1, True)


# -- ApiKeys: three sources, client names, never the key ---------------------------------------
def test_keys_from_list_env_and_file_with_client_names(tmp_path: Path) -> None:
    keyfile = tmp_path / "keys.txt"
    keyfile.write_text(f"# ops keys\n\n  carol:{'c' * 20}   # rotated monthly\n{'d' * 20}\n")
    keyfile.chmod(0o600)
    keys = ApiKeys.load([f"alice:{KEY}"], file=str(keyfile), env_var="KEYS", environ={"KEYS": f" bob:{OTHER_KEY}, ,"})
    assert len(keys) == 4 and keys.clients == ["alice", "bob", "carol", "keys.txt:4"]
    assert keys.client(f"Bearer {KEY}") == "alice" and keys.client(f"bearer  {OTHER_KEY} ") == "bob"
    assert keys.client("Bearer " + "d" * 20) == "keys.txt:4"
    for header in (None, "", "Bearer", f"Basic {KEY}", f"Bearer {KEY}x", KEY, "Bearer " + "c" * 19):
        assert not keys.check(header)
    assert KEY not in repr(keys) and "c" * 20 not in repr(keys)


@pytest.mark.parametrize("entries,match", [
    (["short"], r"^api_keys\[0\]: API key shorter than"), ([f"a:{KEY}", f"b:{KEY}"], r"^api_keys\[1\]: the same"),
    ([f"a:{KEY} x"], r"^api_keys\[0\]: an API key must be visible ASCII"),
])
def test_bad_keys_are_refused_naming_the_place_not_the_key(entries: list[str], match: str) -> None:
    with pytest.raises(ConfigError, match=match) as e:
        ApiKeys.load(entries, env_var="")
    assert KEY not in str(e.value) and "\n" not in str(e.value)


def test_key_file_errors_name_file_and_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        ApiKeys.load(file=str(tmp_path / "missing.txt"), env_var="")
    bad = tmp_path / "keys.txt"
    bad.write_text(f"ok:{KEY}\nalice {OTHER_KEY}\n")
    with pytest.raises(ConfigError, match=r"^keys.txt:2: ") as e:
        ApiKeys.load(file=str(bad), env_var="")
    assert OTHER_KEY not in str(e.value)


def test_no_key_is_only_allowed_on_loopback() -> None:
    for host in ("127.0.0.1", "127.8.0.1", "localhost", "::1"):
        assert is_loopback(host)
        require_keys_off_loopback(host, ApiKeys())
    for host in ("0.0.0.0", "", "::", "192.168.1.5", "example.org"):
        assert not is_loopback(host)
        with pytest.raises(ConfigError, match=r"^host: .* no API key is configured") as e:
            require_keys_off_loopback(host, ApiKeys())
        assert "\n" not in str(e.value)
        require_keys_off_loopback(host, ApiKeys.load([KEY], env_var=""))


def test_serve_config_takes_keys_from_overrides_and_never_shows_them(monkeypatch: pytest.MonkeyPatch) -> None:
    from oel.config import load_config

    monkeypatch.delenv("OEL_API_KEYS", raising=False)

    one, two = (load_config(ServeConfig, None, [o]) for o in (f"api_keys={KEY}", f"api_keys=[a:{KEY}, b:{OTHER_KEY}]"))
    assert one.load_api_keys().clients == ["api_keys[0]"] and two.load_api_keys().clients == ["a", "b"]
    assert KEY not in repr(two) and "api_keys=<2 keys>" in repr(two)


# -- a real server ---------------------------------------------------------------------------
class GatedBackend(HFBackend):
    """The HF backend; while `gate` is clear, generate_rows waits on it (holding the batch)."""

    def setup_gate(self) -> "GatedBackend":
        self.gate, self.entered, self.batch_sizes = threading.Event(), threading.Event(), []
        self.gate.set()
        return self

    def generate_rows(self, rows):  # type: ignore[no-untyped-def]
        self.batch_sizes.append(len(rows))
        self.entered.set()
        assert self.gate.wait(WAIT_S), "test left the gate closed"
        return super().generate_rows(rows)


def backend(dtype: torch.dtype = torch.float32, prefix_cache_bytes: int = 0) -> GatedBackend:
    model, tok = tiny_chat_model(seed=3, dtype=dtype)
    return GatedBackend(model, tok, model_id="tiny", max_batch_size=16,
                        prefix_cache_bytes=prefix_cache_bytes).setup_gate()


def server(b: HFBackend, **cfg: Any) -> ChatServer:
    """A server (not started: `with server(...) as s` starts and closes it) with alice's key."""
    defaults: dict[str, Any] = dict(port=0, api_keys=[f"alice:{KEY}"], api_keys_env="", max_tokens_limit=LIMIT)
    return ChatServer(b, ServeConfig(**{**defaults, **cfg}))


@pytest.fixture(scope="module")
def srv(one_thread: None) -> Iterator[ChatServer]:
    with server(backend(), client_timeout_s=1.0, max_body_bytes=4096) as s:
        yield s


def request(s: ChatServer, method: str, path: str, body: Any = None, key: str | None = KEY,
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], dict[str, Any]]:
    host, port = s.httpd.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=WAIT_S)
    hdrs = {**({"Authorization": f"Bearer {key}"} if key else {}), **(headers or {})}
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    conn.request(method, path, body=data, headers=hdrs)
    resp = conn.getresponse()
    out = resp.status, resp.headers, json.loads(resp.read() or b"{}")
    conn.close()
    return out


def raw(s: ChatServer, data: bytes, *, half_close: bool = False) -> tuple[int, dict[str, str], dict[str, Any]]:
    """Send bytes as they are (headers http.client would fix), read one response."""
    sock = socket.create_connection(s.httpd.server_address[:2], timeout=WAIT_S)
    sock.sendall(data)
    if half_close:
        sock.shutdown(socket.SHUT_WR)
    resp = http.client.HTTPResponse(sock)
    resp.begin()
    out = resp.status, resp.headers, json.loads(resp.read() or b"{}")
    sock.close()
    return out


def post_raw(headers: str, body: bytes = b"") -> bytes:
    return (f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n{headers}\r\n"
            .encode() + body)


@pytest.mark.parametrize("method,path,body", [
    ("GET", "/v1/models", None), ("POST", "/v1/chat/completions", chat()), ("GET", "/nowhere", None),
    ("DELETE", "/v1/models", None),
])
@pytest.mark.parametrize("key", [None, OTHER_KEY])
def test_every_endpoint_wants_a_valid_key(srv: ChatServer, method: str, path: str, body: Any,
                                          key: str | None, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        status, headers, err = request(srv, method, path, body, key=key)
    assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer ")
    assert err["error"]["type"] == "authentication_error" and "API key" in err["error"]["message"]
    assert ("invalid_token" in headers["WWW-Authenticate"]) == (key is not None)
    assert OTHER_KEY not in caplog.text + json.dumps(err) and KEY not in caplog.text


def test_a_valid_key_is_served_and_never_logged(srv: ChatServer, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        assert request(srv, "GET", "/v1/models")[0] == 200
        status, _, body = request(srv, "POST", "/v1/chat/completions", chat(temperature=0))
    assert status == 200 and body["usage"]["completion_tokens"] >= 1
    assert KEY not in caplog.text


@pytest.mark.parametrize("headers,status,field", [
    ("Content-Length: abc\r\n", 400, "Content-Length"), ("Content-Length: -5\r\n", 400, "Content-Length"),
    ("Content-Length: +5\r\n", 400, "Content-Length"), ("", 400, "Content-Length"),
    ("Content-Length: 2\r\nContent-Length: 3\r\n", 400, "Content-Length"),
    ("Transfer-Encoding: chunked\r\n", 400, "Transfer-Encoding"), ("Content-Length: 99999\r\n", 413, "request body"),
])
def test_bad_content_length_is_a_4xx_naming_it(srv: ChatServer, headers: str, status: int, field: str) -> None:
    got, hdrs, err = raw(srv, post_raw(headers, b"{}"))
    assert got == status and err["error"]["message"].startswith(field) and hdrs["Connection"] == "close"


def test_short_or_slow_bodies_do_not_hold_the_server(srv: ChatServer) -> None:
    assert raw(srv, post_raw("Content-Length: 50\r\n", b'{"messages":'), half_close=True)[0] == 400
    assert raw(srv, post_raw("Content-Length: 50\r\n", b'{"messages":'))[0] == 408  # client_timeout_s = 1
    assert raw(srv, post_raw("Content-Length: 4\r\n", b"\xff\xfe{}"))[0] == 400  # not UTF-8
    assert raw(srv, post_raw("Content-Length: 4000\r\n", b"[" * 2000 + b"]" * 2000))[0] == 400  # too deep


@pytest.mark.parametrize("body,param", [
    (b'{"messages": [{"role": "user", "content": "x"}], "temperature": NaN}', "temperature"),
    (json.dumps(chat(max_tokens=0)).encode(), "max_tokens"), (json.dumps(chat(top_k=True)).encode(), "top_k"),
    (json.dumps(chat(stream="yes")).encode(), "stream"),
])
def test_bad_fields_over_http_keep_the_connection(srv: ChatServer, body: bytes, param: str) -> None:
    host, port = srv.httpd.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=WAIT_S)
    conn.request("POST", "/v1/chat/completions", body=body, headers={"Authorization": f"Bearer {KEY}"})
    resp = conn.getresponse()
    err = json.loads(resp.read())
    assert resp.status == 400 and err["error"]["param"] == param and err["error"]["message"].startswith(param)
    sock = conn.sock  # the body was read, so the connection stays open for the next request
    conn.request("POST", "/v1/chat/completions", body=json.dumps(chat()).encode(),
                 headers={"Authorization": f"Bearer {KEY}"})
    assert conn.getresponse().status == 200 and conn.sock is sock
    conn.close()


def test_wrong_method_is_405_with_allow(srv: ChatServer) -> None:
    status, headers, _ = request(srv, "GET", "/v1/chat/completions")
    assert status == 405 and headers["Allow"] == "POST"


def post_in_thread(s: ChatServer, body: dict[str, Any], out: list[Any]) -> threading.Thread:
    t = threading.Thread(target=lambda: out.append(request(s, "POST", "/v1/chat/completions", body)), daemon=True)
    t.start()
    return t


def wait_for(condition: Any, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def test_a_full_queue_answers_503_with_retry_after(one_thread: None) -> None:
    b = backend()
    with server(b, max_queue=1, max_batch_size=1, batch_window_s=0) as s:
        b.gate.clear()
        answers: list[Any] = []
        first = post_in_thread(s, chat(), answers)
        assert b.entered.wait(WAIT_S)  # the worker holds request 1 inside generate_rows
        second = post_in_thread(s, chat(), answers)
        wait_for(lambda: s.batcher.queue_depth() == 1, "request 2 to be queued")
        status, headers, err = request(s, "POST", "/v1/chat/completions", chat())
        assert status == 503 and headers["Retry-After"] == "1" and "busy" in err["error"]["message"]
        b.gate.set()
        for t in (first, second):
            t.join(WAIT_S)
        assert [a[0] for a in answers] == [200, 200]


def test_connections_without_a_request_hold_no_slot_and_busy_slots_get_503(one_thread: None) -> None:
    """max_connections: connections that sent no keyed request hold no slot (a keyed client is served
    beside them at once); when every slot holds a request in progress, a new keyed request gets 503."""
    b = backend()
    with server(b, max_connections=2, max_batch_size=1, batch_window_s=0) as s:
        idle = [socket.create_connection(s.httpd.server_address[:2], timeout=WAIT_S) for _ in range(3)]
        wait_for(lambda: s.httpd.open_connections == 3, "the idle connections to be open")
        assert request(s, "GET", "/v1/models")[0] == 200
        b.gate.clear()
        answers: list[Any] = []
        busy = [post_in_thread(s, chat(), answers)]
        assert b.entered.wait(WAIT_S)
        busy.append(post_in_thread(s, chat(), answers))
        wait_for(lambda: s.batcher.queue_depth() == 1, "request 2 to be queued")
        status, headers, err = request(s, "GET", "/v1/models")
        assert status == 503 and headers["Retry-After"] == "1" and "connections" in err["error"]["message"]
        b.gate.set()
        for t in busy:
            t.join(WAIT_S)
        assert [a[0] for a in answers] == [200, 200]
        assert s.httpd.open_connections >= len(idle)  # never closed to make room
        for sock in idle:
            sock.close()
        assert request(s, "GET", "/v1/models")[0] == 200


def test_non_loopback_without_a_key_is_refused_before_binding() -> None:
    model, tok = tiny_chat_model(seed=3, dtype=torch.float32)
    with pytest.raises(ConfigError, match="^host: '0.0.0.0' is not a loopback address"):
        ChatServer(HFBackend(model, tok, model_id="tiny"), ServeConfig(host="0.0.0.0", port=0, api_keys_env=""))


def test_loopback_load_every_request_gets_a_proper_answer(one_thread: None) -> None:
    """200 requests, 16 at a time, over 8 connection slots and a queue of 4: 200 or 503, never a hang."""
    with server(backend(), max_connections=8, max_queue=4, max_batch_size=4, batch_window_s=0.005) as s:
        def one(i: int) -> int | str:
            try:
                return request(s, "POST", "/v1/chat/completions", chat("go " * (i % 7), seed=i, max_tokens=2))[0]
            except (OSError, http.client.HTTPException) as e:
                return type(e).__name__
        with ThreadPoolExecutor(LOAD_CONCURRENCY) as pool:
            statuses = Counter(pool.map(one, range(LOAD_REQUESTS)))
        assert set(statuses) <= {200, 503} and statuses[200] > 0, statuses
        assert request(s, "GET", "/v1/models")[0] == 200
        assert request(s, "POST", "/v1/chat/completions", chat())[0] == 200


# -- batch invariance ------------------------------------------------------------------------
SEEDED = [chat("left " * (1 + 3 * i), seed=100 + i, max_tokens=LIMIT, temperature=1.0) for i in range(6)]


def texts_in_one_batch(s: ChatServer, b: GatedBackend, bodies: list[dict[str, Any]]) -> list[str]:
    """Hold the worker on a plug request, queue `bodies`, release: they are generated as one batch."""
    b.gate.clear()
    b.entered.clear()
    plug: list[Any] = []
    threads = [post_in_thread(s, chat("plug"), plug)]
    assert b.entered.wait(WAIT_S)
    answers: list[list[Any]] = [[] for _ in bodies]
    for body, out in zip(bodies, answers):
        threads.append(post_in_thread(s, body, out))
    wait_for(lambda: s.batcher.queue_depth() == len(bodies), "every request to be queued")
    b.gate.set()
    for t in threads:
        t.join(WAIT_S)
    return [out[0][2]["choices"][0]["message"]["content"] for out in answers]


def alone(s: ChatServer, body: dict[str, Any]) -> str:
    return request(s, "POST", "/v1/chat/completions", body)[2]["choices"][0]["message"]["content"]


def test_float32_answer_is_the_same_alone_with_one_other_and_in_a_batch(one_thread: None) -> None:
    b = backend(torch.float32)
    with server(b, max_batch_size=16, batch_window_s=0) as s:
        solo = [alone(s, body) for body in SEEDED]
        pair = texts_in_one_batch(s, b, [SEEDED[0], SEEDED[-1]])
        b.batch_sizes.clear()
        batch = texts_in_one_batch(s, b, SEEDED)
        assert b.batch_sizes == [1, len(SEEDED)]  # the plug, then all six together
    assert pair == [solo[0], solo[-1]] and batch == solo


def test_batch_invariant_mode_gives_bf16_the_same_answers(one_thread: None) -> None:
    b = backend(torch.bfloat16)
    with server(b, batch_invariant=True, batch_window_s=0) as s:
        solo = [alone(s, body) for body in SEEDED]
        b.batch_sizes.clear()
        together = texts_in_one_batch(s, b, SEEDED)
        assert set(b.batch_sizes) == {1}
    assert together == solo


def test_batch_invariant_mode_refuses_a_prefix_store() -> None:
    with pytest.raises(ConfigError, match="^batch_invariant: "):
        server(backend(prefix_cache_bytes=1 << 20), batch_invariant=True)
