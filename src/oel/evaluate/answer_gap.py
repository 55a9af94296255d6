"""`oel meter` on the small-answer games: the student, the teacher reading lessons, the control.

The grid games' meter (`oel.evaluate.gap`) probes one shortest path per map. A small-answer game
has no such path, so its probe states are those of games played through the real game: by the
game's reference player (`answer_probes.played_probes`, one game per seed of the chosen block,
the first `max_layouts` seeds), or every state the games of a trajectory file reached
(`visited=`: the model's own states). Each setting scores the game's whole answer set exactly.

Two questions, the screen of a game before any loop is run on it:

* does the answer depend on the state? E[ok] against the state-blind policy's (the setting's
  average answer at every state), and the mutual information between state and answer;
* do lessons move it? teacher - student and teacher - control, paired over games.

With `thought_samples=N`, the model first writes a short thought (the `*_think_v1` prompts), N
of them sampled per state, and every answer is scored after each: an estimate, not exact
(`answer_meter.measure_answers_thinking`).

With `visited=`, the answers the games actually played at those states are set against the
meter's distribution as scored and as the games sample it (the sample check: does the meter
predict play?). With `policy_value=true` (Blackjack), each setting's exact win chance at 240
canonical hands (`oel.evaluate.blackjack_meter`). A diagnostic: never a training signal.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pathlib import Path

from oel import prompts
from oel.backends.base import SamplingParams
from oel.backends.hf import HFBackend
from oel.config import updated
from oel.envs import EnvConfig, make_env
from oel.envs.seeds import heldout_seeds, round_seeds
from oel.errors import ConfigError
from oel.evaluate.answer_meter import (AnswerMeterResult, measure_answers, measure_answers_thinking,
                                      paired_answer_gap)
from oel.evaluate.answer_probes import played_probes, reference_policy, visited_probes
from oel.evaluate.blackjack_meter import policy_value_meter
from oel.evaluate.gap import GapConfig
from oel.evaluate.meter import PromptVariant
from oel.evaluate.metrics import percent_points, wilson_ci
from oel.evaluate.sharpen import sharpen
from oel.io import atomic_write_json, read_text_file
from oel.models import check_model_name, load_model
from oel.trajectory import Trajectory, read_trajectories

GAP_PAIRS = (("teacher", "student"), ("teacher", "control"), ("control", "student"))
THOUGHT_PROMPTS = ("policy_game_think_v1", "teacher_game_think_v1")
"""The policy and teacher prompts that ask for a short thought before the bracketed answer."""
THOUGHT_TOKENS = 96
"""Most tokens of one sampled thought."""
GAP_METRICS = ("ok", "value")
"""What the gaps compare: the mass on accepted answers and the exact value of the answers."""


def teacher_template_for(game: str, configured: str) -> str:
    """The teacher prompt of a small-answer game: the policy prompt's pair unless a game template
    (e.g. `teacher_game_after_v1`, the lessons after the game text) was chosen."""
    if configured == prompts.TEACHER_TEMPLATE:  # the grid default, left as it is: the game's own pair
        return prompts.knowledge_template_for(prompts.policy_template_for(game))
    if configured in prompts.TEACHER_TEMPLATES:
        raise ConfigError(f"teacher_template: {configured!r} is a grid game's prompt; {game} reads lessons "
                          "through teacher_game_v1 or teacher_game_after_v1")
    return configured


@dataclass
class AnswerGap:
    """The settings' answer-meter results (student always; teacher and control where lessons were read)."""

    settings: dict[str, AnswerMeterResult]
    meta: dict[str, Any] = field(default_factory=dict)

    def gaps(self) -> dict[str, dict[str, Any]]:
        """Paired differences over games for every pair of settings measured, on E[ok] and E[value]."""
        return {f"{a}_minus_{b}": {m: paired_answer_gap(self.settings[a], self.settings[b], m) for m in GAP_METRICS}
                for a, b in GAP_PAIRS if a in self.settings and b in self.settings}

    def to_dict(self) -> dict[str, Any]:
        return {"settings": {k: r.summary() for k, r in self.settings.items()}, "gaps": self.gaps(), **self.meta,
                "per_probe": {k: r.to_json()["per_probe"] for k, r in self.settings.items()}}


def answer_probes_for(env: EnvConfig, seeds: list[int], visited: list[Trajectory] | None) -> list[Any]:
    """The probe states: the reference player's games on `seeds`, or every state `visited` reached."""
    if visited is not None:
        return visited_probes(env, visited)
    return played_probes(env, seeds, reference_policy(env))


def _measure(loaded: Any, probes: list[Any], variant: PromptVariant, env: EnvConfig, thoughts: int,
             name: str) -> AnswerMeterResult:
    """One setting: exact immediate answers, or answers after `thoughts` sampled thoughts per state."""
    if not thoughts:
        return measure_answers(loaded.model, loaded.tokenizer, probes, variant, setting=name)
    backend = HFBackend(loaded.model, loaded.tokenizer, model_id=loaded.model_id)
    params = SamplingParams(max_new_tokens=THOUGHT_TOKENS)
    result, _drawn = measure_answers_thinking(backend, probes, variant, make_env(env).parse, params,
                                              samples=thoughts, setting=name)
    return result


def measure_settings(student: Any, teacher: Any, probes: list[Any], env: EnvConfig, knowledge: str | None, *,
                     template: str, control: bool, thoughts: int = 0) -> AnswerGap:
    """Score the student (policy prompt) and, with `knowledge`, the teacher reading it and (with
    `control`) the same teacher reading unrelated lessons. `student`/`teacher` are LoadedModels;
    `thoughts` > 0 uses the think prompts and samples that many thoughts per state."""
    policy = THOUGHT_PROMPTS[0] if thoughts else prompts.policy_template_for(env.game)
    template = THOUGHT_PROMPTS[1] if thoughts else template
    out = {"student": _measure(student, probes, PromptVariant(policy, policy), env, thoughts, "student")}
    if knowledge is not None:
        for name, text in (("teacher", knowledge), ("control", prompts.get(prompts.CONTROL_LESSONS).text)):
            if name == "control" and not control:
                continue
            out[name] = _measure(teacher, probes, PromptVariant(name, template, text), env, thoughts, name)
    meta = {"policy_template": prompts.get(policy).record(), "probes": len(probes), "thought_samples": thoughts,
            **({"teacher_template": prompts.get(template).record()} if knowledge is not None else {})}
    return AnswerGap(out, meta)


def played_against_meter(result: AnswerMeterResult, visited: list[Trajectory],
                         sampling: SamplingParams) -> dict[str, Any]:
    """The answers the visited games played at the probe states, against the meter's distribution
    as scored and as `sampling` draws from it (per answer: observed share with its Wilson CI)."""
    actions = [t.action for traj in visited for t in traj.turns][:len(result.scores)]
    answers = list(result.scores[0].probe.answers)
    scored = np.mean([s.p for s in result.scores], axis=0)
    played = np.mean([sharpen(list(s.p), sampling.temperature, sampling.top_p, sampling.top_k)
                      for s in result.scores], axis=0)
    out = {}
    for i, a in enumerate(answers):
        n = sum(x == a for x in actions)
        out[a] = {"observed": n / len(actions), "observed_ci95": list(wilson_ci(n, len(actions))),
                  "scored": float(scored[i]), "as_sampled": float(played[i])}
    return {"decisions": len(actions), "answers": out, "sampling": {"temperature": sampling.temperature,
                                                                    "top_p": sampling.top_p, "top_k": sampling.top_k}}


def _check(config: GapConfig) -> None:
    """What a small-answer game's meter cannot take, refused before any model loads."""
    if len(config.knowledge_paths()) > 1:
        raise ConfigError("knowledge: a small-answer game's meter reads one lessons file (knowledge_file)")
    if config.sample_check:
        raise ConfigError("sample_check: the grid games' check; for a small-answer game give visited=<its games' "
                          "trajectories>: the answers they played are set against the meter")


def run_answer_gap(config: GapConfig) -> AnswerGap:
    """`oel meter` for a small-answer game: load the models, build the probes, measure, write `out`."""
    _check(config)
    template = teacher_template_for(config.env.game, config.teacher_template)
    paths = config.knowledge_paths()
    what = "knowledge_file" if config.knowledge_file else "knowledge[0]"
    knowledge = read_text_file(paths[0], what) if paths else None
    visited = read_trajectories(config.visited)[:config.max_layouts] if config.visited else None
    seeds = (heldout_seeds(config.max_layouts) if config.seeds == "heldout"
             else round_seeds(config.round, config.seeds, config.max_layouts))
    check_model_name(config.model.name)
    if config.teacher_model:
        check_model_name(config.teacher_model, "teacher_model")
    student = load_model(config.model)
    teacher = student if not config.teacher_model else load_model(updated(config.model, name=config.teacher_model))
    probes = answer_probes_for(config.env, seeds, visited)
    gap = measure_settings(student, teacher, probes, config.env, knowledge, template=template, control=config.control,
                           thoughts=config.thought_samples)
    gap.meta.update({"student_model": student.model_id, "teacher_model": teacher.model_id,
                     **({"visited": config.visited} if visited is not None else {"seeds": config.seeds,
                                                                                "round": config.round})})
    if visited is not None:
        gap.meta["played_against_meter"] = played_against_meter(gap.settings["student"], visited, SamplingParams())
    if config.policy_value:
        policy = prompts.policy_template_for(config.env.game)
        variants = {"student": (student, PromptVariant(policy, policy))}
        if knowledge is not None:
            variants["teacher"] = (teacher, PromptVariant("teacher", template, knowledge))
        gap.meta["policy_value"] = {name: {k: v for k, v in policy_value_meter(m.model, m.tokenizer, variant,
                                                                            config.env).to_dict().items()
                                           if k != "p_hit"} for name, (m, variant) in variants.items()}
    if config.out:
        atomic_write_json(Path(config.out), gap.to_dict())
    return gap


def answer_gap_table(gap: AnswerGap) -> str:
    """The settings and their paired gaps as markdown (what `oel meter` prints for these games)."""
    rows = ["| setting | E[ok] | state-blind E[ok] | E[ok] - blind (95% CI) | information (nats) | E[value] | "
            "P(invalid) | top answers |", "|---|---|---|---|---|---|---|---|"]
    for name, r in gap.settings.items():
        s, g = r.summary(), r.blind_gap("ok")
        top = ", ".join(f"{a} {q:.2f}" for a, q in s["top_answers"].items())
        rows.append(f"| {name} | {100 * s['ok']:.1f} | {100 * s['ok_state_blind']:.1f} | {_ci(g)} | "
                    f"{s['dependence_nats']:.3f} | {100 * s['value']:.1f} | {100 * s['invalid']:.1f} | {top} |")
    rows += ["", "| gap (points, paired over games) | E[ok] (95% CI) | E[value] (95% CI) |", "|---|---|---|"]
    rows += [f"| {name.replace('_', ' ')} | {_ci(g['ok'])} | {_ci(g['value'])} |" for name, g in gap.gaps().items()]
    for name, v in gap.meta.get("policy_value", {}).items():
        rows.append(f"\n{name}: wins {100 * v['win_rate']:.1f}% of fresh hands as scored, "
                    f"{100 * v['win_rate_as_sampled']:.1f}% as sampled (P([Hit]) {v['mean_p_hit']:.2f} -> "
                    f"{v['mean_p_hit_as_sampled']:.2f}); best play {100 * v['optimal']:.1f}%")
    check = gap.meta.get("played_against_meter")
    if check:
        rows.append(f"\nThe {check['decisions']} answers the visited games played, against the student's meter:")
        rows += [f"  {a}: played {100 * v['observed']:.1f}% [{100 * v['observed_ci95'][0]:.1f}, "
                 f"{100 * v['observed_ci95'][1]:.1f}], meter {100 * v['scored']:.1f}% as scored, "
                 f"{100 * v['as_sampled']:.1f}% as sampled" for a, v in check["answers"].items()]
    return "\n".join(rows)


def _ci(g: dict[str, Any]) -> str:
    return percent_points(g["diff"], *g["ci95"])
