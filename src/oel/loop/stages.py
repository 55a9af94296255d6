"""The stages of one round, as the loop runs them: each reads files and writes files.

Every stage is a function of the round's context returning a small summary (numbers the
loop logs and the report reads). The stage's real work lives in its own package; here we
only decide which model, which seeds and which paths.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from oel.errors import DataError
from oel.io import atomic_write_text, read_text_file
from oel.loop.config import with_fields
from oel.loop.run import (
    EXTRACT_TRAJECTORIES,
    KNOWLEDGE_GLOB,
    MODEL_SUBDIR,
    TRAIN_TRAJECTORIES,
    RoundContext,
    stage_dir,
)
from oel.trajectory import read_trajectories

log = logging.getLogger(__name__)


def collect(ctx: RoundContext) -> dict[str, Any]:
    """M_r plays this round's extraction maps, then its training maps (disjoint seed blocks)."""
    from oel.rollout.collect import collect as run_collect

    c = ctx.config
    out = ctx.dir("collect")
    backend = ctx.backend(c.collect.max_batch_size)
    summary: dict[str, Any] = {}
    plan = (("extract", EXTRACT_TRAJECTORIES, c.extract.num_trajectories), ("collect", TRAIN_TRAJECTORIES, c.collect.num_seeds))
    for seeds, filename, n in plan:
        cfg = with_fields(c.collect, env=c.env, model=ctx.model_config, seeds=seeds, num_seeds=n,
                          round=ctx.round, out=str(out / filename))
        stats = run_collect(cfg, backend, on_finish=lambda t, st: ctx.emit("episode", stage="collect", passed=t.passed))
        prefix = "extract_maps_" if seeds == "extract" else ""
        summary.update({f"{prefix}{k}": v for k, v in stats.to_dict().items()})
    return summary


def extract(ctx: RoundContext) -> dict[str, Any]:
    """K accumulations over the extraction trajectories; the K texts at N_use go to files."""
    from oel.experience import extract_round
    from oel.experience.extract import make_extractor

    c = ctx.config
    out = ctx.dir("extract")
    cfg = with_fields(c.extract, trajectories=str(stage_dir(c.run_dir, ctx.round, "collect") / EXTRACT_TRAJECTORIES),
                      out_dir=str(out / "store"), round=ctx.round)
    trajs = read_trajectories(cfg.trajectories)
    if cfg.kind == "raw_trajectories":
        backend = None
    elif c.extractor == "policy":
        backend = ctx.backend(cfg.extractor.max_batch_size)
    else:
        backend = make_extractor(cfg.extractor)
    experience = extract_round(cfg, trajs, backend, tokenizer=ctx.model.tokenizer,
                               on_step=lambda k, i, s: ctx.emit("extract_step", stage="extract", run=k, step=i))
    for k, text in enumerate(experience.texts):
        atomic_write_text(out / KNOWLEDGE_GLOB.replace("*", str(k)), text + "\n")
    items = [len(f.items) for f in experience.files]
    return {"num_runs": len(items), "use_step": experience.step, "mean_items": sum(items) / len(items),
            "mean_chars": sum(len(t) for t in experience.texts) / len(items)}


def knowledge_files(ctx: RoundContext) -> list[str]:
    return sorted(str(p) for p in stage_dir(ctx.config.run_dir, ctx.round, "extract").glob(KNOWLEDGE_GLOB))


def consolidate(ctx: RoundContext) -> dict[str, Any]:
    """On-policy context distillation of this round's knowledge into M_r -> M_{r+1}."""
    from oel.distill.trainer import consolidate as run_consolidate

    c = ctx.config
    out = ctx.dir("consolidate")
    files = [f for f in knowledge_files(ctx) if read_text_file(f, "knowledge file", allow_empty=True)]
    if not files:
        raise DataError(f"{stage_dir(c.run_dir, ctx.round, 'extract')}: extraction produced no knowledge in any of "
                        f"the {c.extract.num_runs} runs, so there is nothing to consolidate; try "
                        f"extract.format=unstructured, more extract.num_trajectories, or a stronger extractor")
    cfg = with_fields(c.consolidate, trajectories=str(stage_dir(c.run_dir, ctx.round, "collect") / TRAIN_TRAJECTORIES),
                      knowledge=files, output_dir=str(out), model=ctx.model_config)

    def on_step(step: int, m: dict[str, float]) -> None:
        if ctx.metrics is not None:
            ctx.metrics.log(ctx.round, "consolidate", m, step=ctx.round * cfg.steps + step)
        ctx.emit("train_step", stage="consolidate", step=step, total=cfg.steps, **m)

    result = run_consolidate(cfg, loaded=ctx.model, on_step=on_step)
    ctx.release_model()  # the trained object is no longer M_r
    assert Path(result.model_dir) == out / MODEL_SUBDIR
    return {"steps": result.steps, **{k.split("/")[-1]: v for k, v in result.last_metrics.items()}}


def evaluate(ctx: RoundContext) -> dict[str, Any]:
    """M_r on the held-out maps without knowledge and, once the round has knowledge, with it
    in context (map j uses knowledge text j mod K); IF-Eval of M_r if enabled."""
    from oel.evaluation import evaluate as run_evaluate

    c = ctx.config
    out = ctx.dir("evaluate")
    files = knowledge_files(ctx) if (c.in_context_eval and ctx.round < c.rounds) else []
    texts = [read_text_file(f, "knowledge file", allow_empty=True) for f in files]
    texts = [t for t in texts if t] or None
    cfg = with_fields(c.evaluate, model=ctx.model_config, env=c.env, out_dir=str(out))
    result = run_evaluate(ctx.backend(c.evaluate.max_batch_size), cfg, knowledge=texts)
    return evaluation_summary(result)


GAME_KEYS = ("pass_rate", "ci_low", "ci_high", "episodes", "passed", "move_quality", "tokens_per_turn", "steps_per_episode")
IFEVAL_KEYS = ("prompt_strict", "prompt_loose", "instruction_strict", "instruction_loose",
               "prompt_strict_ci_low", "prompt_strict_ci_high", "prompts")


def evaluation_summary(result: Any) -> dict[str, Any]:
    """Flat numbers for the marker, metrics.jsonl and the report: game_*, icl_*, ifeval_*."""
    out: dict[str, Any] = {}
    for prefix, games in (("game_", result.games), ("icl_", result.games_knowledge)):
        if games is not None:
            out.update({prefix + k: getattr(games.metrics, k) for k in GAME_KEYS})
            out[prefix + "end_reasons"] = dict(games.metrics.end_reasons)
    if result.ifeval is not None:
        out.update({"ifeval_" + k: getattr(result.ifeval.scores, k) for k in IFEVAL_KEYS})
    return out
