"""Teacher scoring with the shared prompt head's KV cache computed once equals plain scoring."""

from __future__ import annotations

import copy

import pytest
import torch

from oel.backends.tiny import tiny_chat_model
from oel.consolidate.scoring import (ResponseScorer, pack, response_logits, response_logits_with_shared_prefix,
                                 shared_prefix_length)

TOL = 1e-5
BF16_TOL = 0.1
"""bf16 logits carry ~3 significant digits; reassociated sums differ by a few of their ulps."""
HEAD = [1, 5, 9, 13, 2, 7, 40, 41, 42, 43, 44, 45]
PROMPTS = [HEAD + [60, 61, 62], HEAD + [70], HEAD + [80, 81, 82, 83, 84, 85]]
RESPONSES = [[20, 21, 22], [30], [50, 51]]


@pytest.fixture(scope="module")
def tiny():
    model, _ = tiny_chat_model(seed=3)
    return model.float().eval()


def _lora(model):
    from peft import LoraConfig

    from oel.consolidate.build import add_lora

    peft_model = add_lora(copy.deepcopy(model), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return peft_model


def test_shared_prefix_length():
    assert shared_prefix_length(PROMPTS) == len(HEAD)
    assert shared_prefix_length([[1, 2, 3], [1, 2, 3]]) == 2  # the last prompt token stays per row
    assert shared_prefix_length([[1, 2], [3, 4]]) == 0
    assert shared_prefix_length([[4, 5, 6, 7]]) == 3
    assert shared_prefix_length([]) == 0


def test_equals_plain_scoring(tiny):
    with torch.no_grad():
        plain = response_logits(tiny, pack(PROMPTS, RESPONSES, pad_id=0))
        cached = response_logits_with_shared_prefix(tiny, PROMPTS, RESPONSES, pad_id=0)
    assert cached.shape == plain.shape == (sum(map(len, RESPONSES)), tiny.config.vocab_size)
    assert torch.allclose(cached, plain, atol=TOL)


def test_single_row_and_no_shared_prefix(tiny):
    with torch.no_grad():
        one = response_logits_with_shared_prefix(tiny, PROMPTS[:1], RESPONSES[:1], pad_id=0)
        assert torch.allclose(one, response_logits(tiny, pack(PROMPTS[:1], RESPONSES[:1], pad_id=0)), atol=TOL)
        disjoint = [[3, 4, 5], [6, 7]]
        fallback = response_logits_with_shared_prefix(tiny, disjoint, [[1], [2, 3]], pad_id=0)
        assert torch.allclose(fallback, response_logits(tiny, pack(disjoint, [[1], [2, 3]], pad_id=0)), atol=TOL)


def test_lora_teacher_with_adapter_disabled(tiny):
    """The consolidation teacher: a peft model under disable_adapter(), reached through ResponseScorer."""
    scorer = ResponseScorer(_lora(tiny))
    with torch.no_grad(), scorer.disable_adapter():
        plain = response_logits(scorer, pack(PROMPTS, RESPONSES, pad_id=0))
        cached = response_logits_with_shared_prefix(scorer, PROMPTS, RESPONSES, pad_id=0)
        base = response_logits(tiny, pack(PROMPTS, RESPONSES, pad_id=0))
    assert torch.allclose(cached, plain, atol=TOL)
    assert torch.allclose(cached, base, atol=TOL)  # the adapter really was off
    with torch.no_grad():
        adapted = response_logits_with_shared_prefix(scorer, PROMPTS, RESPONSES, pad_id=0)
    assert not torch.allclose(adapted, base, atol=TOL)


def test_bf16_within_tolerance(tiny):
    model = copy.deepcopy(tiny).to(torch.bfloat16)
    with torch.no_grad():
        plain = response_logits(model, pack(PROMPTS, RESPONSES, pad_id=0)).float()
        cached = response_logits_with_shared_prefix(model, PROMPTS, RESPONSES, pad_id=0).float()
    assert (cached - plain).abs().max() < BF16_TOL
    assert torch.equal(cached.argmax(-1), plain.argmax(-1))


def test_rejects_mismatched_inputs(tiny):
    with pytest.raises(ValueError):
        response_logits_with_shared_prefix(tiny, PROMPTS, RESPONSES[:2], pad_id=0)
    with pytest.raises(ValueError):
        response_logits_with_shared_prefix(tiny, PROMPTS[:1], [[]], pad_id=0)


def test_groups_keep_row_order(tiny):
    from oel.consolidate.scoring import response_logits_by_shared_prefix_groups

    other = [9, 9, 9, 9, 1, 2]
    prompts = [PROMPTS[0], other + [3], PROMPTS[1], other + [4, 5], PROMPTS[2]]
    responses = [[20, 21], [22], [23, 24, 25], [26], [27]]
    keys = [0, 1, 0, 1, 0]
    with torch.no_grad():
        plain = response_logits(tiny, pack(prompts, responses, pad_id=0))
        grouped = response_logits_by_shared_prefix_groups(tiny, prompts, responses, keys, pad_id=0)
    assert torch.allclose(grouped, plain, atol=TOL)
    with pytest.raises(ValueError):
        response_logits_by_shared_prefix_groups(tiny, prompts, responses, keys[:2], pad_id=0)


def test_kept_heads_across_calls_equal_plain_scoring(tiny):
    """A key's fixed head is run once and reused by every later call; a group that does not open with its
    key's head is scored with its own shared prefix; every call gives plain scoring's logits."""
    from oel.consolidate import scoring

    other = [9, 9, 9, 9, 1, 2]
    kept = scoring.KeptHeads({0: HEAD, 1: other}.__getitem__)
    runs = []
    head_kv = scoring.head_kv
    scoring.head_kv = lambda model, ids: (runs.append(list(ids)), head_kv(model, ids))[1]
    calls = [([PROMPTS[2]], [[50]], [0]),
             ([PROMPTS[0], PROMPTS[1]], [[20, 21], [30]], [0, 0]),
             ([PROMPTS[1], other + [3], PROMPTS[2]], [[31], [22], [51]], [0, 1, 0]),
             ([other + [4, 5], other + [7]], [[26], [27, 28]], [0, 0])]  # key 0 without its head: its own prefix
    try:
        with torch.no_grad():
            for prompts, responses, keys in calls:
                plain = response_logits(tiny, pack(prompts, responses, pad_id=0))
                again = scoring.response_logits_by_shared_prefix_groups(tiny, prompts, responses, keys, pad_id=0,
                                                                        kept=kept)
                assert torch.allclose(again, plain, atol=TOL)
    finally:
        scoring.head_kv = head_kv
    assert runs == [HEAD, other, other], "each key's head once; the stray group its own prefix"


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("switch", ["teacher_prefix_cache", "student_prefix_cache"])
def test_trainer_step_same_with_prefix_cache(grid_consolidation_config, switch):
    """One consolidation step: either prefix-cache switch changes nothing but rounding (loss and gradient)."""
    from oel.consolidate import command_trainer

    results = []
    for cached in (False, True):
        cfg = grid_consolidation_config(f"run{int(cached)}", **{switch: cached})
        trainer = command_trainer(cfg)
        trainer.prepare_output()
        results.append(trainer.train_step(1))
    plain, cached = results
    assert plain["response_tokens"] == cached["response_tokens"]
    assert plain["loss"] == pytest.approx(cached["loss"], abs=TOL)
    assert plain["grad_norm"] == pytest.approx(cached["grad_norm"], rel=1e-4)


def test_student_shared_head_logits_and_gradients_equal_plain_scoring():
    """The student's shared-head pass: same logits and same parameter gradients as the plain pass."""
    from oel.consolidate.scoring import ResponseScorer, response_logits_shared_head, shared_prefix_length
    from oel.backends.tiny import tiny_chat_model

    model, _ = tiny_chat_model(seed=1, dtype=torch.float32)
    gen = torch.Generator().manual_seed(0)
    head = torch.randint(0, 250, (40,), generator=gen).tolist()
    prompts = [head + torch.randint(0, 250, (n,), generator=gen).tolist() for n in (5, 9, 3)]
    responses = [torch.randint(0, 250, (n,), generator=gen).tolist() for n in (4, 2, 6)]
    batch = pack(prompts, responses, pad_id=0)
    shared = shared_prefix_length(prompts)
    assert shared >= 40

    def logits_and_grads(fn):
        model.zero_grad()
        out = fn()
        out.float().log_softmax(-1)[:, :7].sum().backward()
        return out.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    plain, g_plain = logits_and_grads(lambda: response_logits(model, batch))
    cached, g_cached = logits_and_grads(lambda: ResponseScorer(model)(batch.input_ids_BT, batch.attention_mask_BT,
                                                                       batch.response_mask_BT, head_tokens=shared))
    assert torch.allclose(cached, plain, atol=TOL)
    assert len(g_plain) == len(g_cached)
    for a, b in zip(g_plain, g_cached):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="head_tokens"):
        response_logits_shared_head(model, pack(prompts, responses, pad_id=0, side="left"), shared)
    from oel.consolidate.build import enable_checkpointing

    enable_checkpointing(model)
    model.train()
    with pytest.raises(ValueError, match="checkpointed"):
        response_logits_shared_head(model, batch, shared)
