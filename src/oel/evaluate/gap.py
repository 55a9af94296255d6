"""The teacher gap: does the teacher (a model reading the lessons) play better than the student?

Consolidation can only move the student toward what its teacher does, so the gap between
them, measured exactly with the policy meter (`oel.evaluate.meter`) on the same probe states,
says before any training whether a round can help. Two gaps matter:

* teacher - student: what consolidation could gain;
* teacher - control: what the LESSONS add, the control being the same teacher model and
  template reading unrelated lessons (`prompts.CONTROL_LESSONS`). With a bigger teacher model
  most of the first gap is the bigger model; only the second is the lessons' doing.

Both are paired differences over the same layouts with a bootstrap CI. Diagnostic only: the
probe states come from training-side seeds in the loop (never held-out) and nothing here
chooses what is trained on.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from oel import prompts
from oel.config import Config, cfg, updated
from oel.envs import EnvConfig
from oel.envs.seeds import heldout_seeds, round_seeds
from oel.errors import ConfigError
from oel.evaluate.meter import (MeterResult, PromptVariant, knowledge_variant, measure, paired_gap, policy_variant,
                               probe_states, reference_emq)
from oel.evaluate.meter_check import sample_check
from oel.evaluate.visited import visited_states
from oel.io import atomic_write_json, read_text_file
from oel.models import ModelConfig, check_model_name, load_model

log = logging.getLogger(__name__)

NO_GAP = 0.0
"""A lower CI bound at or below this: the teacher is not shown to be better (a warning says so)."""


class GapConfig(Config):
    """`oel meter`: student vs teacher (vs the unrelated-lessons control) on exact probe states."""

    model: ModelConfig = cfg(help="the student (policy prompt, no knowledge)", factory=ModelConfig)
    env: EnvConfig = cfg(help="the game", factory=EnvConfig)
    seeds: Literal["train", "collect", "heldout"] = cfg("train", "where the probe maps come from: a round's "
                                                                 "'train' or 'collect' block, or 'heldout' "
                                                                 "(evaluation)")
    round: int = cfg(0, "seeds=train: whose round's training seed block")
    num_seeds: int = cfg(64, "seeds scanned for distinct layouts (FrozenLake 3x3/2 holes has 19 in all)")
    max_layouts: int = cfg(12, "probe at most this many distinct maps (one shortest path each); small-answer "
                               "games: this many games")
    teacher_model: str = cfg("", "the teacher's model (preset, GGUF or HF dir); '' = the student's own")
    teacher_template: str = cfg(prompts.TEACHER_TEMPLATE, "the teacher's prompt (knowledge before/after the "
                                                          "observation or in a system message)")
    knowledge_file: str = cfg("", "the lessons the teacher reads (a text file); see docs/configuration.md for "
                                  "when it may be empty")
    knowledge: list[str] = cfg(help="instead of knowledge_file, K lessons files: map j is read with file j mod "
                                    "K (as the loop does)", factory=list)
    visited: str = cfg("", "a trajectory JSONL: probe every state its games visited instead of one shortest "
                           "path per map")
    control: bool = cfg(True, "also measure the same teacher reading unrelated lessons (the control)")
    sample_check: int = cfg(0, "also sample this many answers per probe state and compare with the meter's "
                               "E[mq]; 0 = off")
    thought_samples: int = cfg(0, "small-answer games: sample this many short thoughts per state, score the "
                                  "answers after each; 0 = none")
    policy_value: bool = cfg(False, "blackjack: also each setting's exact win chance at 240 canonical hands, as "
                                    "scored and as sampled")
    out: str = cfg("", "write the result JSON here; '' = only print it")

    def model_post_init(self, context: Any, /) -> None:
        for name in ("num_seeds", "max_layouts"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be >= 1, got {getattr(self, name)}")
        for name in ("sample_check", "thought_samples"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}: must be >= 0, got {getattr(self, name)}")
        if self.knowledge_file and self.knowledge:
            raise ConfigError("knowledge: set knowledge_file (one file) or knowledge (K files), not both")
        if self.policy_value and self.env.game != "blackjack":
            raise ConfigError(f"policy_value: Blackjack only (env.game is {self.env.game})")

    def knowledge_paths(self) -> list[str]:
        """The lessons files the teacher reads, in order (one or K)."""
        return [self.knowledge_file] if self.knowledge_file else list(self.knowledge)


@dataclass
class TeacherGap:
    """The three settings' meter results and the gaps between them."""

    student: MeterResult
    teacher: MeterResult
    control: MeterResult | None
    meta: dict[str, Any] = field(default_factory=dict)

    def gaps(self) -> dict[str, dict[str, Any]]:
        out = {"teacher_minus_student": paired_gap(self.teacher, self.student).to_dict()}
        if self.control is not None:
            out["teacher_minus_control"] = paired_gap(self.teacher, self.control).to_dict()
            out["control_minus_student"] = paired_gap(self.control, self.student).to_dict()
        return out

    def verdict(self) -> str:
        """One plain sentence: can consolidation help, and is it the lessons?"""
        gaps = self.gaps()
        ts = gaps["teacher_minus_student"]
        if ts["ci95"][0] <= NO_GAP:
            return (f"WARNING: the teacher is not shown to play better than the student (E[mq] gap "
                    f"{100 * ts['diff']:+.1f} points, 95% CI {100 * ts['ci95'][0]:+.1f} to "
                    f"{100 * ts['ci95'][1]:+.1f}): "
                    f"consolidation has nothing better to distil and may drift the student toward the teacher's biases")
        tc = gaps.get("teacher_minus_control")
        blind = self.teacher.state_blind_emq()
        if self.teacher.mean("emq") <= blind:
            return (f"the teacher scores {100 * ts['diff']:+.1f} points over the student, but no more than its own "
                    f"average move distribution would ({100 * self.teacher.mean('emq'):.1f}% vs state-blind "
                    f"{100 * blind:.1f}%): a move bias, not reading the board")
        if tc is not None and tc["ci95"][0] <= NO_GAP:
            return (f"the teacher plays better than the student ({100 * ts['diff']:+.1f} points), but not better than "
                    f"itself reading unrelated lessons ({100 * tc['diff']:+.1f}, CI {100 * tc['ci95'][0]:+.1f} to "
                    f"{100 * tc['ci95'][1]:+.1f}): a gain would come from the teacher model or the prompt, not "
                    "the lessons")
        return f"the teacher plays better than the student ({100 * ts['diff']:+.1f} points)" + (
            f" and than the unrelated-lessons control ({100 * tc['diff']:+.1f})" if tc is not None else "")

    def to_dict(self) -> dict[str, Any]:
        return {"student": self.student.summary(), "teacher": self.teacher.summary(),
                "control": self.control.summary() if self.control is not None else None,
                "gaps": self.gaps(), "verdict": self.verdict(), **self.meta,
                "per_state": {name: [s.__dict__ for s in r.states] for name, r in
                              (("student", self.student), ("teacher", self.teacher), ("control", self.control))
                              if r is not None}}


def probe_seeds(config: GapConfig) -> list[int]:
    if config.seeds == "heldout":
        return heldout_seeds(min(config.num_seeds, len(heldout_seeds())))
    return round_seeds(config.round, config.seeds, config.num_seeds)


def _by_layout(model: Any, tokenizer: Any, states: Sequence[Any], variants: Sequence[PromptVariant],
               name: str) -> MeterResult:
    """Layout j (in order of appearance) is measured with variant j mod K: K knowledge texts share the maps."""
    layouts = list(dict.fromkeys(s.layout for s in states))
    parts = [measure(model, tokenizer, [s for s in states if layouts.index(s.layout) % len(variants) == k], v)
             for k, v in enumerate(variants)]
    merged = {(s.layout, s.step): s for p in parts for s in p.states}
    return MeterResult(name, [merged[(s.layout, s.step)] for s in states], sum(p.seconds for p in parts))


def teacher_gap(student: Any, teacher: Any, states: Sequence[Any], knowledge: Sequence[str], *,
                template: str = prompts.TEACHER_TEMPLATE, control: bool = True) -> TeacherGap:
    """Measure the student (policy prompt), the teacher with `knowledge` (K texts: layout j reads text
    j mod K) and, with `control`, the teacher with the unrelated lessons. `student` and `teacher` are
    `oel.models.LoadedModel`s (the same object for a self-teacher). A `template` without a
    {knowledge} field compares two models under that prompt (no knowledge, no control)."""
    reads = "knowledge" in prompts.get(template).fields
    if reads and not knowledge:
        raise ConfigError("knowledge: the teacher needs at least one knowledge text")
    s = measure(student.model, student.tokenizer, states, policy_variant(), setting="student")
    variants = [knowledge_variant(k, template) for k in knowledge] if reads else [policy_variant(template)]
    t = _by_layout(teacher.model, teacher.tokenizer, states, variants, "teacher")
    c = None
    if control and reads:
        lessons = prompts.get(prompts.CONTROL_LESSONS).text
        c = _by_layout(teacher.model, teacher.tokenizer, states, [knowledge_variant(lessons, template)], "control")
    meta = {"template": prompts.get(template).record(), "knowledge_texts": len(knowledge) if reads else 0,
            "control_lessons": prompts.get(prompts.CONTROL_LESSONS).record() if c is not None else None,
            "reference_emq": reference_emq(states)}
    return TeacherGap(s, t, c, meta)


def run_gap(config: GapConfig) -> TeacherGap:
    """`oel meter`: load the models, build the probe states, measure, write `out`."""
    reads = "knowledge" in prompts.get(config.teacher_template).fields
    paths = config.knowledge_paths()
    if reads and not paths:
        raise ConfigError(f"knowledge_file: required (the lessons the teacher reads with {config.teacher_template})")
    knowledge = [read_text_file(p, "knowledge_file" if config.knowledge_file else f"knowledge[{i}]")
                 for i, p in enumerate(paths)] if reads else []
    if config.visited:
        states = visited_states(config.visited, config.env, max_layouts=config.max_layouts)
    check_model_name(config.model.name)
    if config.teacher_model:
        check_model_name(config.teacher_model, "teacher_model")
    student = load_model(config.model)
    teacher = student if not config.teacher_model else load_model(
        updated(config.model, name=config.teacher_model))
    if not config.visited:
        states = probe_states(probe_seeds(config), config.env, max_layouts=config.max_layouts)
    gap = teacher_gap(student, teacher, states, knowledge, template=config.teacher_template, control=config.control)
    gap.meta.update({"student_model": student.model_id, "teacher_model": teacher.model_id,
                     **({"visited": config.visited} if config.visited else {"seeds": config.seeds,
                                                                            "round": config.round})})
    if config.sample_check:
        check = sample_check(student.model, student.tokenizer, states, policy_variant(), gap.student,
                             samples_per_state=config.sample_check)
        gap.meta["sample_check"] = check.to_dict()
    if config.out:
        atomic_write_json(Path(config.out), gap.to_dict())
    return gap


def gap_table(gap: TeacherGap) -> str:
    """The three settings and their gaps as a markdown table (what `oel meter` prints)."""
    rows = ["| setting | E[mq] | state-blind E[mq] | P(invalid) | P(losing) | coverage | moves u/d/l/r |",
            "|---|---|---|---|---|---|---|"]
    for r in (gap.student, gap.teacher, gap.control):
        if r is None:
            continue
        m = r.summary()
        moves = " ".join(f"{v:.2f}" for v in m["moves"].values())
        rows.append(f"| {r.setting} | {m['emq']:.3f} | {m['state_blind_emq']:.3f} | {m['p_invalid']:.3f} | "
                    f"{m['p_losing']:.3f} | "
                    f"{m['coverage']:.2f} | {moves} |")
    rows += ["", "| gap (E[mq], points) | diff | 95% CI (bootstrap over maps) |", "|---|---|---|"]
    for name, g in gap.gaps().items():
        rows.append(f"| {name.replace('_', ' ')} | {100 * g['diff']:+.1f} | {100 * g['ci95'][0]:+.1f} to "
                    f"{100 * g['ci95'][1]:+.1f} |")
    refs = ", ".join(f"{k} {v:.3f}" for k, v in gap.meta.get("reference_emq", {}).items())
    return "\n".join(rows + ["", f"E[mq] of fixed policies on these states: {refs}", "", gap.verdict()])
