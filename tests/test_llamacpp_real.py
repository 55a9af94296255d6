"""The engines agree on real shipped weights: SmolLM2-135M's Q4_1 GGUF in llama.cpp vs its dequantized
HF form, with and without a LoRA update (a llama-architecture model: the adapter's q/k rows must be
permuted as the GGUF's are)."""

from __future__ import annotations

import pytest
import torch

from oel.backends.chat_encoding import ChatEncoder
from oel.consolidate.build import add_lora
from oel.models import ModelConfig, load_model
from oel.models.gguf_file import model_gguf
from oel.models.gguf_lora import write_lora_gguf
from oel.trajectory import Message

pytestmark = [pytest.mark.real, pytest.mark.slow]
pytest.importorskip("llama_cpp", reason="llama.cpp engine not built (make engine)")

from oel.backends.llamacpp import LlamaCppBackend  # noqa: E402

PRESET = "smollm2-135m-instruct"
MEAN_TOKEN_TOL = 0.1
"""Mean |log p| difference per token between llama.cpp's quantized kernels (activations rounded to 8
bits, float16 KV) and HF's float32 matmuls on the same Q4_1 weights of this 135M model (measured 0.04)."""
MIN_CHANGE_CORRELATION = 0.9
"""The update's per-token log-prob changes, llama.cpp vs HF (the 1.5B: see docs/engines.md)."""
TOTAL_SHIFT_REL_TOL = 0.35
"""Measured: -6.39 (HF) vs -4.80 (llama.cpp) over the three answers: Q4_1 kernels on a 135M model."""
LORA_B_STD = 0.06
"""A random update large enough that its effect stands out of the engines' rounding difference."""
CHATS = [
    ("You hold 15 and the dealer shows 10. Reply [Hit] or [Stand], then explain.",
     "[Stand]. With 15 against a 10 the dealer is strong, but hitting busts often, so I hold my hand."),
    ("Name three prime numbers between 10 and 40 and say why they are prime.",
     "11, 13 and 37 are prime: each has no divisor other than 1 and itself."),
    ("Write two short sentences about the sea.", "The sea is wide and deep. Its waves roll in all day long."),
]


def hf_logprobs(model, ids: list[int], start: int) -> list[float]:
    with torch.inference_mode():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
    return [float(logp[t - 1, ids[t]]) for t in range(start, len(ids))]


def test_real_weights_agree_with_and_without_an_update(tmp_path):
    from peft import LoraConfig

    hf = load_model(ModelConfig(name=PRESET, dtype="float32", cache_dir=str(tmp_path / "cache")))
    encoder = ChatEncoder(hf.tokenizer, PRESET)
    seqs = []
    for question, answer in CHATS:
        prompt = encoder.encode([Message(role="user", content=question)])
        seqs.append((prompt + hf.tokenizer(answer, add_special_tokens=False)["input_ids"], len(prompt)))
    base_hf = [hf_logprobs(hf.model, ids, start) for ids, start in seqs]
    gguf = model_gguf(ModelConfig(name=PRESET, cache_dir=str(tmp_path / "cache")))
    engine = LlamaCppBackend(gguf, hf.tokenizer, model_id=PRESET)
    base_ll = [engine.token_logprobs(ids, start) for ids, start in seqs]
    token_diffs = [abs(x - y) for a, b in zip(base_ll, base_hf) for x, y in zip(a, b)]

    torch.manual_seed(0)
    peft_model = add_lora(hf.model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=[
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, LORA_B_STD)
    peft_model.save_pretrained(tmp_path / "adapter")
    engine.set_adapter(write_lora_gguf([tmp_path / "adapter"], gguf, tmp_path / "adapter.gguf"))
    hf_change, ll_change = [], []
    for (ids, start), b_hf, b_ll in zip(seqs, base_hf, base_ll):
        hf_change += [x - y for x, y in zip(hf_logprobs(peft_model, ids, start), b_hf)]
        ll_change += [x - y for x, y in zip(engine.token_logprobs(ids, start), b_ll)]
    corr = float(torch.corrcoef(torch.tensor([hf_change, ll_change]))[0, 1])
    print(f"per-token |llama.cpp - HF| max {max(token_diffs):.3f} mean {sum(token_diffs) / len(token_diffs):.3f}; "
          f"the update's per-token changes correlate {corr:.3f}, total {sum(hf_change):.2f} (HF) vs "
          f"{sum(ll_change):.2f} (llama.cpp)")
    assert sum(token_diffs) / len(token_diffs) < MEAN_TOKEN_TOL
    assert corr > MIN_CHANGE_CORRELATION
    assert abs(sum(hf_change)) > 1.0, "the update moves the sequences measurably"
    assert sum(ll_change) == pytest.approx(sum(hf_change), rel=TOTAL_SHIFT_REL_TOL)
