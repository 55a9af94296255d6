"""User-side collection: a model plays many episodes at once and we keep every trajectory.

The play itself is `oel.rollout.play_episodes` (batched, per-episode seeds); this module
chooses the maps, writes the trajectories and resumes.

Crash safety: each trajectory is appended to the JSONL file as soon as its episode ends
(one fsynced line), and a rerun first cuts any torn final line, then skips every
(env, round, seed, sample) already on file. A `kill -9` followed by a rerun therefore
yields every episode exactly once.

Library use (the round orchestrator): the config holds how to play, the rest are arguments:

    stats = collect(CollectConfig(num_seeds=32), backend, env=env, maps=Maps("collect", round=r),
                    out=".../trajectories.jsonl")
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from oel import prompts
from oel.backends.base import ChatBackend, SamplingParams
from oel.backends.openai_endpoint import EndpointConfig
from oel.backends.select import BackendKind, make_backend
from oel.config import CommandConfig, Config, cfg
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
    """How a model plays its episodes: the settings of a collection.

    Which game, which maps, which model (the backend) and where the trajectories go are
    arguments of `collect()` (the loop passes its round's; `oel collect` takes them as the keys
    of `CollectCommandConfig`)."""

    max_batch_size: int = cfg(16, "backend=hf: most prompts in one forward pass (bounds memory); larger calls "
                                  "are split")
    max_batch_tokens: int = cfg(32_768, "backend=hf: most padded prompt tokens in one forward pass (bounds memory)")
    num_seeds: int = cfg(32, "how many maps (seeds) to play, taken from the start of the chosen set plus seed_offset")
    samples_per_seed: int = cfg(1, "episodes per map; episodes = num_seeds * samples_per_seed")
    sampling: SamplingParams = cfg(factory=SamplingParams, help="how the policy samples its answers")
    batch_size: int = cfg(32, "episodes in flight together; each turn is one backend call over all of them")
    prompt: str = cfg("policy_grid_v1", "prompt template of each turn (oel/prompts/<name>.txt); the "
                                        "small-answer games use policy_game_v1")

    def model_post_init(self, context: Any, /) -> None:
        for name in ("num_seeds", "samples_per_seed", "batch_size", "max_batch_size", "max_batch_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be >= 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class Maps:
    """Which maps a collection plays: `seeds` = the fixed held-out maps or round `round`'s 'collect',
    'extract' or 'train' block, skipping the first `offset` (`num_seeds` of the config says how many)."""

    seeds: SeedSet = "collect"
    round: int = 0
    offset: int = 0

    def check(self, num_seeds: int) -> None:
        """ConfigError (naming `oel collect`'s key) for maps that do not exist."""
        if self.offset < 0:
            raise ConfigError(f"seed_offset: must be >= 0, got {self.offset}")
        if self.seeds == "heldout" and self.offset + num_seeds > HELDOUT_COUNT:
            raise ConfigError(f"num_seeds: seed_offset + num_seeds must be <= {HELDOUT_COUNT} held-out maps, "
                              f"got {self.offset} + {num_seeds}")


class CollectInputs(Config):
    """Which game, which model, which maps, which knowledge and where the trajectories go: run
    plumbing, which `collect()` takes as arguments and `oel collect` as keys."""

    env: EnvConfig = cfg(factory=EnvConfig, help="the environment (game and its settings)")
    backend: BackendKind = cfg("auto", "auto: llamacpp for a GGUF model on CPU if installed, else hf; "
                                       "openai: call `endpoint` (docs/engines.md)")
    model: ModelConfig = cfg(factory=ModelConfig, help="the model, when backend is auto, hf or llamacpp")
    endpoint: EndpointConfig = cfg(factory=EndpointConfig, help="the OpenAI-compatible endpoint, when backend=openai")
    seeds: SeedSet = cfg("collect", "which maps: 'heldout' (the fixed evaluation maps) or this round's "
                                    "'collect', 'extract' or 'train' block")
    seed_offset: int = cfg(0, "skip this many seeds of the chosen set (take more maps from a block later)")
    round: int = cfg(0, "OEL round; picks the round's seed block and is recorded in each trajectory")
    knowledge_file: str = cfg("", "text file filling a template's {knowledge} field (in-context play); empty = none")
    out: str = cfg("runs/collect/trajectories.jsonl", "trajectory JSONL; appended as episodes finish, resumed "
                                                      "on rerun")


class CollectCommandConfig(CollectConfig, CollectInputs, CommandConfig):
    """`oel collect`: which environment, which model, which maps, where to write (and how to play)."""

    SETTINGS, INPUTS = CollectConfig, CollectInputs
    INPUTS_AFTER = {"seeds": "max_batch_tokens", "seed_offset": "num_seeds", "round": "samples_per_seed",
                    "knowledge_file": "prompt", "out": "prompt"}

    def model_post_init(self, context: Any, /) -> None:
        super().model_post_init(context)
        self.maps().check(self.num_seeds)
        if self.backend == "openai" and not self.endpoint.base_url:
            raise ConfigError("endpoint.base_url: required when backend=openai")
        self.prompt = prompts.policy_template_for(self.env.game, self.prompt)

    def maps(self) -> Maps:
        return Maps(self.seeds, self.round, self.seed_offset)


def select_jobs(config: CollectConfig, maps: Maps) -> list[EpisodeJob]:
    """The episodes `config` asks for on `maps`, in play order (map by map, repeats together)."""
    maps.check(config.num_seeds)
    if maps.seeds == "heldout":
        seeds = heldout_seeds(maps.offset + config.num_seeds)[maps.offset:]
    else:
        seeds = round_seeds(maps.round, maps.seeds, config.num_seeds, offset=maps.offset)
    return [EpisodeJob(s, k) for s in seeds for k in range(config.samples_per_seed)]


def collect_backend(config: CollectCommandConfig) -> ChatBackend:
    """The backend `oel collect`'s keys ask for (loads the model for backend=hf)."""
    return make_backend(config.backend, model=config.model, endpoint=config.endpoint,
                        max_batch_size=config.max_batch_size, max_batch_tokens=config.max_batch_tokens)


def summary_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.stem + ".summary.json")


def collect(
    config: CollectConfig,
    backend: ChatBackend | Callable[[], ChatBackend],
    *,
    env: EnvConfig,
    maps: Maps,
    out: str | os.PathLike[str],
    knowledge: str | None = None,
    on_start: Callable[[int, int], None] | None = None,
    on_finish: Callable[[Trajectory, PlayStats], None] | None = None,
) -> PlayStats:
    """Play the episodes of `maps` not yet in `out`, appending each as it finishes.

    `backend`: the model playing, or what makes it (called only when an episode is left to play,
    so a finished collection loads nothing). `env`: the game. `knowledge`: the text filling a
    template's {knowledge} field (in-context play). `on_start(pending, total)` and
    `on_finish(traj, stats)` let a caller show progress. Writes `<out stem>.summary.json` (stats
    of this run) at the end.
    """
    jobs = select_jobs(config, maps)
    env_id = make_env(env).env_id
    todo = pending_jobs(out, jobs, env_id, maps.round)
    stats = PlayStats(skipped=len(jobs) - len(todo))
    if on_start is not None:
        on_start(len(todo), len(jobs))
    if todo:
        fields = {"knowledge": knowledge} if knowledge is not None else {}
        player = backend if hasattr(backend, "chat") else backend()  # type: ignore[operator]

        def _append(traj: Trajectory, st: PlayStats) -> None:
            append_trajectory(out, traj)
            if on_finish is not None:
                on_finish(traj, st)

        play_episodes(player, lambda: make_env(env), todo, config.sampling,
                      template=prompts.policy_template_for(env.game, config.prompt), prompt_fields=fields,
                      round=maps.round, batch_size=config.batch_size, on_finish=_append, stats=stats,
                      label=f"collect: {maps.seeds} maps")
    atomic_write_json(summary_path(out), stats.to_dict())
    log.info("collect: %d episodes (%d already on file), pass rate %.3f, %.1f tokens/turn, %.1f gen tok/s",
             stats.episodes, stats.skipped, stats.pass_rate, stats.tokens_per_turn, stats.generation_tokens_per_s)
    return stats


def collect_command(config: CollectCommandConfig, backend: ChatBackend | None = None, *,
                    on_start: Callable[[int, int], None] | None = None,
                    on_finish: Callable[[Trajectory, PlayStats], None] | None = None) -> PlayStats:
    """`collect()` as `oel collect` calls it: the command's keys as the settings and the arguments
    (the knowledge file read here; `backend` given, or the one the keys ask for, made when needed)."""
    knowledge = read_text_file(config.knowledge_file, "knowledge file",
                               allow_empty=True) if config.knowledge_file else None
    return collect(config.settings(), backend if backend is not None else (lambda: collect_backend(config)),
                   env=config.env, maps=config.maps(), out=config.out, knowledge=knowledge, on_start=on_start,
                   on_finish=on_finish)
