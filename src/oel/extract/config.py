"""The extraction stage's configs: `ExtractConfig` (the settings, composable into the loop's
config) and `ExtractCommandConfig` (those plus the inputs: the keys of `oel extract`).

`oel extract [CONFIG.yaml] [key=value ...]` builds the latter; the round orchestrator builds the
former in code and passes its round's inputs and already-loaded policy backend to
:func:`oel.extract.extract_round`.
"""

from __future__ import annotations

from typing import Any
import hashlib

from oel import prompts
from oel.backends.base import SamplingParams
from oel.backends.select import BackendConfig
from oel.config import CommandConfig, Config, cfg
from oel.errors import ConfigError
from oel.extract.render import RecordFormat
from oel.extract.store import Kind
from oel.extract.templates import GRID_STYLE, is_auto
from oel.extract.text import Format

DEFAULT_EXTRACT_MAX_NEW_TOKENS = 256
"""Two one-sentence lessons need ~80 tokens; 256 leaves room for a short preamble the
structured filter drops. Thinking extractors need far more (the paper lets them think)."""

SEED_BITS = 31


def extraction_seed(base_seed: int, round: int, run: int, step: int) -> int:
    """THE seed of accumulation run `run`'s extraction at `step` in `round`.

    Hashing the tuple (with a purpose tag) keeps streams apart: no sum like
    `base + run + step` where run 1 step 0 would equal run 0 step 1. Logged in every
    step record.
    """
    key = f"oel/extract/{base_seed}/{round}/{run}/{step}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "big") % (1 << SEED_BITS)


def _default_sampling() -> SamplingParams:
    return SamplingParams(max_new_tokens=DEFAULT_EXTRACT_MAX_NEW_TOKENS)


class ExtractorConfig(BackendConfig):
    """Which model writes the knowledge: by default the policy preset, in-process.

    For the knowledge-source ablation (baseline b) point it at another model -- another
    preset, or any OpenAI-compatible endpoint; its id is recorded in every item.
    """


class ExtractConfig(Config):
    """Accumulative extraction of one round: K runs over N trajectories, knowledge capped at L tokens.

    Only the user's settings: which trajectories, which store, which round are arguments of
    `extract_round` (the loop passes its round's; `oel extract` takes them as the keys of
    `ExtractCommandConfig`)."""

    num_runs: int = cfg(3, "K: independent accumulation runs with different sampling seeds -> K knowledge texts")
    num_trajectories: int = cfg(8, "N: trajectories read per run, one accumulation step each")
    use_step: int = cfg(-1, "N_use: the step whose knowledge is used downstream, for every run; -1 = N")
    budget_tokens: int = cfg(1024, "L: most tokens of accumulated knowledge; over it, the newest whole items "
                                   "that fit are kept")
    max_input_tokens: int = cfg(4096, "most tokens of the extractor prompt (chat-template wrapper excluded); "
                                      "over it, the trajectory is cut from the left")
    format: Format = cfg("structured", "structured: keep only '- EXPERIENCE ITEM:' lines; unstructured: keep "
                                       "every line")
    max_new_items: int = cfg(2, "structured: keep at most this many NEW (non-repeated) items per step (the "
                                "prompt asks for 1-2); 0 = no cap")
    near_duplicate: float = cfg(0.0, "also drop a new item this similar (Jaccard of words, same moves) to an "
                                     "earlier one; 0 = exact only")
    grounded_numbers: bool = cfg(False, "drop a new lesson that states a number its writer's prompt never showed "
                                        "(a misread value)")
    prompt: str = cfg("", "extractor prompt: '' or auto = chosen from the trajectories; a built-in name; or a "
                          ".txt template")
    kind: Kind = cfg("extracted", "extracted: the model writes lessons; raw_trajectories: baseline filling the "
                                  "budget with the newest raw games")
    record: RecordFormat = cfg("full", "how each game is shown to the extractor: full, compact (boards as rows "
                                       "of cells) or tally")
    strip_trajectory_thinking: bool = cfg(True, "remove <think> blocks from the game responses shown to the extractor")
    seed: int = cfg(0, "base seed; run k's step-i sampling seed is extraction_seed(seed, round, k, i)")
    extractor: ExtractorConfig = cfg(help="the model that extracts", factory=ExtractorConfig)
    sampling: SamplingParams = cfg(help="extractor sampling; sampling.seed is ignored (see `seed`)",
                                   factory=_default_sampling)

    def model_post_init(self, context: Any, /) -> None:
        for name in ("num_runs", "num_trajectories", "budget_tokens", "max_input_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be at least 1, got {getattr(self, name)}")
        if not -1 <= self.use_step <= self.num_trajectories:
            raise ConfigError(f"use_step: must be -1 or in 0..num_trajectories={self.num_trajectories}, got "
                              f"{self.use_step}")
        if self.max_new_items < 0:
            raise ConfigError(f"max_new_items: must be >= 0, got {self.max_new_items}")
        if not 0 <= self.near_duplicate <= 1:
            raise ConfigError(f"near_duplicate: must be in [0, 1], got {self.near_duplicate}")
        if self.max_input_tokens <= self.budget_tokens:
            raise ConfigError(f"max_input_tokens: must exceed budget_tokens={self.budget_tokens} (the prompt "
                              f"holds the whole knowledge), got {self.max_input_tokens}")
        if not is_auto(self.prompt):
            prompts.load(self.prompt, key="prompt", role=prompts.EXTRACTION_ROLE)

    @property
    def resolved_use_step(self) -> int:
        return self.num_trajectories if self.use_step == -1 else self.use_step

    @property
    def prompt_name(self) -> str:
        """The template a round of grid games is extracted with (`templates.extraction_template`
        resolves `prompt` for any round: auto picks by the trajectories)."""
        return GRID_STYLE.prompt_for(self.format) if is_auto(self.prompt) else self.prompt


class ExtractInputs(Config):
    """What an extraction round reads and writes, and which round it is: run plumbing, which
    `extract_round` takes as arguments and `oel extract` as keys."""

    trajectories: str = cfg("", "JSONL of the round's trajectories (from `oel collect`); the first "
                                "num_trajectories are read, in file order")
    out_dir: str = cfg("runs/experience", "the experience store; this round goes to "
                                          "OUT/round_RRR/run_KK/step_III.json")
    round: int = cfg(0, "OEL round number (recorded in every item; selects the store's round directory)")
    overwrite: bool = cfg(False, "false: resume an interrupted round (settings must match); true: delete this "
                                 "round's store first")


class ExtractCommandConfig(ExtractConfig, ExtractInputs, CommandConfig):
    """`oel extract`: the inputs and the settings, as flat keys (in the order they had as one config)."""

    SETTINGS, INPUTS, INPUTS_AFTER = ExtractConfig, ExtractInputs, {"overwrite": "seed"}
