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

With `reuse_from`, a stage this run has not completed is instead copied from another run
dir that has completed it with identical inputs (see STAGE_DEPENDENCIES): ablations that
change only consolidation share the main run's round-0 collect, extract and evaluate.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from oel.config import save_config, to_dict
from oel.errors import ConfigError
from oel.io import append_jsonl, atomic_write_json, iter_jsonl
from oel.loop.config import LoopConfig, diff_keys
from oel.models import LoadedModel, ModelConfig, load_model

log = logging.getLogger(__name__)

MARKER = "_complete.json"
CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
MODEL_SUBDIR = "model"
EXTRACT_TRAJECTORIES = "extract.jsonl"
TRAIN_TRAJECTORIES = "train.jsonl"
KNOWLEDGE_GLOB = "knowledge_*.txt"
# Top-level config keys a run dir may be resumed with changed: they do not change any result.
RESUME_MAY_CHANGE = frozenset({"force", "reuse_from"})
# A reused stage is copied here (a hidden sibling of the stage dir) and renamed into place.
REUSE_TMP_SUFFIX = ".reuse-tmp"

# The config keys (top-level sections, or `section.field` for one field) whose values a
# stage's result depends on in round 0; `reuse_from` copies a stage only if all are equal.
# Collect also plays the extraction maps, whose count is extract.num_trajectories. Every
# stage of round r >= 1 runs on M_r, the output of round r-1's consolidate, so it depends
# on everything that consolidate depended on, recursively: the table is cumulative, see
# `stage_dependencies`. run_dir, force, tensorboard, reuse_from and rounds are in no entry:
# they change where and how a run is recorded, never what a stage computes (rounds only
# says which evaluate is the final one, which `ReuseSource.reusable` checks separately).
STAGE_DEPENDENCIES: dict[str, frozenset[str]] = {
    "collect": frozenset({"model", "env", "collect", "extract.num_trajectories"}),
    "extract": frozenset({"model", "env", "collect", "extract", "extractor"}),
    "evaluate": frozenset({"model", "env", "collect", "extract", "extractor", "evaluate", "in_context_eval"}),
    "consolidate": frozenset({"model", "env", "collect", "extract", "extractor", "consolidate"}),
}

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
        differing = [k for k in diff_keys(saved, resolved) if k not in RESUME_MAY_CHANGE]
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


def stage_dependencies(stage: str, r: int) -> frozenset[str]:
    """The config keys stage `stage` of round r depends on: its own, plus (through M_r) all of
    round r-1's consolidate's."""
    own = STAGE_DEPENDENCIES[stage]
    return own if r == 0 else own | stage_dependencies("consolidate", r - 1)


_ABSENT = object()


def _lookup(data: Any, key: str) -> Any:
    """The value at dotted `key` in plain config data, or _ABSENT (which equals nothing else)."""
    for part in key.split("."):
        if not isinstance(data, dict) or part not in data:
            return _ABSENT
        data = data[part]
    return data


@dataclass(frozen=True)
class ReuseSource:
    """Another run dir (`reuse_from`) and its saved config: where completed stages may come from."""

    run_dir: Path
    config: dict[str, Any]

    @classmethod
    def open(cls, config: LoopConfig) -> "ReuseSource | None":
        """None without `reuse_from`; ConfigError if it is not a loop run dir or is this run's own."""
        if not config.reuse_from:
            return None
        src = Path(config.reuse_from)
        path = src / CONFIG_FILE
        if not path.is_file():
            raise ConfigError(f"reuse_from: {src} has no {CONFIG_FILE}, so it is not a run dir of `oel loop`")
        if src.resolve() == Path(config.run_dir).resolve():
            raise ConfigError(f"reuse_from: {src} is this run's own run_dir")
        return cls(src, yaml.safe_load(path.read_text()) or {})

    def reusable(self, config: LoopConfig, r: int, stage: str) -> Path | None:
        """The source's stage dir if it is complete and computed from the same inputs, else None."""
        src = stage_dir(self.run_dir, r, stage)
        if not (src / MARKER).is_file():
            return None
        # The final evaluate has no knowledge of its own, an ordinary one adds the in-context part.
        if stage == "evaluate" and (r == config.rounds) != (r == self.config.get("rounds")):
            log.info("round %d %s: not reused from %s (final evaluate in one run only)", r, stage, src)
            return None
        # Through YAML like the source's config.yaml, so that both sides are the same plain types.
        mine = yaml.safe_load(yaml.safe_dump(to_dict(config)))
        differing = sorted(k for k in stage_dependencies(stage, r) if _lookup(mine, k) != _lookup(self.config, k))
        if differing:
            log.info("round %d %s: not reused from %s (config differs in: %s)", r, stage, src, ", ".join(differing))
            return None
        return src

    def metrics_rows(self, r: int, stage: str) -> list[dict[str, Any]]:
        """The source's metrics.jsonl rows of (round r, stage), in order.

        Only newline-terminated lines count: the source run may be appending (or may have been
        killed mid-append), and its unfinished last line belongs to a later stage anyway.
        """
        path = self.run_dir / METRICS_FILE
        if not path.is_file():
            return []
        return [row for _, row in iter_jsonl(path, complete_lines_only=True)
                if row.get("round") == r and row.get("stage") == stage]


def copy_stage(src: Path, dest: Path) -> None:
    """Copy the complete stage dir `src` (its marker included) to `dest`, all or nothing.

    The copy goes to a hidden sibling first and is renamed into place, so a kill never leaves a
    half copy at `dest` that its marker would pass off as complete. A partial attempt of this run
    at `dest` is replaced: the copy is the same stage, finished.
    """
    tmp = dest.with_name(f".{dest.name}{REUSE_TMP_SUFFIX}")
    if tmp.exists():
        shutil.rmtree(tmp)  # left by a copy that was killed
    shutil.copytree(src, tmp)
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(tmp, dest)


def run_loop(config: LoopConfig, *, on_event: EventFn | None = None) -> dict[str, Any]:
    """Run (or resume) every round; return {round: {stage: summary}}."""
    reuse = ReuseSource.open(config)
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
                source = reuse.reusable(config, r, name) if reuse is not None else None
                if source is not None:
                    # Metrics before the copy, like a computed stage logs before its marker:
                    # a kill in between repeats rows on resume rather than losing them.
                    for row in reuse.metrics_rows(r, name):
                        metrics.append(row)
                    copy_stage(source, sdir)
                    results.setdefault(str(r), {})[name] = read_marker(sdir)
                    log.info("round %d %s: reused from %s", r, name, source)
                    ctx.emit("reuse", stage=name, source=str(source))
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
