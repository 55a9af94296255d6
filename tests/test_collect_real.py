"""Generation and collection on the real SmolLM2-135M weights (a real tokenizer and chat template)."""

from __future__ import annotations

from pathlib import Path

import pytest

from oel.backends.base import SamplingParams
from oel.backends.hf import HFBackend
from oel.backends.openai_endpoint import EndpointConfig, OpenAIBackend
from oel.collect.play import CollectCommandConfig, collect_command
from oel.envs import EnvConfig
from oel.models import ModelConfig
from oel.serving.chat_server import ChatServer, ServeConfig
from oel.trajectory import Message, read_trajectories

pytestmark = [pytest.mark.real, pytest.mark.slow]

SMOL = "smollm2-135m-instruct"
MAX_NEW = 6


@pytest.fixture(scope="module")
def smol() -> HFBackend:
    # float32: batched and unbatched greedy decoding must agree exactly, which bf16 rounding
    # of differently padded batches does not promise.
    return HFBackend.from_model_config(ModelConfig(name=SMOL, dtype="float32", device="cpu"), max_batch_size=4)


def test_real_template_batching_and_endpoint_agree(smol: HFBackend) -> None:
    chats = [[Message(role="user", content=q)] for q in
             ("Which way is up?", "Say [left] or [right].", "You are on a 3x3 grid at the top-left corner. Move.")]
    greedy = SamplingParams(temperature=0, max_new_tokens=MAX_NEW)
    one = HFBackend(smol.model, smol.tokenizer, model_id=SMOL, max_batch_size=1).chat(chats, greedy)
    assert [g.text for g in smol.chat(chats, greedy)] == [g.text for g in one]
    sampled = SamplingParams(max_new_tokens=MAX_NEW, seed=3)
    with ChatServer(smol, ServeConfig(port=0)) as srv:
        endpoint = OpenAIBackend(EndpointConfig(base_url=srv.url, timeout_s=60))
        assert [g.text for g in endpoint.chat(chats, sampled)] == [g.text for g in smol.chat(chats, sampled)]


def test_real_collection(smol: HFBackend, tmp_path: Path) -> None:
    cfg = CollectCommandConfig(env=EnvConfig(max_turns=2), seeds="heldout", num_seeds=2, batch_size=2,
                        out=str(tmp_path / "t.jsonl"),
                        sampling=SamplingParams(max_new_tokens=MAX_NEW))
    stats = collect_command(cfg, backend=smol)
    trajs = read_trajectories(cfg.out)
    assert stats.episodes == len(trajs) == 2
    assert all(t.model_id == SMOL and t.turns[0].prompt_tokens > 100 for t in trajs)
