"""Named, versioned prompt templates: every prompt oel sends lives here as a plain file.

A turn of a grid game is rendered from one template by a single rule (`turn_messages`): a
template with an {observation} field is the whole user message (the policy prompt, or a
teacher prompt with its {knowledge} before or after the observation); a template with only
{knowledge} is a SYSTEM message put in front of the unchanged policy prompt (the
system-message placement of the lessons).

A template is `src/oel/prompts/<name>.txt`, where the name carries its version
(`policy_grid_v1`). Fields are `{placeholders}` filled by `str.format`. Runs record
`(name, sha256[:12])` of each template they used, so a result can always be traced to the
exact wording. To change a prompt, add a new version instead of editing one in use.
"""

from __future__ import annotations

import hashlib
import string
from dataclasses import dataclass
from functools import cache
from importlib import resources

from oel.errors import ConfigError
from oel.trajectory import Message

# The names other modules refer to, in one place. A new version of a prompt gets a new file
# and, once it is the default, its name here.
POLICY_TEMPLATE = "policy_grid_v1"
"""What the policy sees: the game so far, no knowledge (collection, evaluation, the student)."""
NO_KNOWLEDGE_TEMPLATE = POLICY_TEMPLATE
KNOWLEDGE_TEMPLATE = "teacher_grid_v1"
"""The policy prompt with knowledge in it: the teacher, and in-context evaluation."""
TEACHER_TEMPLATE = KNOWLEDGE_TEMPLATE
TEACHER_TEMPLATES = ("teacher_grid_v1", "teacher_grid_after_v1", "teacher_grid_system_v1")
"""The lessons' placements: before the observation, after it, in a system message."""
KNOWLEDGE_BLOCK = "knowledge_block_v1"
"""Knowledge put in front of a prompt that no grid template made (imported logs, other tasks)."""
RAW_TRAJECTORY_TEMPLATE = "raw_trajectory_v1"
CONTROL_LESSONS = "control_unrelated_lessons_v1"
"""Lessons about letters and haiku: what a teacher reads in the unrelated-lessons control."""


@dataclass(frozen=True)
class Template:
    name: str
    text: str

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()[:12]

    @property
    def fields(self) -> set[str]:
        return {f for _, f, _, _ in string.Formatter().parse(self.text) if f}

    def render(self, **values: str) -> str:
        missing = self.fields - values.keys()
        if missing:
            raise ValueError(f"prompt {self.name}: missing fields {sorted(missing)}")
        return self.text.format(**values)

    def record(self) -> dict[str, str]:
        """What a run stores to identify the prompt it used."""
        return {"name": self.name, "sha256": self.digest}


def available() -> list[str]:
    return sorted(p.name[:-4] for p in resources.files(__name__).iterdir() if p.name.endswith(".txt"))


@cache
def get(name: str) -> Template:
    """Load template `name`; an unknown name lists the ones that exist."""
    path = resources.files(__name__) / f"{name}.txt"
    if not path.is_file():
        raise ConfigError(f"prompt '{name}': no such template (available: {', '.join(available())})")
    return Template(name, path.read_text(encoding="utf-8").rstrip("\n"))


def turn_messages(template: str, observation: str, **fields: str) -> list[Message]:
    """The chat messages of one turn rendered with `template` (see the module docstring's rule)."""
    tmpl = get(template)
    if "observation" in tmpl.fields:
        return [Message(role="user", content=tmpl.render(observation=observation, **fields))]
    policy = get(POLICY_TEMPLATE).render(observation=observation)
    return [Message(role="system", content=tmpl.render(**fields)), Message(role="user", content=policy)]
