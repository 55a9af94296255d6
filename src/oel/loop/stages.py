"""The stages of one round, as the loop runs them: each reads files and writes files.

Every stage is a function of the round's context returning a small summary (numbers the
loop logs and the report reads). The stage's real work lives in its own package; here we
only decide which model, which seeds and which paths (all from `oel.layout`).

Hand-offs are typed: the extract stage's K texts reach evaluate and consolidate as one
`Knowledge` (`round_knowledge`), read from the knowledge files (the durable record, also what a resumed
run has) and checked once, here, where they enter the rest of the round.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from oel.backends.select import from_config
from oel.collect.play import Maps, SeedSet
from oel.collect.play import collect as run_collect
from oel.config import to_dict, updated
from oel.consolidate.trainer import consolidate as run_consolidate
from oel.envs import make_env
from oel.envs.seeds import round_seeds
from oel.errors import DataError
from oel.evaluate import evaluate as run_evaluate
from oel.evaluate.gap import teacher_gap
from oel.evaluate.meter import probe_states
from oel.extract import extract_round
from oel.io import atomic_write_json, atomic_write_text, read_text_file
from oel.knowledge import Knowledge
from oel.loop.context import RoundContext
from oel.models import load_model
from oel.provenance import load_result, texts_digest
from oel.trajectory import read_trajectories

log = logging.getLogger(__name__)


def round_knowledge(ctx: RoundContext) -> Knowledge:
    """The round's knowledge texts that are not empty, with the files they came from."""
    return Knowledge.read(ctx.layout.knowledge_files(ctx.round), skip_empty=True)


def collect(ctx: RoundContext) -> dict[str, Any]:
    """M_r plays this round's extraction maps, then its training maps (disjoint seed blocks)."""
    c, layout = ctx.config, ctx.layout
    ctx.dir("collect")
    backend = ctx.backend(c.collect.max_batch_size)
    summary: dict[str, Any] = {}
    plan: tuple[tuple[SeedSet, Path, int], ...] = (
        ("extract", layout.extract_trajectories(ctx.round), c.extract.num_trajectories),
        ("collect", layout.train_trajectories(ctx.round), c.collect.num_seeds))
    for seeds, path, n in plan:
        stats = run_collect(updated(c.collect, num_seeds=n), backend, env=c.env,
                            maps=Maps(seeds, ctx.round, c.map_offset(n)), out=path,
                            on_finish=lambda t, st: ctx.emit("episode", stage="collect", passed=t.passed))
        prefix = "extract_maps_" if seeds == "extract" else ""
        summary.update({f"{prefix}{k}": v for k, v in stats.to_dict().items()})
    return summary


def extract(ctx: RoundContext) -> dict[str, Any]:
    """K accumulations over the extraction trajectories; the K texts at N_use go to files
    (or, with `knowledge_file`, that file's text as every one of the K: a control)."""
    c, layout = ctx.config, ctx.layout
    ctx.dir("extract")
    if c.knowledge_file:
        text = read_text_file(c.knowledge_file, "knowledge_file")
        for k in range(c.extract.num_runs):
            atomic_write_text(layout.knowledge_file(ctx.round, k), text + "\n", private=True)
        return {"num_runs": c.extract.num_runs, "use_step": 0, "mean_items": len(text.splitlines()),
                "mean_chars": len(text), "from_file": 1}
    cfg, source = c.extract, str(layout.extract_trajectories(ctx.round))
    trajs = read_trajectories(source)
    if cfg.kind == "raw_trajectories":
        backend = None
    elif c.extractor == "policy":
        backend = ctx.backend(cfg.extractor.max_batch_size, engine=c.extract_engine)
    else:
        backend = from_config(cfg.extractor)
    experience = extract_round(updated(cfg, seed=c.stage_seed(cfg.seed)), trajs, backend,
                               store=layout.store_dir(ctx.round), round=ctx.round, source=source,
                               tokenizer=ctx.tokenizer,
                               on_step=lambda k, i, s: ctx.emit("extract_step", stage="extract", run=k, step=i))
    for k, text in enumerate(experience.texts):
        atomic_write_text(layout.knowledge_file(ctx.round, k), text + "\n", private=True)
    items = [len(f.items) for f in experience.files]
    return {"num_runs": len(items), "use_step": experience.step, "mean_items": sum(items) / len(items),
            "mean_chars": sum(len(t) for t in experience.texts) / len(items)}


def consolidate(ctx: RoundContext) -> dict[str, Any]:
    """On-policy context distillation of this round's knowledge into M_r -> M_{r+1}."""
    c, layout = ctx.config, ctx.layout
    out = ctx.dir("consolidate")
    knowledge = round_knowledge(ctx)
    if not knowledge.texts:
        raise DataError(f"{layout.stage_dir(ctx.round, 'extract')}: extraction produced no knowledge in any of "
                        f"the {c.extract.num_runs} runs, so there is nothing to consolidate; try "
                        f"extract.format=unstructured, more extract.num_trajectories, or a stronger extractor")
    steps = c.consolidate.steps

    def on_step(step: int, m: dict[str, float]) -> None:
        if ctx.metrics is not None:
            ctx.metrics.log(ctx.round, "consolidate", m, step=ctx.round * steps + step)
        ctx.emit("train_step", stage="consolidate", step=step, total=steps, **m)

    result = run_consolidate(updated(c.consolidate, seed=c.stage_seed(c.consolidate.seed)), model=ctx.model,
                             knowledge=knowledge, trajectories=layout.train_trajectories(ctx.round), output_dir=out,
                             on_step=on_step)
    ctx.release_model()  # the trained object is no longer M_r
    return {"steps": result.steps, **result.last_metrics}


def evaluate(ctx: RoundContext) -> dict[str, Any]:
    """M_r on the held-out maps without knowledge and, once the round has knowledge, with it
    in context (map j uses knowledge text j mod K); IF-Eval of M_r if enabled."""
    c = ctx.config
    out = ctx.dir("evaluate")
    texts = list(round_knowledge(ctx).texts) if (c.in_context_eval and ctx.round < c.rounds) else []
    games = updated(c.evaluate.games, knowledge_template=c.consolidate.teacher_template)
    result = run_evaluate(ctx.backend(c.evaluate.max_batch_size), updated(c.evaluate, games=games), env=c.env,
                          out_dir=out, knowledge=Knowledge.of(texts) if texts else None)
    summary = result.summary()
    if texts and c.evaluate.meter.teacher_gap:
        summary.update(round_teacher_gap(ctx, texts))
    return summary


GAP_PROBE_SEEDS = 64
"""Training-map seeds scanned for the teacher gap's distinct layouts."""


def round_teacher_gap(ctx: RoundContext, texts: list[str]) -> dict[str, Any]:
    """Teacher (consolidation's teacher model and template, reading this round's knowledge) vs the
    student M_r vs the same teacher reading unrelated lessons, on probe states of the round's own
    training maps (never held-out). Logged with a plain verdict; nothing downstream reads it."""
    c = ctx.config
    if not hasattr(make_env(c.env), "solver_state"):
        return {}
    path = ctx.layout.teacher_gap_file(ctx.round)
    key = {"student": ctx.model_id, "teacher_model": c.consolidate.teacher_model,
           "template": c.consolidate.teacher_template, "knowledge": texts_digest(texts),
           "layouts": c.evaluate.meter.gap_layouts, "env": to_dict(c.env),
           **({"teacher_dtype": c.consolidate.teacher_dtype} if c.consolidate.teacher_dtype != "model" else {})}
    saved = load_result(path, key)
    if saved is None:
        teacher = ctx.model if not c.consolidate.teacher_model else load_model(
            c.consolidate.teacher_model_config(c.model))
        states = probe_states(round_seeds(ctx.round, "collect", GAP_PROBE_SEEDS), c.env,
                              max_layouts=c.evaluate.meter.gap_layouts)
        saved = {"key": key, **teacher_gap(ctx.model, teacher, states, texts,
                                           template=c.consolidate.teacher_template).to_dict()}
        atomic_write_json(path, saved)
    level = logging.WARNING if saved["verdict"].startswith("WARNING") else logging.INFO
    log.log(level, "round %d teacher gap: %s", ctx.round, saved["verdict"])
    out: dict[str, Any] = {"gap_teacher_emq": saved["teacher"]["emq"], "gap_student_emq": saved["student"]["emq"]}
    for name, g in saved["gaps"].items():
        out.update({f"gap_{name}": g["diff"], f"gap_{name}_ci_low": g["ci95"][0], f"gap_{name}_ci_high": g["ci95"][1]})
    return out
