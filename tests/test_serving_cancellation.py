"""Work for clients that have gone, over real loopback sockets against a real gateway (tiny model).

A client that drops its request gets its generation cancelled (streamed or not) and nothing
stored for it; a streaming client that stops reading is cut at `client_timeout_s` and its
exchange recorded as incomplete; over-long prompts are refused by their bytes before any
tokenizing, and what is tokenized never runs in the pool where the store writes.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch

from oel.backends.hf import HFBackend
from oel.backends.tiny import tiny_chat_model
from oel.online.gateway import Gateway, GatewayConfig

pytestmark = pytest.mark.usefixtures("one_thread")

KEY = "fern-key-" + "f" * 24
AUTH = {"Authorization": f"Bearer {KEY}"}
WAIT_S = 60.0
LONG = "go"
"""A prompt the tiny model (seed 5, greedy) answers with 1,442 tokens: every long answer below."""
LONGEST = "tell"
"""2,247 tokens: a stream of ~300 KB at max_tokens 2048, more than a stalled reader's buffers take."""
LONGEST_TOKENS = 2048
MAX_TOKENS = 1024
DROPPED = 3
DEADLINE_S = 1.0
STALLED = 2
CUT_SLACK_S = 15.0
"""Generation of a long answer (~2 s alone) plus scheduling on a shared 2-core machine."""
BIG_PROMPT_CHARS = 340_000
"""CJK characters of each over-long prompt: ~1 MB of UTF-8, seconds of tokenizing."""
BIG_PROMPTS = 6
STORE_WRITE_BOUND_S = 1.0
"""A trajectory POST takes ~10 ms; tokenizing in the store's pool made it wait seconds."""


class RecordingBackend(HFBackend):
    """The HF backend, recording each row it was given and each generation it returned, and the
    thread each prompt was tokenized on; `hold`, while clear, keeps a batch from starting."""

    def setup(self) -> RecordingBackend:
        self.rows: list[Any] = []
        self.generations: list[Any] = []
        self.encoded_on: list[str] = []
        self.hold, self.entered = threading.Event(), threading.Event()
        self.hold.set()
        return self

    def encode(self, messages, enable_thinking=False):  # type: ignore[no-untyped-def]
        self.encoded_on.append(threading.current_thread().name)
        return super().encode(messages, enable_thinking)

    def generate_rows(self, rows):  # type: ignore[no-untyped-def]
        self.rows.extend(rows)
        self.entered.set()
        assert self.hold.wait(WAIT_S)
        gens = super().generate_rows(rows)
        self.generations.extend(gens)
        return gens


@pytest.fixture(scope="module")
def backend() -> RecordingBackend:
    model, tok = tiny_chat_model(seed=5, dtype=torch.float32)
    return RecordingBackend(model, tok, model_id="tiny", max_batch_size=8, prefix_cache_bytes=0).setup()


def gateway(tmp_path: Path, backend: HFBackend, **cfg: Any) -> Gateway:
    defaults: dict[str, Any] = dict(store=str(tmp_path / "store.sqlite"), port=0, api_keys=[f"fern:{KEY}"],
                                    api_keys_env="", admin_api_keys_env="", max_tokens_limit=2048,
                                    batch_window_s=0.05)
    return Gateway(GatewayConfig(**{**defaults, **cfg}), backend=backend)


@pytest.fixture
def gw(tmp_path: Path, backend: RecordingBackend) -> Iterator[Gateway]:
    backend.rows.clear()
    backend.generations.clear()
    with gateway(tmp_path, backend) as g:
        yield g


def chat(content: str = LONG, **fields: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": content}], "max_tokens": MAX_TOKENS, "temperature": 0,
            "seed": 1, **fields}


def post(g: Gateway, body: dict[str, Any], path: str = "/v1/chat/completions",
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    host, port = g.httpd.server_address
    conn = http.client.HTTPConnection(host, port, timeout=WAIT_S)
    conn.request("POST", path, body=json.dumps(body, ensure_ascii=False).encode(), headers={**AUTH, **(headers or {})})
    resp = conn.getresponse()
    out = resp.status, json.loads(resp.read())
    conn.close()
    return out


def request_bytes(body: dict[str, Any]) -> bytes:
    data = json.dumps(body).encode()
    return (f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
            f"Content-Length: {len(data)}\r\n\r\n").encode() + data


def wait_until(condition: Any, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def read_until(sock: socket.socket, marker: bytes, times: int = 1) -> bytes:
    got = b""
    while got.count(marker) < times:
        chunk = sock.recv(4096)
        if not chunk:
            break
        got += chunk
    return got


def cancelled(row: Any) -> bool:
    check = getattr(row, "cancelled", None)
    return bool(check and check())


# ---- clients that drop their request ----------------------------------------------------------

def test_the_long_answers_run_to_max_tokens(gw: Gateway) -> None:
    """The premise of the tests below: undisturbed, each of their requests generates its max_tokens."""
    status, answer = post(gw, chat())
    assert status == 200 and answer["usage"]["completion_tokens"] == MAX_TOKENS
    status, answer = post(gw, chat(LONGEST, max_tokens=LONGEST_TOKENS))
    assert status == 200 and answer["usage"]["completion_tokens"] == LONGEST_TOKENS


def test_dropped_non_streamed_requests_are_neither_generated_nor_stored(gw: Gateway,
                                                                        backend: RecordingBackend) -> None:
    backend.hold.clear()
    backend.entered.clear()
    socks = [socket.create_connection(gw.httpd.server_address, timeout=WAIT_S) for _ in range(DROPPED)]
    for sock in socks:
        sock.sendall(request_bytes(chat()))
    try:
        assert backend.entered.wait(WAIT_S)
        assert wait_until(lambda: len(backend.rows) == DROPPED, WAIT_S), "the requests never reached one batch"
        for sock in socks:
            sock.close()
        wait_until(lambda: all(cancelled(r) for r in backend.rows), 5.0)
    finally:
        backend.hold.set()
    assert wait_until(lambda: len(backend.generations) == DROPPED, WAIT_S)
    assert all(g.completion_tokens < MAX_TOKENS // 10 for g in backend.generations), \
        [g.completion_tokens for g in backend.generations]
    time.sleep(0.5)  # an answer generated to the end would be stored now
    assert gw.store.stats()["exchanges_recorded"] == 0


def test_dropped_streams_stop_generating_and_the_next_request_does_not_wait(gw: Gateway,
                                                                          backend: RecordingBackend) -> None:
    socks = []
    for _ in range(DROPPED):
        sock = socket.create_connection(gw.httpd.server_address, timeout=WAIT_S)
        sock.sendall(request_bytes(chat(stream=True)))
        socks.append(sock)
    for sock in socks:
        assert read_until(sock, b"data: ", times=2)  # its first token is out: generation is under way
        sock.close()
    status, answer = post(gw, chat("one token", max_tokens=1))
    assert status == 200 and answer["usage"]["completion_tokens"] == 1
    dropped = backend.generations[:-1]  # the last one is the one-token chat's
    assert dropped and all(g.completion_tokens < MAX_TOKENS for g in dropped), \
        [g.completion_tokens for g in dropped]


# ---- clients that stop reading ------------------------------------------------------------------

def test_stalled_stream_readers_are_cut_and_recorded_incomplete(tmp_path: Path, backend: RecordingBackend) -> None:
    """max_connections = the stalled readers: once they are cut (client_timeout_s after their last
    write was taken), a keyed chat is answered, and each stalled exchange is stored as incomplete."""
    with gateway(tmp_path, backend, client_timeout_s=DEADLINE_S, max_connections=STALLED) as g:
        socks = []
        for i in range(STALLED):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fills after a few KB
            sock.connect(g.httpd.server_address)
            sock.sendall(request_bytes(chat(LONGEST, max_tokens=LONGEST_TOKENS, stream=True)))
            socks.append(sock)
        try:
            t0 = time.monotonic()
            assert wait_until(lambda: g.store.stats().get("exchanges_incomplete") == STALLED, CUT_SLACK_S), \
                g.store.stats()
            assert time.monotonic() - t0 < CUT_SLACK_S
            status, answer = post(g, chat("one token", max_tokens=1))
            assert status == 200 and answer["usage"]["completion_tokens"] == 1
        finally:
            for sock in socks:
                sock.close()
        exchanges = g.store.trajectories()  # none ended yet
        assert exchanges == []


# ---- over-long prompts ---------------------------------------------------------------------------

def test_over_long_prompts_are_refused_by_bytes_and_never_slow_store_writes(gw: Gateway,
                                                                           backend: RecordingBackend) -> None:
    backend.encoded_on.clear()
    big = chat("漢" * BIG_PROMPT_CHARS)
    trajectory = {"id": "t", "env_id": "x", "seed": 0, "model_id": "m", "outcome": "done", "passed": True,
                  "turns": [{"prompt": [{"role": "user", "content": "hi"}], "observation": "hi", "response": "ok"}]}
    with ThreadPoolExecutor(BIG_PROMPTS) as pool:
        refused = [pool.submit(post, gw, big) for _ in range(BIG_PROMPTS)]
        time.sleep(0.5)  # the prompts are in
        t0 = time.monotonic()
        status, _ = post(gw, trajectory, "/v1/trajectories", headers={"Idempotency-Key": "k"})
        write_s = time.monotonic() - t0
        answers = [f.result() for f in refused]
    assert status == 201 and write_s < STORE_WRITE_BOUND_S, f"a trajectory POST took {write_s:.2f} s"
    assert all(s == 400 and "bytes" in a["error"]["message"] for s, a in answers), answers[0]
    assert backend.encoded_on == []  # refused without tokenizing


def test_prompts_are_tokenized_off_the_pool_the_store_writes_in(gw: Gateway, backend: RecordingBackend) -> None:
    backend.encoded_on.clear()
    assert post(gw, chat("short", max_tokens=1))[0] == 200
    checked = backend.encoded_on[0]  # the length check, before the batch's own encoding
    assert "tokenize" in checked and not checked.startswith("asyncio"), backend.encoded_on
