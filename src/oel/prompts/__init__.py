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

Wherever a config takes a template name it also takes a user's own template: a path to a
UTF-8 `.txt` file (`prompt=my_prompts/extract_shell.txt`). Its name is the path as given and
its sha256 is of its content, so editing the file makes a different run. `load(spec, key=...,
role=...)` checks a template's fields against what its use fills (`Role`) and names the
config key and the file in a one-line ConfigError.
"""

from __future__ import annotations

import hashlib
import string
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

from oel.envs import GRID_GAMES
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
TASK_TEACHER_TEMPLATE = KNOWLEDGE_BLOCK
"""The task-neutral teacher: the knowledge block, worded for any task (no game, map or move)."""
RAW_TRAJECTORY_TEMPLATE = "raw_trajectory_v1"
RAW_TASK_TEMPLATE = "raw_task_v1"
"""The raw-trajectories baseline's record of one attempt at any task (no game words)."""
CONTROL_LESSONS = "control_unrelated_lessons_v1"
"""Lessons about letters and haiku: what a teacher reads in the unrelated-lessons control."""

GAME_POLICY_TEMPLATE = "policy_game_v1"
"""The small-answer games' policy prompt (`oel.envs.answer_game`): no grid words, and the
request for a bracketed answer AFTER the game text (put before it, the models continue the
game's transcript instead of answering)."""
GAME_TEACHER_TEMPLATE = "teacher_game_v1"
PAIRED_TEACHER: dict[str, str] = {GAME_POLICY_TEMPLATE: GAME_TEACHER_TEMPLATE,
                                  "policy_game_think_v1": "teacher_game_think_v1"}
"""Policy prompt -> the teacher prompt that reads the same turn with the knowledge in it (the
grid policy's teacher is chosen by `consolidate.teacher_template` instead: it has three placements)."""

TEMPLATE_FILE_SUFFIX = ".txt"
"""A template value ending in this is a user's file (a path), anything else a built-in name."""
LITERAL_BRACE_HINT = "write {{ and }} for a literal brace"


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


@dataclass(frozen=True)
class Role:
    """What one use of a template fills: the fields it must have and those it may have.

    A template missing a required field would silently drop that input (a teacher that never
    reads the knowledge); an unknown field would fail only at the first render, mid-run.
    """

    what: str
    required: frozenset[str]
    optional: frozenset[str] = frozenset()

    def describe(self) -> str:
        needs = " and ".join(f"{{{f}}}" for f in sorted(self.required))
        may = "".join(f" and may have {{{f}}}" for f in sorted(self.optional))
        return f"{self.what} needs {needs}{may}"


EXTRACTION_ROLE = Role("an extraction template", frozenset({"knowledge", "trajectory"}))
TEACHER_ROLE = Role("a teacher template", frozenset({"knowledge"}), frozenset({"observation"}))
TASK_TEACHER_ROLE = Role("a task-neutral knowledge block", frozenset({"knowledge"}))


def changed_record(old: object, new: list[dict[str, str]]) -> str | None:
    """How a run's recorded prompts (`Template.record()` list) differ from `new`, in a few words;
    None when they match. A user's template file edited between two runs keeps its path (so the
    configs match) but not its sha256: resuming or reusing across that edit would mix two prompts."""
    if not isinstance(old, list) or len(old) != len(new):
        return "the recorded prompts are not a list of the same length"
    for was, now in zip(old, new):
        if not isinstance(was, dict) or was.get("name") != now["name"]:
            return f"prompt {now['name']!r} was {was.get('name') if isinstance(was, dict) else was!r}"
        if was.get("sha256") != now["sha256"]:
            return f"prompt {now['name']!r} changed (sha256 {str(was.get('sha256'))[:12]} -> {now['sha256'][:12]})"
    return None


def is_template_file(spec: str) -> bool:
    """True when a config value names a user's template file rather than a built-in template."""
    return spec.endswith(TEMPLATE_FILE_SUFFIX)


def available() -> list[str]:
    return sorted(p.name[:-4] for p in resources.files(__name__).iterdir() if p.name.endswith(".txt"))


def get(spec: str) -> Template:
    """A built-in template by name, or a user's template file by path (a value ending in .txt)."""
    if is_template_file(spec):
        return _file_template(spec)
    return _builtin(spec)


@cache
def _builtin(name: str) -> Template:
    """Load built-in template `name`; an unknown name lists the ones that exist."""
    path = resources.files(__name__) / f"{name}.txt"
    if not path.is_file():
        raise ConfigError(f"prompt '{name}': no such template (available: {', '.join(available())}; "
                          f"a template file's path ends in {TEMPLATE_FILE_SUFFIX})")
    return Template(name, path.read_text(encoding="utf-8").rstrip("\n"))


def _file_template(spec: str) -> Template:
    """A user's template file, read at every call (a few hundred bytes), so that what a run
    records and renders is always the file's current content."""
    path = Path(spec).expanduser()
    if path.is_dir():
        raise ConfigError(f"template file {spec}: is a directory")
    if not path.is_file():
        raise ConfigError(f"template file {spec}: not found")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"template file {spec}: cannot be read ({e.strerror or e})") from None
    try:
        text = data.decode("utf-8-sig")  # a BOM some editors write is not part of the prompt
    except UnicodeDecodeError as e:
        raise ConfigError(f"template file {spec}: not UTF-8 text "
                          f"(byte 0x{data[e.start]:02x} at offset {e.start})") from None
    text = text.rstrip("\n")
    if not text.strip():
        raise ConfigError(f"template file {spec}: is empty")
    return Template(spec, text)


def field_problem(template: Template, role: Role) -> str | None:
    """What is wrong with `template`'s fields for `role`, in a few words; None when nothing is."""
    label = repr(template.name)
    try:
        names = [f for _, f, _, _ in string.Formatter().parse(template.text) if f is not None]
    except ValueError as e:
        return f"{label} is not a valid template ({e}; {LITERAL_BRACE_HINT})"
    if any(not n or n.isdigit() for n in names):
        return f"{label} has a positional {{}} field ({role.describe()}; {LITERAL_BRACE_HINT})"
    unknown = sorted(set(names) - role.required - role.optional)
    if unknown:
        return f"{label} has unknown field {{{unknown[0]}}} ({role.describe()}; {LITERAL_BRACE_HINT})"
    missing = sorted(role.required - set(names))
    if missing:
        return f"{label} has no {{{missing[0]}}} field ({role.describe()})"
    return None


def load(spec: str, *, key: str, role: Role) -> Template:
    """The template a config value names, its fields checked for `role`; errors name `key` and the file."""
    try:
        template = get(spec)
    except ConfigError as e:
        raise ConfigError(f"{key}: {e}") from None
    problem = field_problem(template, role)
    if problem:
        raise ConfigError(f"{key}: {problem}")
    return template


def policy_template_for(game: str, configured: str = POLICY_TEMPLATE) -> str:
    """The policy prompt for `game`: `configured` for the grid games (and for any game when it is
    not the grid default); the game-neutral prompt for the small-answer games otherwise."""
    if game in GRID_GAMES or configured != POLICY_TEMPLATE:
        return configured
    return GAME_POLICY_TEMPLATE


def knowledge_template_for(policy: str, configured: str = TEACHER_TEMPLATE) -> str:
    """The teacher / in-context prompt paired with the policy prompt `policy`: its pair in
    `PAIRED_TEACHER`, else `configured` (the grid placement the config chose)."""
    return PAIRED_TEACHER.get(policy, configured)


def turn_messages(template: str, observation: str, **fields: str) -> list[Message]:
    """The chat messages of one turn rendered with `template` (see the module docstring's rule)."""
    tmpl = get(template)
    if "observation" in tmpl.fields:
        return [Message(role="user", content=tmpl.render(observation=observation, **fields))]
    policy = get(POLICY_TEMPLATE).render(observation=observation)
    return [Message(role="system", content=tmpl.render(**fields)), Message(role="user", content=policy)]
