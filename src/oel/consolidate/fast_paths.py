"""Which of the three switched computations a run uses: a pure decision, logged by the caller.

`shared_student_prefill`, `student_prefix_cache` and `teacher_prefix_cache` change how the same
numbers are computed, not what is learned (equal up to float rounding). Each is used where it
is switched on and can run, and skipped, not refused, where something rules it out: a config
that works on one process must keep working under a launcher, and vice versa. What rules each
one out (the blocker table below):

- shared_student_prefill samples from the student's own gradient-carrying prompt pass, so it
  needs the student to be the sampler (on_policy), sampling and scoring to see the same
  function (no LoRA dropout, which is active in that train-mode pass), the KV cache that
  gradient checkpointing drops, and a backbone it may call outside a DDP/FSDP wrapper;
- student_prefix_cache runs the prompts' shared opening once and repeats its KV cache over the
  rows, gradients included: not with gradient checkpointing (checkpointed layers drop that
  cache), and not under FSDP (the sharded backbone is called outside its wrapper);
- teacher_prefix_cache: not under FSDP, for the same reason.
"""

from __future__ import annotations

from dataclasses import dataclass

from oel.consolidate.config import ConsolidateConfig


@dataclass(frozen=True)
class FastPaths:
    """Which switched computations run here (each: switched on AND nothing here rules it out)."""

    shared_prefill: bool
    """`shared_student_prefill`: one student prompt pass both samples and scores."""
    student_head_cache: bool
    """`student_prefix_cache`: the student's shared prompt opening runs once per micro-batch."""
    teacher_head_cache: bool
    """`teacher_prefix_cache`: each knowledge text's shared teacher prompt head runs once per micro-batch."""


def blockers(config: ConsolidateConfig, *, distributed: bool, fsdp: bool) -> dict[str, dict[str, bool]]:
    """Per switch (config field name): each reason it could not run here, and whether it holds."""
    c = config
    return {
        "shared_student_prefill": {"sampler=off_policy": c.sampler != "on_policy",
                                   "lora_dropout > 0": c.finetune == "lora" and c.lora_dropout > 0,
                                   "gradient_checkpointing": c.gradient_checkpointing,
                                   "more than one process": distributed},
        "student_prefix_cache": {"gradient_checkpointing": c.gradient_checkpointing, "FSDP": fsdp},
        "teacher_prefix_cache": {"FSDP": fsdp},
    }


def decide_fast_paths(config: ConsolidateConfig, *, distributed: bool,
                      fsdp: bool) -> tuple[FastPaths, dict[str, list[str]]]:
    """The switched computations in use, and, for each one switched on but skipped, why.

    `distributed`: more than one process; `fsdp`: the model is sharded (parallel=fsdp under a
    launcher). The reasons are keyed by the config field, in the table's order, for the caller's
    log line; a switch that is off is not "skipped" and has no entry.
    """
    used: dict[str, bool] = {}
    skipped: dict[str, list[str]] = {}
    for name, reasons in blockers(config, distributed=distributed, fsdp=fsdp).items():
        held = [why for why, blocks in reasons.items() if blocks]
        switched_on = bool(getattr(config, name))
        if switched_on and held:
            skipped[name] = held
        used[name] = switched_on and not held
    paths = FastPaths(shared_prefill=used["shared_student_prefill"], student_head_cache=used["student_prefix_cache"],
                      teacher_head_cache=used["teacher_prefix_cache"])
    return paths, skipped
