"""Who writes the responses that get scored: the two samplers of the consolidation stage.

- `OnPolicySampler` (OEL): the student, WITHOUT knowledge, answers each prefix; the loss
  then pulls the student's distribution on its own answers toward the teacher's.
- `OffPolicySampler` (the paper's off-policy baseline): the teacher, WITH knowledge, answers; the
  student learns to imitate answers it would not have written itself.
Both return token ids, not text: the teacher and the student share a tokenizer, so the
teacher scores exactly the tokens that were sampled (re-tokenising decoded text would not
always give them back).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from oel.consolidate.scoring import generate_ids
from oel.consolidate.teacher import Teacher


@dataclass(frozen=True)
class Sample:
    """One training row: the two prompts (without / with knowledge) and the response tokens."""

    prefix_index: int
    knowledge_index: int
    student_prompt: list[int]
    teacher_prompt: list[int]
    response: list[int]


@dataclass(frozen=True)
class GenerationSettings:
    pad_id: int
    stop_ids: frozenset[int]
    max_new_tokens: int
    chunk_size: int
    """Rows per `generate` call (the micro-batch size: bounds the KV cache)."""
    synced: bool = False
    """Keep stepping until every rank has finished (FSDP: each forward is a collective)."""


class ResponseSampler(Protocol):
    name: str

    def responses(self, student: Any, teacher: Teacher, student_prompts: Sequence[list[int]],
                  teacher_prompts: Sequence[list[int]], rows: Sequence[Any],
                  settings: GenerationSettings) -> list[list[int]]:
        """One response (token ids, cut after the stop token) per row."""
        ...


def _chunked_generate(model: Any, prompts: Sequence[list[int]], rows: Sequence[Any],
                      settings: GenerationSettings) -> list[list[int]]:
    out: list[list[int]] = []
    for start in range(0, len(prompts), settings.chunk_size):
        end = start + settings.chunk_size
        out.extend(generate_ids(model, prompts[start:end], rows[start:end], pad_id=settings.pad_id,
                                stop_ids=settings.stop_ids, max_new_tokens=settings.max_new_tokens,
                                synced=settings.synced))
    return out


class OnPolicySampler:
    """The student (current weights, no knowledge) writes the responses."""

    name = "on_policy"

    def responses(self, student: Any, teacher: Teacher, student_prompts: Sequence[list[int]],
                  teacher_prompts: Sequence[list[int]], rows: Sequence[Any],
                  settings: GenerationSettings) -> list[list[int]]:
        was_training = student.training
        student.eval()
        try:
            return _chunked_generate(student, student_prompts, rows, settings)
        finally:
            student.train(was_training)


class OffPolicySampler:
    """The teacher (frozen round-start model, with knowledge) writes the responses."""

    name = "off_policy"

    def responses(self, student: Any, teacher: Teacher, student_prompts: Sequence[list[int]],
                  teacher_prompts: Sequence[list[int]], rows: Sequence[Any],
                  settings: GenerationSettings) -> list[list[int]]:
        with teacher.active() as model:
            return _chunked_generate(model, teacher_prompts, rows, settings)


SAMPLERS: dict[str, type] = {"on_policy": OnPolicySampler, "off_policy": OffPolicySampler}
