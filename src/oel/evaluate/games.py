"""Held-out game evaluation: pass rate (with CI), tokens per turn, steps, endings and move quality.

The policy plays the first `num_maps` fixed held-out maps once per sampling seed, through
the same batched collection code as the user side (`oel.rollout.play_episodes`), so
what is measured is exactly what the loop collects. Without knowledge the prompt is the plain
policy prompt (`policy_grid_v1`); with knowledge it is the teacher prompt (`teacher_grid_v1`)
with the text inserted. With K knowledge texts (the K accumulation runs of a round), held-out
map j is played with text j mod K, so the number averages over the K runs.

Episode (map m, sampling seed index k) is recorded with `sample = k`, and its per-turn
sampling seeds derive from (sampling seed, map, k, turn) alone: the same episode draws the
same random stream whatever it was batched with (the same text in float32; bf16 batching can
change it, docs/collection.md), and every round plays the same streams (evaluation always uses
round 0 for the derivation), so rounds differ only by the model.

Files in `out_dir`: `trajectories.jsonl` (appended per finished episode: inspectable and the
resume point), `games.key.json`, and `games.json` (the `GameEval`, written last, atomically).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from oel import prompts
from oel.backends.base import ChatBackend, SamplingParams
from oel.config import to_dict
from oel.envs import ANSWER_GAMES, EnvConfig, answer_game_class, make_env
from oel.envs.seeds import heldout_seeds
from oel.envs.solver import GridState, random_pass_probability
from oel.errors import DataError
from oel.evaluate.config import GamesConfig
from oel.evaluate.metrics import (
    GameSummary,
    SeedPassRate,
    episode_move_marks,
    random_move_shares,
    summarise,
    summary_dict,
)
from oel.io import atomic_write_json
from oel.layout import GAME_TRAJECTORIES
from oel.prompts import KNOWLEDGE_TEMPLATE, NO_KNOWLEDGE_TEMPLATE
from oel.provenance import claim_dir, load_result, texts_digest
from oel.rollout import EpisodeJob, PlayStats, pending_jobs, play_episodes, trajectory_id
from oel.trajectory import Trajectory, append_trajectory, read_trajectories

log = logging.getLogger(__name__)

EVAL_ROUND = 0
"""Round number used for seed derivation and trajectory ids: the same streams in every round."""
RESULT_FILE = "games.json"
KEY_FILE = "games.key.json"

Knowledge = str | Sequence[str] | None


@dataclass
class GameEval:
    """One model's held-out play, with or without knowledge."""

    model_id: str
    env_id: str
    game: str
    template: str
    knowledge_texts: int
    """0: played without knowledge; K: with K texts (map j used text j mod K)."""
    num_maps: int
    sampling_seeds: list[int]
    metrics: GameSummary
    generate_seconds: float
    wall_seconds: float
    """Time spent playing in the call that finished the evaluation (resumed episodes not included)."""
    resumed_episodes: int
    key: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {**{k: v for k, v in asdict(self).items() if k != "metrics"}, "metrics": summary_dict(self.metrics)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "GameEval":
        metrics = dict(data["metrics"])
        metrics["per_seed"] = [SeedPassRate(s["seed"], s["episodes"], s["passed"]) for s in metrics["per_seed"]]
        return cls(**{**data, "metrics": GameSummary(**metrics)})


def knowledge_texts(knowledge: Knowledge) -> list[str]:
    """Normalise the knowledge argument to a list of texts ([] = no knowledge); empty texts are refused."""
    if knowledge is None:
        return []
    texts = [knowledge] if isinstance(knowledge, str) else list(knowledge)
    if not texts or any(not t.strip() for t in texts):
        raise ValueError("knowledge: expected non-empty text(s); pass None to evaluate without knowledge")
    return texts


def _run_key(model_id: str, env_cfg: EnvConfig, cfg: GamesConfig, texts: list[str]) -> dict[str, Any]:
    """Everything an episode's outcome depends on (batch size does not: seeds are per episode)."""
    policy = prompts.policy_template_for(env_cfg.game, NO_KNOWLEDGE_TEMPLATE)
    template = prompts.get(prompts.knowledge_template_for(policy, cfg.knowledge_template) if texts else policy)
    sampling = {k: v for k, v in to_dict(cfg.sampling).items() if k != "seed"}
    digest = texts_digest(texts) if texts else None
    return {"model": model_id, "env": to_dict(env_cfg), "num_maps": cfg.num_maps,
            "sampling_seeds": list(cfg.sampling_seeds), "sampling": sampling, "template": template.record(),
            "knowledge_texts": len(texts), "knowledge_sha256": digest}


def with_random_reference(summary: GameSummary, env_cfg: EnvConfig, trajs: Sequence[Trajectory],
                          starts: dict[int, GridState]) -> GameSummary:
    """`summary` with random play's exact pass rate on these maps and move quality at these positions."""
    if not starts:
        random_pass = answer_game_random_pass_rate(env_cfg)
        return summary if random_pass is None else dataclasses.replace(summary, random_pass_rate=random_pass)
    shares = [x for t in trajs if t.seed in starts for x in random_move_shares(starts[t.seed], t)]
    exact = [random_pass_probability(starts[s], env_cfg.max_turns, env_cfg.invalid_moves_tolerated)
             for s in sorted({t.seed for t in trajs if t.seed in starts})]
    return dataclasses.replace(summary, random_move_quality=sum(shares) / len(shares) if shares else None,
                               random_pass_rate=sum(exact) / len(exact))


def answer_game_random_pass_rate(env_cfg: EnvConfig) -> float | None:
    """Random play's pass rate in a small-answer game, as its class's `random_pass_rate` says (None
    for other games)."""
    if env_cfg.game in ANSWER_GAMES:
        return answer_game_class(env_cfg.game).random_pass_rate(env_cfg)
    return None


def start_states(env_cfg: EnvConfig, seeds: Sequence[int]) -> dict[int, GridState]:
    """Each map's start position for the solver; empty for environments without `solver_state`."""
    env = make_env(env_cfg)
    if not hasattr(env, "solver_state"):
        return {}
    out: dict[int, GridState] = {}
    for seed in seeds:
        env.reset(seed)
        out[seed] = env.solver_state()  # type: ignore[attr-defined]
    return out


def play_maps(backend: ChatBackend, env_cfg: EnvConfig, jobs_by_map: Sequence[Sequence[EpisodeJob]],
              texts: Sequence[str | None], params: SamplingParams, *, round: int, batch_size: int,
              on_finish: Callable[[Trajectory, PlayStats], None] | None = None,
              stats: PlayStats | None = None, knowledge_template: str = KNOWLEDGE_TEMPLATE) -> list[Trajectory]:
    """Play the episodes of each map, map j with knowledge texts[j mod K] (None: the policy prompt)
    through `knowledge_template`.

    The one way held-out maps are played with or without knowledge: the evaluation and the
    in-context curve both come here, so their episodes are the same for the same inputs.
    """
    played: list[Trajectory] = []
    for index, text in enumerate(texts):
        jobs = [job for j, group in enumerate(jobs_by_map) if j % len(texts) == index for job in group]
        if not jobs:
            continue
        policy = prompts.policy_template_for(env_cfg.game, NO_KNOWLEDGE_TEMPLATE)
        template = prompts.knowledge_template_for(policy, knowledge_template) if text is not None else policy
        fields = {"knowledge": text} if text is not None else {}
        played += play_episodes(backend, lambda: make_env(env_cfg), jobs, params, template=template,
                                prompt_fields=fields, round=round, batch_size=batch_size, on_finish=on_finish,
                                stats=stats, label="evaluate: held-out games" + (" (lessons in context)"
                                                                                  if text is not None else ""))
    return played


def _play_missing(backend: ChatBackend, env_cfg: EnvConfig, cfg: GamesConfig, texts: list[str], path: Path,
                  on_episode: Callable[[Trajectory], None] | None) -> tuple[PlayStats, int]:
    """Play every (map, seed) episode not yet in `path`; returns this call's stats and how many were on file."""
    maps = heldout_seeds(cfg.num_maps)
    env_id = make_env(env_cfg).env_id
    stats = PlayStats()

    def _append(traj: Trajectory, _stats: PlayStats) -> None:
        append_trajectory(path, traj)
        if on_episode is not None:
            on_episode(traj)

    # Every sampling seed of a map in one call, side by side: their first prompts are the same (and often
    # later ones too), which the engines compute once; each episode keeps its own seed's random stream.
    jobs_by_map = [[EpisodeJob(m, k, sampling_seed=seed) for k, seed in enumerate(cfg.sampling_seeds)] for m in maps]
    todo = set(pending_jobs(path, [job for jobs in jobs_by_map for job in jobs], env_id, EVAL_ROUND))
    skipped = sum(len(jobs) for jobs in jobs_by_map) - len(todo)
    play_maps(backend, env_cfg, [[job for job in jobs if job in todo] for jobs in jobs_by_map], list(texts) or [None],
              cfg.sampling, round=EVAL_ROUND, batch_size=cfg.batch_size, on_finish=_append, stats=stats,
              knowledge_template=cfg.knowledge_template)
    return stats, skipped


def _expected(path: Path, env_id: str, cfg: GamesConfig) -> list[Trajectory]:
    """The trajectories of this evaluation, in (map, seed) order; every one must be on file."""
    wanted = [trajectory_id(env_id, EVAL_ROUND, EpisodeJob(m, k))
              for m in heldout_seeds(cfg.num_maps) for k in range(len(cfg.sampling_seeds))]
    by_id = {t.id: t for t in read_trajectories(path)}
    missing = [w for w in wanted if w not in by_id]
    if missing:
        raise DataError(f"{path}: {len(missing)} episode(s) missing after play, e.g. {missing[0]}")
    return [by_id[w] for w in wanted]


def evaluate_games(backend: ChatBackend, env_cfg: EnvConfig, cfg: GamesConfig, out_dir: str | Path,
                   knowledge: Knowledge = None, *, overwrite: bool = False,
                   on_episode: Callable[[Trajectory], None] | None = None) -> GameEval:
    """Play the held-out maps x sampling seeds and measure them; idempotent and resumable.

    `knowledge`: None (policy prompt), one text, or K texts (map j uses text j mod K).
    A finished result with the same key is returned without playing; a partial run resumes;
    a directory holding another key's episodes is refused unless `overwrite` (see
    `oel.provenance`). The key names the model by `backend.model_id` only: give each
    checkpoint its own `out_dir`.
    """
    out = Path(out_dir)
    texts = knowledge_texts(knowledge)
    key = _run_key(backend.model_id, env_cfg, cfg, texts)
    cached = load_result(out / RESULT_FILE, key)
    if cached is not None:
        return GameEval.from_dict(cached)
    path = out / GAME_TRAJECTORIES
    claim_dir(out / KEY_FILE, key, [path, out / RESULT_FILE], overwrite=overwrite)
    t0 = time.perf_counter()
    stats, skipped = _play_missing(backend, env_cfg, cfg, texts, path, on_episode)
    wall = time.perf_counter() - t0
    env_id = make_env(env_cfg).env_id
    trajs = _expected(path, env_id, cfg)
    starts = start_states(env_cfg, heldout_seeds(cfg.num_maps))
    marks = {t.id: episode_move_marks(starts[t.seed], t) for t in trajs if t.seed in starts}
    summary = with_random_reference(summarise(trajs, marks, seed_of=dict(enumerate(cfg.sampling_seeds))),
                                    env_cfg, trajs, starts)
    result = GameEval(model_id=backend.model_id, env_id=env_id, game=env_cfg.game, template=key["template"]["name"],
                      knowledge_texts=len(texts), num_maps=cfg.num_maps, sampling_seeds=list(cfg.sampling_seeds),
                      metrics=summary, generate_seconds=stats.generate_seconds, wall_seconds=wall,
                      resumed_episodes=skipped, key=key)
    atomic_write_json(out / RESULT_FILE, result.to_dict())
    log.info("games (%s): %d/%d passed, move quality %s", result.template, summary.passed, summary.episodes,
             "n/a" if summary.move_quality is None else f"{summary.move_quality:.3f}")
    return result
