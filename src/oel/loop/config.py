"""`LoopConfig`: one OEL run, composed of the stage configs.

The loop owns the plumbing between stages -- which model each stage uses, where each reads and
writes, which round's seeds -- and passes it to each stage function as arguments, so a stage's
section here holds only the user's settings of that stage, under the stage's name:

    oel loop configs/frozenlake/fl-0.5b.yaml consolidate.lr=1e-4 extract.num_runs=2

A key that a stage's own command has for its plumbing (`collect.out`, `consolidate.model`, ...)
is refused in a loop config by a one-line error saying the loop sets it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml

from oel.backends.sampling import derive_seed
from oel.backends.select import EngineKind, resolve_engine
from oel.collect.play import CollectConfig, CollectInputs
from oel.config import Config, cfg, to_dict, updated
from oel.consolidate.config import ConsolidateConfig, ConsolidateInputs
from oel.envs import EnvConfig
from oel.envs.seeds import MAX_SEEDS_PER_BLOCK
from oel.errors import ConfigError
from oel.io import read_text
from oel.evaluate.config import EvaluateConfig, EvaluateInputs
from oel.extract.config import ExtractConfig, ExtractInputs
from oel.models import ModelConfig
from oel.provenance import as_today

STAGE_INPUTS: dict[str, type[Config]] = {"collect": CollectInputs, "extract": ExtractInputs,
                                         "consolidate": ConsolidateInputs, "evaluate": EvaluateInputs}
"""The keys a stage's command has beyond its section here: what the stage reads and writes, which
model and which maps, which the loop passes to the stage function as arguments for each round."""

SET_BY_THE_LOOP = "set by the loop; leave it out of a loop config (set the top-level model/env/run_dir instead)"


def stage_input_hint(key: str) -> str:
    """The error for a stage command's input key in a loop (or online) config, '' for any other key."""
    section, _, rest = key.partition(".")
    inputs = STAGE_INPUTS.get(section)
    return SET_BY_THE_LOOP if inputs is not None and rest in inputs.model_fields else ""


class LoopConfig(Config):
    """Rounds of collect -> extract -> consolidate, with evaluation of every round's model
    (or of every `evaluate_every`-th: the first and the last always)."""

    run_dir: str = cfg("runs/oel", "everything of this run goes here: round_<r>/<stage>/, metrics.jsonl, "
                                   "config.yaml, report/")
    rounds: int = cfg(2, "OEL rounds; round r trains M_r into M_{r+1}; the last model is evaluated too")
    model: ModelConfig = cfg(help="the initial model M_0 (later rounds use the previous round's consolidated model)",
                             factory=ModelConfig)
    env: EnvConfig = cfg(help="the environment of every stage", factory=EnvConfig)
    engine: EngineKind = cfg("auto", "collect/extract/evaluate on llamacpp (GGUF + round LoRAs) or hf; auto: "
                                     "llamacpp on CPU if installed (docs/engines.md)")
    extract_engine: EngineKind = cfg("auto", "the engine the lessons are written on; auto: as an explicit `engine`, "
                                             "else llamacpp on CPU if installed")
    extractor: Literal["policy", "config"] = cfg("policy", "policy: the round's model extracts (the paper); "
                                                           "config: extract.extractor does (ablation)")
    knowledge_file: str = cfg("", "a text file REPLACING every round's extracted knowledge (controls); empty = "
                                  "the method")
    seed: int = cfg(0, "the run's seed: training-side maps, lesson writing and consolidation change with it; held-out "
                       "maps never do")
    evaluate_every: int = cfg(1, "evaluate M_r only when r is a multiple of this (M_0 and the last model always); "
                                 "fewer evaluations, same training")
    in_context_eval: bool = cfg(True, "also evaluate M_r WITH its round's knowledge in context (the in-context number)")
    keep_checkpoints: bool = cfg(False, "keep a round's consolidation checkpoints once its model is written "
                                        "(weights + optimizer: ~3.5 GB each for the 1.5B)")
    force: bool = cfg(False, "resume a run dir even if its saved config differs (the differing keys are logged)")
    tensorboard: bool = cfg(True, "also write metrics as TensorBoard events under run_dir/tensorboard")
    reuse_from: str = cfg("", "another run dir whose completed stages are copied when their config sections are "
                              "identical")
    collect: CollectConfig = cfg(help="collection of each round's trajectories (user side)", factory=CollectConfig)
    extract: ExtractConfig = cfg(help="accumulative extraction of each round's knowledge", factory=ExtractConfig)
    consolidate: ConsolidateConfig = cfg(help="on-policy context distillation of each round", factory=ConsolidateConfig)
    evaluate: EvaluateConfig = cfg(help="held-out evaluation (and IF-Eval) of every round's model",
                                   factory=EvaluateConfig)

    @classmethod
    def unknown_key_hint(cls, key: str) -> str:
        return stage_input_hint(key)

    def model_post_init(self, context: Any, /) -> None:
        if self.rounds < 1:
            raise ConfigError(f"rounds: must be >= 1, got {self.rounds}")
        if self.seed < 0:
            raise ConfigError(f"seed: must be >= 0, got {self.seed}")
        widest = max(self.collect.num_seeds, self.extract.num_trajectories)
        if (self.seed + 1) * widest > MAX_SEEDS_PER_BLOCK:
            raise ConfigError(f"seed: seed {self.seed} x {widest} maps per round runs past a round's "
                              f"{MAX_SEEDS_PER_BLOCK} training seeds; use a smaller seed")
        if self.evaluate_every < 1:
            raise ConfigError(f"evaluate_every: must be >= 1, got {self.evaluate_every}")
        if self.evaluate.games.knowledge_template != type(self.evaluate.games)().knowledge_template:
            raise ConfigError("evaluate.games.knowledge_template: set by the loop from consolidate.teacher_template "
                              "(in-context play reads the knowledge as the teacher does); set that instead")

    def map_offset(self, num_maps: int) -> int:
        """Where this run's `num_maps` training-side maps start in a round's block: seed s takes the s-th
        slice, so runs with different seeds play disjoint maps (held-out maps are never in a block)."""
        return self.seed * num_maps

    def stage_seed(self, base: int) -> int:
        """A stage's sampling seed in this run: `base` itself at seed 0 (a recipe as written), else a
        stream derived from both, so that every seed's extraction and consolidation sample anew."""
        return base if self.seed == 0 else derive_seed(base, self.seed)

    def evaluates(self, r: int) -> bool:
        """Whether round r's model M_r is evaluated."""
        return r in (0, self.rounds) or r % self.evaluate_every == 0


def with_engine_resolved(config: LoopConfig) -> LoopConfig:
    """`engine=auto` and `extract_engine=auto` made concrete for this machine: what a run records, resumes
    and reuses by. llama.cpp needs every round's update as a LoRA, so full fine-tuning runs on HF."""
    requested = "hf" if config.engine == "auto" and config.consolidate.finetune != "lora" else config.engine
    try:
        engine = resolve_engine(requested, config.model, why="collect, extract and evaluate")
    except ValueError as e:
        raise ConfigError(f"engine: {e}") from None
    writing = config.extract_engine if config.extract_engine != "auto" else config.engine
    if writing == "auto" and config.consolidate.finetune != "lora":
        writing = "hf"
    try:
        extract_engine = resolve_engine(writing, config.model, why="extract", decoding_bound=True)
    except ValueError as e:
        raise ConfigError(f"extract_engine: {e}") from None
    extractor = config.extract.extractor
    if extractor.backend == "auto":  # recorded as what it ran on; an explicit engine=hf holds for it too
        extractor = updated(extractor, backend=resolve_engine("hf" if writing == "hf" else "auto", extractor.model,
                                                              decoding_bound=True))
    if (engine, extract_engine) == (config.engine, config.extract_engine) and extractor is config.extract.extractor:
        return config
    return updated(config, engine=engine, extract_engine=extract_engine,
                   extract=updated(config.extract, extractor=extractor))


ENGINE_BEFORE_THE_KEY = "hf"
"""The engine of a run saved before `engine` existed: every stage ran on HF."""


def default_config_dict() -> dict[str, Any]:
    """Today's defaults of every loop config key, as the plain types a saved config.yaml holds
    (what a config written before a key existed is completed with, and the keys that one written
    before a key was removed is cut down to: `oel.provenance.as_today`)."""
    return yaml.safe_load(yaml.safe_dump(to_dict(LoopConfig())))



def read_saved_config(path: Path) -> dict[str, Any]:
    """A run dir's saved config.yaml in today's schema, as resume and reuse compare it: a run
    written by an older oel still matches the recipe it was made from."""
    saved = yaml.safe_load(read_text(path, "run config")) or {}
    if isinstance(saved, dict):
        saved.setdefault("engine", ENGINE_BEFORE_THE_KEY)
        saved.setdefault("extract_engine", saved["engine"])  # before the key, extraction ran on `engine`
    return as_today(saved, default_config_dict())
