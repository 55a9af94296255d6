"""The online gateway over real HTTP on 127.0.0.1, a real SQLite store and a tiny random model.

The official `openai` client drives it (models, chat, streaming); plain http.client covers
the rest: keys, 400/401/404/405/409/413/429, session stitching, session ends, trajectory
idempotency, /metrics, the CLI command.
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import openai
import pytest
import torch

from oel.backends.base import SamplingParams
from oel.backends.hf import HFBackend
from oel.backends.tiny import tiny_chat_model
from oel.config import load_config
from oel.errors import ConfigError
from oel.online import Store
from oel.online.gateway import Gateway, GatewayConfig
from oel.trajectory import Message

pytestmark = pytest.mark.usefixtures("one_thread")

CLIENT_KEY = "alice-key-0123456789abcdef"
OTHER_KEY = "bob-key-0123456789abcdef"
ADMIN_KEY = "admin-key-0123456789abcdef"
MAX_TOKENS = 6
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def backend() -> HFBackend:
    model, tok = tiny_chat_model(seed=1, dtype=torch.float32)
    return HFBackend(model, tok, model_id="tiny", max_batch_size=4, prefix_cache_bytes=0)


def make_gateway(tmp_path: Path, backend: HFBackend | None, **overrides: Any) -> Gateway:
    fields: dict[str, Any] = {"store": str(tmp_path / "store.sqlite"), "port": 0, "api_keys_env": "",
                              "api_keys": [f"alice:{CLIENT_KEY}", f"bob:{OTHER_KEY}"],
                              "admin_api_keys": [f"ops:{ADMIN_KEY}"], "admin_api_keys_env": ""}
    return Gateway(GatewayConfig(**{**fields, **overrides}), backend=backend)


@pytest.fixture
def gateway(tmp_path: Path, backend: HFBackend) -> Iterator[Gateway]:
    with make_gateway(tmp_path, backend) as gw:
        yield gw


def call(gw: Gateway, method: str, path: str, body: Any = None, *, key: str | None = CLIENT_KEY,
         headers: dict[str, str] | None = None, raw: bytes | None = None) -> tuple[int, Any, Any]:
    """(status, headers, parsed JSON or text) of one request over a fresh connection."""
    u = urlsplit(gw.url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    if key:
        hdrs["Authorization"] = f"Bearer {key}"
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    conn.request(method, path, body=data, headers=hdrs)
    resp = conn.getresponse()
    text = resp.read().decode()
    conn.close()
    is_json = resp.getheader("Content-Type", "").startswith("application/json")
    return resp.status, resp.headers, json.loads(text) if is_json else text


def chat(messages: list[dict[str, str]], **extra: Any) -> dict[str, Any]:
    return {"model": "oel", "messages": messages, "max_tokens": MAX_TOKENS, "temperature": 0, "seed": 0, **extra}


def direct_answer(backend: HFBackend, messages: list[dict[str, str]]) -> str:
    params = SamplingParams(temperature=0.0, top_p=1.0, top_k=0, max_new_tokens=MAX_TOKENS, seed=0)
    return backend.chat([[Message(**m) for m in messages]], params)[0].text


# ---- the official openai client -----------------------------------------------------------


def test_openai_client_models_chat_and_stream(gateway: Gateway, backend: HFBackend) -> None:
    client = openai.OpenAI(base_url=gateway.url, api_key=CLIENT_KEY, max_retries=0)
    assert [m.id for m in client.models.list()] == ["oel"]
    raw = client.chat.completions.with_raw_response.create(**chat(HI))
    answer = raw.parse()
    assert answer.choices[0].message.content == direct_answer(backend, HI)
    assert raw.headers["x-oel-model-version"] == "0" and raw.headers["x-oel-session"].startswith("auto-")
    stream = client.chat.completions.create(**chat(HI), stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == answer.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == answer.usage.completion_tokens
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == answer.choices[0].finish_reason


def test_openai_client_wrong_key_is_401(gateway: Gateway) -> None:
    client = openai.OpenAI(base_url=gateway.url, api_key="not-a-key-0123456789", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        client.models.list()


# ---- plain HTTP --------------------------------------------------------------------------


def test_plain_http_chat_records_before_answering(gateway: Gateway) -> None:
    status, _, body = call(gateway, "POST", "/v1/chat/completions", chat(HI))
    assert status == 200 and body["object"] == "chat.completion"
    stats = gateway.store.stats()  # the answer is on the wire: the exchange is already stored
    assert stats["exchanges_recorded"] == 1 and stats["sessions_open"] == 1
    status, _, text = call(gateway, "POST", "/v1/chat/completions", chat(HI, stream=True))
    assert status == 200 and text.rstrip().endswith("data: [DONE]")
    events = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in events) == body["choices"][0]["message"]["content"]
    final = events[-1]  # the stream names its stored session and the version that answered
    assert final["choices"][0]["finish_reason"] and final["oel_session"].startswith("auto-")
    assert final["oel_model_version"] == 0 and gateway.store.stats()["exchanges_recorded"] == 2


@pytest.mark.parametrize("key", [None, "wrong-key-0123456789abc", ADMIN_KEY])
def test_client_endpoints_need_a_client_key(gateway: Gateway, key: str | None) -> None:
    for method, path, body in (("GET", "/v1/models", None), ("POST", "/v1/chat/completions", chat(HI)),
                               ("POST", "/v1/trajectories", {}), ("POST", "/v1/sessions/s/end", {"outcome": "x"})):
        status, headers, err = call(gateway, method, path, body, key=key)
        assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer"), path
        assert err["error"]["type"] == "authentication_error"


def test_metrics_need_the_admin_key_and_healthz_none(gateway: Gateway) -> None:
    assert call(gateway, "GET", "/metrics")[0] == 401
    assert call(gateway, "GET", "/metrics", key=None)[0] == 401
    status, _, body = call(gateway, "GET", "/healthz", key=None)
    assert status == 200 and body["status"] == "ok"


def test_bad_fields_are_400_naming_the_field(gateway: Gateway) -> None:
    cases = {"temperature": chat(HI, temperature="hot"), "stream": chat(HI, stream="yes"),
             "messages": chat([{"role": "assistant", "content": "I speak first"}]),
             "messages[0].role": chat([{"role": "robot", "content": "x"}])}
    for field, body in cases.items():
        status, _, err = call(gateway, "POST", "/v1/chat/completions", body)
        assert status == 400 and err["error"]["message"].startswith(field), (field, err)
    status, _, err = call(gateway, "POST", "/v1/chat/completions", chat(HI), headers={"X-OEL-Session": "auto-7"})
    assert status == 400 and "X-OEL-Session" in err["error"]["message"]
    assert call(gateway, "POST", "/v1/chat/completions", raw=b"{not json")[0] == 400
    assert call(gateway, "POST", "/v1/sessions/s/end", {"outcome": "x", "score": 1})[2]["error"]["param"] == "score"
    assert call(gateway, "GET", "/v1/chat/completions")[0] == 405
    assert call(gateway, "GET", "/v1/nothing")[0] == 404
    assert gateway.store.stats()["exchanges_recorded"] == 0


def test_body_over_the_limit_is_413(tmp_path: Path, backend: HFBackend) -> None:
    with make_gateway(tmp_path, backend, max_body_bytes=256) as gw:
        status, _, err = call(gw, "POST", "/v1/chat/completions", chat([{"role": "user", "content": "x" * 400}]))
        assert status == 413 and "exceeds 256" in err["error"]["message"]


def test_rate_limit_is_429_with_retry_after_per_client(tmp_path: Path) -> None:
    with make_gateway(tmp_path, None, responder="none", rate_limit_per_s=0.01, rate_limit_burst=2) as gw:
        assert [call(gw, "GET", "/v1/models")[0] for _ in range(2)] == [200, 200]
        status, headers, err = call(gw, "GET", "/v1/models")
        assert status == 429 and int(headers["Retry-After"]) >= 1 and "alice" in err["error"]["message"]
        assert call(gw, "GET", "/v1/models", key=OTHER_KEY)[0] == 200  # bob has his own bucket


# ---- sessions and trajectories -------------------------------------------------------------


def test_session_by_header_then_end_stores_one_trajectory(gateway: Gateway) -> None:
    hdr = {"X-OEL-Session": "game-1"}
    _, h1, b1 = call(gateway, "POST", "/v1/chat/completions", chat(HI), headers=hdr)
    second = HI + [{"role": "assistant", "content": b1["choices"][0]["message"]["content"]},
                   {"role": "user", "content": "you fell in a hole"}]
    _, h2, _ = call(gateway, "POST", "/v1/chat/completions", chat(second), headers=hdr)
    assert h1["X-OEL-Session"] == h2["X-OEL-Session"] == "game-1"
    status, _, ended = call(gateway, "POST", "/v1/sessions/game-1/end", {"outcome": "lost", "passed": False})
    assert status == 201 and not ended["duplicate"]
    assert call(gateway, "POST", "/v1/sessions/game-1/end", {"outcome": "lost", "passed": False})[0] == 200
    (traj,) = gateway.store.trajectories()
    assert traj.id == ended["id"] and len(traj.turns) == 2 and traj.outcome == "lost" and traj.passed is False
    assert traj.turns[0].feedback == "you fell in a hole"
    assert call(gateway, "POST", "/v1/chat/completions", chat(HI), headers=hdr)[0] == 409  # ended
    assert call(gateway, "POST", "/v1/sessions/nobody/end", {"outcome": "x"})[0] == 404


@pytest.mark.parametrize("session", ["a/../b", "x'; DROP TABLE sessions; --", "../../etc/passwd", "é 1%"])
def test_hostile_session_ids_are_only_text(gateway: Gateway, session: str) -> None:
    from urllib.parse import quote

    assert call(gateway, "POST", "/v1/chat/completions", chat(HI), headers={"X-OEL-Session": quote(session)})[0] == 200
    status, _, ended = call(gateway, "POST", f"/v1/sessions/{quote(quote(session), safe='')}/end", {"outcome": "ok"})
    assert status == 201, ended
    (traj,) = gateway.store.trajectories()
    assert traj.meta["online"]["session"] == quote(session)


def test_an_idle_session_is_ended_by_the_gateway(tmp_path: Path, backend: HFBackend) -> None:
    """An agent that never posts its end: after session_idle_s the gateway's own timer ends it."""
    import time

    from oel.online.store import IDLE_OUTCOME

    with make_gateway(tmp_path, backend, session_idle_s=0.2, idle_check_s=0.05) as gw:
        assert call(gw, "POST", "/v1/chat/completions", chat(HI), headers={"X-OEL-Session": "quiet"})[0] == 200
        deadline = time.monotonic() + 10
        while gw.store.stats()["sessions_open"] and time.monotonic() < deadline:
            time.sleep(0.05)
        (traj,) = gw.store.trajectories()
        assert traj.outcome == IDLE_OUTCOME and len(traj.turns) == 1 and gw.store.stats()["sessions_open"] == 0
        assert call(gw, "POST", "/v1/chat/completions", chat(HI), headers={"X-OEL-Session": "quiet"})[0] == 409


@pytest.mark.parametrize("bad", [{"session_idle_s": -1.0}, {"session_idle_s": float("nan")}, {"idle_check_s": 0.0}])
def test_bad_idle_settings_are_refused(tmp_path: Path, bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        GatewayConfig(store=str(tmp_path / "s.sqlite"), **bad)


def test_session_without_header_is_stitched_by_prefix(gateway: Gateway) -> None:
    _, h1, b1 = call(gateway, "POST", "/v1/chat/completions", chat(HI))
    second = HI + [{"role": "assistant", "content": b1["choices"][0]["message"]["content"]},
                   {"role": "user", "content": "again"}]
    _, h2, _ = call(gateway, "POST", "/v1/chat/completions", chat(second))
    _, h3, _ = call(gateway, "POST", "/v1/chat/completions", chat([{"role": "user", "content": "new task"}]))
    assert h1["X-OEL-Session"] == h2["X-OEL-Session"] != h3["X-OEL-Session"]
    status, _, _ = call(gateway, "POST", f"/v1/sessions/{h1['X-OEL-Session']}/end", {"outcome": "ok"})
    assert status == 201 and len(gateway.store.trajectories()[0].turns) == 2


def trajectory(i: int) -> dict[str, Any]:
    return {"id": f"t{i}", "env_id": "shell", "seed": i, "model_id": "agent",
            "turns": [{"prompt": [{"role": "user", "content": f"task {i}"}], "observation": f"task {i}",
                       "response": "ls", "feedback": "ok"}],
            "outcome": "done", "passed": True}


def test_trajectory_post_is_idempotent(gateway: Gateway) -> None:
    key = {"Idempotency-Key": "k-1"}
    status, _, first = call(gateway, "POST", "/v1/trajectories", trajectory(1), headers=key)
    assert status == 201 and not first["duplicate"]
    status, _, again = call(gateway, "POST", "/v1/trajectories", trajectory(1), headers=key)
    assert status == 200 and again == {"id": first["id"], "duplicate": True}
    status, _, err = call(gateway, "POST", "/v1/trajectories", trajectory(2), headers=key)
    assert status == 409 and "idempotency_key" in err["error"]["message"]
    status, _, err = call(gateway, "POST", "/v1/trajectories", {**trajectory(3), "turns": "none"})
    assert status == 400 and "turns" in err["error"]["message"]
    assert [t.id for t in gateway.store.trajectories()] == [first["id"]]


def test_trajectories_persist_across_a_restart(tmp_path: Path) -> None:
    with make_gateway(tmp_path, None, responder="none") as gw:
        first = call(gw, "POST", "/v1/trajectories", trajectory(1), headers={"Idempotency-Key": "k"})[2]
    with make_gateway(tmp_path, None, responder="none") as gw:
        assert call(gw, "POST", "/v1/trajectories", trajectory(1), headers={"Idempotency-Key": "k"})[2]["id"] == first["id"]
    with Store.open(tmp_path / "store.sqlite") as store:
        assert store.stats()["trajectories_stored"] == 1


# ---- metrics and CLI ---------------------------------------------------------------------

SAMPLE = re.compile(r'([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[a-zA-Z_]+="[^"]*"(,[a-zA-Z_]+="[^"]*")*\})? (-?[0-9.e+]+)')


def parse_prometheus(text: str) -> dict[str, float]:
    """Every sample of a text exposition page; fails on a line that is neither a sample nor a comment."""
    samples, typed = {}, set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            typed.add(line.split()[2])
        elif line and not line.startswith("# HELP "):
            m = SAMPLE.fullmatch(line)
            assert m, f"not a Prometheus sample: {line!r}"
            family = re.sub(r"_(bucket|sum|count)$", "", m.group(1))  # a histogram's samples
            assert m.group(1) in typed or family in typed, f"{m.group(1)} has no # TYPE"
            labels = ",".join(sorted(re.findall(r'[a-zA-Z_]+="[^"]*"', m.group(2) or "")))
            samples[m.group(1) + (f"{{{labels}}}" if labels else "")] = float(m.group(4))
    return samples


def test_metrics_page_is_prometheus_text(gateway: Gateway) -> None:
    call(gateway, "POST", "/v1/chat/completions", chat(HI))
    call(gateway, "POST", "/v1/trajectories", trajectory(1), headers={"Idempotency-Key": "a"})
    call(gateway, "POST", "/v1/trajectories", trajectory(1), headers={"Idempotency-Key": "a"})
    call(gateway, "POST", "/v1/trajectories", {"id": "bad"})
    status, headers, text = call(gateway, "GET", "/metrics", key=ADMIN_KEY)
    assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
    m = parse_prometheus(text)
    assert m["oel_gateway_exchanges_recorded_total"] == 1
    assert m["oel_gateway_trajectories_received_total"] == 3
    assert (m["oel_gateway_trajectories_stored_total"], m["oel_gateway_trajectories_duplicate_total"],
            m["oel_gateway_trajectories_rejected_total"]) == (1, 1, 1)
    assert m['oel_gateway_requests_total{code="201",endpoint="/v1/trajectories"}'] == 1
    assert m['oel_gateway_requests_total{code="400",endpoint="/v1/trajectories"}'] == 1
    assert m["oel_gateway_model_version"] == 0 and m["oel_gateway_queue_depth"] == 0


def test_cli_registers_the_gateway_command(monkeypatch: pytest.MonkeyPatch) -> None:
    import oel.cli
    from oel.online.gateway_cli import register

    sub = argparse.ArgumentParser().add_subparsers()
    register(sub)
    assert "gateway" in sub.choices and "versions_dir" in sub.choices["gateway"].epilog
    assert "oel.online.gateway_cli" in oel.cli.STAGE_MODULES  # `oel gateway` is a command of the CLI
    ns = oel.cli.build_parser().parse_args(["gateway", "port=0", "responder=none"])
    assert ns.args == ["port=0", "responder=none"]
    config = load_config(GatewayConfig, None, ["port=9", "rate_limit_per_s=2.5", "model.dtype=float32"])
    assert (config.port, config.rate_limit_per_s, config.model.dtype) == (9, 2.5, "float32")
    with pytest.raises(ConfigError, match="upstream_url: required when responder=upstream"):
        load_config(GatewayConfig, None, ["responder=upstream"])


def test_upstream_responder_forwards_and_records(tmp_path: Path, backend: HFBackend,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A gateway in front of another OpenAI-compatible server (here: a second gateway serving the tiny model)."""
    monkeypatch.setenv("OEL_UPSTREAM_API_KEY", CLIENT_KEY)  # the key the upstream accepts
    with make_gateway(tmp_path / "up", backend) as upstream, \
            make_gateway(tmp_path / "front", None, responder="upstream", upstream_url=upstream.url) as front:
        client = openai.OpenAI(base_url=front.url, api_key=OTHER_KEY, max_retries=0)
        stream = client.chat.completions.create(**chat(HI), stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in stream) == direct_answer(backend, HI)
        assert front.store.stats()["exchanges_recorded"] == 1 and upstream.store.stats()["exchanges_recorded"] == 1
    with make_gateway(tmp_path / "dead", None, responder="upstream", upstream_url="http://127.0.0.1:9/v1") as gw:
        status, _, err = call(gw, "POST", "/v1/chat/completions", chat(HI))
        assert status == 502 and "upstream" in err["error"]["message"]
        assert gw.store.stats()["exchanges_recorded"] == 0
