"""The endpoint backend against a REAL local OpenAI-compatible server (`oel serve`'s server).

Everything goes over HTTP on 127.0.0.1 through the `openai` client, with an API key (the
client reads it from the environment variable its config names); nothing is mocked.
tests/test_server_hardening.py covers auth, validation and overload in detail.
"""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
import torch

from oel.backends.base import ChatBackend, SamplingParams
from oel.backends.hf import HFBackend
from oel.backends.openai_endpoint import EndpointConfig, EndpointError, OpenAIBackend
from oel.backends.tiny import tiny_chat_model
from oel.serving.chat_server import ChatServer, ServeConfig
from oel.trajectory import Message

MAX_NEW = 8
TOKENS_LIMIT = 32
API_KEY = "test-key-" + "k" * 24
KEY_ENV = "OEL_TEST_SERVER_KEY"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def hf() -> HFBackend:
    model, tok = tiny_chat_model(seed=1, dtype=torch.float32)
    return HFBackend(model, tok, model_id="tiny-served", max_batch_size=4)


class RecordingBackend(HFBackend):
    """The HF backend, noting the size of every batch the server hands it."""

    batch_sizes: list[int]

    def generate_rows(self, rows):  # type: ignore[no-untyped-def]
        self.batch_sizes.append(len(rows))
        return super().generate_rows(rows)


@pytest.fixture(scope="module")
def server(hf: HFBackend) -> Iterator[ChatServer]:
    rec = RecordingBackend(hf.model, hf.tokenizer, model_id=hf.model_id, max_batch_size=4)
    rec.batch_sizes = []
    cfg = ServeConfig(port=0, batch_window_s=0.05, max_tokens_limit=TOKENS_LIMIT, max_body_bytes=20_000,
                      api_keys=[f"tests:{API_KEY}"], api_keys_env="")
    with pytest.MonkeyPatch.context() as mp, ChatServer(rec, cfg) as srv:
        mp.setenv(KEY_ENV, API_KEY)
        yield srv


def endpoint(srv: ChatServer, **kw: object) -> OpenAIBackend:
    return OpenAIBackend(EndpointConfig(base_url=srv.url, timeout_s=30, backoff_s=0.01, api_key_env=KEY_ENV,
                                        **kw))  # type: ignore[arg-type]


def chats() -> list[list[Message]]:
    return [[Message(role="user", content="go " * n)] for n in (1, 7, 3, 12, 2, 5)]


def post(url: str, body: bytes) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json", **AUTH})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_binds_localhost_only(server: ChatServer) -> None:
    assert server.httpd.server_address[0] == "127.0.0.1"


def test_models_endpoint_names_the_model(server: ChatServer) -> None:
    b = endpoint(server)
    assert isinstance(b, ChatBackend)
    assert b.model_id == "tiny-served"


@pytest.mark.parametrize("params", [
    SamplingParams(temperature=0, max_new_tokens=MAX_NEW),
    SamplingParams(temperature=0.9, top_p=0.9, top_k=30, max_new_tokens=MAX_NEW, seed=4),
])
def test_endpoint_answers_what_the_in_process_backend_answers(server: ChatServer, hf: HFBackend,
                                                              params: SamplingParams) -> None:
    over_http = endpoint(server, concurrency=6).chat(chats(), params)
    direct = hf.chat(chats(), params)
    assert [g.text for g in over_http] == [g.text for g in direct]
    assert [(g.prompt_tokens, g.completion_tokens, g.finish_reason) for g in over_http] == \
           [(g.prompt_tokens, g.completion_tokens, g.finish_reason) for g in direct]


def test_concurrent_requests_are_batched(server: ChatServer) -> None:
    server.backend.batch_sizes.clear()  # type: ignore[attr-defined]
    endpoint(server, concurrency=8).chat(chats() + chats(), SamplingParams(temperature=0, max_new_tokens=2))
    sizes = server.backend.batch_sizes  # type: ignore[attr-defined]
    assert sum(sizes) == 12 and max(sizes) > 1


def test_bad_requests_fail_at_once_with_a_reason(server: ChatServer) -> None:
    b = endpoint(server, max_retries=3)
    with pytest.raises(EndpointError, match="max_tokens"):
        b.chat(chats()[:1], SamplingParams(max_new_tokens=TOKENS_LIMIT + 1))
    url = server.url + "/chat/completions"
    assert post(url, b"{not json")[0] == 400
    status, body = post(url, json.dumps({"messages": [{"role": "robot", "content": "x"}]}).encode())
    assert status == 400 and "messages" in body["error"]["message"]
    assert post(url, json.dumps({"messages": [{"role": "user", "content": "x" * 30_000}]}).encode())[0] == 413
    assert post(url, json.dumps({"messages": [{"role": "user", "content": "x"}], "stream": "yes"}).encode())[0] == 400
    assert post(server.url + "/completions", b"{}")[0] == 404


def test_keep_alive_survives_an_error_with_an_unread_body(server: ChatServer) -> None:
    import http.client

    host, port = server.httpd.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=30)
    conn.request("POST", "/v1/nowhere", body=b'{"messages": []}', headers=AUTH)
    first = conn.getresponse()
    assert first.status == 404 and first.read()
    body = json.dumps({"messages": [{"role": "user", "content": "x"}], "max_tokens": 2, "temperature": 0})
    conn.request("POST", "/v1/chat/completions", body=body.encode(), headers=AUTH)
    resp = conn.getresponse()
    assert resp.status == 200 and json.loads(resp.read())["usage"]["completion_tokens"] >= 1
    conn.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_endpoint_retries_then_names_it() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    b = OpenAIBackend(EndpointConfig(base_url=url, model="m", timeout_s=2, max_retries=2, backoff_s=0.01))
    with pytest.raises(EndpointError, match=r"failed after 3 attempts"):
        b.chat(chats()[:1], SamplingParams(max_new_tokens=2))


def test_server_shuts_down_cleanly(hf: HFBackend) -> None:
    srv = ChatServer(hf, ServeConfig(port=0)).start()
    url = srv.url
    assert endpoint(srv).chat(chats()[:1], SamplingParams(temperature=0, max_new_tokens=2))
    srv.close()
    assert all(not t.is_alive() for t in srv._threads)
    with pytest.raises(EndpointError):
        OpenAIBackend(EndpointConfig(base_url=url, timeout_s=2, max_retries=0))
