"""`reuse_from`: copy another run's completed stages whose inputs are identical (ablations).

An ablation that changes only consolidation shares the main run's round-0 collect, extract
and evaluate: each of those is copied instead of recomputed when every config key it
depends on (STAGE_DEPENDENCIES, cumulative over rounds) has the same value in both runs,
and every prompt it depends on has the same text (a user's template file may be edited under
the same path: the extract manifests and consolidate prompt records hold each prompt's sha256).
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from oel import prompts
from oel.config import to_dict
from oel.consolidate.teacher import prompt_records, prompts_changed
from oel.errors import ConfigError, DataError
from oel.extract.store import read_manifest
from oel.extract.templates import is_auto
from oel.io import iter_jsonl
from oel.layout import MARKER, PROMPTS_FILE, RunLayout
from oel.loop.config import LoopConfig, read_saved_config, with_engine_resolved
from oel.provenance import diff_keys, select

log = logging.getLogger(__name__)

REUSE_TMP_SUFFIX = ".reuse-tmp"
"""A reused stage is copied to a hidden sibling of the stage dir with this suffix, then renamed into place."""

# The config keys (top-level sections, or `section.field` for one field) whose values a
# stage's result depends on in round 0; `reuse_from` copies a stage only if all are equal.
# Collect also plays the extraction maps, whose count is extract.num_trajectories. Every
# stage of round r >= 1 runs on M_r, the output of round r-1's consolidate, so it depends
# on everything that consolidate depended on, recursively: the table is cumulative, see
# `stage_dependencies`. run_dir, force, tensorboard, reuse_from and rounds are in no entry:
# they change where and how a run is recorded, never what a stage computes (rounds only
# says which evaluate is the final one, which `ReuseSource.reusable` checks separately).
STAGE_DEPENDENCIES: dict[str, frozenset[str]] = {
    "collect": frozenset({"model", "engine", "env", "collect", "extract.num_trajectories", "seed"}),
    "extract": frozenset({"model", "engine", "env", "collect", "extract", "extract_engine", "extractor",
                          "knowledge_file", "seed"}),
    "evaluate": frozenset({"model", "engine", "env", "collect", "extract", "extract_engine", "extractor",
                           "knowledge_file", "seed", "evaluate",
                           "in_context_eval", "consolidate.teacher_model", "consolidate.teacher_dtype",
                           "consolidate.teacher_template"}),
    "consolidate": frozenset({"model", "engine", "env", "collect", "extract", "extract_engine", "extractor",
                              "knowledge_file", "seed", "consolidate"}),
}


KNOWLEDGE_READERS_OF_EVALUATE = frozenset({"extract", "extract_engine", "extractor", "knowledge_file", "seed",
                                           "consolidate.teacher_model", "consolidate.teacher_dtype",
                                           "consolidate.teacher_template"})
"""What an evaluate stage reads only for its in-context part (and the teacher gap, which runs with it)."""


def stage_dependencies(stage: str, r: int, *, in_context: bool = True) -> frozenset[str]:
    """The config keys stage `stage` of round r depends on: its own, plus (through M_r) all of
    round r-1's consolidate's. Without in-context evaluation (`in_context=False` in both runs) an
    evaluate stage reads no knowledge of its own round, so the lessons' settings drop out of its own
    entry (M_r still depends on earlier rounds' lessons)."""
    own = STAGE_DEPENDENCIES[stage]
    if stage == "evaluate" and not in_context:
        own = own - KNOWLEDGE_READERS_OF_EVALUATE
    return own if r == 0 else own | stage_dependencies("consolidate", r - 1)


@dataclass(frozen=True)
class ReuseSource:
    """Another run dir (`reuse_from`) and its saved config: where completed stages may come from."""

    layout: RunLayout
    config: dict[str, Any]

    @property
    def run_dir(self) -> Path:
        return self.layout.run_dir

    @classmethod
    def open(cls, config: LoopConfig) -> "ReuseSource | None":
        """None without `reuse_from`; ConfigError if it is not a loop run dir or is this run's own."""
        if not config.reuse_from:
            return None
        layout = RunLayout(config.reuse_from)
        path = layout.config_file
        if not path.is_file():
            raise ConfigError(f"reuse_from: {layout.run_dir} has no {path.name}, so it is not a run dir of `oel loop`")
        if layout.run_dir.resolve() == Path(config.run_dir).resolve():
            raise ConfigError(f"reuse_from: {layout.run_dir} is this run's own run_dir")
        return cls(layout, read_saved_config(path))

    def reusable(self, config: LoopConfig, r: int, stage: str) -> Path | None:
        """The source's stage dir if it is complete and computed from the same inputs, else None."""
        src = self.layout.stage_dir(r, stage)
        if not (src / MARKER).is_file():
            return None
        # The final evaluate has no knowledge of its own, an ordinary one adds the in-context part.
        if stage == "evaluate" and (r == config.rounds) != (r == self.config.get("rounds")):
            log.info("round %d %s: not reused from %s (final evaluate in one run only)", r, stage, src)
            return None
        # Through YAML like the source's config.yaml, so that both sides are the same plain types.
        mine = yaml.safe_load(yaml.safe_dump(to_dict(with_engine_resolved(config))))
        in_context = bool(config.in_context_eval or self.config.get("in_context_eval", True))
        keys = stage_dependencies(stage, r, in_context=in_context)
        differing = diff_keys(select(self.config, keys), select(mine, keys))
        if differing:
            log.info("round %d %s: not reused from %s (config differs in: %s)", r, stage, src, ", ".join(differing))
            return None
        for q in range(r + 1):
            for upstream in ("extract", "consolidate"):
                if q == r and not _depends_on(stage, upstream):
                    continue
                changed = self._changed_prompt(config, q, upstream)
                if changed:
                    log.info("round %d %s: not reused from %s (round %d %s: %s)", r, stage, src, q, upstream, changed)
                    return None
        return src

    def _changed_prompt(self, config: LoopConfig, r: int, stage: str) -> str | None:
        """How the prompt the source's round-r `stage` used differs from this run's; None if it does not
        (or the source recorded none: the raw baseline, a knowledge file, a stage it never ran)."""
        if stage == "consolidate":
            c = config.consolidate
            return prompts_changed(self.layout.stage_dir(r, stage) / PROMPTS_FILE,
                                   prompt_records(c.teacher_template, c.task_teacher_template))
        try:
            recorded = read_manifest(self.layout.store_dir(r), r).fingerprint.get("prompt")
        except (DataError, OSError):
            return None
        if not isinstance(recorded, dict) or "name" not in recorded:
            return None
        chosen = config.extract.kind == "extracted" and not is_auto(config.extract.prompt)
        spec = config.extract.prompt if chosen else str(recorded["name"])
        try:
            now = prompts.get(spec).record()
        except ConfigError as e:
            return str(e)
        return prompts.changed_record([recorded], [now])

    def metrics_rows(self, r: int, stage: str) -> list[dict[str, Any]]:
        """The source's metrics.jsonl rows of (round r, stage), in order.

        Only newline-terminated lines count: the source run may be appending (or may have been
        killed mid-append), and its unfinished last line belongs to a later stage anyway.
        """
        path = self.layout.metrics_file
        if not path.is_file():
            return []
        return [row for _, row in iter_jsonl(path, complete_lines_only=True)
                if row.get("round") == r and row.get("stage") == stage]


SAME_ROUND_READERS: dict[str, frozenset[str]] = {"extract": frozenset({"extract", "evaluate", "consolidate"}),
                                                 "consolidate": frozenset({"consolidate"})}
"""The stages of a round that read what its extract (the knowledge) or consolidate made (itself)."""


def _depends_on(stage: str, upstream: str) -> bool:
    """Whether round r's `stage` depends on the prompt of round r's `upstream` (earlier rounds: always)."""
    return stage in SAME_ROUND_READERS[upstream]


def copy_stage(src: Path, dest: Path) -> None:
    """Copy the complete stage dir `src` (its marker included) to `dest`, all or nothing.

    The copy goes to a hidden sibling first and is renamed into place, so a kill never leaves a
    half copy at `dest` that its marker would pass off as complete. A partial attempt of this run
    at `dest` is replaced: the copy is the same stage, finished.
    """
    tmp = dest.with_name(f".{dest.name}{REUSE_TMP_SUFFIX}")
    if tmp.exists():
        shutil.rmtree(tmp)  # left by a copy that was killed
    shutil.copytree(src, tmp)
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(tmp, dest)
