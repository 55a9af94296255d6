"""The whole evaluation stage: games without and with knowledge, IF-Eval, one `evaluation.json`.

    result = evaluate(backend, config, env=env, out_dir=out, knowledge=Knowledge.of(texts))  # `oel evaluate`, the loop

The backend is the model evaluated (it names itself, and says how it was loaded where it knows);
the config holds the user's settings; the game, the knowledge and the output directory are
arguments. Layout of `out_dir` (each part is idempotent and resumable on its own):

    games_no_knowledge/   trajectories.jsonl, games.json      the consolidated-model number
    games_knowledge/      trajectories.jsonl, games.json      the in-context number (if knowledge)
    ifeval/               ifeval_responses.jsonl, ifeval.json  instruction following (if enabled)
    evaluation.json       everything above in one file + the run's config (as `oel evaluate`'s), written last
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from oel import prompts
from oel.backends.base import ChatBackend
from oel.config import merged, to_dict
from oel.envs import EnvConfig, is_grid_game, make_env
from oel.envs.seeds import heldout_seeds
from oel.evaluate.answer_meter import AnswerMeterResult, measure_answers
from oel.evaluate.answer_probes import played_probes, reference_policy
from oel.evaluate.config import EvaluateCommandConfig, EvaluateConfig, EvaluateInputs
from oel.evaluate.games import GameEval, evaluate_games, knowledge_texts
from oel.evaluate.ifeval import IFEvalResult, evaluate_ifeval
from oel.evaluate.meter import MeterResult, PromptVariant, measure, policy_variant, probe_states
from oel.evaluate.sharpen import opening_check, sampled_summary
from oel.io import atomic_write_json
from oel.knowledge import Knowledge
from oel.layout import EVALUATION_FILE, GAMES_DIR, GAMES_KNOWLEDGE_DIR, IFEVAL_DIR, METER_FILE
from oel.models import ModelConfig
from oel.provenance import load_result

log = logging.getLogger(__name__)



@dataclass
class Evaluation:
    """The stage's result: any of the three parts may be absent (disabled)."""

    games: GameEval | None
    games_knowledge: GameEval | None
    ifeval: IFEvalResult | None
    meter: dict[str, Any] | None = None
    """The held-out meter's summary (`MeterResult.summary()`), if it ran."""

    def to_dict(self) -> dict[str, Any]:
        return {"games": self.games.to_dict() if self.games else None,
                "games_knowledge": self.games_knowledge.to_dict() if self.games_knowledge else None,
                "ifeval": self.ifeval.to_dict() if self.ifeval else None, "meter": self.meter}

    def summary(self) -> dict[str, Any]:
        """Flat numbers for the loop's marker, metrics.jsonl and the report: game_*, icl_*, ifeval_*
        (read back with `summary_part`)."""
        out: dict[str, Any] = {}
        for part, games in ((GAMES, self.games), (IN_CONTEXT, self.games_knowledge)):
            if games is not None:
                out.update({part + k: getattr(games.metrics, k) for k in GAME_KEYS})
                out[part + "end_reasons"] = dict(games.metrics.end_reasons)
        if self.ifeval is not None:
            out.update({IFEVAL + k: getattr(self.ifeval.scores, k) for k in IFEVAL_KEYS})
        if self.meter is not None:
            out.update({METER + k: self.meter.get(k) for k in METER_KEYS})  # .get: meter.json files predating a key
            sampled = self.meter.get("sampled") or {}
            out.update({f"{METER}sampled_{k}": sampled.get(k) for k in SAMPLED_METER_KEYS})
        return out


GAMES, IN_CONTEXT, IFEVAL, METER = "game_", "icl_", "ifeval_", "meter_"
"""The parts of an evaluation summary: held-out play without knowledge, with it, IF-Eval."""
GAME_KEYS = ("pass_rate", "ci_low", "ci_high", "episodes", "passed", "move_quality", "move_quality_ci_low",
             "move_quality_ci_high", "random_move_quality", "random_pass_rate", "tokens_per_turn", "steps_per_episode")
IFEVAL_KEYS = ("prompt_strict", "prompt_loose", "instruction_strict", "instruction_loose",
               "prompt_strict_ci_low", "prompt_strict_ci_high", "prompts")


METER_KEYS = ("emq", "state_blind_emq", "p_invalid", "p_losing", "coverage", "top_move_share", "layouts", "states",
              "ok", "ok_state_blind", "good", "value", "value_state_blind", "invalid", "dependence_nats", "probes")
"""The grid meter's keys (emq ... states) and the small-answer meter's (ok ... probes); a summary
holds None for the other kind's."""
SAMPLED_METER_KEYS = ("emq", "top_move_share")
"""Of the meter's distribution as the games sample it (`oel.evaluate.sharpen`): meter_sampled_*."""


def summary_part(summary: dict[str, Any], part: str) -> dict[str, Any]:
    """One part of `Evaluation.summary()` (GAMES, IN_CONTEXT or IFEVAL) with plain key names."""
    return {k[len(part):]: v for k, v in summary.items() if k.startswith(part)}


def evaluate(backend: ChatBackend, config: EvaluateConfig, *, env: EnvConfig, out_dir: str | os.PathLike[str],
             knowledge: Knowledge | None = None) -> Evaluation:
    """Run every enabled part into `out_dir` and write `evaluation.json`.

    `backend`: the model evaluated; `env`: the game; `knowledge` (one text or K; map j reads text
    j mod K): adds the in-context evaluation, without it only the no-knowledge one runs.
    """
    out = Path(out_dir)
    texts = knowledge_texts(list(knowledge.texts) if knowledge is not None else None)
    games = with_knowledge = ifeval = None
    if config.games.enabled:
        games = evaluate_games(backend, env, config.games, out / GAMES_DIR, overwrite=config.overwrite)
        if texts:
            with_knowledge = evaluate_games(backend, env, config.games, out / GAMES_KNOWLEDGE_DIR, texts,
                                            overwrite=config.overwrite)
    if config.ifeval.enabled:
        ifeval = evaluate_ifeval(backend, config.ifeval, out / IFEVAL_DIR, overwrite=config.overwrite)
    meter = heldout_meter(backend, config, env, out, games) if config.meter.enabled else None
    result = Evaluation(games, with_knowledge, ifeval, meter)
    inputs = EvaluateInputs(model=getattr(backend, "model_config", None) or ModelConfig(), env=env,
                            knowledge_file=_knowledge_file(knowledge), out_dir=os.fspath(out_dir))
    atomic_write_json(out / EVALUATION_FILE,
                      {**result.to_dict(), "config": merged(config, inputs, EvaluateCommandConfig)})
    return result


def _knowledge_file(knowledge: Knowledge | None) -> str:
    """The record's `knowledge_file`: the one file the knowledge was read from, else '' (texts given)."""
    return knowledge.files[0] if knowledge is not None and len(knowledge.files) == 1 else ""


def heldout_meter(backend: ChatBackend, config: EvaluateConfig, env: EnvConfig, out: Path,
                  games: GameEval | None = None) -> dict[str, Any] | None:
    """The meter of the evaluated model at held-out probe states, saved per state (`METER_FILE`) so
    that rounds can be compared pairwise; None where it cannot run (no in-process model, no solver).
    With the games played, also how well it predicts their first moves (`sharpen.opening_check`)."""
    model, tokenizer = getattr(backend, "model", None), getattr(backend, "tokenizer", None)
    if model is None and hasattr(backend, "reference_model"):
        # The llama.cpp engine plays the games; the meter reads exact logits of the same weights in HF.
        loaded = backend.reference_model()
        model, tokenizer = loaded.model, loaded.tokenizer
    if model is not None and tokenizer is not None and not is_grid_game(env):
        return heldout_answer_meter(model, tokenizer, backend.model_id, config, env, out)
    if model is None or tokenizer is None or not hasattr(make_env(env), "solver_state"):
        log.info("meter: skipped (needs an in-process model and a game with a solver)")
        return None
    key = {"model": backend.model_id, "env": to_dict(env), "max_layouts": config.meter.max_layouts,
           "template": prompts.get(prompts.POLICY_TEMPLATE).record()}
    cached = load_result(out / METER_FILE, key)
    if cached is not None:
        result = MeterResult.from_saved(cached, backend.model_id)
        summary = cached["summary"]
    else:
        states = probe_states(heldout_seeds(), env, max_layouts=config.meter.max_layouts)
        result = measure(model, tokenizer, states, policy_variant(), setting=backend.model_id)
        summary = result.summary()
        atomic_write_json(out / METER_FILE, {"key": key, "summary": summary,
                                             "per_state": [s.__dict__ for s in result.states]})
    # recomputed, not saved in the meter file: it depends on the games' sampling, not on the model
    opening = ({"opening": opening_check(result, games.metrics.first_moves, config.games.sampling)}
               if games is not None and games.metrics.first_moves else {})
    return {**summary, "sampled": sampled_summary(result, config.games.sampling), **opening}


def heldout_answer_meter(model: Any, tokenizer: Any, model_id: str, config: EvaluateConfig, env: EnvConfig,
                         out: Path) -> dict[str, Any]:
    """The small-answer meter (`oel.evaluate.answer_meter`) at held-out probe states: the states of
    the first `meter.max_layouts` held-out episodes as the game's reference policy plays them
    (the same states in every round, so rounds compare pairwise). Saved per probe in `METER_FILE`."""
    policy = prompts.policy_template_for(env.game)
    key = {"model": model_id, "env": to_dict(env), "max_layouts": config.meter.max_layouts,
           "template": prompts.get(policy).record(), "meter": "answers"}
    cached = load_result(out / METER_FILE, key)
    if cached is not None:
        return cached["summary"]
    probes = played_probes(env, heldout_seeds(config.meter.max_layouts), reference_policy(env))
    result: AnswerMeterResult = measure_answers(model, tokenizer, probes, PromptVariant(policy, policy),
                                                setting=model_id)
    saved = result.to_json()
    atomic_write_json(out / METER_FILE, {"key": key, **saved})
    return saved["summary"]


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def games_rows(label: str, g: GameEval) -> list[str]:
    """Markdown table rows for one game evaluation."""
    m = g.metrics
    ends = ", ".join(f"{k} {v}" for k, v in m.end_reasons.items())
    spread = f"{_pct(m.seed_mean)} ± {100 * m.seed_std:.1f}" if len(m.per_seed) > 1 else "(one seed)"
    first = ", ".join(f"{k} {v}" for k, v in sorted(m.first_moves.items(), key=lambda kv: -kv[1]))
    return [f"| {label} | {m.passed}/{m.episodes} = {_pct(m.pass_rate)} | {_pct(m.ci_low)} - {_pct(m.ci_high)} "
            f"| {spread} | {_pct(m.move_quality)} ({m.optimal_moves}/{m.scored_moves}) | {m.tokens_per_turn:.1f} "
            f"| {m.steps_per_episode:.2f} | {ends} | {first} | {g.wall_seconds:.0f}s |"]


def opening_line(opening: dict[str, Any]) -> str:
    """The meter's opening moves against the games' first moves, in one line (`sharpen.opening_check`)."""
    def shares(q: list[float]) -> str:
        return "/".join(f"{x:.2f}" for x in q)
    return (f"Opening moves u/d/l/r: the {opening['games_count']} games {shares(opening['games'])}; the meter "
            f"{shares(opening['meter'])} (distance {opening['distance']:.2f}), as the games sample "
            f"{shares(opening['meter_sampled'])} (distance {opening['distance_sampled']:.2f})")


def evaluation_table(result: Evaluation) -> str:
    """The printed summary: one markdown table for the games, one line block for IF-Eval."""
    lines: list[str] = []
    parts: Sequence[tuple[str, GameEval | None]] = [("no knowledge", result.games),
                                                    ("with knowledge", result.games_knowledge)]
    if any(g for _, g in parts):
        g0 = next(g for _, g in parts if g)
        lines += [f"Held-out {g0.game} ({g0.env_id}), maps 0..{g0.num_maps - 1} x sampling seeds {g0.sampling_seeds}, "
                  f"model {g0.model_id}", "",
                  "| prompt | passed | 95% CI (Wilson) | per-seed mean ± sd | move quality | tokens/turn "
                  "| steps/episode | how episodes ended | first moves | play time |",
                  "|---|---:|---|---|---:|---:|---:|---|---|---:|"]
        for label, g in parts:
            if g is not None:
                lines += games_rows(label, g)
    opening = (result.meter or {}).get("opening")
    if opening:
        lines += ["", opening_line(opening)]
    if result.ifeval is not None:
        r, s = result.ifeval, result.ifeval.scores
        lines += ["", f"IF-Eval ({r.subset} of 541 prompts, greedy, max {r.max_new_tokens} new tokens, "
                      f"{r.truncated} answers cut at the limit):",
                  f"  prompt-level      strict {_pct(s.prompt_strict)} (95% CI {_pct(s.prompt_strict_ci_low)} - "
                  f"{_pct(s.prompt_strict_ci_high)}), loose {_pct(s.prompt_loose)}",
                  f"  instruction-level strict {_pct(s.instruction_strict)}, loose {_pct(s.instruction_loose)} "
                  f"({s.instructions} instructions)",
                  f"  generation time {r.generate_seconds:.0f}s, {r.mean_response_tokens:.0f} tokens per answer"]
    return "\n".join(lines)
