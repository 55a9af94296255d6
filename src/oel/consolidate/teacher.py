"""The teacher: the round-start model M_r, reading the knowledge in its prompt.

Two things make a teacher: its weights and its prompt.

Weights. The teacher must stay the FROZEN round-start model while the student moves.
- LoRA: the base weights never change during a round (only the adapter trains), so the
  teacher is the very same model with the adapter switched off (`disable_adapter()`): no
  second copy in memory.
- Full fine-tuning: the weights themselves move, so the teacher is a frozen deep copy made
  before the first step (twice the weight memory; the price of full fine-tuning).
At the end of a round the LoRA is merged into the weights and saved as a plain Hugging Face
directory; that directory is round r+1's starting model and hence its teacher (we merge
rather than stack adapters: every stage downstream loads one plain model).

Prompt. `teacher_messages(prefix, knowledge)` decides by the template the prefix's trajectory
records it was played with (`Prefix.template`), never by looking at the text:
- played with the policy template (`prompts.POLICY_TEMPLATE`, what `oel collect` uses): the
  teacher sees the same observation through `prompts.TEACHER_TEMPLATE` with the knowledge in it;
- played with a small-answer game's policy prompt (`prompts.PAIRED_TEACHER`, e.g.
  `policy_game_v1`): the same observation through its paired teacher prompt (`teacher_game_v1`);
- anything else (imported logs, a deployment's conversations, any task that is not one of the
  grid games): the task-neutral teacher (`prompts.TASK_TEACHER_TEMPLATE`, the knowledge block
  `knowledge_block_v1`: "experience learned from earlier attempts at tasks like this one", no
  game, map or move) goes at the START of the FIRST user message, everything else unchanged.
  The start, because the text that follows is what the answer must respond to; the first user
  message, because in a multi-message prompt it frames the whole task. A grid template cannot
  be used there: the prefix has no game observation to put in its {observation} slot.
Either template may be a user's `.txt` file (`prompts.get` reads it; the config checks its fields).
"""

from __future__ import annotations

import contextlib
import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from oel import prompts
from oel.consolidate.scoring import ResponseScorer
from oel.io import read_text
from oel.trajectory import Message, Prefix

KNOWLEDGE_BLOCK_SEPARATOR = "\n\n"
"""Between the knowledge block and the prompt text it is put in front of."""


def teacher_messages(prefix: Prefix, knowledge: str, template: str = prompts.TEACHER_TEMPLATE,
                     task_template: str = prompts.TASK_TEACHER_TEMPLATE) -> list[Message]:
    """The prefix's prompt with `knowledge` inserted (see the module docstring for the rule).

    `template` is the grid teacher (one of `prompts.TEACHER_TEMPLATES`, or any template of the
    same form); `task_template` the task-neutral block for every other prefix.
    """
    msgs = list(prefix.prompt)
    paired = prompts.PAIRED_TEACHER.get(prefix.template or "")
    if paired is not None and prefix.prompt[-1].role == "user":
        return [m for m in msgs[:-1]] + prompts.turn_messages(paired, prefix.observation, knowledge=knowledge)
    if is_grid_prefix(prefix):
        turn = prompts.turn_messages(template, prefix.observation, knowledge=knowledge)
        system = [m for m in turn if m.role == "system"]
        return system + [m for m in msgs[:-1] if m.role != "system"] + [turn[-1]]
    first = next(i for i, m in enumerate(msgs) if m.role == "user")
    block = prompts.get(task_template).render(knowledge=knowledge) + KNOWLEDGE_BLOCK_SEPARATOR
    msgs[first] = Message(role="user", content=block + msgs[first].content)
    return msgs


def is_grid_prefix(prefix: Prefix) -> bool:
    """True when the grid teacher applies: the prefix was played with the grid policy template."""
    return prefix.template == prompts.POLICY_TEMPLATE and prefix.prompt[-1].role == "user"


def prompt_records(template: str = prompts.TEACHER_TEMPLATE,
                   task_template: str = prompts.TASK_TEACHER_TEMPLATE) -> list[dict[str, str]]:
    """What a run stores to identify the teacher wording it used (name + sha256, files included)."""
    return [prompts.get(name).record() for name in (prompts.POLICY_TEMPLATE, template, task_template)]


def prompts_changed(recorded: Path, records: list[dict[str, str]]) -> str | None:
    """How the prompt record a consolidation run wrote (`recorded`, its prompts.json) differs from
    `records`, in a few words; None when it matches or no run wrote one there."""
    if not recorded.is_file():
        return None
    try:
        old = json.loads(read_text(recorded, "prompt record"))
    except ValueError:
        return f"{recorded} is not JSON"
    return prompts.changed_record(old, records)


class Teacher:
    """The frozen teacher, as a context manager yielding something to call.

        with teacher.active() as model:
            logits = response_logits(model, batch)

    `other`: a different frozen model (`consolidate.teacher_model`, e.g. a bigger one of the same
    family); without it the teacher is the round-start model, as the module docstring says.
    """

    def __init__(self, student: Any, *, lora: bool, other: Any = None) -> None:
        self.lora = lora
        self._student = student
        self._frozen: Any = None
        self._other = ResponseScorer(other) if other is not None else None
        if not lora and other is None:
            self._frozen = copy.deepcopy(student)
            self._frozen.eval()
            self._frozen.requires_grad_(False)

    @property
    def frozen_model(self) -> Any:
        """The frozen copy (full fine-tuning), None with LoRA: what a sharding wrapper must also shard."""
        return self._frozen

    @contextlib.contextmanager
    def active(self) -> Iterator[Any]:
        if self._other is not None:
            yield self._other
        elif self.lora:
            was_training = self._student.training
            self._student.eval()
            try:
                with self._student.disable_adapter():
                    yield self._student
            finally:
                self._student.train(was_training)
        else:
            yield self._frozen
