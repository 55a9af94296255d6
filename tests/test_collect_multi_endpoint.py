"""One OpenAIBackend over TWO real local `oel serve` servers (HTTP on 127.0.0.1, nothing mocked).

The servers share one tiny model; requests spread over both, never more than `concurrency`
in flight, and the answers (and a whole collection) equal the in-process backend's.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from oel.backends.base import SamplingParams
from oel.backends.hf import HFBackend
from oel.backends.openai_endpoint import EndpointConfig, EndpointError, OpenAIBackend
from oel.backends.tiny import tiny_chat_model
from oel.collect.play import CollectCommandConfig, collect_command
from oel.serving.chat_server import ChatServer, ServeConfig
from oel.trajectory import Message, read_trajectories

MAX_NEW = 6
CONCURRENCY = 4
SERVERS = 2


class CountingBackend(HFBackend):
    """The HF backend, counting the rows each server generated and the most it held at once."""

    def setup_counters(self) -> None:
        self.rows = 0
        self.lock = threading.Lock()

    def generate_rows(self, rows):  # type: ignore[no-untyped-def]
        with self.lock:
            self.rows += len(rows)
        return super().generate_rows(rows)


@pytest.fixture(scope="module")
def hf() -> HFBackend:
    model, tok = tiny_chat_model(seed=2, dtype=torch.float32)
    return HFBackend(model, tok, model_id="tiny-cluster", max_batch_size=4)


@pytest.fixture(scope="module")
def servers(hf: HFBackend) -> Iterator[list[ChatServer]]:
    started: list[ChatServer] = []
    try:
        for _ in range(SERVERS):
            backend = CountingBackend(hf.model, hf.tokenizer, model_id=hf.model_id, max_batch_size=4)
            backend.setup_counters()
            started.append(ChatServer(backend, ServeConfig(port=0, batch_window_s=0.02)).start())
        yield started
    finally:
        for srv in started:
            srv.close()
    assert all(not t.is_alive() for srv in started for t in srv._threads)  # shut down for good


def cluster(servers: list[ChatServer], **kw: object) -> OpenAIBackend:
    settings: dict[str, object] = {"timeout_s": 30, "backoff_s": 0.01, "concurrency": CONCURRENCY, **kw}
    cfg = EndpointConfig(base_url=servers[0].url, base_urls=[s.url for s in servers[1:]], **settings)  # type: ignore[arg-type]
    return OpenAIBackend(cfg)


def chats(n: int) -> list[list[Message]]:
    return [[Message(role="user", content="step " * (1 + i % 5))] for i in range(n)]


@pytest.mark.parametrize("params", [
    SamplingParams(temperature=0, max_new_tokens=MAX_NEW),
    SamplingParams(temperature=0.9, top_p=0.9, top_k=30, max_new_tokens=MAX_NEW, seed=3),
])
def test_two_servers_answer_what_the_in_process_backend_answers(servers, hf, params):
    before = [s.backend.rows for s in servers]
    backend = cluster(servers)
    over_http = backend.chat(chats(12), params)
    assert [g.text for g in over_http] == [g.text for g in hf.chat(chats(12), params)]
    stats = backend.stats()
    served = [s.backend.rows - b for s, b in zip(servers, before)]
    assert sum(served) == 12 and all(n > 0 for n in served), served  # both servers did work
    assert [s["completed"] for s in stats] == served
    assert 1 < backend.peak_in_flight <= CONCURRENCY


def test_in_flight_requests_never_exceed_the_limit(servers):
    backend = cluster(servers, concurrency=1)
    backend.chat(chats(5), SamplingParams(temperature=0, max_new_tokens=2))
    stats = backend.stats()
    assert backend.peak_in_flight == 1
    assert sum(s["completed"] for s in stats) == 5 and all(s["completed"] >= 2 for s in stats)  # alternated


def test_collection_through_two_servers_equals_in_process_collection(servers, hf, tmp_path: Path):
    base = dict(seeds="heldout", num_seeds=3, samples_per_seed=1, batch_size=3,
                sampling=SamplingParams(max_new_tokens=MAX_NEW))
    endpoint = EndpointConfig(base_url=servers[0].url, base_urls=[servers[1].url], concurrency=CONCURRENCY,
                              timeout_s=30)
    http_cfg = CollectCommandConfig(backend="openai", endpoint=endpoint, out=str(tmp_path / "http.jsonl"), **base)
    collect_command(http_cfg)  # builds its own OpenAIBackend from the config, as `oel collect` does
    collect_command(CollectCommandConfig(out=str(tmp_path / "local.jsonl"), **base), backend=hf)
    over_http, local = read_trajectories(http_cfg.out), read_trajectories(tmp_path / "local.jsonl")
    assert len(over_http) == len(local) == 3
    for a, b in zip(sorted(over_http, key=lambda t: t.seed), sorted(local, key=lambda t: t.seed)):
        assert [t.response for t in a.turns] == [t.response for t in b.turns]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_server_that_is_down_or_serves_another_model_is_named(servers):
    dead = f"http://127.0.0.1:{_free_port()}/v1"
    with pytest.raises(EndpointError, match=dead.replace(".", r"\.")):
        OpenAIBackend(EndpointConfig(base_url=servers[0].url, base_urls=[dead], timeout_s=2, max_retries=0))
    with pytest.raises(EndpointError, match="does not serve model 'other'"):
        OpenAIBackend(EndpointConfig(base_url=servers[0].url, base_urls=[servers[1].url], model="other", timeout_s=5))
    with pytest.raises(ValueError, match="base_urls"):
        EndpointConfig(base_url=servers[0].url, base_urls=[servers[0].url])


def test_evaluation_through_two_servers_equals_in_process_evaluation(servers, hf, tmp_path: Path):
    from oel.envs import EnvConfig
    from oel.evaluate.config import EvaluateConfig, GamesConfig, IFEvalConfig
    from oel.evaluate.evaluation import evaluate
    from oel.knowledge import Knowledge

    games = GamesConfig(num_maps=2, sampling_seeds=[0], batch_size=2, sampling=SamplingParams(max_new_tokens=MAX_NEW))
    cfg = EvaluateConfig(games=games, ifeval=IFEvalConfig(enabled=False))
    lessons = Knowledge.of(["Avoid H."])
    over_http = evaluate(cluster(servers), cfg, env=EnvConfig(), out_dir=tmp_path / "http", knowledge=lessons)
    local = evaluate(hf, cfg, env=EnvConfig(), out_dir=tmp_path / "local", knowledge=lessons)
    assert over_http.games is not None and local.games is not None
    assert over_http.games.metrics.episodes == local.games.metrics.episodes == 2
    assert over_http.to_dict()["games"]["metrics"] == local.to_dict()["games"]["metrics"]
    assert over_http.to_dict()["games_knowledge"]["metrics"] == local.to_dict()["games_knowledge"]["metrics"]
