"""`OnlineConfig`: the scheduler of the online mode (`oel online run CONFIG [key=value ...]`).

The stage configs are the loop's (`extract`, `consolidate`, `evaluate`), with the same rule:
what the scheduler passes itself (trajectories, output dirs, the model of the round) has no key
in them (a stage command's key for it is refused saying so), and the loop's checks run on the
round's `LoopConfig`, built here. One more is
set per round: `extract.num_trajectories` becomes the round's trajectory count (a round learns
from every trajectory it claimed).

    oel online run configs/online.yaml min_trajectories=16 gate.check=meter gate.tolerance=0.02
"""

from __future__ import annotations

from typing import Any, Literal

from oel.config import Config, cfg, updated
from oel.consolidate.config import ConsolidateConfig
from oel.envs import EnvConfig
from oel.errors import ConfigError
from oel.evaluate.config import EvaluateConfig
from oel.extract.config import ExtractConfig
from oel.loop.config import LoopConfig, stage_input_hint
from oel.models import ModelConfig
from oel.online.store import RETENTION_POLICIES, Retention

GateCheck = Literal["off", "games", "move_quality", "meter", "ifeval"]
GATE_METRIC: dict[str, str] = {"games": "game_pass_rate", "move_quality": "game_move_quality", "meter": "meter_emq",
                               "ifeval": "ifeval_prompt_strict"}
"""The evaluation summary number each gate check compares (higher is better for all)."""
GATE_PART: dict[str, str] = {"games": "games", "move_quality": "games", "meter": "meter", "ifeval": "ifeval"}
"""The evaluate part each gate check runs."""


class GateConfig(Config):
    """The promotion gate: publish a new version only when it is not worse than the current one."""

    check: GateCheck = cfg("off", "what a new version must not be worse at to be published (off: publish every "
                                  "round that trains)")
    tolerance: float = cfg(0.0, "publish when new >= current - tolerance (a negative tolerance demands an improvement)")
    max_move_share: float = cfg(0.0, "also refuse a candidate putting this share of its move probability on one "
                                     "answer (a collapse); 0 = off")

    def model_post_init(self, context: Any, /) -> None:
        if not 0.0 <= self.max_move_share <= 1.0:
            raise ConfigError(f"gate.max_move_share: must be in [0, 1] (0 = off), got {self.max_move_share}")


class VersionsConfig(Config):
    """Where published versions go and how many are kept."""

    dir: str = cfg("runs/online/versions", "versions directory: v<NNNN>/ (model/, version.json), current.json, "
                                           "history.jsonl")
    keep_last: int = cfg(0, "keep the newest N published versions (plus version 0 and the current one); 0 = keep all")


class VllmLoraConfig(Config):
    """Hot swap for a vLLM that serves the base model with LoRA (oel.online.vllm_lora)."""

    url: str = cfg("", "vLLM's base URL: each published version is loaded there as a LoRA adapter "
                       "(finetune=lora); '' = off")
    prefix: str = cfg("oel", "adapter names: <prefix>-v<version>")
    api_key_env: str = cfg("VLLM_API_KEY", "the environment variable holding vLLM's API key (unset: no key sent)")


class OnlineConfig(Config):
    """A long-running scheduler: rounds of extract -> consolidate (-> gate) over the store's trajectories."""

    store: str = cfg("runs/online/store.sqlite", "the store the gateway writes: a SQLite file or a "
                                                 "postgresql:// URL (oel.online.store)")
    run_dir: str = cfg("runs/online/scheduler", "round_<r>/ (trajectories.jsonl, extract/, consolidate/, "
                                                "evaluate*/), metrics.jsonl")
    model: ModelConfig = cfg(help="the base model: version 0, the first round's starting point", factory=ModelConfig)
    env: EnvConfig = cfg(help="the environment held-out evaluation and the gate play (when enabled)", factory=EnvConfig)
    min_trajectories: int = cfg(16, "N: run a round as soon as this many new complete trajectories are stored")
    max_trajectories: int = cfg(0, "most trajectories one round learns from (the oldest first); 0 = all available")
    every_minutes: float = cfg(0.0, "T: also run a round when T minutes passed since the last one and at least one "
                                    "trajectory waits; 0 = off")
    poll_s: float = cfg(10.0, "seconds between checks of the store while waiting")
    max_rounds: int = cfg(0, "stop after this many rounds (published or not); 0 = run until SIGTERM")
    worker: str = cfg("scheduler", "the name this scheduler claims rounds under (a restart resumes its "
                                   "unfinished round)")
    extractor: Literal["policy", "config"] = cfg("policy", "policy: the current version extracts; config: "
                                                           "extract.extractor says which model")
    retention: Retention = cfg("keep", f"trajectories after their round: {' | '.join(RETENTION_POLICIES)}")
    versions: VersionsConfig = cfg(help="published versions", factory=VersionsConfig)
    gate: GateConfig = cfg(help="the promotion gate: the check runs the matching evaluate part on both versions",
                           factory=GateConfig)
    extract: ExtractConfig = cfg(help="extraction of each round's knowledge", factory=ExtractConfig)
    consolidate: ConsolidateConfig = cfg(help="consolidation into the current version; teacher = that version "
                                              "reading the lessons unless consolidate.teacher_model is set",
                                         factory=ConsolidateConfig)
    publish_hook: str = cfg("", "a command run after each publication ({model_dir}, {version} filled in; no "
                                "shell); '' = none")
    vllm_lora: VllmLoraConfig = cfg(help="hot swap of a vLLM LoRA deployment on each publication",
                                    factory=VllmLoraConfig)
    hook_timeout_s: float = cfg(600.0, "a publish hook still running after this long is killed (and logged as failed)")
    evaluate_each_round: bool = cfg(False, "evaluate each new version with every enabled part (off: only the "
                                           "gate's part, when the gate is on)")
    evaluate: EvaluateConfig = cfg(help="how new versions are evaluated (held-out games on `env`, IF-Eval, the meter)",
                                   factory=EvaluateConfig)

    @classmethod
    def unknown_key_hint(cls, key: str) -> str:
        return stage_input_hint(key)

    def model_post_init(self, context: Any, /) -> None:
        for name in ("min_trajectories",):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be >= 1, got {getattr(self, name)}")
        for name in ("max_trajectories", "max_rounds"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}: must be >= 0, got {getattr(self, name)}")
        if 0 < self.max_trajectories < self.min_trajectories:
            raise ConfigError(f"max_trajectories: must be 0 or >= min_trajectories ({self.min_trajectories}), "
                              f"got {self.max_trajectories}")
        if self.every_minutes < 0 or self.poll_s <= 0:
            raise ConfigError(f"every_minutes/poll_s: need every_minutes >= 0 and poll_s > 0, got "
                              f"{self.every_minutes} and {self.poll_s}")
        if self.versions.keep_last < 0:
            raise ConfigError(f"versions.keep_last: must be >= 0, got {self.versions.keep_last}")
        if self.vllm_lora.url and self.consolidate.finetune != "lora":
            raise ConfigError(f"vllm_lora.url: needs consolidate.finetune=lora (a vLLM LoRA deployment loads "
                              f"adapters), got consolidate.finetune={self.consolidate.finetune}")
        self._check_gate()
        self.loop_config()  # the loop's rules on stage fields the scheduler owns

    def _check_gate(self) -> None:
        part = {"games": self.evaluate.games, "meter": self.evaluate.meter, "ifeval": self.evaluate.ifeval}
        if self.gate.check != "off" and not part[GATE_PART[self.gate.check]].enabled:
            raise ConfigError(f"gate.check: {self.gate.check} needs evaluate.{GATE_PART[self.gate.check]}.enabled=true")

    def round_evaluate(self) -> EvaluateConfig | None:
        """The evaluation a round runs: all enabled parts, only the gate's part, or none."""
        if self.evaluate_each_round:
            return self.evaluate
        parts = {GATE_PART[self.gate.check]} if self.gate.check != "off" else set()
        if self.gate.max_move_share > 0:
            parts.add("meter")
        if not parts:
            return None
        return updated(self.evaluate, **{p: updated(getattr(self.evaluate, p), enabled=p in parts)
                                                     for p in ("games", "ifeval", "meter")})

    def loop_config(self) -> LoopConfig:
        """The round's stage settings as the loop's stages read them (one round, no in-context eval)."""
        return LoopConfig(run_dir=self.run_dir, rounds=1, model=self.model, env=self.env, extractor=self.extractor,
                          in_context_eval=False, tensorboard=False, extract=self.extract,
                          consolidate=self.consolidate, evaluate=self.evaluate)
