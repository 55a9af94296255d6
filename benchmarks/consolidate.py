"""Consolidation step time and peak memory: our trainer vs TRL's SDFTTrainer on the same batches.

    pip install -e '.[bench]'        # trl==1.16.0
    python benchmarks/consolidate.py [--preset qwen2.5-coder-0.5b-instruct] [--batch 4] [--steps 4] \
        [--trajectories runs/fl-0.5b-teacher-1.5b/round_0/collect/train.jsonl] [--knowledge k0.txt k1.txt] \
        [--ours-variant ckpt:gradient_checkpointing=true] [--repeats 1]

Each trainer runs in its own fresh subprocess (peak RSS = that process's `ru_maxrss`, model
load included; the RSS right after loading is printed too). Both see:
- the same model (the preset's cached bf16 weights, loaded by `oel.models.load_model`);
- the same prefixes and knowledge texts in the same order: step s's rows are exactly those our
  trainer draws for step s (`Consolidator.draw`), handed to TRL as an unshuffled dataset;
- the same LoRA (r, alpha, dropout, target modules), AdamW (lr, betas, weight decay), grad clip
  1.0, constant LR, one optimizer step per batch of `--batch` prefixes, one response per prefix,
  sampling at T=0.7 over the whole vocabulary, at most `--max-new-tokens` new tokens;
- the teacher = the same weights with the adapter disabled (TRL: `teacher_model_kind="base"`).

What TRL cannot express exactly (each is named in the printed report):
- its teacher prompt is `teacher_prompt_template.format(prompt=<last user text>, privileged_context=...)`,
  so the knowledge can go before or after the whole policy text, not between our instruction line
  and the game text; we use "{privileged_context}{prompt}" with our template's experience paragraph
  as the privileged context: the same tokens give or take the line order;
- its top-k loss renormalises inside the student's top-k (or adds a tail bucket); ours does not
  renormalise. We set alpha=1 (reverse KL), k=256, no tail: the same work per token;
- its loss is a per-sequence mean then a batch mean; ours a token mean over the batch;
- TRL's own defaults are kept where they are a user's choice: gradient checkpointing ON (TRL's
  default; `--trl-no-grad-ckpt` turns it off), bf16 autocast on CPU;
- its responses are drawn from HF's global RNG, ours from per-row seeded streams: the sampled
  answers (and so their lengths) differ; both report response tokens per step.

Step time is the median over steps 2..S (step 1 pays one-off costs), then the median over
`--repeats` fresh processes per side; sides alternate.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (DEFAULT_PRESET, add_smoke_flag, emit, machine_state, median, ratio, run_child,  # noqa: E402
                     smoke_knowledge, smoke_model, smoke_trajectories)

DEFAULT_TRAJECTORIES = "runs/fl-0.5b-teacher-1.5b/round_0/collect/train.jsonl"
DEFAULT_BATCH = 4
DEFAULT_STEPS = 4
DEFAULT_MAX_NEW_TOKENS = 48
LR = 1e-4  # configs/frozenlake/fl-0.5b-teacher-1.5b.yaml
WARMUP_STEPS = 1
SMOKE_BATCH = 2
SMOKE_STEPS = 2
SMOKE_MAX_NEW_TOKENS = 4
"""Steps excluded from the step-time median (first-call costs: allocator, caches, lazy imports)."""
TRL_MAX_PROMPT_LENGTH = 8192
"""Far above any prompt here: TRL's default 512 silently cuts the left of longer teacher prompts."""
TRL_TEACHER_TEMPLATE = "{privileged_context}{prompt}"
KIB = 1024
# Written for this benchmark in the style of extracted knowledge, used when no --knowledge is given.
DEFAULT_KNOWLEDGE = "\n".join([
    "- EXPERIENCE ITEM: The board's top-left cell is where P starts; moving [up] or [left] from there "
    "hits the edge and wastes a turn.",
    "- EXPERIENCE ITEM: A cell marked H ended the game when stepped on: treat H as a hole and route "
    "around it.",
    "- EXPERIENCE ITEM: G marks the goal; the game was won by reaching it, so plan a path of [down] and "
    "[right] moves toward it.",
    "- EXPERIENCE ITEM: Two invalid answers in a row end the game: always answer with exactly one move in"
    " square brackets.",
    "- EXPERIENCE ITEM: Before moving, check the cell you would enter; if it is H, choose the other "
    "direction that also approaches G.",
    "- EXPERIENCE ITEM: Moves that do not change the board (walls, edges) still count as turns; only five"
    " turns are allowed.",
    "- EXPERIENCE ITEM: On a 3x3 board the goal is four moves away; any path with two [down] and two "
    "[right] moves that avoids H works.",
    "- EXPERIENCE ITEM: Re-read the latest board after each move: P's position there is the truth, not "
    "where you expected it to be.",
])


# -- the two children ----------------------------------------------------------------------

def _ours_config(args: argparse.Namespace, out_dir: str, knowledge_files: list[str]) -> Any:
    """Our trainer's config for these arguments; `--set key=value` overrides are validated as `oel` validates them."""
    from oel.config import from_dict, to_dict
    from oel.config_sources import apply_overrides
    from oel.consolidate.config import ConsolidateCommandConfig
    from oel.models import ModelConfig

    cfg = ConsolidateCommandConfig(trajectories=args.trajectories, knowledge=knowledge_files, output_dir=out_dir,
                                   model=ModelConfig(name=args.preset), steps=args.steps, batch_size=args.batch,
                                   micro_batch_size=args.batch, max_new_tokens=args.max_new_tokens, lr=LR,
                                   save_every=0, on_existing="overwrite")
    return from_dict(ConsolidateCommandConfig, apply_overrides(to_dict(cfg), [kv for kv in args.set if kv]))


def child_ours(args: argparse.Namespace) -> None:
    from oel.consolidate.trainer import command_trainer
    from oel.memory import peak_rss_mib

    with tempfile.TemporaryDirectory(prefix="oel-bench-cons-") as tmp:
        cfg = _ours_config(args, f"{tmp}/run", args.knowledge)
        trainer = command_trainer(cfg)
        trainer.prepare_output()
        rss_loaded = peak_rss_mib()
        steps = []
        for step in range(1, args.steps + 1):
            state = machine_state()
            m = trainer.train_step(step)
            steps.append({"step_s": m["step_s"], "generate_s": m["generate_s"], "teacher_s": m["teacher_s"],
                          "student_s": m["student_s"], "response_tokens": m["response_tokens"], **state})
    emit({"steps": steps, "peak_rss_mib": peak_rss_mib(), "rss_after_load_mib": rss_loaded,
          "prompt_tokens": _prompt_lengths(args, trainer.tokenizer)})


def child_trl(args: argparse.Namespace) -> None:
    import resource

    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl.experimental.sdft import SDFTConfig, SDFTTrainer

    from oel.consolidate.config import ConsolidateConfig
    from oel.models import ModelConfig, load_model

    ours = ConsolidateConfig()  # LoRA / optimizer defaults to mirror
    rows = _trl_rows(args)
    lm = load_model(ModelConfig(name=args.preset))
    rss_loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / KIB
    with tempfile.TemporaryDirectory(prefix="oel-bench-trl-") as tmp:
        sdft = SDFTConfig(
            output_dir=tmp, max_steps=args.steps, per_device_train_batch_size=args.batch,
            gradient_accumulation_steps=1, num_generations=1, learning_rate=LR, lr_scheduler_type="constant",
            warmup_steps=0, weight_decay=ours.weight_decay, adam_beta1=ours.adam_beta1, adam_beta2=ours.adam_beta2,
            max_grad_norm=ours.grad_clip, bf16=True, use_cpu=True, max_prompt_length=TRL_MAX_PROMPT_LENGTH,
            max_completion_length=args.max_new_tokens, temperature=ours.temperature, top_p=1.0, top_k=0,
            distillation_mode="topk_logits", distillation_topk=ours.top_k, distillation_alpha=1.0,
            distillation_add_tail=False, teacher_model_kind="base", teacher_prompt_template=TRL_TEACHER_TEMPLATE,
            shuffle_dataset=False, logging_steps=1, save_strategy="no", report_to=[], seed=ours.seed,
            dataloader_num_workers=0, gradient_checkpointing=not args.trl_no_grad_ckpt,
        )
        peft_cfg = LoraConfig(r=ours.lora_r, lora_alpha=ours.lora_alpha, lora_dropout=ours.lora_dropout,
                              target_modules=list(ours.lora_target_modules), task_type="CAUSAL_LM")
        trainer = SDFTTrainer(model=lm.model, args=sdft, train_dataset=Dataset.from_list(rows),
                              processing_class=lm.tokenizer, peft_config=peft_cfg)
        timer = _TRLTimer(trainer)
        trainer.add_callback(type("StepTimes", (TrainerCallback,), {
            "on_step_begin": lambda self, *a, **k: timer.begin(),
            "on_step_end": lambda self, *a, **k: timer.end(),
        })())
        torch.manual_seed(ours.seed)
        trainer.train()
    emit({"steps": timer.steps, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / KIB,
          "rss_after_load_mib": rss_loaded, "prompt_tokens": _prompt_lengths(args, lm.tokenizer)})


class _TRLTimer:
    """Step times plus generation / student forward / teacher forward seconds, by wrapping TRL's methods."""

    def __init__(self, trainer: Any) -> None:
        self.steps: list[dict[str, Any]] = []
        self._cur: dict[str, Any] = {}
        gen, fwd = trainer._generate, trainer._forward_logits

        def timed_generate(prompt_ids: Any) -> Any:
            t0 = time.perf_counter()
            out = gen(prompt_ids)
            self._cur["generate_s"] = self._cur.get("generate_s", 0.0) + time.perf_counter() - t0
            self._cur["response_tokens"] = float(sum(len(c) for c in out[1]))
            return out

        def timed_forward(model: Any, input_ids: Any, attention_mask: Any, logits_to_keep: int) -> Any:
            import torch

            key = "student_fwd_s" if torch.is_grad_enabled() else "teacher_s"
            t0 = time.perf_counter()
            out = fwd(model, input_ids, attention_mask, logits_to_keep)
            self._cur[key] = self._cur.get(key, 0.0) + time.perf_counter() - t0
            return out

        trainer._generate, trainer._forward_logits = timed_generate, timed_forward

    def begin(self) -> None:
        self._cur = {**machine_state(), "_t0": time.perf_counter()}

    def end(self) -> None:
        cur = self._cur
        cur["step_s"] = time.perf_counter() - cur.pop("_t0")
        cur["student_s"] = cur["step_s"] - cur.get("generate_s", 0.0) - cur.get("teacher_s", 0.0)
        self.steps.append(cur)


# -- shared data ---------------------------------------------------------------------------

def _draws(args: argparse.Namespace) -> tuple[list[Any], list[str], list[list[tuple[int, int]]]]:
    """Prefixes, knowledge texts and, per step, the (prefix, knowledge) rows our trainer draws."""
    from oel.consolidate.data import draw
    from oel.knowledge import Knowledge
    from oel.trajectory import prefixes, read_trajectories

    cfg = _ours_config(args, "unused", args.knowledge)
    pre = prefixes(read_trajectories(args.trajectories))
    knowledge = list(Knowledge.read(args.knowledge).texts)
    return pre, knowledge, [draw(cfg.seed, s, len(pre), len(knowledge), cfg.batch_size)
                            for s in range(1, args.steps + 1)]


def _trl_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    from oel import prompts

    pre, knowledge, steps = _draws(args)
    # Our teacher template minus its first (policy) paragraph and the observation = the experience paragraph.
    marker = "\x00OBS\x00"
    teacher_text = prompts.get(prompts.TEACHER_TEMPLATE).render(knowledge="{knowledge}", observation=marker)
    experience_block = teacher_text.split("\n\n", 1)[1].replace(marker, "")
    return [{"prompt": [{"role": m.role, "content": m.content} for m in pre[p].prompt],
             "privileged_context": experience_block.replace("{knowledge}", knowledge[k])}
            for rows in steps for p, k in rows]


def _prompt_lengths(args: argparse.Namespace, tok: Any) -> dict[str, float]:
    """Median student prompt, our teacher prompt and TRL's teacher prompt lengths (tokens) of the rows."""
    from oel.consolidate.teacher import teacher_messages

    pre, knowledge, steps = _draws(args)
    rows = [r for s in steps for r in s]

    def n(chat: Any) -> int:
        chat = [m if isinstance(m, dict) else {"role": m.role, "content": m.content} for m in chat]
        return len(tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=True,
                                           return_dict=True)["input_ids"])

    trl = [[{"role": "user", "content": TRL_TEACHER_TEMPLATE.format(prompt=r["prompt"][-1]["content"],
                                                                     privileged_context=r["privileged_context"])}]
           for r in _trl_rows(args)]
    return {"student": median([n(pre[p].prompt) for p, _ in rows]),
            "teacher": median([n(teacher_messages(pre[p], knowledge[k])) for p, k in rows]),
            "trl_teacher": median([n(c) for c in trl])}


# -- the parent: runs both, prints the comparison ----------------------------------------------

def _child_args(args: argparse.Namespace, side: str, sets: list[str]) -> list[str]:
    out = ["--child", side, "--preset", args.preset, "--batch", str(args.batch), "--steps", str(args.steps),
           "--max-new-tokens", str(args.max_new_tokens), "--trajectories", args.trajectories,
           "--knowledge", *args.knowledge]
    if args.trl_no_grad_ckpt:
        out.append("--trl-no-grad-ckpt")
    for kv in sets:
        out += ["--set", kv]
    return out


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median over processes of each process's median over its measured steps."""
    measured = [r["steps"][WARMUP_STEPS:] or r["steps"] for r in runs]
    keys = ("step_s", "generate_s", "teacher_s", "student_s", "response_tokens")
    out = {k: median([median([s.get(k, 0.0) for s in steps]) for steps in measured]) for k in keys}
    out["peak_rss_mib"] = median([r["peak_rss_mib"] for r in runs])
    out["rss_after_load_mib"] = median([r["rss_after_load_mib"] for r in runs])
    out["loads"] = sorted(s["loadavg_1m"] for steps in measured for s in steps)
    out["threads"] = runs[0]["steps"][0]["torch_threads"]
    out["n_steps"] = sum(len(m) for m in measured)
    out["prompt_tokens"] = runs[0]["prompt_tokens"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default=DEFAULT_PRESET)
    ap.add_argument("--batch", type=int, default=DEFAULT_BATCH, help="prefixes per step")
    ap.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="steps per process (the first is not timed)")
    ap.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS)
    ap.add_argument("--trajectories", default=DEFAULT_TRAJECTORIES, help="trajectory JSONL (the prefixes)")
    ap.add_argument("--knowledge", nargs="*", default=[], help="knowledge text files (default: a built-in text)")
    ap.add_argument("--repeats", type=int, default=1, help="fresh processes per side")
    ap.add_argument("--ours-variant", action="append", default=[],
                    help="NAME:key=value[,key=value]: also run our trainer with these config overrides")
    ap.add_argument("--skip-trl", action="store_true", help="only our trainer (and its variants)")
    ap.add_argument("--skip-ours", action="store_true", help="not our default trainer (only its variants and TRL)")
    ap.add_argument("--trl-no-grad-ckpt", action="store_true",
                    help="TRL without gradient checkpointing (its default, which we keep otherwise, is on)")
    ap.add_argument("--child", choices=["ours", "trl"], help=argparse.SUPPRESS)
    ap.add_argument("--set", action="append", default=[], help=argparse.SUPPRESS)
    add_smoke_flag(ap)
    args = ap.parse_args()
    if args.smoke:
        args.preset, args.trajectories, args.knowledge = smoke_model(), smoke_trajectories(), [smoke_knowledge()]
        args.batch, args.steps, args.max_new_tokens = SMOKE_BATCH, SMOKE_STEPS, SMOKE_MAX_NEW_TOKENS
        args.skip_trl = args.skip_trl or not _trl_installed()
    if not Path(args.trajectories).is_file():
        sys.exit(f"{args.trajectories}: no trajectories; run `oel collect` (or `oel loop "
                 "configs/frozenlake/fl-0.5b-teacher-1.5b.yaml`) first, or pass --trajectories")
    if args.child:
        (child_ours if args.child == "ours" else child_trl)(args)
        return
    tmp_knowledge = None
    if not args.knowledge:
        tmp_knowledge = tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False)
        tmp_knowledge.write(DEFAULT_KNOWLEDGE)
        tmp_knowledge.close()
        args.knowledge = [tmp_knowledge.name]
    sides: dict[str, list[str]] = {} if args.skip_ours else {"ours": []}
    for spec in args.ours_variant:
        name, _, sets = spec.partition(":")
        sides[f"ours[{name}]"] = [kv for kv in sets.split(",") if kv]
    if not args.skip_trl:
        sides["trl"] = []
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in sides}
    try:
        for _ in range(args.repeats):
            for name, sets in sides.items():
                side = "trl" if name == "trl" else "ours"
                runs[name].append(run_child(__file__, _child_args(args, side, sets)))
                print(f"  {name}: done, peak RSS {runs[name][-1]['peak_rss_mib']:.0f} MiB", flush=True)
    finally:
        if tmp_knowledge is not None:
            os.unlink(tmp_knowledge.name)
    _report(args, {name: _summary(r) for name, r in runs.items()})


def _trl_installed() -> bool:
    """TRL is an optional extra (`.[bench]`); the smoke run leaves its side out when it is absent."""
    import importlib.util

    return importlib.util.find_spec("trl") is not None


def _report(args: argparse.Namespace, summaries: dict[str, dict[str, Any]]) -> None:
    first = next(iter(summaries.values()))
    pt = first["prompt_tokens"]
    print(f"\n{args.preset}, batch {args.batch}, {args.steps} steps per process x {args.repeats} process(es) per side; "
          f"step figures are medians of steps 2..{args.steps}")
    print(f"prompts (median tokens): student {pt['student']:.0f}, our teacher {pt['teacher']:.0f}, "
          f"TRL teacher {pt['trl_teacher']:.0f}")
    print(f"{'':12s} {'step s':>7s} {'gen s':>6s} {'teach s':>7s} {'stud+bwd':>8s} {'resp tok':>8s} "
          f"{'peak RSS':>9s} {'after load':>10s}  threads / load avg")
    for name, s in summaries.items():
        print(f"{name:12s} {s['step_s']:7.2f} {s['generate_s']:6.2f} {s['teacher_s']:7.2f} {s['student_s']:8.2f} "
              f"{s['response_tokens']:8.1f} {s['peak_rss_mib']:7.0f}Mi {s['rss_after_load_mib']:8.0f}Mi  "
              f"{s['threads']} / {min(s['loads'])}-{max(s['loads'])}")
    if "trl" in summaries:
        trl = summaries["trl"]
        for name, s in summaries.items():
            if name != "trl":
                print(f"{name}: step time {ratio(trl['step_s'], s['step_s']):.2f}x faster than TRL "
                      f"(goal >= 2x); peak RSS {ratio(s['peak_rss_mib'], trl['peak_rss_mib']):.2f}x TRL's (goal "
                      "<= 0.6x)")
    print(json.dumps({k: {kk: vv for kk, vv in v.items() if kk != "loads"} for k, v in summaries.items()}))


if __name__ == "__main__":
    main()
