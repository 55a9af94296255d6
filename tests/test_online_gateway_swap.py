"""Hot swap: the gateway follows versions_dir/current.json while requests keep arriving, and none fails.

Two tiny random models (different seeds) are saved as HF directories; with temperature 0 and a
fixed seed each one's answer is deterministic, so every answer can be checked against the
answer of the model version the gateway says produced it (X-OEL-Model-Version).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import openai
import pytest

from oel.backends.base import SamplingParams
from oel.backends.hf import HFBackend
from oel.backends.tiny import save_tiny_chat_model
from oel.io import atomic_write_json
from oel.models import ModelConfig
from oel.online.gateway import CURRENT_FILE, Gateway, GatewayConfig
from oel.trajectory import Message

pytestmark = pytest.mark.usefixtures("one_thread")

KEY = "swap-client-key-0123456789"
PROMPT = [{"role": "user", "content": "which way?"}]
MAX_TOKENS = 6
CLIENT_THREADS = 3
SWAP_TIMEOUT_S = 60.0


def model_config(name: str) -> ModelConfig:
    return ModelConfig(name=name, dtype="float32", device="cpu")


def own_answer(model_dir: str) -> str:
    backend = HFBackend.from_model_config(model_config(model_dir), prefix_cache_bytes=0)
    params = SamplingParams(temperature=0.0, top_p=1.0, top_k=0, max_new_tokens=MAX_TOKENS, seed=0)
    return backend.chat([[Message(**m) for m in PROMPT]], params)[0].text


def publish(versions: Path, version: int, model_dir: str) -> None:
    atomic_write_json(versions / CURRENT_FILE, {"version": version, "model_dir": model_dir, "published": time.time()})


def test_swap_under_load_drops_nothing_and_answers_change(tmp_path: Path) -> None:
    dirs = [save_tiny_chat_model(tmp_path / f"m{seed}", seed=seed) for seed in (1, 2)]
    expected = {1: own_answer(dirs[0]), 2: own_answer(dirs[1])}
    assert expected[1] != expected[2]
    versions = tmp_path / "versions"
    versions.mkdir()
    publish(versions, 1, dirs[0])
    config = GatewayConfig(store=str(tmp_path / "s.sqlite"), port=0, api_keys=[f"c:{KEY}"], api_keys_env="",
                           admin_api_keys_env="", versions_dir=str(versions), watch_interval_s=0.05,
                           model=model_config("unused: current.json names the model"))
    answers: list[tuple[int, str]] = []
    failures: list[BaseException] = []
    stop = threading.Event()

    with Gateway(config) as gw:
        assert gw.version == 1
        client = openai.OpenAI(base_url=gw.url, api_key=KEY, max_retries=0)

        def user() -> None:
            while not stop.is_set():
                try:
                    raw = client.chat.completions.with_raw_response.create(
                        model="oel", messages=PROMPT, max_tokens=MAX_TOKENS, temperature=0, seed=0)
                    answers.append((int(raw.headers["x-oel-model-version"]), raw.parse().choices[0].message.content))
                except BaseException as e:  # noqa: BLE001 - any failure is the test's failure
                    failures.append(e)
                    return

        threads = [threading.Thread(target=user) for _ in range(CLIENT_THREADS)]
        for t in threads:
            t.start()
        _wait_for(lambda: len(answers) >= CLIENT_THREADS * 2)
        publish(versions, 2, dirs[1])
        _wait_for(lambda: gw.version == 2 and sum(v == 2 for v, _ in answers) >= CLIENT_THREADS * 2)
        stop.set()
        for t in threads:
            t.join()
        assert gw.metrics.swaps == 1 and gw.metrics.swap_failures == 0

    assert not failures, failures
    versions_seen = [v for v, _ in answers]
    assert versions_seen.count(1) >= 1 and versions_seen.count(2) >= 1
    assert all(text == expected[v] for v, text in answers), answers


def test_a_bad_version_keeps_the_old_model_serving(tmp_path: Path) -> None:
    good = save_tiny_chat_model(tmp_path / "m1", seed=1)
    versions = tmp_path / "versions"
    versions.mkdir()
    publish(versions, 1, good)
    config = GatewayConfig(store=str(tmp_path / "s.sqlite"), port=0, api_keys_env="", admin_api_keys_env="",
                           versions_dir=str(versions), watch_interval_s=0.05, model=model_config("unused"))
    with Gateway(config) as gw:
        publish(versions, 2, str(tmp_path / "missing-model"))
        _wait_for(lambda: gw.metrics.swap_failures == 1)
        time.sleep(0.3)  # several more polls: the failed version is not retried
        assert gw.version == 1 and gw.metrics.swap_failures == 1
        client = openai.OpenAI(base_url=gw.url, api_key="unused-on-loopback", max_retries=0)
        reply = client.chat.completions.create(model="oel", messages=PROMPT, max_tokens=MAX_TOKENS, temperature=0)
        assert reply.choices[0].message.content is not None


def _wait_for(condition, timeout_s: float = SWAP_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)
