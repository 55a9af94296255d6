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
