"""What one round's stages share: the config, the run's layout, M_r, and where metrics go."""

from __future__ import annotations

import gc
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from oel.backends.hf import HFBackend
from oel.config import updated
from oel.io import append_jsonl
from oel.layout import RunLayout
from oel.loop.config import LoopConfig
from oel.models import LoadedModel, ModelConfig, load_model

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
        """Drop M_r (consolidation modifies the model object it trains)."""
        self._loaded = None
        gc.collect()

    def backend(self, max_batch_size: int) -> Any:
        lm = self.model
        return HFBackend(lm.model, lm.tokenizer, model_id=self.model_id, max_batch_size=max_batch_size,
                         model_config=lm.config)

    @property
    def model_id(self) -> str:
        """How trajectories and knowledge items name M_r: `<initial model>@round<r>`."""
        return f"{self.config.model.name}@round{self.round}"

    def emit(self, kind: str, **payload: Any) -> None:
        if self.on_event is not None:
            self.on_event(kind, {"round": self.round, **payload})
