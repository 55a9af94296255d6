"""Named, versioned prompt templates: every prompt oel sends lives here as a plain file.

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

# The names other modules refer to, in one place. A new version of a prompt gets a new file
# and, once it is the default, its name here.
POLICY_TEMPLATE = "policy_grid_v1"
"""What the policy sees: the game so far, no knowledge (collection, evaluation, the student)."""
NO_KNOWLEDGE_TEMPLATE = POLICY_TEMPLATE
KNOWLEDGE_TEMPLATE = "teacher_grid_v1"
"""The policy prompt with knowledge in it: the teacher, and in-context evaluation."""
TEACHER_TEMPLATE = KNOWLEDGE_TEMPLATE
KNOWLEDGE_BLOCK = "knowledge_block_v1"
"""Knowledge put in front of a prompt that no grid template made (imported logs, other tasks)."""
RAW_TRAJECTORY_TEMPLATE = "raw_trajectory_v1"


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
