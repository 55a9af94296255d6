"""Episodes played by a model: the batched play engine of the collect and evaluate stages.

All unfinished episodes advance together: each turn, the prompts of every episode in
flight go to the backend in ONE batched call (prefill dominates the cost of a turn, so
batching is where the speed is), and a finished episode's slot is refilled at once from
the queue of episodes still to play. Each turn's prompt is a named template rendered with
the environment's observation; everything the model saw and said is recorded exactly.

Sampling seeds are per episode and per turn (`derive_seed(base, round, seed, sample,
turn)`) when the backend accepts per-prompt seeds, so an episode's random stream does not
depend on which others it was batched with, nor on whether the run was resumed; its text
does not either in float32, while bf16 batched kernels can change it (docs/collection.md,
"Batching and identical answers").

    trajs = play_episodes(backend, lambda: make_env(env_cfg), jobs, params,
                          template="teacher_grid_v1", prompt_fields={"knowledge": text})
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from oel import progress, prompts
from oel.backends.base import ChatBackend, Generation, SamplingParams
from oel.backends.sampling import derive_seed
from oel.config import to_dict, updated
from oel.envs.base import TextEnv
from oel.errors import ConfigError
from oel.io import repair_jsonl_tail
from oel.trajectory import Message, Trajectory, Turn, read_trajectories

log = logging.getLogger(__name__)

MAX_TURNS_GUARD = 1000
"""An environment that has not ended an episode after this many turns is broken; stop."""


@dataclass(frozen=True)
class EpisodeJob:
    """One episode to play: a map seed and the index of this repeat on that map."""

    seed: int
    sample: int = 0
    sampling_seed: int | None = None
    """The base of this episode's sampling seeds (None: the call's `params.seed`): lets episodes of several
    sampling seeds play in one call, where a backend computes the prompts they share once."""

    def params(self, params: SamplingParams) -> SamplingParams:
        """The sampling settings this episode plays with."""
        return params if self.sampling_seed is None else updated(params, seed=self.sampling_seed)


@dataclass
class PlayStats:
    """Running totals of a batch of episodes; `to_dict` is the summary written beside the output."""

    episodes: int = 0
    passed: int = 0
    turns: int = 0
    prompt_tokens: int = 0
    response_tokens: int = 0
    generate_seconds: float = 0.0
    wall_seconds: float = 0.0
    skipped: int = 0
    """Episodes already on file when the run started (resume)."""

    @property
    def pass_rate(self) -> float:
        return self.passed / self.episodes if self.episodes else 0.0

    @property
    def tokens_per_turn(self) -> float:
        return self.response_tokens / self.turns if self.turns else 0.0

    @property
    def generation_tokens_per_s(self) -> float:
        return self.response_tokens / self.generate_seconds if self.generate_seconds else 0.0

    @property
    def prompt_tokens_per_s(self) -> float:
        """Prefill throughput: with ~3-token answers, this is where the time goes."""
        return self.prompt_tokens / self.generate_seconds if self.generate_seconds else 0.0

    @property
    def episodes_per_min(self) -> float:
        return 60 * self.episodes / self.wall_seconds if self.wall_seconds else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "pass_rate": self.pass_rate, "tokens_per_turn": self.tokens_per_turn,
                "generation_tokens_per_s": self.generation_tokens_per_s,
                "prompt_tokens_per_s": self.prompt_tokens_per_s, "episodes_per_min": self.episodes_per_min}


@dataclass
class _Episode:
    """An episode in flight: its job, its environment, what has happened so far."""

    job: EpisodeJob
    env: TextEnv
    observation: str
    turns: list[Turn] = field(default_factory=list)


def trajectory_id(env_id: str, round: int, job: EpisodeJob) -> str:
    """The record's id: unique per (env, round, seed, sample), so a resumed file never repeats one."""
    return f"{env_id}-r{round}-s{job.seed}-k{job.sample}"


def pending_jobs(out: str | Path, jobs: Sequence[EpisodeJob], env_id: str, round: int) -> list[EpisodeJob]:
    """Repair a torn tail of `out`, then drop the jobs whose trajectory is already on file."""
    path = Path(out)
    if repair_jsonl_tail(path):
        log.warning("%s: cut a torn final line left by an interrupted run", path)
    if not path.exists() or path.stat().st_size == 0:
        return list(jobs)
    done = {t.id for t in read_trajectories(path, allow_empty=True)}
    return [j for j in jobs if trajectory_id(env_id, round, j) not in done]


def _generate(backend: ChatBackend, prompts_: list[list[Message]], params: SamplingParams,
              seeds: list[int]) -> list[Generation]:
    """One batched call; per-prompt seeds when the backend takes them, else one call seed."""
    chat_with_seeds = getattr(backend, "chat_with_seeds", None)
    if chat_with_seeds is not None:
        gens = chat_with_seeds(prompts_, params, seeds)
    else:
        call_params = updated(params, seed=derive_seed(*seeds))
        gens = backend.chat(prompts_, call_params)
    if len(gens) != len(prompts_):
        raise RuntimeError(f"backend {backend.model_id}: returned {len(gens)} completions for {len(prompts_)} prompts")
    return gens


def play_episodes(
    backend: ChatBackend,
    env_factory: Callable[[], TextEnv],
    jobs: Sequence[EpisodeJob],
    params: SamplingParams,
    *,
    template: str = "policy_grid_v1",
    prompt_fields: Mapping[str, str] | None = None,
    round: int = 0,
    batch_size: int = 32,
    on_finish: Callable[[Trajectory, PlayStats], None] | None = None,
    stats: PlayStats | None = None,
    label: str = "episodes",
) -> list[Trajectory]:
    """Play `jobs` with up to `batch_size` in flight; return trajectories in finishing order.

    `on_finish(traj, stats)` runs as each episode ends (collection appends it to disk there).
    `prompt_fields` fills template fields other than {observation}, e.g. {knowledge}. `label` names the
    progress shown while they play.
    """
    tmpl = prompts.get(template)
    tmpl_record = tmpl.record()
    fields = dict(prompt_fields or {})
    unused = set(fields) - tmpl.fields
    if unused:
        raise ConfigError(f"prompt '{template}': has no field(s) {sorted(unused)} to fill (fields: "
                          f"{sorted(tmpl.fields)})")
    stats = stats if stats is not None else PlayStats()
    queue = list(jobs)[::-1]  # pop() from the end keeps play order
    envs = [env_factory() for _ in range(min(batch_size, len(queue)))]
    active: list[_Episode] = []
    finished: list[Trajectory] = []
    t_start = time.perf_counter()
    with progress.task(label, total=len(queue)) as counted:
        while queue or active:
            while queue and envs:
                env, job = envs.pop(), queue.pop()
                active.append(_Episode(job, env, env.reset(job.seed)))
            prompts_ = [prompts.turn_messages(template, ep.observation, **fields) for ep in active]
            seeds = [derive_seed(ep.job.params(params).seed, round, ep.job.seed, ep.job.sample, len(ep.turns))
                     for ep in active]
            t0 = time.perf_counter()
            gens = _generate(backend, prompts_, params, seeds)
            stats.generate_seconds += time.perf_counter() - t0
            still: list[_Episode] = []
            for ep, prompt, gen in zip(active, prompts_, gens):
                traj = _advance(ep, prompt, gen, backend.model_id, round, tmpl_record, ep.job.params(params), stats)
                if traj is None:
                    still.append(ep)
                    continue
                envs.append(ep.env)
                finished.append(traj)
                stats.wall_seconds = time.perf_counter() - t_start
                progress.advance(counted)
                if on_finish is not None:
                    on_finish(traj, stats)
            active = still
    return finished


def _advance(ep: _Episode, prompt: list[Message], gen: Generation, model_id: str, round: int,
             template_record: dict[str, str], params: SamplingParams, stats: PlayStats) -> Trajectory | None:
    """Apply one response to its episode; return the trajectory if that ended the episode."""
    result = ep.env.step(gen.text)
    ep.turns.append(Turn(prompt=prompt, observation=ep.observation, response=gen.text, action=result.action,
                         feedback=result.feedback, prompt_tokens=gen.prompt_tokens,
                         response_tokens=gen.completion_tokens))
    stats.turns += 1
    stats.prompt_tokens += gen.prompt_tokens
    stats.response_tokens += gen.completion_tokens
    if not result.done:
        if len(ep.turns) >= MAX_TURNS_GUARD:
            raise RuntimeError(f"{ep.env.env_id} seed {ep.job.seed}: no end after {MAX_TURNS_GUARD} turns")
        ep.observation = result.observation
        return None
    stats.episodes += 1
    stats.passed += int(result.passed)
    return Trajectory(
        id=trajectory_id(ep.env.env_id, round, ep.job), env_id=ep.env.env_id, seed=ep.job.seed,
        sample=ep.job.sample, model_id=model_id, round=round, turns=ep.turns, outcome=result.outcome,
        passed=result.passed, reward=result.reward,
        meta={"prompt": template_record, "sampling": to_dict(params),
              "end_reason": getattr(ep.env, "end_reason", None)},
    )
