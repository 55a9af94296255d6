"""User-side collection: a model plays many episodes at once and we keep every trajectory.

The play itself is `oel.rollout.play_episodes` (batched, per-episode seeds); this module
chooses the maps, writes the trajectories and resumes.

Crash safety: each trajectory is appended to the JSONL file as soon as its episode ends
(one fsynced line), and a rerun first cuts any torn final line, then skips every
(env, round, seed, sample) already on file. A `kill -9` followed by a rerun therefore
yields every episode exactly once.

Library use (the round orchestrator):

    stats = collect(CollectConfig(round=r, out=".../trajectories.jsonl", ...), backend=backend)
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from oel import prompts
from oel.backends.base import ChatBackend, SamplingParams
from oel.backends.openai_endpoint import EndpointConfig
from oel.backends.select import make_backend
from oel.config import Config, cfg
from oel.envs import EnvConfig, make_env
from oel.envs.seeds import HELDOUT_COUNT, heldout_seeds, round_seeds
from oel.errors import ConfigError
from oel.io import atomic_write_json, read_text_file
from oel.models import ModelConfig
from oel.rollout import EpisodeJob, PlayStats, pending_jobs, play_episodes
from oel.trajectory import Trajectory, append_trajectory

log = logging.getLogger(__name__)

SeedSet = Literal["heldout", "collect", "extract", "train"]


class CollectConfig(Config):
    """`oel collect`: which environment, which model, which maps, where to write."""

    env: EnvConfig = cfg(factory=EnvConfig, help="the environment (game and its settings)", plumbing=True)
    backend: Literal["hf", "openai"] = cfg("hf", "'hf': load `model` in this process; 'openai': call `endpoint`",
                                           plumbing=True)
    model: ModelConfig = cfg(factory=ModelConfig, help="the model, when backend=hf", plumbing=True)
    endpoint: EndpointConfig = cfg(factory=EndpointConfig, help="the OpenAI-compatible endpoint, when backend=openai",
                                   plumbing=True)
    max_batch_size: int = cfg(16, "backend=hf: most prompts in one forward pass (bounds memory); larger calls "
                                  "are split")
    max_batch_tokens: int = cfg(32_768, "backend=hf: most padded prompt tokens in one forward pass (bounds memory)")
    seeds: SeedSet = cfg("collect", "which maps: 'heldout' (the fixed evaluation maps) or this round's "
                                    "'collect', 'extract' or 'train' block", plumbing=True)
    num_seeds: int = cfg(32, "how many maps (seeds) to play, taken from the start of the chosen set plus seed_offset")
    seed_offset: int = cfg(0, "skip this many seeds of the chosen set (take more maps from a block later)",
                           plumbing=True)
    samples_per_seed: int = cfg(1, "episodes per map; episodes = num_seeds * samples_per_seed")
    round: int = cfg(0, "OEL round; picks the round's seed block and is recorded in each trajectory", plumbing=True)
    sampling: SamplingParams = cfg(factory=SamplingParams, help="how the policy samples its answers")
    batch_size: int = cfg(32, "episodes in flight together; each turn is one backend call over all of them")
    prompt: str = cfg("policy_grid_v1", "prompt template of each turn (oel/prompts/<name>.txt); the "
                                        "small-answer games use policy_game_v1")
    knowledge_file: str = cfg("", "text file filling a template's {knowledge} field (in-context play); empty = none",
                              plumbing=True)
    out: str = cfg("runs/collect/trajectories.jsonl", "trajectory JSONL; appended as episodes finish, resumed "
                                                      "on rerun", plumbing=True)

    def model_post_init(self, context: Any, /) -> None:
        for name in ("num_seeds", "samples_per_seed", "batch_size", "max_batch_size", "max_batch_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.seed_offset < 0:
            raise ConfigError(f"seed_offset: must be >= 0, got {self.seed_offset}")
        if self.seeds == "heldout" and self.seed_offset + self.num_seeds > HELDOUT_COUNT:
            raise ConfigError(f"num_seeds: seed_offset + num_seeds must be <= {HELDOUT_COUNT} held-out maps, "
                              f"got {self.seed_offset} + {self.num_seeds}")
        if self.backend == "openai" and not self.endpoint.base_url:
            raise ConfigError("endpoint.base_url: required when backend=openai")
        self.prompt = prompts.policy_template_for(self.env.game, self.prompt)


def select_jobs(config: CollectConfig) -> list[EpisodeJob]:
    """The episodes this config asks for, in play order (map by map, repeats together)."""
    if config.seeds == "heldout":
        seeds = heldout_seeds(config.seed_offset + config.num_seeds)[config.seed_offset:]
    else:
        seeds = round_seeds(config.round, config.seeds, config.num_seeds, offset=config.seed_offset)
    return [EpisodeJob(s, k) for s in seeds for k in range(config.samples_per_seed)]


def collect_backend(config: CollectConfig) -> ChatBackend:
    """The backend `config` asks for (loads the model for backend=hf)."""
    return make_backend(config.backend, model=config.model, endpoint=config.endpoint,
                        max_batch_size=config.max_batch_size, max_batch_tokens=config.max_batch_tokens)


def summary_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.stem + ".summary.json")


def collect(
    config: CollectConfig,
    backend: ChatBackend | None = None,
    *,
    on_start: Callable[[int, int], None] | None = None,
    on_finish: Callable[[Trajectory, PlayStats], None] | None = None,
) -> PlayStats:
    """Play the config's episodes not yet in `config.out`, appending each as it finishes.

    `on_start(pending, total)` and `on_finish(traj, stats)` let a caller show progress.
    Writes `<out stem>.summary.json` (stats of this run) at the end.
    """
    jobs = select_jobs(config)
    env_id = make_env(config.env).env_id
    todo = pending_jobs(config.out, jobs, env_id, config.round)
    stats = PlayStats(skipped=len(jobs) - len(todo))
    if on_start is not None:
        on_start(len(todo), len(jobs))
    if todo:
        fields = {"knowledge": read_text_file(config.knowledge_file, "knowledge file",
                                              allow_empty=True)} if config.knowledge_file else {}
        backend = backend if backend is not None else collect_backend(config)

        def _append(traj: Trajectory, st: PlayStats) -> None:
            append_trajectory(config.out, traj)
            if on_finish is not None:
                on_finish(traj, st)

        play_episodes(backend, lambda: make_env(config.env), todo, config.sampling, template=config.prompt,
                      prompt_fields=fields, round=config.round, batch_size=config.batch_size,
                      on_finish=_append, stats=stats)
    atomic_write_json(summary_path(config.out), stats.to_dict())
    log.info("collect: %d episodes (%d already on file), pass rate %.3f, %.1f tokens/turn, %.1f gen tok/s",
             stats.episodes, stats.skipped, stats.pass_rate, stats.tokens_per_turn, stats.generation_tokens_per_s)
    return stats

