"""The round orchestrator: rounds of collect -> extract -> consolidate, every model evaluated.

Round r starts from model M_r (M_0 = `config.model`; later, the previous round's
consolidated model) and runs its stages in order, each into `RUN_DIR/round_<r>/<stage>/`:

    collect        M_r plays this round's extraction maps and training maps (user side)
    extract        M_r (or another model) turns the extraction trajectories into K knowledge texts
    evaluate       M_r on the held-out maps without knowledge, and with the round's knowledge
                   in context (the in-context number); IF-Eval of M_r
    consolidate    on-policy context distillation of the knowledge into M_r -> M_{r+1}

and a final round R = `rounds` only evaluates M_R. Each stage writes its completion marker
(`_complete.json`, with the stage's summary) last; a rerun skips completed stages and each
stage resumes from its own partial files (appended trajectories, accumulation steps,
training checkpoints), so a killed run continues where it stopped.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from oel.config import save_config, to_dict
from oel.errors import ConfigError
from oel.io import append_jsonl, atomic_write_json
from oel.loop.config import LoopConfig, diff_keys, with_fields
from oel.models import LoadedModel, ModelConfig, load_model

log = logging.getLogger(__name__)

MARKER = "_complete.json"
CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
MODEL_SUBDIR = "model"
EXTRACT_TRAJECTORIES = "extract.jsonl"
TRAIN_TRAJECTORIES = "train.jsonl"
KNOWLEDGE_GLOB = "knowledge_*.txt"

StageFn = Callable[["RoundContext"], dict[str, Any]]
EventFn = Callable[[str, dict[str, Any]], None]


def round_dir(run_dir: str | Path, r: int) -> Path:
    return Path(run_dir) / f"round_{r}"


def stage_dir(run_dir: str | Path, r: int, stage: str) -> Path:
    return round_dir(run_dir, r) / stage


def model_dir_after(run_dir: str | Path, r: int) -> Path:
    """Where round r's consolidated model M_{r+1} is saved (a plain HF directory)."""
    return stage_dir(run_dir, r, "consolidate") / MODEL_SUBDIR


def read_marker(path: Path) -> dict[str, Any] | None:
    marker = path / MARKER
    return json.loads(marker.read_text()) if marker.is_file() else None


@dataclass
class RoundContext:
    """What a stage of round r needs: the config, where to write, and the round's model."""

    config: LoopConfig
    round: int
    on_event: EventFn | None = None
    metrics: "MetricsLog | None" = None
    _loaded: LoadedModel | None = field(default=None, repr=False)

    def dir(self, stage: str) -> Path:
        d = stage_dir(self.config.run_dir, self.round, stage)
        d.mkdir(parents=True, exist_ok=True)
        return d

    @property
    def model_config(self) -> ModelConfig:
        """M_r: the initial model in round 0, else the previous round's consolidated model."""
        if self.round == 0:
            return self.config.model
        return dataclasses.replace(self.config.model, name=str(model_dir_after(self.config.run_dir, self.round - 1)))

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
        from oel.rollout.hf_backend import HFBackend

        lm = self.model
        return HFBackend(lm.model, lm.tokenizer, model_id=self.model_id, max_batch_size=max_batch_size)

    @property
    def model_id(self) -> str:
        """How trajectories and knowledge items name M_r: `<initial model>@round<r>`."""
        return f"{self.config.model.name}@round{self.round}"

    def emit(self, kind: str, **payload: Any) -> None:
        if self.on_event is not None:
            self.on_event(kind, {"round": self.round, **payload})


def stages_for_round(config: LoopConfig, r: int) -> list[tuple[str, StageFn]]:
    from oel.loop import stages

    if r == config.rounds:
        return [("evaluate", stages.evaluate)]
    return [("collect", stages.collect), ("extract", stages.extract), ("evaluate", stages.evaluate),
            ("consolidate", stages.consolidate)]


def prepare_run_dir(config: LoopConfig) -> None:
    """Write the resolved config, or check it against the one a previous run wrote."""
    run_dir = Path(config.run_dir)
    path = run_dir / CONFIG_FILE
    resolved = to_dict(config)
    if path.is_file():
        saved = yaml.safe_load(path.read_text()) or {}
        differing = [k for k in diff_keys(saved, resolved) if k != "force"]
        if differing and not config.force:
            raise ConfigError(f"{path}: this run dir was made with a different config ({', '.join(differing)}); "
                              f"use another run_dir or force=true to resume anyway")
        if differing:
            log.warning("resuming %s despite config changes in: %s", run_dir, ", ".join(differing))
            save_config(config, path)
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, path)


class MetricsLog:
    """metrics.jsonl (always) and TensorBoard (optional), keys namespaced `stage/name`."""

    def __init__(self, config: LoopConfig) -> None:
        self.path = Path(config.run_dir) / METRICS_FILE
        self.tb = None
        if config.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(Path(config.run_dir) / "tensorboard"))

    def log(self, r: int, stage: str, metrics: dict[str, Any], step: int | None = None) -> None:
        flat = {f"{stage}/{k}": v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        append_jsonl(self.path, {"round": r, "stage": stage, **({"step": step} if step is not None else {}), **flat})
        if self.tb is not None:
            for k, v in flat.items():
                self.tb.add_scalar(k, v, global_step=r if step is None else step)
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def run_loop(config: LoopConfig, *, on_event: EventFn | None = None) -> dict[str, Any]:
    """Run (or resume) every round; return {round: {stage: summary}}."""
    prepare_run_dir(config)
    metrics = MetricsLog(config)
    results: dict[str, Any] = {}
    try:
        for r in range(config.rounds + 1):
            ctx = RoundContext(config, r, on_event, metrics)
            for name, fn in stages_for_round(config, r):
                sdir = stage_dir(config.run_dir, r, name)
                done = read_marker(sdir)
                if done is not None:
                    results.setdefault(str(r), {})[name] = done
                    ctx.emit("skip", stage=name)
                    continue
                ctx.emit("start", stage=name)
                t0 = time.perf_counter()
                summary = fn(ctx)
                summary = {**summary, "seconds": round(time.perf_counter() - t0, 2)}
                metrics.log(r, name, summary)
                atomic_write_json(sdir / MARKER, summary)
                results.setdefault(str(r), {})[name] = summary
                ctx.emit("done", stage=name, summary=summary)
            ctx.release_model()
    finally:
        metrics.close()
    atomic_write_json(Path(config.run_dir) / "results.json", results)
    return results
