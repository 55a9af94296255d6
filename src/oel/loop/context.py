"""What one round's stages share: the config, the run's layout, M_r, and where metrics go."""

from __future__ import annotations

import gc
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from oel.backends.hf import HFBackend
from oel.backends.select import llamacpp_backend
from oel.consolidate.checkpoint import LORA_ADAPTER_DIR
from oel.config import updated
from oel.io import append_jsonl
from oel.layout import RunLayout
from oel.loop.config import LoopConfig
from oel.errors import DataError
from oel.models import LoadedModel, ModelConfig, load_model
from oel.models.gguf_file import load_tokenizer, model_gguf
from oel.models.gguf_lora import write_lora_gguf

EventFn = Callable[[str, dict[str, Any]], None]


class MetricsLog:
    """metrics.jsonl (always) and TensorBoard (optional), keys namespaced `stage/name`."""

    def __init__(self, config: LoopConfig) -> None:
        layout = RunLayout(config.run_dir)
        self.path = layout.metrics_file
        self.tb = None
        if config.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(layout.tensorboard_dir))

    def log(self, r: int, stage: str, metrics: dict[str, Any], step: int | None = None) -> None:
        """One row; `metrics` keys are plain names, the `stage/` prefix is added here and only here."""
        flat = {f"{stage}/{k}": v for k, v in metrics.items() if _is_number(v)}
        self.append({"round": r, "stage": stage, **({"step": step} if step is not None else {}), **flat})

    def append(self, row: dict[str, Any]) -> None:
        """One metrics.jsonl row as `log` makes it (also one copied from a reused stage's run)."""
        append_jsonl(self.path, row)
        if self.tb is not None:
            step = row.get("step", row["round"])
            for k, v in row.items():
                if "/" in k and _is_number(v):
                    self.tb.add_scalar(k, v, global_step=step)
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@dataclass
class RoundContext:
    """What a stage of round r needs: the config, where to write, and the round's model."""

    config: LoopConfig
    round: int
    on_event: EventFn | None = None
    metrics: MetricsLog | None = None
    _loaded: LoadedModel | None = field(default=None, repr=False)
    _engine: Any = field(default=None, repr=False)

    @property
    def layout(self) -> RunLayout:
        return RunLayout(self.config.run_dir)

    def dir(self, stage: str) -> Path:
        d = self.layout.stage_dir(self.round, stage)
        d.mkdir(parents=True, exist_ok=True)
        return d

    @property
    def model_config(self) -> ModelConfig:
        """M_r: the initial model in round 0, else the previous round's consolidated model."""
        if self.round == 0:
            return self.config.model
        return updated(self.config.model, name=str(self.layout.model_after(self.round - 1)))

    @property
    def model(self) -> LoadedModel:
        """M_r, loaded once per round and shared by the stages that only read it."""
        if self._loaded is None:
            self._loaded = load_model(self.model_config)
        return self._loaded

    def release_model(self) -> None:
        """Drop M_r (consolidation modifies the model object it trains) and its engine."""
        self._loaded = None
        if self._engine is not None:
            self._engine.close()
            self._engine = None
        gc.collect()

    def backend(self, max_batch_size: int, engine: str | None = None) -> Any:
        """M_r for a stage that only reads it, on `engine` (default: the run's game engine): HF on the loaded
        model, or llama.cpp on the initial model's GGUF with every earlier round's LoRA as one adapter."""
        if (engine or self.config.engine) == "llamacpp":
            return self._llamacpp(max_batch_size)
        lm = self.model
        return HFBackend(lm.model, lm.tokenizer, model_id=self.model_id, max_batch_size=max_batch_size,
                         model_config=lm.config)

    def _llamacpp(self, max_batch_size: int) -> Any:
        if self._engine is not None and self._engine.max_batch_size == max_batch_size:
            return self._engine
        self._engine = None
        gc.collect()
        adapter = self.engine_adapter()
        tokenizer = load_tokenizer(self.model_config) if self.round else None
        self._engine = llamacpp_backend(self.config.model, max_batch_size=max_batch_size, adapter=adapter,
                                        model_id=self.model_id, tokenizer=tokenizer, hf_model=lambda: self.model)
        self._engine.model_config = self.model_config
        return self._engine

    def engine_adapter(self) -> Path | None:
        """M_r as a GGUF LoRA over the initial model's GGUF: rounds 0..r-1's adapters summed (None for M_0)."""
        if self.round == 0:
            return None
        out = self.layout.engine_adapter(self.round)
        if not out.is_file():
            rounds = [self.layout.model_after(k) / LORA_ADAPTER_DIR for k in range(self.round)]
            missing = [str(d) for d in rounds if not d.is_dir()]
            if missing:
                raise DataError(f"{missing[0]}: no LoRA adapter to run M_{self.round} on llama.cpp (rounds trained "
                                f"with consolidate.finetune=full need engine=hf)")
            write_lora_gguf(rounds, model_gguf(self.config.model), out)
        return out

    @property
    def tokenizer(self) -> Any:
        """M_r's tokenizer, without loading its weights when the engine does not need them."""
        if self._loaded is not None or "llamacpp" not in (self.config.engine, self.config.extract_engine):
            return self.model.tokenizer
        return self._llamacpp_tokenizer()

    def _llamacpp_tokenizer(self) -> Any:
        return self._engine.tokenizer if self._engine is not None else load_tokenizer(self.model_config)

    @property
    def model_id(self) -> str:
        """How trajectories and knowledge items name M_r: `<initial model>@round<r>`."""
        return f"{self.config.model.name}@round{self.round}"

    def emit(self, kind: str, **payload: Any) -> None:
        if self.on_event is not None:
            self.on_event(kind, {"round": self.round, **payload})
