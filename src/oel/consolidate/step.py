"""One consolidation step: sample, score under student and teacher, one optimizer update.

`TrainingStep` holds the pieces a step touches (student, scorer, teacher, parallel strategy,
optimizer, data, settings) and nothing of the run around it (files, resume, the loop): the
trainer builds one and calls `run(step)` per step.

The batch runs as micro-batches whose gradients add up to exactly the full batch's: each
micro-batch's token-mean loss is weighted by its share of the (global) batch's response
tokens. Two ways to get there, same gradient:
- `accumulate_separate`: sample every row first, then score micro-batch by micro-batch;
- `accumulate_shared_prefill` (one process, on-policy): per micro-batch, the student's
  prompts run once with gradients, and both the sampling and the scoring continue from that
  pass (`oel.consolidate.shared_prefill`).
A non-finite loss or gradient raises before the optimizer changes anything.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch

from oel.consolidate import losses
from oel.consolidate.build import student_precision
from oel.consolidate.config import ConsolidateConfig
from oel.consolidate.data import ConsolidationData
from oel.consolidate.distributed import Topology
from oel.consolidate.fast_paths import FastPaths
from oel.consolidate.samplers import GenerationSettings, ResponseSampler, Sample
from oel.consolidate.scoring import (KeptHeads, PackedBatch, ResponseScorer, pack, response_logits,
                                     response_logits_by_shared_prefix_groups, shared_prefix_length)
from oel.consolidate.shared_prefill import OpenedPrompts, open_prompts, opened_response_logits, sample_responses
from oel.consolidate.teacher import Teacher
from oel.errors import TrainingError
from oel.memory import peak_rss_mib

MIN_STUDENT_HEAD_TOKENS = 32
"""A shorter shared opening is not worth a second backbone call in the student's pass."""

LossFn = Callable[[torch.Tensor, torch.Tensor | None, torch.Tensor, ConsolidateConfig],
                  tuple[torch.Tensor, dict[str, float]]]


def all_tokens(n: int) -> torch.Tensor:
    """The mask of packed logits [N, V]: they carry no padding, so every row is a response token."""
    return torch.ones(n, dtype=torch.bool)


LOSSES: dict[str, LossFn] = {
    "topk_reverse_kl": lambda s, t, y, c: losses.topk_reverse_kl(s, t, all_tokens(len(y)), k=c.top_k,
                                                                 temperature=c.loss_temperature),
    "reverse_kl": lambda s, t, y, c: losses.reverse_kl(s, t, all_tokens(len(y)), temperature=c.loss_temperature),
    "sampled_reverse_kl": lambda s, t, y, c: losses.sampled_reverse_kl(s, t, y, all_tokens(len(y)),
                                                                       temperature=c.loss_temperature),
    "forward_kl": lambda s, t, y, c: losses.forward_kl(s, t, all_tokens(len(y)), temperature=c.loss_temperature),
    "sft": lambda s, t, y, c: losses.sft_loss(s, y, all_tokens(len(y))),
}
"""Loss name (`ConsolidateConfig.loss`) -> (student [N, V], teacher [N, V] or None, tokens [N], config)."""


class Accumulated(NamedTuple):
    """What a step's micro-batches added up to (the gradients themselves are on the parameters)."""

    metrics: dict[str, float]
    """Token-weighted means over the global batch."""
    tokens: float
    """Response tokens of the global batch."""
    generate_s: float
    teacher_s: float


@dataclass
class TrainingStep:
    """The pieces one optimizer step touches; `run(step)` takes the step."""

    config: ConsolidateConfig
    data: ConsolidationData
    topology: Topology
    student: Any
    scorer: ResponseScorer
    teacher: Teacher
    parallel: Any
    """The distributed strategy (`oel.consolidate.distributed.make_strategy`)."""
    sampler: ResponseSampler
    generation: GenerationSettings
    optimizer: torch.optim.Optimizer
    params: list[torch.nn.Parameter]
    fast_paths: FastPaths
    compute_dtype: torch.dtype | None
    """The student passes' autocast dtype (`build.student_compute_dtype`)."""
    teacher_heads: KeptHeads = field(init=False)
    """The frozen teacher's prompt heads (one per knowledge text), run once per run instead of once per step."""

    def __post_init__(self) -> None:
        self.teacher_heads = KeptHeads(self.data.teacher_head)

    def run(self, step: int) -> dict[str, float]:
        """Sample, score, update; returns the step's metrics.

        The gradient is that of the whole batch's token-mean loss, however the rows are split
        into micro-batches and ranks (each micro-batch's token mean weighted by its share of
        the GLOBAL batch's response tokens).
        """
        t_start = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        accumulate = self.accumulate_shared_prefill if self.fast_paths.shared_prefill else self.accumulate_separate
        sums, total, generate_s, teacher_s = accumulate(step)
        grad_norm = self.clip_and_check(step)
        self.optimizer.step()
        step_s = time.perf_counter() - t_start
        return {
            **sums, "grad_norm": grad_norm, "lr": self.config.lr, "response_len_mean": total / self.config.batch_size,
            "response_tokens": float(total), "tokens_per_s": total / step_s, "step_s": step_s,
            "generate_s": generate_s, "teacher_s": teacher_s, "student_s": step_s - generate_s - teacher_s,
            "peak_rss_mib": peak_rss_mib(),
        }

    def precision(self) -> contextlib.AbstractContextManager[Any]:
        """Autocast around the student's passes (a no-op in float32)."""
        return student_precision(self.student, self.compute_dtype)

    def sample(self, step: int) -> list[Sample]:
        """This rank's rows of step `step` (all of them in a single process), with responses."""
        rows = self.data.rows(self.config, step, self.topology)
        responses = self.sampler.responses(self.scorer, self.teacher, rows.student_prompts, rows.teacher_prompts,
                                           rows.sampling, self.generation)
        return rows.samples(responses)

    # -- one micro-batch ---------------------------------------------------------------------
    def micro_loss(self, samples: Sequence[Sample],
                   opened: OpenedPrompts | None = None) -> tuple[torch.Tensor, dict[str, float], float]:
        """Loss of one micro-batch (token-mean), its metrics, and the seconds spent in the teacher.

        `opened`: the student's prompts already run with gradients (shared prefill): only the
        responses are left to run for the student's logits."""
        c, pad = self.config, self.generation.pad_id
        responses = [s.response for s in samples]
        t0 = time.perf_counter()
        teacher_NV = None if c.loss == "sft" else self.teacher_logits(samples)
        teacher_s = time.perf_counter() - t0
        if opened is not None:
            with self.precision():
                student_NV = opened_response_logits(self.student, opened, responses, pad_id=pad)
            tokens_N = torch.tensor([t for r in responses for t in r], device=student_NV.device)
        else:
            student_NV, tokens_N = self.student_logits(samples)
        loss, metrics = LOSSES[c.loss](student_NV, teacher_NV, tokens_N, c)
        everywhere = all_tokens(len(tokens_N))
        if "student_topk_mass" not in metrics:
            metrics["student_topk_mass"] = losses.student_topk_mass(student_NV, everywhere, k=c.top_k,
                                                                     temperature=c.loss_temperature)
        if teacher_NV is not None:  # the exact KL, whatever the loss: top-k KL alone can be gamed
            if c.loss == "reverse_kl":  # the loss IS that KL: the same numbers, computed once
                metrics["reverse_kl_full"] = metrics["loss"]
            else:
                with torch.no_grad():
                    metrics["reverse_kl_full"] = losses.reverse_kl(student_NV, teacher_NV, everywhere,
                                                                   temperature=c.loss_temperature)[1]["loss"]
        return loss, metrics, teacher_s

    def teacher_logits(self, samples: Sequence[Sample]) -> torch.Tensor:
        """The frozen teacher's logits [N, V] at the response tokens of its (knowledge) prompts."""
        pad = self.generation.pad_id
        responses = [s.response for s in samples]
        teacher_prompts = [s.teacher_prompt for s in samples]
        with torch.no_grad(), self.teacher.active() as teacher:
            if self.fast_paths.teacher_head_cache:  # rows of one knowledge text share their prompt head
                return response_logits_by_shared_prefix_groups(
                    teacher, teacher_prompts, responses, [s.knowledge_index for s in samples], pad_id=pad,
                    kept=self.teacher_heads)
            return response_logits(teacher, pack(teacher_prompts, responses, pad_id=pad))

    def student_head(self, student_prompts: Sequence[list[int]]) -> int:
        """Tokens of the opening the student's prompts share, to run once (0: run every row in full)."""
        if not self.fast_paths.student_head_cache or len(student_prompts) < 2:
            return 0
        head = shared_prefix_length(student_prompts)
        return head if head >= MIN_STUDENT_HEAD_TOKENS else 0

    def student_logits(self, samples: Sequence[Sample]) -> tuple[torch.Tensor, torch.Tensor]:
        """The student's scoring pass with gradients over prompt + response: (logits [N, V], tokens [N])."""
        pad = self.generation.pad_id
        student_prompts = [s.student_prompt for s in samples]
        batch: PackedBatch = pack(student_prompts, [s.response for s in samples], pad_id=pad)  # right-padded
        self.student.train()
        try:
            with self.precision():
                student_NV = self.parallel.train_module(batch.input_ids_BT, batch.attention_mask_BT,
                                                        batch.response_mask_BT,
                                                        head_tokens=self.student_head(student_prompts))
        finally:
            self.student.eval()
        return student_NV, batch.response_tokens_N.to(student_NV.device)

    # -- the two ways to accumulate a batch's gradient ---------------------------------------
    def accumulate_separate(self, step: int) -> Accumulated:
        """Sample every row first, then score micro-batch by micro-batch, backward each.

        The global token count is known before the first backward, so each micro-batch's loss
        is scaled by its share right away (what DDP/FSDP's reduction inside backward needs).
        """
        t_start = time.perf_counter()
        with self.precision():
            samples = self.sample(step)
        generate_s = time.perf_counter() - t_start
        total = self.parallel.all_sum([float(sum(len(s.response) for s in samples))])[0]
        sums: dict[str, float] = {}
        teacher_s = 0.0
        mb = self.config.micro_batch_size
        starts = range(0, len(samples), mb)
        for j in starts:
            chunk = samples[j:j + mb]
            with self.parallel.accumulate(sync=j == starts[-1]):
                loss, metrics, t_s = self.micro_loss(chunk)
                teacher_s += t_s
                self.check_loss(loss, step, j // mb)
                share = sum(len(s.response) for s in chunk) / total
                (loss * (share * self.parallel.grad_scale)).backward()
            for key, value in metrics.items():
                sums[key] = sums.get(key, 0.0) + value * share
        sums = dict(zip(sums, self.parallel.all_sum(list(sums.values()))))
        return Accumulated(sums, total, generate_s, teacher_s)

    def accumulate_shared_prefill(self, step: int) -> Accumulated:
        """Per micro-batch: the student's prompts run once with gradients, the responses are sampled
        from that pass, the teacher scores them, the student's logits continue from the same pass.

        Single process only. The batch's token count is known only after the last micro-batch
        has sampled, so each micro-batch's backward is weighted by its own token count and the
        summed gradient is divided by the total at the end: the same gradient as above.
        """
        c, pad = self.config, self.generation.pad_id
        rows = self.data.rows(c, step, self.topology)
        parts: list[tuple[dict[str, float], int]] = []
        generate_s = teacher_s = 0.0
        for j in range(0, len(rows), c.micro_batch_size):
            part = rows.part(slice(j, j + c.micro_batch_size))
            self.student.train()
            try:
                with self.precision():
                    opened = open_prompts(self.student, part.student_prompts, pad_id=pad,
                                          head_tokens=self.student_head(part.student_prompts))
                    t0 = time.perf_counter()
                    responses = sample_responses(self.student, opened, part.sampling, stop_ids=self.generation.stop_ids,
                                                 max_new_tokens=c.max_new_tokens)
                    generate_s += time.perf_counter() - t0
                loss, metrics, t_s = self.micro_loss(part.samples(responses), opened=opened)
            finally:
                self.student.eval()
            teacher_s += t_s
            self.check_loss(loss, step, j // c.micro_batch_size)
            tokens = sum(len(r) for r in responses)
            (loss * tokens).backward()
            parts.append((metrics, tokens))
            del opened, loss
        total = sum(tokens for _, tokens in parts)
        for p in self.params:
            if p.grad is not None:
                p.grad.div_(total)
        sums = {key: sum(m[key] * tokens for m, tokens in parts) / total for key in parts[0][0]}
        return Accumulated(sums, float(total), generate_s, teacher_s)

    # -- checks ------------------------------------------------------------------------------
    def check_loss(self, loss: torch.Tensor, step: int, micro_batch: int) -> None:
        """Every rank stops on a non-finite loss on any rank, with no gradient left behind."""
        if not self.parallel.all_true(bool(torch.isfinite(loss))):
            self.optimizer.zero_grad(set_to_none=True)
            raise TrainingError(f"consolidate step {step}: non-finite loss {float(loss.detach())} in micro-batch "
                                f"{micro_batch} (on this rank or another); nothing was written")

    def clip_and_check(self, step: int) -> float:
        """Clip the global gradient norm (`grad_clip`, 0: no clipping); a non-finite norm raises."""
        clip = self.config.grad_clip if self.config.grad_clip > 0 else math.inf
        norm = self.parallel.grad_norm(self.params, clip)
        if not math.isfinite(norm):
            self.optimizer.zero_grad(set_to_none=True)
            raise TrainingError(f"consolidate step {step}: non-finite gradient norm {norm}; nothing was written")
        return norm
