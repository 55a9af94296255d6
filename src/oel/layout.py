"""The run-directory layout: every path and file name of an `oel loop` run, in one place.

    RUN_DIR/
      config.yaml                   the resolved LoopConfig (checked on resume)
      metrics.jsonl                 every stage's numbers, namespaced `stage/name`
      results.json                  {round: {stage: summary}} once the loop ends
      tensorboard/                  the same metrics as TensorBoard events (optional)
      report/                       `oel report`: report.md and the plots
      round_<r>/
        collect/     extract.jsonl, train.jsonl          trajectories (extraction maps, training maps)
        extract/     store/round_<rrr>/..., knowledge_<k>.txt
        evaluate/    evaluation.json, games_no_knowledge/, games_knowledge/, ifeval/, meter.json, teacher_gap.json
        consolidate/ metrics.jsonl, checkpoints, model/  (model/ = M_{r+1}, a plain HF directory)
        <stage>/_complete.json      written last: the stage's summary, and that it is complete

The loop, its stages, the trainer, the experience store and the report all build paths
through this module, so that a change of layout is a change of this file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from oel.io import read_json

MARKER = "_complete.json"
"""A stage dir holding this file is complete; its content is the stage's summary."""
CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
RESULTS_FILE = "results.json"
REPORT_DIR = "report"
TENSORBOARD_DIR = "tensorboard"
MODEL_DIR = "model"
ENGINE_ADAPTER_FILE = "lora-over-base.gguf"
"""The consolidated model inside a consolidation output dir."""
PROMPTS_FILE = "prompts.json"
"""A consolidation output dir's record of the prompts it used (name + sha256 each)."""
EXTRACT_TRAJECTORIES = "extract.jsonl"
TRAIN_TRAJECTORIES = "train.jsonl"
STORE_DIR = "store"
KNOWLEDGE_FILE = "knowledge_{k}.txt"
KNOWLEDGE_GLOB = "knowledge_*.txt"
CURVE_DIR = "curve"
CURVE_FILE = "curve.json"
EVALUATION_FILE = "evaluation.json"
GAMES_DIR = "games_no_knowledge"
GAMES_KNOWLEDGE_DIR = "games_knowledge"
IFEVAL_DIR = "ifeval"
GAME_TRAJECTORIES = "trajectories.jsonl"
METER_FILE = "meter.json"
TEACHER_GAP_FILE = "teacher_gap.json"

STAGES = ("collect", "extract", "evaluate", "consolidate")
"""A round's stages in the order they run; a final round only evaluates."""


def store_round_dir(store_dir: str | os.PathLike, r: int) -> Path:
    """One round of an experience store (zero-padded, so a store lists its rounds in order)."""
    return Path(store_dir) / f"round_{r:03d}"


def read_marker(stage_dir: Path) -> dict[str, Any] | None:
    """A stage's summary if it is complete, else None."""
    path = stage_dir / MARKER
    return read_json(path, "stage marker") if path.is_file() else None


@dataclass(frozen=True)
class RunLayout:
    """The paths of one run directory."""

    run_dir: Path

    def __init__(self, run_dir: str | os.PathLike) -> None:
        object.__setattr__(self, "run_dir", Path(run_dir))

    @property
    def config_file(self) -> Path:
        return self.run_dir / CONFIG_FILE

    @property
    def metrics_file(self) -> Path:
        return self.run_dir / METRICS_FILE

    @property
    def results_file(self) -> Path:
        return self.run_dir / RESULTS_FILE

    @property
    def report_dir(self) -> Path:
        return self.run_dir / REPORT_DIR

    @property
    def tensorboard_dir(self) -> Path:
        return self.run_dir / TENSORBOARD_DIR

    def rounds(self) -> list[int]:
        """The round numbers that have a directory, in order."""
        found = (p.name.split("_", 1)[1] for p in self.run_dir.glob("round_*") if p.is_dir())
        return sorted(int(n) for n in found if n.isdigit())

    def round_dir(self, r: int) -> Path:
        return self.run_dir / f"round_{r}"

    def stage_dir(self, r: int, stage: str) -> Path:
        return self.round_dir(r) / stage

    def marker(self, r: int, stage: str) -> dict[str, Any] | None:
        return read_marker(self.stage_dir(r, stage))

    def extract_trajectories(self, r: int) -> Path:
        return self.stage_dir(r, "collect") / EXTRACT_TRAJECTORIES

    def train_trajectories(self, r: int) -> Path:
        return self.stage_dir(r, "collect") / TRAIN_TRAJECTORIES

    def store_dir(self, r: int) -> Path:
        return self.stage_dir(r, "extract") / STORE_DIR

    def knowledge_file(self, r: int, k: int) -> Path:
        return self.stage_dir(r, "extract") / KNOWLEDGE_FILE.format(k=k)

    def knowledge_files(self, r: int) -> list[Path]:
        return sorted(self.stage_dir(r, "extract").glob(KNOWLEDGE_GLOB))

    def curve_file(self, r: int) -> Path:
        return store_round_dir(self.store_dir(r), r) / CURVE_DIR / CURVE_FILE

    def heldout_trajectories(self, r: int, *, knowledge: bool = False) -> Path:
        """The held-out episodes M_r played in round r's evaluation (without / with knowledge)."""
        return self.stage_dir(r, "evaluate") / (GAMES_KNOWLEDGE_DIR if knowledge else GAMES_DIR) / GAME_TRAJECTORIES

    def meter_file(self, r: int) -> Path:
        """M_r's exact move probabilities at the held-out probe states (paired across rounds)."""
        return self.stage_dir(r, "evaluate") / METER_FILE

    def teacher_gap_file(self, r: int) -> Path:
        """Round r's teacher vs student vs control, on probe states of its training maps."""
        return self.stage_dir(r, "evaluate") / TEACHER_GAP_FILE

    def consolidate_metrics(self, r: int) -> Path:
        return self.stage_dir(r, "consolidate") / METRICS_FILE

    def model_after(self, r: int) -> Path:
        """Where round r's consolidated model M_{r+1} is saved (a plain HF directory)."""
        return self.stage_dir(r, "consolidate") / MODEL_DIR

    def engine_adapter(self, r: int) -> Path:
        """M_r (r >= 1) for the llama.cpp engine: every earlier round's LoRA summed into one GGUF adapter
        over the initial model's GGUF, beside the model it stands for."""
        return self.model_after(r - 1) / ENGINE_ADAPTER_FILE


DEMO_USERS_FILE = "users.jsonl"
DEMO_STORE_FILE = "store.sqlite"
DEMO_VERSIONS_DIR = "versions"
DEMO_SCHEDULER_DIR = "scheduler"


@dataclass(frozen=True)
class DemoLayout:
    """An `oel online demo` run dir: the gateway's store, the versions, the scheduler's run dir
    (an `OnlineLayout`), the simulated users' episodes, and the report.

        RUN_DIR/store.sqlite      the gateway's store
        RUN_DIR/versions/         v<NNNN>/, current.json, history.jsonl (oel.online.versions)
        RUN_DIR/scheduler/        the scheduler's run dir: metrics.jsonl, round_<r>/...
        RUN_DIR/users.jsonl       one line per episode a simulated user played
        RUN_DIR/scheduler.yaml, demo.config.yaml, scheduler.log
        RUN_DIR/report/           `oel report RUN_DIR`
    """

    run_dir: Path

    def __init__(self, run_dir: str | os.PathLike) -> None:
        object.__setattr__(self, "run_dir", Path(run_dir))

    @property
    def store(self) -> Path:
        return self.run_dir / DEMO_STORE_FILE

    @property
    def versions(self) -> Path:
        return self.run_dir / DEMO_VERSIONS_DIR

    @property
    def scheduler(self) -> Path:
        return self.run_dir / DEMO_SCHEDULER_DIR

    @property
    def users(self) -> Path:
        return self.run_dir / DEMO_USERS_FILE

    @property
    def report_dir(self) -> Path:
        return self.run_dir / REPORT_DIR

    def is_demo(self) -> bool:
        return self.users.is_file() and self.versions.is_dir()
