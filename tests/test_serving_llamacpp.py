"""`oel serve` on the llama.cpp engine: a GGUF model (with a GGUF LoRA) answers over HTTP what the engine
answers in process, streamed or not; which engine `engine=auto` serves on, and what it refuses."""

from __future__ import annotations

import json
import urllib.request

import pytest
import torch

from oel.backends.base import SamplingParams
from oel.backends.openai_endpoint import EndpointConfig, OpenAIBackend
from oel.backends.tiny import tiny_chat_model, tiny_merging_tokenizer
from oel.errors import ConfigError
from oel.models import ModelConfig
from oel.models.gguf_export import write_qwen2_gguf
from oel.serving.chat_server import ChatServer, ServeConfig, serving_backend
from oel.trajectory import Message

pytest.importorskip("llama_cpp", reason="llama.cpp engine not built (make engine)")

from oel.backends.llamacpp import LlamaCppBackend  # noqa: E402

KEY = "test-key-" + "s" * 24
KEY_ENV = "OEL_TEST_LLAMACPP_SERVE_KEY"
CHATS = [[Message(role="user", content="go " * n)] for n in (1, 6, 3)]


@pytest.fixture(scope="module")
def gguf_model(tmp_path_factory) -> ModelConfig:
    model, tok = tiny_chat_model(seed=2, dtype=torch.float32, tokenizer=tiny_merging_tokenizer())
    root = tmp_path_factory.mktemp("served")
    path = write_qwen2_gguf(model, tok, root / "tiny.gguf")
    return ModelConfig(name=str(path), dtype="float32", cache_dir=str(root / "cache"))


def test_the_server_answers_what_the_engine_answers_streamed_or_not(gguf_model, monkeypatch) -> None:
    config = ServeConfig(model=gguf_model, engine="llamacpp", port=0, max_batch_size=4, batch_window_s=0.05,
                         api_keys=[f"tests:{KEY}"], api_keys_env="")
    backend = serving_backend(config)
    assert isinstance(backend, LlamaCppBackend)
    params = SamplingParams(temperature=0, max_new_tokens=8)
    direct = [g.text for g in backend.chat(CHATS, params)]
    monkeypatch.setenv(KEY_ENV, KEY)
    with ChatServer(backend, config) as server:
        endpoint = OpenAIBackend(EndpointConfig(base_url=server.url, timeout_s=30, api_key_env=KEY_ENV,
                                                concurrency=3))
        assert [g.text for g in endpoint.chat(CHATS, params)] == direct
        body = {"model": server.served_name, "messages": [{"role": "user", "content": "go "}],
                "max_tokens": 8, "temperature": 0, "stream": True}
        req = urllib.request.Request(f"{server.url}/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"})
        with urllib.request.urlopen(req, timeout=30) as r:
            events = [line[len(b"data: "):] for line in r.read().splitlines() if line.startswith(b"data: ")]
    assert events[-1] == b"[DONE]"
    text = "".join(json.loads(e)["choices"][0]["delta"].get("content") or "" for e in events[:-1])
    assert text == direct[0]


def test_which_engine_serves_and_what_is_refused(gguf_model) -> None:
    assert isinstance(serving_backend(ServeConfig(model=gguf_model, engine="auto")), LlamaCppBackend)
    invariant = serving_backend(ServeConfig(model=gguf_model, engine="auto", batch_invariant=True))
    assert not isinstance(invariant, LlamaCppBackend), "answers that must not depend on their batch stay on HF"
    with pytest.raises(ConfigError, match="adapter: a GGUF LoRA runs on llama.cpp only"):
        serving_backend(ServeConfig(model=gguf_model, engine="hf", adapter="round.gguf"))
    with pytest.raises(ValueError, match="cannot apply this LoRA adapter"):
        serving_backend(ServeConfig(model=gguf_model, engine="llamacpp", adapter=__file__))
