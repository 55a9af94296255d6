"""`oel extract` and `oel experience show|diff`: the extraction stage's commands.

    oel extract trajectories=runs/r0/trajectories.jsonl out_dir=runs/r0/experience num_runs=3 num_trajectories=8
    oel experience show runs/r0/experience --step 8
    oel experience diff runs/r0/experience/round_000/run_00@4 runs/r0/experience/round_000/run_00@8
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path
from typing import Any

from oel.backends.select import from_config
from oel.commands import EXPERIENCE_GROUP, add_config_command, command_group, progress_bar
from oel.config import save_config
from oel.errors import ConfigError, DataError
from oel.extract.accumulate import extract_command
from oel.extract.config import ExtractCommandConfig
from oel.extract.store import (
    ExperienceFile,
    completed_steps,
    diff_experience,
    format_diff,
    read_experience,
    read_manifest,
    round_dir,
    step_path,
)
from oel.io import check_writable_dir
from oel.models import check_model_name
from oel.trajectory import read_trajectories

_RUN_DIR = re.compile(r"^run_(\d+)$")


def run_extract(config: ExtractCommandConfig, ns: argparse.Namespace) -> int:
    if not config.trajectories:
        raise ConfigError("trajectories: required (path to a trajectory JSONL from `oel collect`)")
    check_writable_dir(config.out_dir, "experience store out_dir")
    trajs = read_trajectories(config.trajectories)
    if len(trajs) < config.num_trajectories:  # before the extractor loads, not after
        raise DataError(f"{config.trajectories}: need num_trajectories={config.num_trajectories}, "
                        f"found {len(trajs)}")
    if config.extractor.backend != "openai":
        check_model_name(config.extractor.model.name, "extractor.model.name")
    # The raw baseline generates nothing, but counts its budget with the same tokenizer.
    backend = from_config(config.extractor)
    done_before = sum(max(0, (completed_steps(config.out_dir, config.round, k) or [0])[-1])
                      for k in range(config.num_runs)) if not config.overwrite else 0
    total = config.num_runs * config.num_trajectories
    t0 = time.perf_counter()
    with progress_bar() as bar:
        task = bar.add_task(f"extract round {config.round} ({config.kind})", total=total,
                            completed=min(done_before, total))
        result = extract_command(config, trajs, backend if config.kind == "extracted" else None,
                               tokenizer=getattr(backend, "tokenizer", None),
                               on_step=lambda run, step, s: bar.advance(task))
    save_config(config, round_dir(config.out_dir, config.round) / "extract_config.yaml")
    print(f"{round_dir(config.out_dir, config.round)}: {config.num_runs} runs, step {result.step} used downstream "
          f"({time.perf_counter() - t0:.0f} s)")
    for f in result.files:
        print(f"  run {f.seed}: {len(f.items)} items, {len(f.rendered)} chars")
    return 0


def resolve_step(spec: str, step: int | None = None) -> Path:
    """A step file from `PATH[@STEP]`: a step JSON, or a run directory (its last step, or STEP)."""
    if "@" in spec:
        spec, at = spec.rsplit("@", 1)
        if not at.isdigit():
            raise ConfigError(f"{spec}@{at}: the step after '@' must be a number")
        step = int(at)
    path = Path(spec)
    if path.is_file():
        return path
    match = _RUN_DIR.match(path.name)
    if not (path.is_dir() and match):
        raise DataError(f"{spec}: expected a step_III.json file or a run_KK directory of an experience store")
    steps = completed_steps(path.parent.parent, int(path.parent.name.removeprefix("round_")), int(match.group(1)))
    if not steps:
        raise DataError(f"{spec}: no completed steps")
    return path / f"step_{(steps[-1] if step is None else step):03d}.json"


def _print_file(path: Path, f: ExperienceFile) -> None:
    rec = f.record
    print(f"== {path}  (round {f.round}, run {f.seed}, step {f.step}, {f.kind}/{f.format}, "
          f"extractor {f.extractor_model}, {len(f.items)} items, budget {f.budget_tokens} tokens by {f.token_counter})")
    for it in f.items:
        print(f"  [step {it.step_added} from {it.source_trajectory_id}] {it.text}")
    if rec is not None:
        cut = f", input cut: {rec.dropped_turns} turns + {rec.cut_chars} chars" if rec.input_truncated else ""
        ungrounded = f", {len(rec.ungrounded_dropped)} stating unseen numbers dropped" if rec.ungrounded_dropped else ""
        print(f"  last step: read {rec.trajectory_id}, +{len(rec.new_items)} new, {len(rec.duplicates_dropped)} "
              "repeats "
              f"dropped, {rec.budget_dropped} old items over budget, {rec.input_tokens}+{rec.output_tokens} tokens, "
              f"{rec.seconds:.1f} s{cut}{ungrounded}")


def cmd_show(ns: argparse.Namespace) -> int:
    path = Path(ns.path)
    if path.is_file() or _RUN_DIR.match(path.name):
        target = resolve_step(ns.path, ns.step)
        _print_file(target, read_experience(target))
        return 0
    manifest = read_manifest(path, ns.round)
    step = manifest.use_step if ns.step is None else ns.step
    print(f"{round_dir(path, ns.round)}: {manifest.num_runs} runs over {manifest.num_trajectories} trajectories; "
          f"showing step {step} (N_use = {manifest.use_step})")
    for k in range(manifest.num_runs):
        target = step_path(path, ns.round, k, step)
        if not target.exists():
            print(f"== {target}: not written yet (completed: {completed_steps(path, ns.round, k)})")
            continue
        _print_file(target, read_experience(target))
    return 0


def cmd_diff(ns: argparse.Namespace) -> int:
    a, b = resolve_step(ns.a), resolve_step(ns.b)
    print(format_diff(diff_experience(read_experience(a), read_experience(b)), str(a), str(b)))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    add_config_command(subparsers, "extract", ExtractCommandConfig, run_extract,
                       help="accumulate experiential knowledge from a round's trajectories (K runs, resumable)")
    sub = command_group(subparsers, *EXPERIENCE_GROUP)
    show = sub.add_parser("show", help="print the knowledge of every run at a step (or one step file)")
    show.add_argument("path", help="the store directory, a run_KK directory, or a step_III.json file")
    show.add_argument("--round", type=int, default=0, help="round, when PATH is the store (default 0)")
    show.add_argument("--step", type=int, default=None, help="step to show (default: N_use, or a run's last step)")
    show.set_defaults(func=cmd_show)
    diff = sub.add_parser("diff", help="items added and removed between two steps or rounds")
    diff.add_argument("a", help="step_III.json, or RUN_DIR[@STEP] (default: its last step)")
    diff.add_argument("b", help="the same, for the later side")
    diff.set_defaults(func=cmd_diff)
