"""Response-position scoring, the teacher's prompt and weights, merged HF checkpoints."""

from __future__ import annotations

import pytest
import torch

from oel import prompts
from oel.backends.tiny import save_tiny_chat_model, tiny_chat_model
from oel.consolidate.checkpoint import merged_state_dict, save_hf_model
from oel.consolidate.scoring import full_logits_reference, pack, response_logits
from oel.consolidate.teacher import KNOWLEDGE_BLOCK_SEPARATOR, Teacher, teacher_messages
from oel.trajectory import Message, Prefix

TOL = 1e-5
PROMPTS = [[5, 9, 13, 2, 7], [3, 4], [11, 12, 13, 14, 15, 16, 17]]
RESPONSES = [[20, 21, 22], [30], [40, 41]]


@pytest.fixture(scope="module")
def tiny():
    model, tok = tiny_chat_model(seed=1)
    return model.float(), tok


def _lora(model, seed: int = 0):
    """A peft LoRA model whose adapter is non-zero (peft initialises B to zero)."""
    import copy

    from peft import LoraConfig

    from oel.consolidate.build import add_lora

    peft_model = add_lora(copy.deepcopy(model), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return peft_model


@pytest.mark.parametrize("side", ["right", "left"])
def test_response_logits_equal_full_logits(tiny, side):
    model, _ = tiny
    batch = pack(PROMPTS, RESPONSES, pad_id=0, side=side)
    with torch.no_grad():
        fast = response_logits(model, batch)
        slow = full_logits_reference(model, batch)
    assert fast.shape == (sum(map(len, RESPONSES)), model.config.vocab_size)
    assert torch.allclose(fast, slow, atol=TOL)
    assert batch.response_tokens_N.tolist() == [t for r in RESPONSES for t in r]


def test_padding_side_and_batch_mates_do_not_change_logits(tiny):
    model, _ = tiny
    with torch.no_grad():
        right = response_logits(model, pack(PROMPTS, RESPONSES, pad_id=0, side="right"))
        left = response_logits(model, pack(PROMPTS, RESPONSES, pad_id=0, side="left"))
        alone = torch.cat([response_logits(model, pack([p], [r], pad_id=0)) for p, r in zip(PROMPTS, RESPONSES)])
    assert torch.allclose(right, left, atol=TOL)
    assert torch.allclose(right, alone, atol=TOL)


def test_response_logits_through_peft_match_full_logits(tiny):
    peft_model = _lora(tiny[0])
    batch = pack(PROMPTS, RESPONSES, pad_id=0)
    with torch.no_grad():
        assert torch.allclose(response_logits(peft_model, batch), full_logits_reference(peft_model, batch), atol=TOL)


def test_lora_disabled_teacher_equals_separately_loaded_base(tmp_path):
    from transformers import AutoModelForCausalLM

    path = save_tiny_chat_model(tmp_path / "base", seed=2)
    student = _lora(AutoModelForCausalLM.from_pretrained(path).float())
    frozen = AutoModelForCausalLM.from_pretrained(path).float().eval()
    teacher = Teacher(student, lora=True)
    batch = pack(PROMPTS, RESPONSES, pad_id=0)
    with torch.no_grad():
        with teacher.active() as t:
            via_teacher = torch.log_softmax(response_logits(t, batch), -1)
        reference = torch.log_softmax(response_logits(frozen, batch), -1)
        with_adapter = torch.log_softmax(response_logits(student, batch), -1)
    assert torch.allclose(via_teacher, reference, atol=TOL)
    assert not torch.allclose(with_adapter, reference, atol=1e-3)  # the adapter really does something


def test_full_finetune_teacher_is_a_frozen_copy(tiny):
    import copy

    student = copy.deepcopy(tiny[0])
    teacher = Teacher(student, lora=False)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    with teacher.active() as t:
        assert t is not student
        assert all(not p.requires_grad for p in t.parameters())
        assert torch.equal(t.lm_head.weight, tiny[0].lm_head.weight)


def test_merged_checkpoint_loads_with_plain_transformers(tiny, tmp_path):
    from transformers import AutoModelForCausalLM

    model, tok = tiny
    peft_model = _lora(model, seed=3)
    save_hf_model(peft_model, tok, tmp_path / "merged")
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").float()
    batch = pack(PROMPTS, RESPONSES, pad_id=0)
    with torch.no_grad():  # W + BA vs Wx + B(Ax): equal up to float32 rounding
        assert torch.allclose(response_logits(plain, batch), response_logits(peft_model, batch), atol=1e-4)
    assert not any("lora" in k for k in merged_state_dict(peft_model))
    # the live model was not merged in place: adapter off still gives the base model
    with torch.no_grad(), peft_model.disable_adapter():
        assert torch.allclose(response_logits(peft_model, batch), response_logits(model, batch), atol=TOL)


def test_teacher_messages_policy_template_uses_teacher_template():
    obs = "Turn 1. The grid:\nP . .\n. H .\n. . G"
    prompt = (Message(role="user", content=prompts.get("policy_grid_v1").render(observation=obs)),)
    msgs = teacher_messages(Prefix("t", 0, prompt, obs, "policy_grid_v1"), "- avoid H")
    assert msgs == [Message(role="user", content=prompts.get("teacher_grid_v1").render(knowledge="- avoid H", observation=obs))]
    # the choice follows the recorded template, not the text: the same prompt, recorded as
    # imported (no template), gets the generic block
    assert teacher_messages(Prefix("t", 0, prompt, obs), "- avoid H")[0].content.startswith("Before you answer")


def test_teacher_messages_other_prompts_get_a_block_in_the_first_user_message():
    prompt = (Message(role="system", content="sys"), Message(role="user", content="first"),
              Message(role="assistant", content="a"), Message(role="user", content="second"))
    msgs = teacher_messages(Prefix("t", 1, prompt, "second"), "lesson")
    assert msgs[0] == prompt[0] and msgs[2:] == list(prompt[2:])
    block = prompts.get("knowledge_block_v1").render(knowledge="lesson") + KNOWLEDGE_BLOCK_SEPARATOR
    assert msgs[1].content == block + "first"
    assert block == ("Before you answer: here is experience learned from earlier attempts at tasks like this one. "
                     "It may be incomplete or wrong, so weigh it against what you see.\n\nExperience:\nlesson\n\n")
