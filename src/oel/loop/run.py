"""The round orchestrator: rounds of collect -> extract -> consolidate, every model evaluated.

Round r starts from model M_r (M_0 = `config.model`; later, the previous round's
consolidated model) and runs its stages in order, each into `RUN_DIR/round_<r>/<stage>/`
(the layout is `oel.layout`'s):

    collect        M_r plays this round's extraction maps and training maps (user side)
    extract        M_r (or another model) turns the extraction trajectories into K knowledge texts
    evaluate       M_r on the held-out maps without knowledge, and with the round's knowledge
                   in context (the in-context number); IF-Eval of M_r
    consolidate    on-policy context distillation of the knowledge into M_r -> M_{r+1}

and a final round R = `rounds` only evaluates M_R. With `evaluate_every` = k > 1 only M_0, every
k-th model and M_R are evaluated (training is the same: no stage reads an evaluation). Each stage
writes its completion marker (`_complete.json`, with the stage's summary) last; a rerun skips completed stages and each
stage resumes from its own partial files (appended trajectories, accumulation steps,
training checkpoints), so a killed run continues where it stopped.

With `reuse_from`, a stage this run has not completed is instead copied from another run
dir that has completed it with identical inputs (`oel.loop.reuse`): ablations that change
only consolidation share the main run's round-0 collect, extract and evaluate.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from oel.config import save_config, to_dict
from oel.consolidate.trainer import CHECKPOINT_DIR
from oel.errors import ConfigError
from oel.models import check_model_name
from oel.io import atomic_write_json, check_writable_dir, read_text_file
from oel.layout import MARKER, RunLayout, read_marker
from oel.loop import stages
from oel.loop.config import LoopConfig, read_saved_config, with_engine_resolved
from oel.loop.context import EventFn, MetricsLog, RoundContext
from oel.loop.reuse import ReuseSource, copy_stage
from oel.provenance import diff_keys

log = logging.getLogger(__name__)

RESUME_MAY_CHANGE = frozenset({"force", "reuse_from", "evaluate_every", "keep_checkpoints"})
"""Top-level config keys a run dir may be resumed with changed: they do not change any result
(evaluate_every only says which models are evaluated; an evaluation already made stays)."""

StageFn = Callable[[RoundContext], dict[str, Any]]


def stages_for_round(config: LoopConfig, r: int) -> list[tuple[str, StageFn]]:
    evaluate: list[tuple[str, StageFn]] = [("evaluate", stages.evaluate)] if config.evaluates(r) else []
    if r == config.rounds:
        return evaluate
    return [("collect", stages.collect), ("extract", stages.extract), *evaluate, ("consolidate", stages.consolidate)]


def check_inputs(config: LoopConfig) -> None:
    """The files the user names, and the run dir, checked before anything is written or loaded."""
    check_writable_dir(config.run_dir, "run_dir")
    if config.knowledge_file:
        read_text_file(config.knowledge_file, "knowledge_file")
    models = [("model.name", config.model.name), ("consolidate.teacher_model", config.consolidate.teacher_model)]
    if config.extractor == "config" and config.extract.extractor.backend != "openai":
        models.append(("extract.extractor.model.name", config.extract.extractor.model.name))
    for key, name in models:
        if name:
            check_model_name(name, key)


def prepare_run_dir(config: LoopConfig) -> None:
    """Write the resolved config, or check it against the one a previous run wrote."""
    config = with_engine_resolved(config)
    layout = RunLayout(config.run_dir)
    path = layout.config_file
    resolved = to_dict(config)
    if path.is_file():
        saved = read_saved_config(path)
        differing = [k for k in diff_keys(saved, resolved) if k.split(".")[0] not in RESUME_MAY_CHANGE]
        if differing and not config.force:
            raise ConfigError(f"{path}: this run dir was made with a different config ({', '.join(differing)}); "
                              f"use another run_dir or force=true to resume anyway")
        if differing:
            log.warning("resuming %s despite config changes in: %s", layout.run_dir, ", ".join(differing))
            save_config(config, path)
        return
    layout.run_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, path)


def _run_stage(ctx: RoundContext, name: str, fn: StageFn, reuse: ReuseSource | None) -> dict[str, Any]:
    """One stage of one round: skipped if complete, copied if reusable, else computed."""
    r, sdir = ctx.round, ctx.layout.stage_dir(ctx.round, name)
    done = read_marker(sdir)
    if done is not None:
        ctx.emit("skip", stage=name)
        return done
    source = reuse.reusable(ctx.config, r, name) if reuse is not None else None
    if reuse is not None and source is not None:
        # Metrics before the copy, like a computed stage logs before its marker:
        # a kill in between repeats rows on resume rather than losing them.
        for row in reuse.metrics_rows(r, name):
            ctx.metrics.append(row)  # type: ignore[union-attr]
        copy_stage(source, sdir)
        log.info("round %d %s: reused from %s", r, name, source)
        ctx.emit("reuse", stage=name, source=str(source))
        return read_marker(sdir) or {}
    ctx.emit("start", stage=name)
    t0 = time.perf_counter()
    summary = {**fn(ctx), "seconds": round(time.perf_counter() - t0, 2)}
    ctx.metrics.log(r, name, summary)  # type: ignore[union-attr]
    atomic_write_json(sdir / MARKER, summary)
    if name == "consolidate" and not ctx.config.keep_checkpoints:
        discard_checkpoints(sdir)
    ctx.emit("done", stage=name, summary=summary)
    return summary


def discard_checkpoints(stage_dir: Path) -> None:
    """A completed consolidation's checkpoints only served resuming it (its marker is written, its
    model is M_{r+1}): without this a 1.5B run of 3 rounds keeps ~20 GB of them."""
    shutil.rmtree(stage_dir / CHECKPOINT_DIR, ignore_errors=True)


def run_loop(config: LoopConfig, *, on_event: EventFn | None = None) -> dict[str, Any]:
    """Run (or resume) every round; return {round: {stage: summary}}."""
    check_inputs(config)
    config = with_engine_resolved(config)
    log.info("engine: %s for collect and evaluate, %s for extract; HF for consolidation", config.engine,
             config.extract_engine)
    reuse = ReuseSource.open(config)
    prepare_run_dir(config)
    metrics = MetricsLog(config)
    results: dict[str, Any] = {}
    try:
        for r in range(config.rounds + 1):
            ctx = RoundContext(config, r, on_event, metrics)
            for name, fn in stages_for_round(config, r):
                results.setdefault(str(r), {})[name] = _run_stage(ctx, name, fn, reuse)
            ctx.release_model()
    finally:
        metrics.close()
    atomic_write_json(RunLayout(config.run_dir).results_file, results)
    return results

