"""Scaling: consolidation step time vs batch size and knowledge length L; collection vs episodes in flight.

    python benchmarks/scaling.py [--preset smollm2-135m-instruct] [--batches 1 2 4] [--lengths 64 256 512] \
        [--in-flight 1 4 16] [--episodes 16] [--steps 3] [--out docs]

Cheap sweeps, meant to show the shape of each curve, not headline numbers:
- step time (median of steps 2..S, one fresh process per point, via `consolidate.py`'s child)
  and peak RSS of our trainer vs batch size (knowledge = the built-in text) and vs the knowledge
  length L in tokens (the built-in lines repeated, cut to at most L tokens at a line boundary);
- collection (`oel collect` with HFBackend) generated tokens/s and episodes/min vs the number of
  episodes in flight (1 = one episode at a time, still through our backend), `--episodes` each.
Writes `<out>/performance_scaling.md` (the tables) and `<out>/performance_scaling.png`.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (SMALL_PRESET, add_smoke_flag, machine_state, median, run_child, smoke_dir,  # noqa: E402
                     smoke_model, smoke_trajectories)
from consolidate import DEFAULT_KNOWLEDGE, DEFAULT_MAX_NEW_TOKENS, DEFAULT_TRAJECTORIES, WARMUP_STEPS  # noqa: E402

DEFAULT_BATCHES = (1, 2, 4)
DEFAULT_LENGTHS = (64, 256, 512)
DEFAULT_IN_FLIGHT = (1, 4, 16)
DEFAULT_EPISODES = 16
DEFAULT_STEPS = 3
DEFAULT_L_BATCH = 4
SMOKE_LENGTH = 256
"""Knowledge tokens of the smoke run's L point (the tiny model's tokens are bytes)."""
CONSOLIDATE = str(Path(__file__).resolve().parent / "consolidate.py")


def knowledge_of_length(tokenizer: Any, tokens: int) -> str:
    """The built-in knowledge lines, repeated, keeping whole lines while within `tokens` tokens."""
    lines = DEFAULT_KNOWLEDGE.splitlines()
    out: list[str] = []
    i = 0
    while True:
        candidate = "\n".join(out + [lines[i % len(lines)]])
        if len(tokenizer(candidate, add_special_tokens=False)["input_ids"]) > tokens:
            break
        out.append(lines[i % len(lines)])
        i += 1
    if not out:
        raise ValueError(f"L={tokens}: shorter than one knowledge line")
    return "\n".join(out)


def step_point(args: argparse.Namespace, batch: int, knowledge_file: str) -> dict[str, Any]:
    res = run_child(CONSOLIDATE, ["--child", "ours", "--preset", args.preset, "--batch", str(batch),
                                  "--steps", str(args.steps), "--max-new-tokens", str(DEFAULT_MAX_NEW_TOKENS),
                                  "--trajectories", args.trajectories, "--knowledge", knowledge_file])
    steps = res["steps"][WARMUP_STEPS:] or res["steps"]
    return {"step_s": median([s["step_s"] for s in steps]), "generate_s": median([s["generate_s"] for s in steps]),
            "teacher_s": median([s["teacher_s"] for s in steps]), "student_s": median([s["student_s"] for s in steps]),
            "peak_rss_mib": res["peak_rss_mib"], "teacher_prompt": res["prompt_tokens"]["teacher"],
            "load": median([s["loadavg_1m"] for s in steps]), "threads": steps[0]["torch_threads"]}


def collection_points(args: argparse.Namespace) -> list[dict[str, Any]]:
    from collect import run_ours

    from oel.models import ModelConfig, load_model
    from oel.backends.hf import HFBackend

    lm = load_model(ModelConfig(name=args.preset))
    backend = HFBackend(lm.model, lm.tokenizer, model_id=lm.model_id)
    run_ours(backend, 1, 1)  # warm-up
    points = []
    for n in args.in_flight:
        r, _ = run_ours(backend, args.episodes, n)
        points.append({"in_flight": n, "tokens_per_s": r.tokens_per_s, "episodes_per_min": r.episodes_per_min,
                       "prompt_tokens_per_s": r.prompt_tokens / r.seconds, "seconds": r.seconds, **r.state})
        print(f"  collect in flight {n}: {r.tokens_per_s:.1f} gen tok/s, {r.episodes_per_min:.1f} episodes/min",
              flush=True)
    return points


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default=SMALL_PRESET)
    ap.add_argument("--batches", type=int, nargs="+", default=list(DEFAULT_BATCHES))
    ap.add_argument("--lengths", type=int, nargs="+", default=list(DEFAULT_LENGTHS), help="knowledge lengths L "
                                                                                          "(tokens)")
    ap.add_argument("--l-batch", type=int, default=DEFAULT_L_BATCH, help="batch size of the L sweep")
    ap.add_argument("--in-flight", type=int, nargs="+", default=list(DEFAULT_IN_FLIGHT))
    ap.add_argument("--episodes", type=int, default=DEFAULT_EPISODES)
    ap.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    ap.add_argument("--trajectories", default=DEFAULT_TRAJECTORIES)
    ap.add_argument("--out", default="docs", help="directory for performance_scaling.md / .png")
    add_smoke_flag(ap)
    args = ap.parse_args()
    if args.smoke:  # two points per curve, written next to the smoke inputs
        args.preset, args.trajectories, args.out = smoke_model(), smoke_trajectories(), str(smoke_dir() / "out")
        args.batches, args.lengths, args.l_batch, args.in_flight = [1, 2], [SMOKE_LENGTH], 1, [1, 2]
        args.episodes, args.steps = 2, 2

    from oel.models import ModelConfig, load_model

    tok = load_model(ModelConfig(name=args.preset)).tokenizer
    with tempfile.TemporaryDirectory(prefix="oel-bench-scaling-") as tmp:
        files = {}
        for L in [*args.lengths, None]:
            path = os.path.join(tmp, f"k{L}.txt")
            Path(path).write_text(DEFAULT_KNOWLEDGE if L is None else knowledge_of_length(tok, L), encoding="utf-8")
            files[L] = path
        by_batch = []
        for b in args.batches:
            by_batch.append({"batch": b, **step_point(args, b, files[None])})
            print(f"  batch {b}: {by_batch[-1]['step_s']:.1f} s/step", flush=True)
        by_length = []
        for L in args.lengths:
            by_length.append({"L": L, **step_point(args, args.l_batch, files[L])})
            print(f"  L {L}: {by_length[-1]['step_s']:.1f} s/step", flush=True)
    collect_pts = collection_points(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    md = _tables(args, by_batch, by_length, collect_pts)
    (out / "performance_scaling.md").write_text(md, encoding="utf-8")
    _plot(args, by_batch, by_length, collect_pts, out / "performance_scaling.png")
    print(md)


def _tables(args: argparse.Namespace, by_batch: list[dict], by_length: list[dict], coll: list[dict]) -> str:
    lines = [f"# Scaling ({args.preset}, generated by `benchmarks/scaling.py`)", "",
             f"Consolidation: our trainer, median of steps 2..{args.steps}, one process per row; "
             f"machine state {machine_state()} at the end.", "",
             "| batch | teacher prompt (tok) | step s | generate s | teacher s | student+backward s | peak RSS "
             "MiB | load avg |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {p['batch']} | {p['teacher_prompt']:.0f} | {p['step_s']:.2f} | {p['generate_s']:.2f} | "
              f"{p['teacher_s']:.2f} | {p['student_s']:.2f} | {p['peak_rss_mib']:.0f} | {p['load']:.2f} |"
              for p in by_batch]
    lines += ["", f"Knowledge length L (batch {args.l_batch}):", "",
              "| L (tok) | teacher prompt (tok) | step s | teacher s | peak RSS MiB | load avg |",
              "|---|---|---|---|---|---|"]
    lines += [f"| {p['L']} | {p['teacher_prompt']:.0f} | {p['step_s']:.2f} | {p['teacher_s']:.2f} | "
              f"{p['peak_rss_mib']:.0f} | {p['load']:.2f} |" for p in by_length]
    lines += ["", f"Collection, {args.episodes} FrozenLake episodes per row:", "",
              "| episodes in flight | gen tok/s | episodes/min | prompt tok/s | threads | load avg |",
              "|---|---|---|---|---|---|"]
    lines += [f"| {p['in_flight']} | {p['tokens_per_s']:.1f} | {p['episodes_per_min']:.1f} | "
              f"{p['prompt_tokens_per_s']:.0f} | "
              f"{p['torch_threads']} | {p['loadavg_1m']} |" for p in coll]
    return "\n".join(lines) + "\n"


def _plot(args: argparse.Namespace, by_batch: list[dict], by_length: list[dict], coll: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot([p["batch"] for p in by_batch], [p["step_s"] for p in by_batch], "o-")
    axes[0].set(xlabel="batch (prefixes per step)", ylabel="s per step", title="consolidation vs batch")
    axes[1].plot([p["L"] for p in by_length], [p["step_s"] for p in by_length], "o-", label="step")
    axes[1].plot([p["L"] for p in by_length], [p["teacher_s"] for p in by_length], "s--", label="teacher part")
    axes[1].set(xlabel="knowledge length L (tokens)", ylabel="s", title=f"consolidation vs L (batch {args.l_batch})")
    axes[1].legend()
    axes[2].plot([p["in_flight"] for p in coll], [p["episodes_per_min"] for p in coll], "o-")
    axes[2].set(xlabel="episodes in flight", ylabel="episodes / min", title="collection vs concurrency", xscale="log")
    fig.suptitle(f"{args.preset} on this 2-core CPU")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
