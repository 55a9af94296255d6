"""The teacher's prompt placements and a teacher that is another model (`teacher_model`)."""

from __future__ import annotations

import pytest
import torch
from distill_world import command_config, p_target, pretrained_model

from oel import prompts
from oel.consolidate import command_trainer, consolidate_command
from oel.consolidate.teacher import teacher_messages
from oel.errors import ConfigError
from oel.models import ModelConfig
from oel.trajectory import Message, Prefix

pytestmark = pytest.mark.usefixtures("one_thread")

BF16_STEP_REL = 0.03
"""How far a bf16 teacher may move a tiny model's first-step metrics (measured: 0.8%): bf16 keeps ~3 significant digits."""

OBS = "Turn 1. The grid:\nP . .\n. H .\n. . G"


def _policy_prefix() -> Prefix:
    prompt = (Message(role="user", content=prompts.get(prompts.POLICY_TEMPLATE).render(observation=OBS)),)
    return Prefix("t", 0, prompt, OBS, prompts.POLICY_TEMPLATE)


def test_placements_put_the_lessons_before_after_or_in_a_system_message():
    before = teacher_messages(_policy_prefix(), "- avoid H", "teacher_grid_v1")
    after = teacher_messages(_policy_prefix(), "- avoid H", "teacher_grid_after_v1")
    system = teacher_messages(_policy_prefix(), "- avoid H", "teacher_grid_system_v1")
    assert [m.role for m in before] == [m.role for m in after] == ["user"]
    assert before[0].content.index("- avoid H") < before[0].content.index(OBS)
    assert after[0].content.index(OBS) < after[0].content.index("- avoid H")
    assert [m.role for m in system] == ["system", "user"]
    assert "- avoid H" in system[0].content and OBS not in system[0].content
    assert system[1] == _policy_prefix().prompt[0]  # the student's own prompt, unchanged


def test_teacher_model_equal_to_the_start_model_gives_the_self_teacher_run(distill_world, tmp_path):
    """A separate frozen copy of M_r as teacher_model must train exactly as the adapter-off teacher."""
    self_run = consolidate_command(command_config(distill_world, tmp_path / "self", steps=2, save_every=0)).last_metrics
    other_run = consolidate_command(command_config(distill_world, tmp_path / "other", steps=2, save_every=0,
                                    teacher_model=distill_world["random"])).last_metrics
    for key in ("loss", "grad_norm", "reverse_kl_full", "student_topk_mass"):
        assert other_run[key] == pytest.approx(self_run[key], rel=1e-5), key


def test_a_bf16_teacher_scores_a_float32_student_close_to_a_float32_teacher(distill_world, tmp_path):
    """teacher_dtype=bfloat16: the student (and its gradients) stay float32, only the teacher's
    weights are bf16; the first step (same samples) then lands within bf16 rounding of the all-float32 one."""
    trainer = command_trainer(command_config(distill_world, tmp_path / "probe", teacher_model=distill_world["random"],
                                   teacher_dtype="bfloat16"))
    with trainer.teacher.active() as teacher:
        assert {p.dtype for p in teacher.lm.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in trainer.params} == {torch.float32}
    full = consolidate_command(command_config(distill_world, tmp_path / "fp32", steps=1, save_every=0, teacher_model=distill_world["random"]))
    mixed = consolidate_command(command_config(distill_world, tmp_path / "mixed", steps=1, save_every=0, teacher_model=distill_world["random"],
                                teacher_dtype="bfloat16"))
    for key in ("loss", "reverse_kl_full", "student_topk_mass"):
        assert mixed.last_metrics[key] == pytest.approx(full.last_metrics[key], rel=BF16_STEP_REL, abs=1e-4), key
    assert mixed.last_metrics["loss"] != full.last_metrics["loss"]  # the teacher did score in bf16


def test_the_teacher_model_loads_with_the_students_settings_and_its_own_dtype(distill_world, tmp_path):
    """The one place both consolidation and the loop's teacher-gap meter take the teacher's load settings from."""
    student = ModelConfig(name=distill_world["random"], dtype="float32", device="cpu")
    same = command_config(distill_world, tmp_path / "a", model=student, teacher_model="other").teacher_model_config(student)
    mixed = command_config(distill_world, tmp_path / "b", model=student, teacher_model="other",
                    teacher_dtype="bfloat16").teacher_model_config(student)
    assert (same.name, same.dtype, same.device) == ("other", "float32", "cpu")
    assert (mixed.name, mixed.dtype, mixed.device) == ("other", "bfloat16", "cpu")


def test_a_teacher_dtype_without_a_teacher_model_is_refused(distill_world, tmp_path):
    with pytest.raises(ValueError, match="teacher_dtype: bfloat16 needs teacher_model"):
        command_config(distill_world, tmp_path / "run", teacher_dtype="bfloat16")


def test_a_student_learns_from_another_models_teacher(distill_world, tmp_path):
    """A student that is uniform over U/D/L/R with or without the knowledge learns nothing from its
    own teacher; with the model that answers R when given the knowledge as teacher_model, it
    learns to answer R without it."""
    ignorant = pretrained_model(tmp_path, knows=False)
    student = ModelConfig(name=ignorant, dtype="float32", device="cpu")
    before = p_target(ignorant, knowledge=False)
    assert 0.15 < before < 0.35 and p_target(ignorant, knowledge=True) < 0.35  # the construction worked
    own = consolidate_command(command_config(distill_world, tmp_path / "own", model=student, steps=20, save_every=0))
    other = consolidate_command(command_config(distill_world, tmp_path / "other", model=student, teacher_model=distill_world["pretrained"],
                                steps=20, save_every=0))
    assert abs(p_target(str(own.model_dir), knowledge=False) - before) < 0.1
    assert p_target(str(other.model_dir), knowledge=False) > before + 0.3


def test_a_teacher_with_another_vocabulary_is_refused(distill_world, tmp_path):
    from transformers import AutoTokenizer

    other = tmp_path / "other_vocab"
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(distill_world["random"])
    tok = AutoTokenizer.from_pretrained(distill_world["random"])
    tok.add_tokens(["<extra_token_for_the_test>"])
    model.save_pretrained(other)
    tok.save_pretrained(other)
    with pytest.raises(ConfigError, match="teacher_model: .* another vocabulary"):
        command_trainer(command_config(distill_world, tmp_path / "run", teacher_model=str(other),
                             model=ModelConfig(name=distill_world["random"], dtype="float32", device="cpu")))


def test_a_teacher_template_that_cannot_hold_the_knowledge_is_refused():
    from oel.config import load_config
    from oel.consolidate import ConsolidateConfig

    with pytest.raises(ConfigError, match="teacher_template: 'policy_grid_v1' has no {knowledge} field"):
        load_config(ConsolidateConfig, None, ["teacher_template=policy_grid_v1"])
    with pytest.raises(ConfigError, match="teacher_template: prompt 'nope': no such template"):
        load_config(ConsolidateConfig, None, ["teacher_template=nope"])
