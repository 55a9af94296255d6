"""Where one consolidation step's time and memory go, phase by phase (our trainer only).

    python benchmarks/step_profile.py [--preset qwen2.5-coder-0.5b-instruct] [--batch 4] \
        [--set gradient_checkpointing=true ...] [--ops 15]

Runs step 1 as a warm-up, then step 2 through the trainer's own `train_step`, with each of
its phases wrapped: sampling the responses, the teacher's scoring pass, the student's
forward pass(es), the backward pass, the optimizer update. For each phase it prints the
seconds and the peak resident memory reached DURING it (Linux: the peak counter is reset
as a phase starts, by writing 5 to /proc/self/clear_refs). With `--ops N` step 3 runs under
`torch.profiler` and its N most expensive operators are printed. Same data and settings as
`benchmarks/consolidate.py`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (DEFAULT_PRESET, add_smoke_flag, machine_state, smoke_model, smoke_trajectories,  # noqa: E402
                     state_note)
from consolidate import (DEFAULT_BATCH, DEFAULT_KNOWLEDGE, DEFAULT_MAX_NEW_TOKENS,  # noqa: E402
                         DEFAULT_TRAJECTORIES, SMOKE_BATCH, SMOKE_MAX_NEW_TOKENS, _ours_config)

SMOKE_OPS = 3
CLEAR_REFS = Path("/proc/self/clear_refs")
RESET_PEAK_RSS = "5"
"""Writing this to clear_refs resets the process's peak-RSS counter (VmHWM), Linux >= 4.0."""


def rss_mib(field: str) -> float:
    """VmRSS (now) or VmHWM (peak since the last reset) of this process, in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


class Phases:
    """Wraps callables so that each call is timed and its peak RSS recorded (reset at its start)."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, float, float, float]] = []
        self.active = False

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            if not self.active:
                return fn(*args, **kwargs)
            CLEAR_REFS.write_text(RESET_PEAK_RSS)
            before = rss_mib("VmRSS")
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            self.rows.append((name, time.perf_counter() - t0, before, rss_mib("VmHWM")))
            return out
        return timed

    def print(self, step_s: float) -> None:
        print(f"{'phase':<34}{'seconds':>9}{'RSS before MiB':>16}{'peak during MiB':>17}")
        for name, sec, before, peak in self.rows:
            print(f"{name:<34}{sec:>9.2f}{before:>16.0f}{peak:>17.0f}")
        print(f"{'(rest: loss, bookkeeping)':<34}{step_s - sum(r[1] for r in self.rows):>9.2f}")
        print(f"{'step':<34}{step_s:>9.2f}")


def instrument(trainer: Any, phases: Phases) -> None:
    """Wrap the phases of `trainer.train_step` (module-level names the step calls, and its methods)."""
    import torch

    from oel.consolidate import step as step_module

    for name, label in (("open_prompts", "student prompt pass (grad)"), ("sample_responses", "sample responses"),
                        ("opened_response_logits", "student response pass (grad)"),
                        ("response_logits", "teacher scoring"),
                        ("response_logits_by_shared_prefix_groups", "teacher scoring")):
        setattr(step_module, name, phases.wrap(label, getattr(step_module, name)))
    step = trainer.training_step
    step.sample = phases.wrap("sample responses (generate)", step.sample)
    step.student_logits = phases.wrap("student forward (grad)", step.student_logits)
    trainer.optimizer.step = phases.wrap("optimizer step", trainer.optimizer.step)
    torch.Tensor.backward = phases.wrap("backward", torch.Tensor.backward)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default=DEFAULT_PRESET)
    parser.add_argument("--trajectories", default=DEFAULT_TRAJECTORIES)
    parser.add_argument("--knowledge", nargs="*", default=[])
    parser.add_argument("--batch", type=int, default=DEFAULT_BATCH)
    parser.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS)
    parser.add_argument("--set", nargs="*", default=[], help="ConsolidateConfig overrides, key=value")
    parser.add_argument("--ops", type=int, default=0, help="profile the student pass and print its N top operators")
    add_smoke_flag(parser)
    args = parser.parse_args()
    if args.smoke:
        args.preset, args.trajectories, args.batch = smoke_model(), smoke_trajectories(), SMOKE_BATCH
        args.max_new_tokens, args.ops = SMOKE_MAX_NEW_TOKENS, SMOKE_OPS
    args.steps = 2

    from oel.consolidate.trainer import command_trainer

    with tempfile.TemporaryDirectory(prefix="oel-step-profile-") as tmp:
        if not args.knowledge:
            args.knowledge = [f"{tmp}/knowledge.txt"]
            Path(args.knowledge[0]).write_text(DEFAULT_KNOWLEDGE)
        trainer = command_trainer(_ours_config(args, f"{tmp}/run", args.knowledge))
        trainer.prepare_output()
        print(f"after load: RSS {rss_mib('VmRSS'):.0f} MiB")
        trainer.train_step(1)
        print(f"after warm-up step: RSS {rss_mib('VmRSS'):.0f} MiB, peak so far {rss_mib('VmHWM'):.0f} MiB; "
              f"shared_student_prefill in use: {trainer.shared_prefill}")
        phases = Phases()
        instrument(trainer, phases)
        phases.active = True
        metrics = trainer.train_step(2)
        phases.active = False
        phases.print(metrics["step_s"])
        print(f"response tokens {metrics['response_tokens']:.0f}, trainer's own split: generate "
              f"{metrics['generate_s']:.2f} s, teacher {metrics['teacher_s']:.2f} s, student "
              f"{metrics['student_s']:.2f} s "
              f"{state_note(machine_state())}")
        if args.ops:
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU]) as prof:
                trainer.train_step(3)
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.ops))


if __name__ == "__main__":
    main()
