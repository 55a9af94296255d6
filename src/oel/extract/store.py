"""The experience store: every accumulation step's knowledge, per round and run, on disk.

Layout (one directory per round, one per accumulation run k = 0..K-1):

    STORE/round_000/manifest.json            what produced this round (settings, trajectory ids)
    STORE/round_000/run_00/step_000.json     e_0 (empty), then e_1 ... e_N, one file per step
    STORE/round_000/run_00/step_000.txt      the rendered knowledge: the exact teacher-prompt text

Each step file is self-describing (schema version, items with provenance, the extractor's
step record) and is written atomically, so a file that exists is complete: an interrupted
run resumes after the highest step file present. Files are validated on read; a corrupt
or hand-edited file is reported in one line naming the file and the item.

The loop and the consolidation trainer only need :func:`knowledge_texts`.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from oel.errors import DataError
from oel.extract.text import Format, normalize_item
from oel.io import atomic_write_json, atomic_write_text, read_text
from oel.layout import store_round_dir
from oel.validation import describe, error_text, first_error, location

SCHEMA_VERSION = 1
Kind = Literal["extracted", "raw_trajectories"]

ITEM_SEPARATOR: dict[str, str] = {"extracted": "\n", "raw_trajectories": "\n\n"}
"""How items join into the rendered knowledge: one line per lesson; a blank line between raw games."""

_STEP_FILE = re.compile(r"^step_(\d+)\.json$")


def render_knowledge(texts: list[str], kind: Kind) -> str:
    """The knowledge text exactly as it goes into the teacher prompt."""
    return ITEM_SEPARATOR[kind].join(texts)


class ExperienceItem(BaseModel):
    """One knowledge item and where it came from."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    id: str = Field(min_length=1)
    text: str = Field(min_length=1)
    step_added: int = Field(ge=1, description="accumulation step (1-based trajectory index) that wrote it")
    source_trajectory_id: str = Field(min_length=1)
    seed: int = Field(ge=0, description="index k of the accumulation run (its sampling seed is in the file)")
    round: int = Field(ge=0)
    extractor_model: str = Field(description="model that wrote the item; 'none' for raw trajectories")


class StepRecord(BaseModel):
    """What happened at one accumulation step: the extractor's answer and what was kept or cut."""

    model_config = ConfigDict(extra="forbid")
    trajectory_id: str
    raw_output: str = Field(description="the extractor's full answer, thinking included ('' for raw)")
    new_items: list[str] = Field(default_factory=list)
    duplicates_dropped: list[str] = Field(default_factory=list)
    over_cap_dropped: list[str] = Field(default_factory=list, description="new items beyond max_new_items")
    ungrounded_dropped: list[str] = Field(default_factory=list, description="new items stating a number the "
                                                                            "writer's prompt never showed")
    unfinished_dropped: str = Field(default="", description="last line of an answer cut by the token limit, dropped")
    budget_dropped: int = Field(default=0, ge=0, description="items dropped by the budget: the oldest, or one "
                                                             "longer than the whole budget")
    input_tokens: int = Field(default=0, ge=0)
    output_tokens: int = Field(default=0, ge=0)
    input_truncated: bool = False
    dropped_turns: int = Field(default=0, ge=0, description="oldest turns cut from the shown trajectory")
    cut_chars: int = Field(default=0, ge=0, description="characters cut from the left of the newest shown turn")
    sampling_seed: int | None = None
    seconds: float = Field(default=0.0, ge=0)


class ExperienceFile(BaseModel):
    """The knowledge e_step of accumulation run `seed` in `round`."""

    model_config = ConfigDict(extra="forbid")
    schema_version: Literal[1] = SCHEMA_VERSION
    kind: Kind
    round: int = Field(ge=0)
    seed: int = Field(ge=0, description="accumulation run index k")
    sampling_seed: int
    step: int = Field(ge=0)
    format: Format
    extractor_model: str
    prompt: dict[str, str] | None = Field(description="template name + sha256 used for extraction")
    budget_tokens: int = Field(ge=1)
    token_counter: str
    items: list[ExperienceItem]
    rendered: str
    record: StepRecord | None = None

    @model_validator(mode="after")
    def _consistent(self) -> "ExperienceFile":
        seen: set[str] = set()
        for i, it in enumerate(self.items):
            where = f"item {i} (id '{it.id}')"
            if it.id in seen:
                raise ValueError(f"{where}: id appears twice")
            seen.add(it.id)
            if it.round != self.round or it.seed != self.seed:
                raise ValueError(f"{where}: round/seed {it.round}/{it.seed} differ from the file's "
                                 f"{self.round}/{self.seed}")
            if it.step_added > self.step:
                raise ValueError(f"{where}: step_added {it.step_added} is after the file's step {self.step}")
        if self.rendered != render_knowledge([it.text for it in self.items], self.kind):
            raise ValueError("rendered: does not match the items (was the text edited by hand? edit items, then "
                             "re-render)")
        return self

    @property
    def texts(self) -> list[str]:
        return [it.text for it in self.items]


class RoundManifest(BaseModel):
    """What produced a round's store: enough to refuse resuming with different settings."""

    model_config = ConfigDict(extra="forbid")
    schema_version: Literal[1] = SCHEMA_VERSION
    round: int = Field(ge=0)
    num_runs: int = Field(ge=1)
    num_trajectories: int = Field(ge=1)
    use_step: int = Field(ge=0)
    fingerprint: dict[str, Any] = Field(description="settings that must match to resume")
    trajectory_ids: list[str]
    config: dict[str, Any] = Field(default_factory=dict, description="the resolved config of the run")


def _validation_message(e: ValidationError, data: Any) -> str:
    """One line: the item (index and id, when the error is inside one) and what is wrong."""
    err = first_error(e)
    loc = list(err["loc"])
    msg = error_text(err)
    if len(loc) >= 2 and loc[0] == "items" and isinstance(loc[1], int):
        idx = loc[1]
        try:
            item_id = data["items"][idx].get("id", "?")
        except (KeyError, IndexError, TypeError, AttributeError):
            item_id = "?"
        field = location(loc[2:])
        return f"item {idx} (id '{item_id}'){': ' + field if field else ''}: {msg}"
    return describe(e)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(read_text(path, "JSON file"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: invalid JSON ({e.msg} at column {e.colno})") from None


def read_experience(path: str | os.PathLike) -> ExperienceFile:
    """Read and validate one step file; errors are `file: item i (id 'x'): field: why`."""
    path = Path(path)
    data = _read_json(path)
    try:
        return ExperienceFile.model_validate(data)
    except ValidationError as e:
        raise DataError(f"{path}: {_validation_message(e, data)}") from None


def round_dir(store_dir: str | os.PathLike, round: int) -> Path:
    return store_round_dir(store_dir, round)


def run_dir(store_dir: str | os.PathLike, round: int, seed: int) -> Path:
    return round_dir(store_dir, round) / f"run_{seed:02d}"


def step_path(store_dir: str | os.PathLike, round: int, seed: int, step: int) -> Path:
    return run_dir(store_dir, round, seed) / f"step_{step:03d}.json"


def write_step(store_dir: str | os.PathLike, ef: ExperienceFile) -> Path:
    """Write the step's JSON and its rendered text, each atomically (text first, JSON last:
    the JSON's presence is what marks the step complete for resuming)."""
    path = step_path(store_dir, ef.round, ef.seed, ef.step)
    atomic_write_text(path.with_suffix(".txt"), ef.rendered + "\n", private=True)
    atomic_write_json(path, ef.model_dump(mode="json"), private=True)
    return path


def completed_steps(store_dir: str | os.PathLike, round: int, seed: int) -> list[int]:
    d = run_dir(store_dir, round, seed)
    if not d.is_dir():
        return []
    return sorted(int(m.group(1)) for p in d.iterdir() if (m := _STEP_FILE.match(p.name)))


def last_step(store_dir: str | os.PathLike, round: int, seed: int) -> ExperienceFile | None:
    """The highest completed step of a run (validated), or None if the run has not started."""
    steps = completed_steps(store_dir, round, seed)
    return read_experience(step_path(store_dir, round, seed, steps[-1])) if steps else None


def manifest_path(store_dir: str | os.PathLike, round: int) -> Path:
    return round_dir(store_dir, round) / "manifest.json"


def read_manifest(store_dir: str | os.PathLike, round: int) -> RoundManifest:
    path = manifest_path(store_dir, round)
    data = _read_json(path)
    try:
        return RoundManifest.model_validate(data)
    except ValidationError as e:
        raise DataError(f"{path}: {_validation_message(e, data)}") from None


def write_manifest(store_dir: str | os.PathLike, manifest: RoundManifest) -> None:
    atomic_write_json(manifest_path(store_dir, manifest.round), manifest.model_dump(mode="json"), private=True)


@dataclass(frozen=True)
class ExperienceSet:
    """The K knowledge texts of one round at one accumulation step (what consolidation samples from)."""

    round: int
    step: int
    files: tuple[ExperienceFile, ...]

    @property
    def texts(self) -> list[str]:
        return [f.rendered for f in self.files]


def load_experience_set(store_dir: str | os.PathLike, round: int, step: int | None = None) -> ExperienceSet:
    """All K runs of `round` at `step` (default: the manifest's use_step, i.e. N_use)."""
    manifest = read_manifest(store_dir, round)
    step = manifest.use_step if step is None else step
    files = []
    for k in range(manifest.num_runs):
        path = step_path(store_dir, round, k, step)
        if not path.exists():
            raise DataError(f"{path}: missing: run {k} of round {round} has not reached step {step} "
                            f"(completed steps: {completed_steps(store_dir, round, k) or 'none'})")
        files.append(read_experience(path))
    return ExperienceSet(round, step, tuple(files))


def knowledge_texts(store_dir: str | os.PathLike, round: int, step: int | None = None) -> list[str]:
    """The K rendered knowledge texts of `round` at `step` (default N_use): the teacher's context."""
    return load_experience_set(store_dir, round, step).texts


@dataclass(frozen=True)
class ExperienceDiff:
    added: list[str]
    removed: list[str]
    kept: int


def diff_experience(a: ExperienceFile, b: ExperienceFile) -> ExperienceDiff:
    """Items in b but not a (added) and in a but not b (removed), compared as texts."""
    keys_a = {normalize_item(t) for t in a.texts}
    keys_b = {normalize_item(t) for t in b.texts}
    added = [t for t in b.texts if normalize_item(t) not in keys_a]
    removed = [t for t in a.texts if normalize_item(t) not in keys_b]
    return ExperienceDiff(added, removed, len(keys_a & keys_b))


def format_diff(d: ExperienceDiff, label_a: str, label_b: str) -> str:
    """A unified-diff-like text: `+ item` added in b, `- item` removed since a."""
    lines = [f"--- {label_a}", f"+++ {label_b}",
             f"{len(d.added)} added, {len(d.removed)} removed, {d.kept} unchanged"]
    lines += [f"- {t}" for t in d.removed]
    lines += [f"+ {t}" for t in d.added]
    return "\n".join(lines)
