"""The llama.cpp engine agrees with the HF engine on the same weights, with and without LoRA updates.

A tiny random Qwen2 (float32) is written to GGUF in the test, so both engines compute with the
same numbers: log-probs must agree to float32 rounding, greedy answers token for token, and a
trained adapter's effect (converted to a GGUF LoRA) must have the same size in both engines.
"""

from __future__ import annotations

import math

import pytest
import torch

from oel.backends.base import SamplingParams
from oel.backends.chat_encoding import ChatEncoder
from oel.backends.hf import HFBackend
from oel.backends.tiny import tiny_chat_model, tiny_merging_tokenizer
from oel.consolidate.build import add_lora
from oel.models.gguf_export import write_qwen2_gguf
from oel.models.gguf_lora import AdapterError, write_lora_gguf
from oel.trajectory import Message

llama_cpp = pytest.importorskip("llama_cpp", reason="llama.cpp engine not built (make engine)")

from oel.backends.llamacpp import LlamaCppBackend  # noqa: E402

LOGPROB_TOL = 1e-4
"""float32 in both engines (exact mode); only summation order differs: measured ~1e-6."""
CHATS = [
    [Message(role="user", content="Hit or stand? You hold 15, the dealer shows 10.")],
    [Message(role="system", content="Answer in brackets."), Message(role="user", content="Guess a number.")],
    [Message(role="user", content="Hit or stand? You hold 19.")],
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    model, tok = tiny_chat_model(seed=3, tokenizer=tiny_merging_tokenizer())
    path = write_qwen2_gguf(model, tok, tmp_path_factory.mktemp("gguf") / "tiny.gguf")
    return model, tok, path


def hf_logprobs(model, ids: list[int], start: int) -> list[float]:
    with torch.inference_mode():
        logits = model(torch.tensor([ids])).logits[0].double()
    logp = torch.log_softmax(logits, -1)
    return [float(logp[t - 1, ids[t]]) for t in range(start, len(ids))]


def sequence(tok, chat, answer: str = "[Stand] because the dealer is strong") -> tuple[list[int], int]:
    prompt = ChatEncoder(tok, "tiny").encode(chat)
    return prompt + tok(answer, add_special_tokens=False)["input_ids"], len(prompt)


def random_lora(model, seed: int, tmp_path, name: str):
    """A PEFT LoRA on q/k/v/o and the MLP with random (non-zero) A and B, saved; returns (peft model, dir)."""
    from peft import LoraConfig

    torch.manual_seed(seed)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                        "up_proj", "down_proj"], lora_dropout=0.0)
    peft_model = add_lora(model, cfg)
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    out = tmp_path / name
    peft_model.save_pretrained(out)
    return peft_model, out


def test_base_logprobs_agree(tiny):
    model, tok, path = tiny
    engine = LlamaCppBackend(path, tok, model_id="tiny", exact=True)
    for chat in CHATS:
        ids, start = sequence(tok, chat)
        got, want = engine.token_logprobs(ids, start), hf_logprobs(model, ids, start)
        assert max(abs(a - b) for a, b in zip(got, want)) < LOGPROB_TOL


def test_greedy_answers_are_token_for_token_the_same(tiny):
    model, tok, path = tiny
    hf = HFBackend(model, tok, model_id="tiny", prefix_cache_bytes=0)
    engine = LlamaCppBackend(path, tok, model_id="tiny", max_batch_size=2, exact=True)
    params = SamplingParams(temperature=0.0, max_new_tokens=24)
    want = [g.text for g in hf.chat(CHATS, params)]
    assert [g.text for g in engine.chat(CHATS, params)] == want
    assert [engine.chat([c], params)[0].text for c in CHATS] == want, "a row's answer does not depend on its batch"


def test_sampled_answers_follow_the_row_seed(tiny):
    _, tok, path = tiny
    engine = LlamaCppBackend(path, tok, model_id="tiny", max_batch_size=3)
    params = SamplingParams(temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=12, seed=5)
    first = engine.chat(CHATS, params)
    assert [g.text for g in engine.chat(CHATS, params)] == [g.text for g in first], "same seed, same answers"
    assert all(g.completion_tokens >= 1 and g.prompt_tokens > 0 for g in first)
    other = engine.chat(CHATS, SamplingParams(temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=12, seed=6))
    assert [g.text for g in other] != [g.text for g in first]


def test_identical_prompts_in_a_group_are_prefilled_once_each_row_keeping_its_seed(tiny):
    """The sampling seeds of one evaluation map ask the same prompt: it is prefilled once and copied; every
    row's answer is still the one it gets alone."""
    _, tok, path = tiny
    engine = LlamaCppBackend(path, tok, model_id="tiny", max_batch_size=6, exact=True)
    chats = [CHATS[i % 2] for i in range(6)]
    params = SamplingParams(temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=10)
    seeds = [21, 22, 23, 24, 25, 26]
    prefilled: list[int] = []
    decode = engine._decode
    engine._decode = lambda tokens: (prefilled.append(len(tokens)), decode(tokens))[1]
    together = [g.text for g in engine.chat_with_seeds(chats, params, seeds)]
    first_call = sum(prefilled)
    engine._decode = decode
    assert together == [engine.chat_with_seeds([c], params, [s])[0].text for c, s in zip(chats, seeds)]
    assert len(set(together)) > 2
    prompts = [len(ChatEncoder(tok, "tiny").encode(c)) for c in CHATS[:2]]
    assert first_call <= sum(prompts) + 6 * params.max_new_tokens, "each distinct prompt prefilled once"


def test_stacked_adapters_equal_the_merged_rounds(tiny, tmp_path):
    """Two rounds: LoRA 1 trained on the base, LoRA 2 on base+LoRA 1 merged. The engine, given both as one
    GGUF LoRA over the base, must move every log-prob as HF's merged model does."""
    model, tok, path = tiny
    base_model, _ = tiny_chat_model(seed=3, tokenizer=tiny_merging_tokenizer())
    peft1, dir1 = random_lora(base_model, 11, tmp_path, "round1")
    round1 = peft1.merge_and_unload()
    peft2, dir2 = random_lora(round1, 12, tmp_path, "round2")
    round2 = peft2.merge_and_unload()
    chain = write_lora_gguf([dir1, dir2], path, tmp_path / "chain.gguf")
    engine = LlamaCppBackend(path, tok, model_id="tiny", adapter=chain, exact=True)
    base_engine_lp, hf_shift, engine_shift = [], [], []
    for chat in CHATS:
        ids, start = sequence(tok, chat)
        base_hf = hf_logprobs(model, ids, start)
        got, want = engine.token_logprobs(ids, start), hf_logprobs(round2, ids, start)
        assert max(abs(a - b) for a, b in zip(got, want)) < LOGPROB_TOL
        hf_shift.append(sum(want) - sum(base_hf))
        engine_shift.append(sum(got) - sum(base_hf))
        base_engine_lp.append(got)
    assert min(abs(s) for s in hf_shift) > 100 * LOGPROB_TOL, "the adapters change the model measurably"
    engine.set_adapter(None)
    ids, start = sequence(tok, CHATS[0])
    assert engine.token_logprobs(ids, start) == pytest.approx(hf_logprobs(model, ids, start), abs=LOGPROB_TOL)
    for h, e in zip(hf_shift, engine_shift):
        assert math.copysign(1, h) == math.copysign(1, e) and abs(h - e) < 0.01 * abs(h) + LOGPROB_TOL


def test_an_adapter_for_another_model_is_refused_in_one_line(tiny, tmp_path):
    _, tok, path = tiny
    from transformers import Qwen2Config, Qwen2ForCausalLM

    other = Qwen2ForCausalLM(Qwen2Config(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2))
    _, adapter = random_lora(other, 1, tmp_path, "other")
    with pytest.raises(AdapterError, match=r"model\.layers\.\d+\..*adapter is .* \(a different base model\?\)"):
        write_lora_gguf([adapter], path, tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists()
    assert not list(tmp_path.glob(".lora.*")), "nothing half-written"


def test_a_row_whose_client_has_gone_stops_while_its_batch_mates_go_on(tiny):
    from oel.backends.hf import RowRequest

    _, tok, path = tiny
    engine = LlamaCppBackend(path, tok, model_id="tiny", max_batch_size=2)
    params = SamplingParams(temperature=0.0, max_new_tokens=12)
    gone, stays = engine.generate_rows([RowRequest(CHATS[0], params, 0, cancelled=lambda: True),
                                        RowRequest(CHATS[1], params, 1)])
    assert gone.completion_tokens == 1
    assert stays.completion_tokens == engine.chat([CHATS[1]], params)[0].completion_tokens > 1
