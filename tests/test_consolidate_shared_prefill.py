"""One student prefill for sampling and scoring equals the two separate passes (fp32, tiny models)."""

from __future__ import annotations

import pytest
import torch

from oel.backends.sampling import RowSampling
from oel.backends.tiny import tiny_chat_model
from oel.consolidate.scoring import generate_ids, pack, response_logits
from oel.consolidate.shared_prefill import open_prompts, opened_response_logits, sample_responses

TOL = 1e-5
GRAD_TOL = 1e-4
PAD = 0


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def lora_student():
    """A peft LoRA student in train mode whose adapter is not zero (B is randomised)."""
    from peft import LoraConfig

    from oel.consolidate.build import add_lora

    model, tok = tiny_chat_model(seed=4, dtype=torch.float32)
    student = add_lora(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                                               target_modules=["q_proj", "v_proj", "down_proj"]))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in student.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    student.train()
    return student, tok


def _random_rows(lengths, vocab, seed):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(1, vocab, (n,), generator=gen).tolist() for n in lengths]


@pytest.mark.parametrize("head_tokens", [0, 7])
def test_logits_and_gradients_equal_plain_scoring(lora_student, head_tokens):
    """With or without the shared opening run once (head_tokens): the plain pass's logits and gradients."""
    student, _ = lora_student
    vocab = student.config.vocab_size
    opening = _random_rows((head_tokens,), vocab, seed=5)[0]
    prompts = [opening + p for p in _random_rows((23, 9, 31), vocab, seed=0)]
    responses = _random_rows((4, 1, 6), vocab, seed=1)

    def logits_and_grads(fn):
        student.zero_grad()
        out = fn()
        out.log_softmax(-1)[:, :11].sum().backward()
        return out.detach(), {n: p.grad.clone() for n, p in student.named_parameters() if p.grad is not None}

    plain, g_plain = logits_and_grads(lambda: response_logits(student, pack(prompts, responses, pad_id=PAD)))
    shared, g_shared = logits_and_grads(
        lambda: opened_response_logits(student, open_prompts(student, prompts, pad_id=PAD, head_tokens=head_tokens),
                                       responses, pad_id=PAD))
    assert shared.shape == plain.shape == (sum(map(len, responses)), student.config.vocab_size)
    assert torch.allclose(shared, plain, atol=TOL)
    assert g_plain.keys() == g_shared.keys() and any("lora_A" in n for n in g_plain)
    for name in g_plain:  # float32 reassociation error scales with the gradient's magnitude (up to ~1e2 here)
        scale = float(g_plain[name].abs().max())
        assert torch.allclose(g_shared[name], g_plain[name], atol=GRAD_TOL * scale, rtol=GRAD_TOL), name


def test_samples_equal_generate_ids(lora_student):
    """Same seeds, same per-row sampler: the same responses as `generate_ids`, stop tokens included."""
    student, _ = lora_student
    prompts = _random_rows((12, 30, 5, 18), student.config.vocab_size, seed=2)
    rows = [RowSampling(1.0, 1.0, 0, seed=11), RowSampling(0.7, 0.9, 20, seed=12),
            RowSampling(0.0, 1.0, 0, seed=13), RowSampling(1.5, 1.0, 0, seed=14)]
    student.eval()
    try:
        # a token the greedy row writes third becomes the stop token: that row (at least) stops early
        free = generate_ids(student, prompts, rows, pad_id=PAD, stop_ids=frozenset({-1}), max_new_tokens=7)
        stop = frozenset({free[2][2]})
        reference = generate_ids(student, prompts, rows, pad_id=PAD, stop_ids=stop, max_new_tokens=7)
    finally:
        student.train()
    with torch.no_grad():
        shared = sample_responses(student, open_prompts(student, prompts, pad_id=PAD), rows,
                                  stop_ids=stop, max_new_tokens=7)
    assert shared == reference
    assert {len(r) for r in shared} != {7}  # not every row ran to the limit
    assert all(r[-1] in stop or len(r) == 7 for r in shared)


def test_rejects_bad_inputs(lora_student):
    student, _ = lora_student
    with torch.no_grad():
        opened = open_prompts(student, [[3, 4, 5], [6, 7]], pad_id=PAD)
        with pytest.raises(ValueError, match="responses"):
            opened_response_logits(student, opened, [[1]], pad_id=PAD)
        with pytest.raises(ValueError, match="at least one token"):
            opened_response_logits(student, opened, [[1], []], pad_id=PAD)
        with pytest.raises(ValueError, match="sampling rows"):
            sample_responses(student, opened, [RowSampling(0.0, 1.0, 0, 1)], stop_ids=frozenset({1}), max_new_tokens=2)
        with pytest.raises(ValueError, match="prompt token"):
            open_prompts(student, [[3], []], pad_id=PAD)
        with pytest.raises(ValueError, match="head_tokens"):
            open_prompts(student, [[3, 4, 5], [3, 9, 5]], pad_id=PAD, head_tokens=2)
        with pytest.raises(ValueError, match="head_tokens"):
            open_prompts(student, [[3, 4, 5], [3, 4]], pad_id=PAD, head_tokens=2)


@pytest.mark.parametrize(("micro_batch_size", "student_prefix_cache"), [(4, False), (2, False), (1, False), (4, True)])
def test_trainer_step_same_with_and_without_shared_prefill(grid_consolidation_config, micro_batch_size,
                                                            student_prefix_cache):
    """A whole consolidation step: same samples, loss, metrics and gradients with the switch on and off."""
    from oel.consolidate import command_trainer

    results = []
    for shared in (False, True):
        cfg = grid_consolidation_config(f"run{int(shared)}", micro_batch_size=micro_batch_size, lora_r=4,
                                        shared_student_prefill=shared, student_prefix_cache=student_prefix_cache)
        trainer = command_trainer(cfg)
        assert trainer.shared_prefill is shared
        trainer.prepare_output()
        trainer.optimizer.step = lambda: None  # compare gradients, not Adam's sign-like first update
        metrics = trainer.train_step(1)
        grads = {n: p.grad.clone() for n, p in trainer.student.named_parameters() if p.grad is not None}
        results.append((metrics, grads))
    (m_plain, g_plain), (m_shared, g_shared) = results
    assert m_plain["response_tokens"] == m_shared["response_tokens"]
    for key in ("loss", "reverse_kl_full", "student_topk_mass"):
        assert m_plain[key] == pytest.approx(m_shared[key], abs=TOL), key
    assert m_plain["grad_norm"] == pytest.approx(m_shared["grad_norm"], rel=1e-4)
    assert g_plain.keys() == g_shared.keys() and g_plain
    for name in g_plain:
        assert torch.allclose(g_plain[name], g_shared[name], atol=1e-6, rtol=1e-4), name


@pytest.mark.parametrize(("setting", "expected"), [
    (dict(), (True, True, True)),
    (dict(sampler="off_policy", loss="forward_kl"), (False, True, True)),
    (dict(lora_dropout=0.1), (False, True, True)),
    (dict(gradient_checkpointing=True), (False, False, True)),
    (dict(shared_student_prefill=False, student_prefix_cache=False, teacher_prefix_cache=False), (False, False, False)),
])
def test_switched_paths_run_only_where_they_can(grid_consolidation_config, setting, expected):
    """(shared_student_prefill, student_prefix_cache, teacher_prefix_cache) in use: skipped, not refused,
    where they cannot run (checkpointed layers drop the KV cache; off-policy samples from the teacher)."""
    from oel.consolidate import command_trainer

    cfg = grid_consolidation_config("run", batch_size=2, micro_batch_size=2, max_new_tokens=2,
                                    **{"student_prefix_cache": True, **setting})
    trainer = command_trainer(cfg)
    assert (trainer.shared_prefill, trainer.student_head_cache, trainer.teacher_head_cache) == expected
    trainer.prepare_output()
    assert trainer.train_step(1)["response_tokens"] > 0  # and the step runs


def test_lora_in_the_model_dtype_gives_nearly_the_float32_adapter_gradient(grid_consolidation_inputs,
                                                                            grid_consolidation_config):
    """bf16 weights: the adapter's matmuls in bf16 (autocast) vs peft's float32 path -- same step up to bf16 rounding."""
    from oel.consolidate import command_trainer
    from oel.models import ModelConfig

    grads, metrics = [], []
    for compute in ("float32", "model"):
        cfg = grid_consolidation_config(compute, lora_r=4, lora_compute_dtype=compute,
                                        model=ModelConfig(name=grid_consolidation_inputs, dtype="bfloat16", device="cpu"))
        trainer = command_trainer(cfg)
        assert (trainer.student_dtype is None) is (compute == "float32")
        trainer.prepare_output()
        trainer.optimizer.step = lambda: None
        metrics.append(trainer.train_step(1))
        grads.append(torch.cat([p.grad.flatten() for p in trainer.params if p.grad is not None]))
        assert all(p.dtype == torch.float32 for p in trainer.params)  # master weights stay float32
    assert metrics[0]["response_tokens"] == metrics[1]["response_tokens"]
    assert metrics[0]["loss"] == pytest.approx(metrics[1]["loss"], rel=0.05, abs=1e-3)
    assert grads[0].norm() > 0
    assert float((grads[0] - grads[1]).norm() / grads[0].norm()) < 0.05
