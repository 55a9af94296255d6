"""How far each bf16 way of computing a consolidation step's gradient lies from the float32 gradient.

    R=runs/fl-0.5b-teacher-1.5b/round_0
    python benchmarks/gradient_precision.py --trajectories $R/collect/train.jsonl \
        --knowledge $R/extract/knowledge_0.txt $R/extract/knowledge_1.txt

The same steps (same rows, same per-row sampling seeds) run under several trainer settings, the
optimizer switched off so that every setting sees the same weights; for each step it prints the
loss, the response tokens (equal counts: the same samples, unless rounding flipped one) and the
cosine and relative distance of the LoRA gradient to the float32 model's plain gradient. The
settings: float32 plain (the reference), bf16 with the session-2 defaults (two passes, no caches,
float32 adapter math), bf16 with the current defaults, and the current defaults with either the
teacher's or the student's cached paths off. Each setting loads its own model (one process).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (DEFAULT_PRESET, add_smoke_flag, machine_state, smoke_knowledge, smoke_model,  # noqa: E402
                     smoke_trajectories, state_note)
from consolidate import DEFAULT_BATCH, DEFAULT_MAX_NEW_TOKENS, DEFAULT_TRAJECTORIES, LR, SMOKE_BATCH  # noqa: E402

PLAIN = {"shared_student_prefill": False, "student_prefix_cache": False, "teacher_prefix_cache": False,
         "lora_compute_dtype": "float32"}
SETTINGS: dict[str, tuple[str, dict[str, Any]]] = {
    "float32, plain (reference)": ("float32", PLAIN),
    "bf16, plain (session-2 defaults)": ("bfloat16", PLAIN),
    "bf16, current defaults": ("bfloat16", {}),
    "bf16, defaults, teacher cache off": ("bfloat16", {"teacher_prefix_cache": False}),
    "bf16, defaults, student paths off": ("bfloat16", {"shared_student_prefill": False, "student_prefix_cache": False}),
}


def step_gradients(args: argparse.Namespace, dtype: str, overrides: dict[str, Any],
                   out_dir: str) -> list[tuple[float, float, Any]]:
    """(loss, response tokens, flat LoRA gradient) of steps 1..args.steps, the weights never updated."""
    import torch

    from oel.consolidate import ConsolidateCommandConfig, command_trainer
    from oel.models import ModelConfig

    cfg = ConsolidateCommandConfig(trajectories=args.trajectories, knowledge=args.knowledge, output_dir=out_dir,
                                   model=ModelConfig(name=args.preset, dtype=dtype), steps=args.steps,
                                   batch_size=args.batch, micro_batch_size=args.batch,
                                   max_new_tokens=DEFAULT_MAX_NEW_TOKENS, lr=LR, on_existing="overwrite", **overrides)
    trainer = command_trainer(cfg)
    trainer.prepare_output()
    trainer.optimizer.step = lambda: None  # every setting and step sees the starting weights
    out = []
    for step in range(1, args.steps + 1):
        metrics = trainer.train_step(step)
        grad = torch.cat([p.grad.flatten().float() for p in trainer.params if p.grad is not None])
        out.append((metrics["loss"], metrics["response_tokens"], grad.clone()))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default=DEFAULT_PRESET)
    ap.add_argument("--trajectories", default=DEFAULT_TRAJECTORIES)
    ap.add_argument("--knowledge", nargs="+", default=[], help="knowledge text files (the round's; required)")
    ap.add_argument("--batch", type=int, default=DEFAULT_BATCH)
    ap.add_argument("--steps", type=int, default=2)
    add_smoke_flag(ap)
    args = ap.parse_args()
    if args.smoke:
        args.preset, args.trajectories, args.knowledge = smoke_model(), smoke_trajectories(), [smoke_knowledge()]
        args.batch, args.steps = SMOKE_BATCH, 1
    if not args.knowledge:
        ap.error("--knowledge: give the round's knowledge text files")

    import torch

    reference = None
    print(f"{args.preset}, batch {args.batch}: LoRA gradient of each setting vs the float32 plain gradient")
    with tempfile.TemporaryDirectory(prefix="oel-grad-precision-") as tmp:
        for name, (dtype, overrides) in SETTINGS.items():
            steps = step_gradients(args, dtype, overrides, f"{tmp}/run")
            reference = reference or steps
            cells = []
            for (loss, tokens, grad), (_, _, ref) in zip(steps, reference):
                cos = float(torch.nn.functional.cosine_similarity(grad, ref, dim=0))
                rel = float((grad - ref).norm() / ref.norm())
                cells.append(f"loss {loss:.5f}, {tokens:.0f} tok, |g| {grad.norm():.3f}, cos {cos:.3f}, rel {rel:.3f}")
            print(f"{name:36s} " + " | ".join(cells), flush=True)
    print(state_note(machine_state()))


if __name__ == "__main__":
    main()
