"""What a report shows, gathered from a run dir: stage markers, metrics, knowledge, meter and gap files."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from oel.backends.base import SamplingParams
from oel.errors import DataError
from oel.evaluate.answer_meter import AnswerMeterResult
from oel.evaluate.evaluation import GAMES, IN_CONTEXT, summary_part
from oel.evaluate.meter import MeterResult
from oel.io import iter_jsonl, read_json, read_text
from oel.layout import RunLayout


@dataclass
class RunData:
    """Everything the report shows, gathered from a run dir."""

    run_dir: Path
    rounds: list[int]
    evaluate: dict[int, dict[str, Any]] = field(default_factory=dict)
    evaluate_icl: dict[int, dict[str, Any]] = field(default_factory=dict)
    collect: dict[int, dict[str, Any]] = field(default_factory=dict)
    consolidate_steps: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    knowledge: dict[int, str] = field(default_factory=dict)
    curves: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    meters: dict[int, Any] = field(default_factory=dict)
    """Round -> M_r's `MeterResult` at the held-out probe states (evaluate/meter.json)."""
    answer_meters: dict[int, Any] = field(default_factory=dict)
    """Round -> M_r's `AnswerMeterResult` (the small-answer games' meter; same file)."""
    gaps: dict[int, dict[str, Any]] = field(default_factory=dict)
    """Round -> the teacher gap (evaluate/teacher_gap.json)."""
    config: str = ""
    sampling: SamplingParams = field(default_factory=SamplingParams)
    """How the run's held-out games sampled (evaluate.games.sampling; the defaults without a config)."""

    @property
    def name(self) -> str:
        return self.run_dir.name


def gather(run_dir: str | os.PathLike) -> RunData:
    layout = RunLayout(run_dir)
    if not layout.run_dir.is_dir():
        what = "is a file" if layout.run_dir.exists() else "not found"
        raise DataError(f"{layout.run_dir}: {what}; expected the run directory of an `oel loop` run")
    rounds = layout.rounds()
    if not rounds:
        raise DataError(f"{layout.run_dir}: no round_<r> directories: is this an `oel loop` run dir?")
    data = RunData(layout.run_dir, rounds)
    data.config = read_text(layout.config_file, "run config") if layout.config_file.is_file() else ""
    data.sampling = games_sampling(data.config, layout.config_file)
    for r in rounds:
        for stage, target in (("evaluate", data.evaluate), ("collect", data.collect)):
            m = layout.marker(r, stage)
            if m is not None:
                target[r] = m
        icl = {GAMES + k: v for k, v in summary_part(data.evaluate.get(r, {}), IN_CONTEXT).items()}
        if icl:
            data.evaluate_icl[r] = icl
        metrics = layout.consolidate_metrics(r)
        if metrics.is_file():
            data.consolidate_steps[r] = [obj for _, obj in iter_jsonl(metrics)]
        k0 = layout.knowledge_file(r, 0)
        if k0.is_file():
            data.knowledge[r] = read_text(k0, "knowledge file").strip()
        meter = _read_json(layout.meter_file(r))
        if meter is not None and "per_probe" in meter:
            data.answer_meters[r] = meter_result(meter, f"M_{r}")
        elif meter is not None:
            data.meters[r] = meter_result(meter, f"M_{r}")
        gap = _read_json(layout.teacher_gap_file(r))
        if gap is not None:
            data.gaps[r] = gap
        curve = layout.curve_file(r)
        if curve.is_file():
            try:
                data.curves[r] = json.loads(read_text(curve, "curve file"))["points"]
            except (json.JSONDecodeError, KeyError) as e:
                raise DataError(f"{curve}: not a curve written by `oel experience curve` ({e})") from None
    return data


def games_sampling(config_text: str, path: Path) -> SamplingParams:
    """evaluate.games.sampling of a saved run config (temperature, top_p, top_k; the rest is not needed)."""
    try:
        games = ((yaml.safe_load(config_text) or {}).get("evaluate") or {}).get("games") or {}
    except yaml.YAMLError as e:
        raise DataError(f"{path}: not a readable run config ({e})") from None
    given = games.get("sampling") or {}
    try:
        return SamplingParams(**{k: given[k] for k in ("temperature", "top_p", "top_k") if k in given})
    except (TypeError, ValueError) as e:
        raise DataError(f"{path}: evaluate.games.sampling: {e}") from None


def _read_json(path: Path) -> dict[str, Any] | None:
    return read_json(path, "oel result file") if path.is_file() else None


def meter_result(saved: dict[str, Any], name: str) -> Any:
    """A `MeterResult` back from its saved per-state scores (an `AnswerMeterResult` for the
    small-answer games, whose meter file holds `per_probe`)."""
    if "per_probe" in saved:
        return AnswerMeterResult.from_saved(saved, name)

    return MeterResult.from_saved(saved, name)
