"""`oel loop` with engine=llamacpp: collect, extract and evaluate on llama.cpp, consolidation on HF, and
M_1 reaching llama.cpp as a GGUF LoRA over the initial GGUF that moves log-probs as HF's M_1 does."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from oel.backends.tiny import tiny_chat_model, tiny_merging_tokenizer
from oel.config import load_config
from oel.layout import RunLayout
from oel.loop.config import LoopConfig
from oel.loop.run import run_loop
from oel.models import ModelConfig, load_model
from oel.models.gguf_export import write_qwen2_gguf
from oel.trajectory import Message

pytest.importorskip("llama_cpp", reason="llama.cpp engine not built (make engine)")

from oel.backends.llamacpp import LlamaCppBackend  # noqa: E402

SHIFT_TOL = 1e-3
"""Exact mode, float32 everywhere: the update's effect agrees to float32 rounding."""


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    model, tok = tiny_chat_model(seed=3, tokenizer=tiny_merging_tokenizer())
    return write_qwen2_gguf(model, tok, tmp_path_factory.mktemp("gguf") / "tiny.gguf")


def overrides(gguf, run_dir, cache) -> list[str]:
    return [
        f"run_dir={run_dir}", "rounds=1", f"model.name={gguf}", f"model.cache_dir={cache}", "model.dtype=float32",
        "model.device=cpu", "engine=llamacpp", "tensorboard=false", "env.game=blackjack",
        "collect.num_seeds=4", "collect.sampling.max_new_tokens=6",
        "extract.kind=raw_trajectories", "extract.num_runs=2", "extract.num_trajectories=3",
        "extract.budget_tokens=3000",
        "consolidate.steps=3", "consolidate.batch_size=2", "consolidate.micro_batch_size=1",
        "consolidate.max_new_tokens=6", "consolidate.lr=0.05",
        "evaluate.games.num_maps=4", "evaluate.games.sampling_seeds=[0]", "evaluate.games.sampling.max_new_tokens=6",
        "evaluate.ifeval.enabled=false", "evaluate.meter.max_layouts=4",
    ]


def logprob_shift(score, ids: list[int], start: int, base: list[float]) -> float:
    return sum(score(ids, start)) - sum(base)


def test_loop_on_llamacpp_trains_on_hf_and_runs_m1_as_an_adapter(tiny_gguf, tmp_path):
    run = tmp_path / "run"
    config = load_config(LoopConfig, None, overrides(tiny_gguf, run, tmp_path / "cache"))
    results = run_loop(config)
    layout = RunLayout(run)
    saved = yaml.safe_load(layout.config_file.read_text())
    assert saved["engine"] == "llamacpp"
    assert set(results["0"]) == {"collect", "extract", "evaluate", "consolidate"} and set(results["1"]) == {"evaluate"}
    adapter = layout.engine_adapter(1)
    assert adapter.is_file(), "M_1 ran on llama.cpp as the base GGUF plus its LoRA"
    evaluation = json.loads((layout.stage_dir(1, "evaluate") / "evaluation.json").read_text())
    assert evaluation["meter"] is not None, "the meter read exact logits of M_1 in HF"
    for r in ("0", "1"):
        assert results[r]["evaluate"]["game_episodes"] == 4

    # The update as llama.cpp applies it vs as HF's saved M_1 holds it.
    hf0 = load_model(ModelConfig(name=str(tiny_gguf), cache_dir=str(tmp_path / "cache"), dtype="float32"))
    hf1 = load_model(ModelConfig(name=str(layout.model_after(0)), dtype="float32"))
    engine = LlamaCppBackend(tiny_gguf, hf0.tokenizer, model_id="tiny", exact=True)
    prompt = engine.encoder.encode([Message(role="user", content="You hold 16; the dealer shows 9. [Hit] or [Stand]?")])
    ids = prompt + hf0.tokenizer("[Hit]", add_special_tokens=False)["input_ids"]

    def hf_score(model):
        with torch.inference_mode():
            logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
        return [float(logp[t - 1, ids[t]]) for t in range(len(prompt), len(ids))]

    base = hf_score(hf0.model)
    assert engine.token_logprobs(ids, len(prompt)) == pytest.approx(base, abs=SHIFT_TOL)
    engine.set_adapter(adapter)
    hf_shift = sum(hf_score(hf1.model)) - sum(base)
    engine_shift = sum(engine.token_logprobs(ids, len(prompt))) - sum(base)
    assert abs(hf_shift) > 10 * SHIFT_TOL, "consolidation changed the model"
    assert engine_shift == pytest.approx(hf_shift, abs=SHIFT_TOL)
