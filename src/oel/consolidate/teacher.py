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

Prompt. `teacher_messages(prefix, knowledge)`:
- If the prefix's last user message is exactly the policy template `policy_grid_v1`
  rendered with `prefix.observation` (what `oel collect` writes), the teacher sees the
  same observation through `teacher_grid_v1` with the knowledge filled in.
- Otherwise (imported logs, other prompts) the knowledge block `KNOWLEDGE_BLOCK` is put
  at the START of the FIRST user message, everything else unchanged. The start, because
  the game text that follows is what the answer must respond to; the first user message,
  because in a multi-message prompt it frames the whole task.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from typing import Any

from oel import prompts
from oel.trajectory import Message, Prefix

POLICY_TEMPLATE = "policy_grid_v1"
TEACHER_TEMPLATE = "teacher_grid_v1"

# Used for prompts that did not come from POLICY_TEMPLATE. Versioned by name like the
# templates in oel.prompts; change the name if the wording changes.
KNOWLEDGE_BLOCK_NAME = "knowledge_block_v1"
KNOWLEDGE_BLOCK = (
    "Before you answer: here is experience learned from earlier attempts at tasks like this one. "
    "It may be incomplete or wrong, so weigh it against what you see.\n\n"
    "Experience:\n{knowledge}\n\n"
)


def teacher_messages(prefix: Prefix, knowledge: str) -> list[Message]:
    """The prefix's prompt with `knowledge` inserted (see the module docstring for the rule)."""
    msgs = list(prefix.prompt)
    last = msgs[-1]
    policy_text = prompts.get(POLICY_TEMPLATE).render(observation=prefix.observation)
    if last.role == "user" and last.content == policy_text:
        text = prompts.get(TEACHER_TEMPLATE).render(knowledge=knowledge, observation=prefix.observation)
        return msgs[:-1] + [Message(role="user", content=text)]
    first = next(i for i, m in enumerate(msgs) if m.role == "user")
    block = KNOWLEDGE_BLOCK.format(knowledge=knowledge)
    msgs[first] = Message(role="user", content=block + msgs[first].content)
    return msgs


def prompt_records() -> list[dict[str, str]]:
    """What a run stores to identify the teacher wording it used."""
    import hashlib

    block = {"name": KNOWLEDGE_BLOCK_NAME, "sha256": hashlib.sha256(KNOWLEDGE_BLOCK.encode()).hexdigest()[:12]}
    return [prompts.get(POLICY_TEMPLATE).record(), prompts.get(TEACHER_TEMPLATE).record(), block]


class Teacher:
    """The frozen round-start model, as a context manager yielding something to call.

        with teacher.active() as model:
            logits = response_logits(model, batch)
    """

    def __init__(self, student: Any, *, lora: bool) -> None:
        self.lora = lora
        self._student = student
        self._frozen: Any = None
        if not lora:
            self._frozen = copy.deepcopy(student)
            self._frozen.eval()
            self._frozen.requires_grad_(False)

    @property
    def frozen_model(self) -> Any:
        """The frozen copy (full fine-tuning), None with LoRA: what a sharding wrapper must also shard."""
        return self._frozen

    @contextlib.contextmanager
    def active(self) -> Iterator[Any]:
        if self.lora:
            was_training = self._student.training
            self._student.eval()
            try:
                with self._student.disable_adapter():
                    yield self._student
            finally:
                self._student.train(was_training)
        else:
            yield self._frozen
