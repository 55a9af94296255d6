"""The consolidation stage: one round of on-policy context distillation (SPEC §1.3).

    from oel.consolidate import ConsolidateConfig, consolidate
    result = consolidate(ConsolidateConfig(trajectories=..., knowledge=[...], output_dir=...,
                                           model=ModelConfig(name="qwen2.5-coder-0.5b-instruct")))
    result.model_dir   # plain HF directory: next round's policy, extractor and teacher

Each step: draw `batch_size` prefixes and one knowledge text per prefix (from seed and
step), let the sampler write one response per prefix, score the response tokens under
the student (prompt without knowledge) and the teacher (same prompt with the knowledge),
and take one AdamW step on the token-mean loss. The batch runs as micro-batches whose
gradients add up to exactly the full batch's (each micro-batch's token-mean is weighted by
its share of the batch's response tokens).

Run directory: `config.yaml` (resolved config + prompt records), `metrics.jsonl` (one line
per step, keys prefixed `consolidate/`), `checkpoints/step-NNNNNN/`, and `model/`: the final
consolidated model, LoRA merged.

Under `torchrun` / `accelerate launch` with `parallel=ddp|fsdp` the same loop runs on every
rank over its block of each step's batch; `oel.consolidate.distributed` holds everything that
differs (process group, wrappers, reductions) and explains why the result equals one process's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from oel.config import save_config, to_dict
from oel.consolidate import checkpoint, distributed, losses
from oel.consolidate.config import ConsolidateConfig
from oel.consolidate.samplers import SAMPLERS, GenerationSettings, Sample
from oel.consolidate.scoring import (PackedBatch, ResponseScorer, model_device, pack, response_logits,
                                 response_logits_by_shared_prefix_groups, shared_prefix_length)
from oel.consolidate.shared_prefill import OpenedPrompts, open_prompts, opened_response_logits, sample_responses
from oel.consolidate.teacher import Teacher, prompt_records, teacher_messages
from oel.errors import DataError, TrainingError
from oel.layout import METRICS_FILE, MODEL_DIR
from oel.provenance import refuse_if_different
from oel.io import append_jsonl, atomic_write_text, iter_jsonl, read_text_file, repair_jsonl_tail
from oel.memory import peak_rss_mib
from oel.collect.backends.sampling import RowSampling, derive_seed
from oel.trajectory import Prefix, prefixes, read_trajectories

log = logging.getLogger(__name__)

METRIC_PREFIX = "consolidate/"
"""Added to every metric name in this stage's own metrics.jsonl (and by the loop in its own)."""
CHECKPOINT_DIR = "checkpoints"
# Named random streams: derive_seed(config.seed, STREAM, step, ...) never collide across uses.
STREAM_DATA = 1
STREAM_SAMPLING = 2
STREAM_INIT = 3
# Config keys that may differ between a run and its resumption (they do not change what is learned).
RESUME_MAY_CHANGE = frozenset({"steps", "save_every", "keep_last", "on_existing", "num_threads", "output_dir",
                               "parallel", "teacher_prefix_cache", "student_prefix_cache",
                               "shared_student_prefill"})
MIN_STUDENT_HEAD_TOKENS = 32
"""A shorter shared opening is not worth a second backbone call in the student's pass."""

LossFn = Callable[[torch.Tensor, torch.Tensor | None, torch.Tensor, ConsolidateConfig],
                  tuple[torch.Tensor, dict[str, float]]]


def _all_tokens(n: int) -> torch.Tensor:
    return torch.ones(n, dtype=torch.bool)


# Packed logits [N, V] carry no padding, so every row is a response token (mask all true).
LOSSES: dict[str, LossFn] = {
    "topk_reverse_kl": lambda s, t, y, c: losses.topk_reverse_kl(s, t, _all_tokens(len(y)), k=c.top_k,
                                                                 temperature=c.loss_temperature),
    "reverse_kl": lambda s, t, y, c: losses.reverse_kl(s, t, _all_tokens(len(y)), temperature=c.loss_temperature),
    "sampled_reverse_kl": lambda s, t, y, c: losses.sampled_reverse_kl(s, t, y, _all_tokens(len(y)),
                                                                       temperature=c.loss_temperature),
    "forward_kl": lambda s, t, y, c: losses.forward_kl(s, t, _all_tokens(len(y)), temperature=c.loss_temperature),
    "sft": lambda s, t, y, c: losses.sft_loss(s, y, _all_tokens(len(y))),
}


@dataclass(frozen=True)
class ConsolidateResult:
    model_dir: Path
    steps: int
    last_metrics: dict[str, float]


def read_knowledge(paths: Sequence[str]) -> list[str]:
    """One knowledge text per plain-text file; an empty file is an error (it would teach nothing)."""
    return [read_text_file(p, "knowledge file") for p in paths]


class Consolidator:
    """Holds the student, teacher, optimizer and data of one round; `run()` trains it."""

    def __init__(self, config: ConsolidateConfig, *, loaded: Any = None,
                 knowledge_texts: Sequence[str] | None = None) -> None:
        """`loaded`: an already loaded `oel.models.LoadedModel`, else config.model is loaded. It is
        CONSUMED: LoRA layers are injected into it in place; reload `result.model_dir` afterwards.
        `knowledge_texts`: the K knowledge texts as strings, instead of config.knowledge's files."""
        config.check_inputs(need_knowledge_files=knowledge_texts is None)
        self.config = config
        self.out = Path(config.output_dir)
        self.prefixes: list[Prefix] = prefixes(read_trajectories(config.trajectories))
        self.knowledge = list(knowledge_texts) if knowledge_texts is not None else read_knowledge(config.knowledge)
        if not self.knowledge or not all(k.strip() for k in self.knowledge):
            raise DataError("knowledge: every knowledge text must be non-empty, and at least one is needed")
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        self.topology = distributed.setup(config.parallel)
        if loaded is None:
            from oel.models import load_model

            model_config = config.model
            if self.topology.device is not None:  # one device per rank: cuda:LOCAL_RANK (or cpu)
                model_config = dataclasses.replace(model_config, device=self.topology.device)
            loaded = load_model(model_config)
        self.tokenizer = loaded.tokenizer
        self.model_id = loaded.model_id
        self.student = self._prepare_student(loaded.model)
        self.scorer = ResponseScorer(self.student)
        self.teacher = Teacher(self.scorer, lora=config.finetune == "lora")
        self.parallel = distributed.make_strategy(config.parallel, self.topology, self.scorer,
                                                  self.teacher.frozen_model,
                                                  mixed_precision=config.fsdp_mixed_precision)
        self.params = [p for p in self.student.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=config.lr, weight_decay=config.weight_decay,
                                           betas=(config.adam_beta1, config.adam_beta2))
        self.sampler = SAMPLERS[config.sampler]()
        self.shared_prefill, self.student_head_cache, self.teacher_head_cache = self._fast_paths()
        self._student_dtype = self._student_compute_dtype(loaded.model)
        self._encoder = self._make_encoder(loaded)
        self._prompt_cache: dict[tuple[int, int], list[int]] = {}
        self.step = 0

    # -- setup -----------------------------------------------------------------------------
    def _prepare_student(self, model: Any) -> Any:
        c = self.config
        if c.finetune == "lora":
            from peft import LoraConfig, get_peft_model

            lora = LoraConfig(r=c.lora_r, lora_alpha=c.lora_alpha, lora_dropout=c.lora_dropout,
                              target_modules=list(c.lora_target_modules), task_type="CAUSAL_LM")
            # peft draws the adapter's initial A matrices from torch's global RNG.
            torch.manual_seed(derive_seed(c.seed, STREAM_INIT))
            model = get_peft_model(model, lora)
        else:
            model.requires_grad_(True)
            if next(model.parameters()).dtype != torch.float32:
                log.warning("full fine-tuning with %s weights: AdamW updates smaller than the weights' rounding step "
                            "(~0.4%% of a weight in bf16) are lost; set model.dtype=float32 for small learning rates",
                            next(model.parameters()).dtype)
        if c.gradient_checkpointing:
            model.gradient_checkpointing_enable()  # non-reentrant by default in transformers 5 (DDP-safe)
            if hasattr(model, "enable_input_require_grads"):
                model.enable_input_require_grads()
        model.eval()  # generation and teacher passes; the student pass switches to train()
        return model

    def _student_compute_dtype(self, model: Any) -> torch.dtype | None:
        """The autocast dtype of the student's passes (None: no autocast).

        peft keeps LoRA weights in float32 and casts each adapted module's input up to match; with
        `lora_compute_dtype=model` the adapter's matmuls run in the weights' own low precision
        instead (the float32 weights are cast down inside autocast, gradients flow back to them),
        so backward keeps a bf16 copy of those inputs rather than a float32 one.
        """
        dtype = next(model.parameters()).dtype
        if self.config.finetune != "lora" or self.config.lora_compute_dtype == "float32" or dtype == torch.float32:
            return None
        return dtype

    def _student_precision(self) -> contextlib.AbstractContextManager[Any]:
        """Autocast to the student's compute dtype around its passes (a no-op in float32)."""
        if self._student_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=model_device(self.student).type, dtype=self._student_dtype)

    def _fast_paths(self) -> tuple[bool, bool, bool]:
        """Which of the switched computations (shared_student_prefill, student_prefix_cache,
        teacher_prefix_cache) run here: each one that is on, unless something here rules it out."""
        c = self.config
        fsdp = self.topology.distributed and c.parallel == "fsdp"  # the sharded backbone is called outside its wrapper
        blockers = {
            "shared_student_prefill": {"sampler=off_policy": c.sampler != "on_policy",
                                       "lora_dropout > 0": c.finetune == "lora" and c.lora_dropout > 0,
                                       "gradient_checkpointing": c.gradient_checkpointing,
                                       "more than one process": self.topology.distributed},
            "student_prefix_cache": {"gradient_checkpointing": c.gradient_checkpointing, "FSDP": fsdp},
            "teacher_prefix_cache": {"FSDP": fsdp},
        }
        used = []
        for name, reasons in blockers.items():
            held = [why for why, blocks in reasons.items() if blocks]
            if getattr(c, name) and held:
                log.info("%s: skipped here (%s)", name, ", ".join(held))
            used.append(bool(getattr(c, name)) and not held)
        return used[0], used[1], used[2]

    def _make_encoder(self, loaded: Any) -> Any:
        """The collection stage's own chat encoding, so the student sees exactly what it played with."""
        from oel.collect.backends.hf import HFBackend

        # No prefix store: the weights change every step, so stored KV would be stale.
        backend = HFBackend(self.student, self.tokenizer, model_id=self.model_id, prefix_cache_bytes=0)
        self.generation = GenerationSettings(pad_id=backend.pad_id, stop_ids=backend.stop_ids,
                                             max_new_tokens=self.config.max_new_tokens,
                                             chunk_size=self.config.micro_batch_size,
                                             synced=self.parallel.synced_generation)
        return backend

    def _encode(self, prefix_index: int, knowledge_index: int) -> list[int]:
        """Token ids of a prompt; knowledge_index -1 = the student's prompt (no knowledge)."""
        key = (prefix_index, knowledge_index)
        if key not in self._prompt_cache:
            prefix = self.prefixes[prefix_index]
            msgs = list(prefix.prompt) if knowledge_index < 0 else teacher_messages(prefix, self.knowledge[knowledge_index])
            self._prompt_cache[key] = self._encoder.encode(msgs)
        return self._prompt_cache[key]

    def prepare_output(self) -> None:
        """Handle an existing run dir per `on_existing`, resume if asked, write config.yaml.

        Every rank looks at the directory before rank 0 may delete it (so all ranks agree on
        `on_existing=error`), and every rank loads the same checkpoint.
        """
        c = self.config
        existing = checkpoint.list_checkpoints(self.out / CHECKPOINT_DIR)
        held = (self.out / METRICS_FILE).exists() or bool(existing)
        self.parallel.barrier()
        if held:
            if c.on_existing == "error":
                raise TrainingError(f"{self.out}: already holds a run (set on_existing=resume or overwrite)")
            if c.on_existing == "overwrite":
                if self.topology.is_main:
                    shutil.rmtree(self.out)
                existing = []
        if self.topology.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
        self.parallel.barrier()
        if existing:
            step, path = existing[-1]
            self._check_same_run(path)
            self.step = self.parallel.load_checkpoint(path, self.student, self.optimizer)
            if self.topology.is_main:
                log.info("resumed from %s (step %d)", path, self.step)
        if not self.topology.is_main:
            return
        self._truncate_metrics(self.step)
        log.info("%d prefixes, %d knowledge texts, starting at step %d; peak RSS after setup %.0f MiB",
                 len(self.prefixes), len(self.knowledge), self.step, peak_rss_mib())
        save_config(c, self.out / "config.yaml")
        atomic_write_text(self.out / "prompts.json", _json(prompt_records()))

    def _check_same_run(self, path: Path) -> None:
        """Resuming under different training settings would silently mix two runs: refuse."""
        refuse_if_different(checkpoint.read_state(path)["config"], to_dict(self.config), where=str(path),
                            hint="use on_existing=overwrite or a new output_dir", ignore=RESUME_MAY_CHANGE,
                            error=TrainingError)

    def _truncate_metrics(self, step: int) -> None:
        """Drop metric lines of steps after the checkpoint we resume from (they will be redone)."""
        path = self.out / METRICS_FILE
        if not path.exists():
            return
        repair_jsonl_tail(path)
        keep = [obj for _, obj in iter_jsonl(path) if obj.get("step", 0) <= step]
        atomic_write_text(path, "".join(_json(o, indent=None) + "\n" for o in keep))

    # -- one step --------------------------------------------------------------------------
    def draw(self, step: int) -> list[tuple[int, int]]:
        """(prefix index, knowledge index) per row of step `step`: a pure function of (seed, step)."""
        gen = torch.Generator().manual_seed(derive_seed(self.config.seed, STREAM_DATA, step))
        n, bs = len(self.prefixes), self.config.batch_size
        rows = torch.randperm(n, generator=gen)[:bs] if bs <= n else torch.randint(n, (bs,), generator=gen)
        ks = torch.randint(len(self.knowledge), (bs,), generator=gen)
        return list(zip(rows.tolist(), ks.tolist()))

    def _rows(self, step: int) -> tuple[list[tuple[int, int]], list[list[int]], list[list[int]], list[RowSampling]]:
        """This rank's rows of step `step`: (prefix, knowledge) picks, both prompts, sampling settings.

        A row's sampling seed comes from its index in the GLOBAL batch, so the ranks' blocks
        together sample exactly what one process would.
        """
        c = self.config
        everyone = self.draw(step)
        mine = distributed.my_rows(len(everyone), self.topology)
        picks = [everyone[i] for i in mine]
        student_prompts = [self._encode(p, -1) for p, _ in picks]
        teacher_prompts = [self._encode(p, k) for p, k in picks]
        rows = [RowSampling(c.temperature, c.top_p, c.sample_top_k, derive_seed(c.seed, STREAM_SAMPLING, step, i))
                for i in mine]
        return picks, student_prompts, teacher_prompts, rows

    def sample(self, step: int) -> list[Sample]:
        """This rank's rows of step `step` (all of them in a single process), with responses."""
        picks, student_prompts, teacher_prompts, rows = self._rows(step)
        responses = self.sampler.responses(self.scorer, self.teacher, student_prompts, teacher_prompts,
                                           rows, self.generation)
        return [Sample(p, k, sp, tp, r)
                for (p, k), sp, tp, r in zip(picks, student_prompts, teacher_prompts, responses)]

    def _micro_loss(self, samples: Sequence[Sample],
                    opened: OpenedPrompts | None = None) -> tuple[torch.Tensor, dict[str, float], float]:
        """Loss of one micro-batch (token-mean) and the seconds spent in the teacher.

        `opened`: the student's prompts already run with gradients (shared prefill): only the
        responses are left to run for the student's logits."""
        c, pad = self.config, self.generation.pad_id
        responses = [s.response for s in samples]
        t0 = time.perf_counter()
        teacher_NV = None
        if c.loss != "sft":
            teacher_prompts = [s.teacher_prompt for s in samples]
            with torch.no_grad(), self.teacher.active() as teacher:
                if self.teacher_head_cache:  # rows of one knowledge text share their prompt head
                    teacher_NV = response_logits_by_shared_prefix_groups(
                        teacher, teacher_prompts, responses, [s.knowledge_index for s in samples], pad_id=pad)
                else:
                    teacher_NV = response_logits(teacher, pack(teacher_prompts, responses, pad_id=pad))
        teacher_s = time.perf_counter() - t0
        if opened is not None:
            with self._student_precision():
                student_NV = opened_response_logits(self.student, opened, responses, pad_id=pad)
            tokens_N = torch.tensor([t for r in responses for t in r], device=student_NV.device)
        else:
            student_NV, tokens_N = self._student_logits(samples)
        loss, metrics = LOSSES[c.loss](student_NV, teacher_NV, tokens_N, c)
        everywhere = _all_tokens(len(tokens_N))
        if "student_topk_mass" not in metrics:
            metrics["student_topk_mass"] = losses.student_topk_mass(student_NV, everywhere, k=c.top_k,
                                                                     temperature=c.loss_temperature)
        if teacher_NV is not None:  # the exact KL, whatever the loss: top-k KL alone can be gamed
            with torch.no_grad():
                metrics["reverse_kl_full"] = losses.reverse_kl(student_NV, teacher_NV, everywhere,
                                                               temperature=c.loss_temperature)[1]["loss"]
        return loss, metrics, teacher_s

    def _student_head(self, student_prompts: Sequence[list[int]]) -> int:
        """Tokens of the opening the student's prompts share, to run once (0: run every row in full)."""
        if not self.student_head_cache or len(student_prompts) < 2:
            return 0
        head = shared_prefix_length(student_prompts)
        return head if head >= MIN_STUDENT_HEAD_TOKENS else 0

    def _student_logits(self, samples: Sequence[Sample]) -> tuple[torch.Tensor, torch.Tensor]:
        """The student's scoring pass with gradients over prompt + response: (logits [N, V], tokens [N])."""
        pad = self.generation.pad_id
        student_prompts = [s.student_prompt for s in samples]
        batch: PackedBatch = pack(student_prompts, [s.response for s in samples], pad_id=pad)  # right-padded
        self.student.train()
        try:
            with self._student_precision():
                student_NV = self.parallel.train_module(batch.input_ids_BT, batch.attention_mask_BT, batch.response_mask_BT,
                                                        head_tokens=self._student_head(student_prompts))
        finally:
            self.student.eval()
        return student_NV, batch.response_tokens_N.to(student_NV.device)

    def train_step(self, step: int) -> dict[str, float]:
        """Sample, score, update. A non-finite loss or gradient raises before anything changes.

        The gradient is that of the whole batch's token-mean loss, however the rows are split
        into micro-batches and ranks (each micro-batch's token mean weighted by its share of
        the GLOBAL batch's response tokens).
        """
        t_start = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        accumulate = self._accumulate_shared_prefill if self.shared_prefill else self._accumulate_separate
        sums, total, generate_s, teacher_s = accumulate(step)
        grad_norm = self._clip_and_check(step)
        self.optimizer.step()
        step_s = time.perf_counter() - t_start
        return {
            **sums, "grad_norm": grad_norm, "lr": self.config.lr, "response_len_mean": total / self.config.batch_size,
            "response_tokens": float(total), "tokens_per_s": total / step_s, "step_s": step_s,
            "generate_s": generate_s, "teacher_s": teacher_s, "student_s": step_s - generate_s - teacher_s,
            "peak_rss_mib": peak_rss_mib(),
        }

    def _accumulate_separate(self, step: int) -> tuple[dict[str, float], float, float, float]:
        """Sample every row first, then score micro-batch by micro-batch, backward each.

        Returns (token-weighted metric means, global response tokens, generate s, teacher s).
        The global token count is known before the first backward, so each micro-batch's loss
        is scaled by its share right away (what DDP/FSDP's reduction inside backward needs).
        """
        t_start = time.perf_counter()
        with self._student_precision():
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
                loss, metrics, t_s = self._micro_loss(chunk)
                teacher_s += t_s
                self._check_loss(loss, step, j // mb)
                share = sum(len(s.response) for s in chunk) / total
                (loss * (share * self.parallel.grad_scale)).backward()
            for key, value in metrics.items():
                sums[key] = sums.get(key, 0.0) + value * share
        sums = dict(zip(sums, self.parallel.all_sum(list(sums.values()))))
        return sums, total, generate_s, teacher_s

    def _accumulate_shared_prefill(self, step: int) -> tuple[dict[str, float], float, float, float]:
        """Per micro-batch: the student's prompts run once with gradients, the responses are sampled
        from that pass, the teacher scores them, the student's logits continue from the same pass.

        Single process only. The batch's token count is known only after the last micro-batch
        has sampled, so each micro-batch's backward is weighted by its own token count and the
        summed gradient is divided by the total at the end: the same gradient as above.
        """
        c, pad = self.config, self.generation.pad_id
        picks, student_prompts, teacher_prompts, rows = self._rows(step)
        parts: list[tuple[dict[str, float], int]] = []
        generate_s = teacher_s = 0.0
        for j in range(0, len(picks), c.micro_batch_size):
            part = slice(j, j + c.micro_batch_size)
            self.student.train()
            try:
                with self._student_precision():
                    opened = open_prompts(self.student, student_prompts[part], pad_id=pad,
                                          head_tokens=self._student_head(student_prompts[part]))
                    t0 = time.perf_counter()
                    responses = sample_responses(self.student, opened, rows[part], stop_ids=self.generation.stop_ids,
                                                 max_new_tokens=c.max_new_tokens)
                    generate_s += time.perf_counter() - t0
                chunk = [Sample(p, k, sp, tp, r) for (p, k), sp, tp, r
                         in zip(picks[part], student_prompts[part], teacher_prompts[part], responses)]
                loss, metrics, t_s = self._micro_loss(chunk, opened=opened)
            finally:
                self.student.eval()
            teacher_s += t_s
            self._check_loss(loss, step, j // c.micro_batch_size)
            tokens = sum(len(r) for r in responses)
            (loss * tokens).backward()
            parts.append((metrics, tokens))
            del opened, loss
        total = sum(tokens for _, tokens in parts)
        for p in self.params:
            if p.grad is not None:
                p.grad.div_(total)
        sums = {key: sum(m[key] * tokens for m, tokens in parts) / total for key in parts[0][0]}
        return sums, float(total), generate_s, teacher_s

    def _check_loss(self, loss: torch.Tensor, step: int, micro_batch: int) -> None:
        if not self.parallel.all_true(bool(torch.isfinite(loss))):
            self.optimizer.zero_grad(set_to_none=True)
            raise TrainingError(f"consolidate step {step}: non-finite loss {float(loss)} in micro-batch {micro_batch} "
                                "(on this rank or another); nothing was written")

    def _clip_and_check(self, step: int) -> float:
        clip = self.config.grad_clip if self.config.grad_clip > 0 else math.inf
        norm = self.parallel.grad_norm(self.params, clip)
        if not math.isfinite(norm):
            self.optimizer.zero_grad(set_to_none=True)
            raise TrainingError(f"consolidate step {step}: non-finite gradient norm {norm}; nothing was written")
        return norm

    # -- the loop --------------------------------------------------------------------------
    def run(self, on_step: Callable[[int, dict[str, float]], None] | None = None) -> ConsolidateResult:
        """Train from the current step to `config.steps`, checkpointing; write the final model."""
        c = self.config
        last: dict[str, float] = {}
        while self.step < c.steps:
            step = self.step + 1
            metrics = self.train_step(step)
            self.step = step
            last = metrics
            if self.topology.is_main:
                append_jsonl(self.out / METRICS_FILE, {"step": step, **{f"{METRIC_PREFIX}{k}": v for k, v in metrics.items()}})
                log.info("step %d/%d loss %.4f mass %.3f %.1fs", step, c.steps, metrics["loss"],
                         metrics["student_topk_mass"], metrics["step_s"])
            if on_step is not None:
                on_step(step, metrics)
            if c.save_every and step % c.save_every == 0 and step < c.steps:
                self.save_checkpoint()
        model_dir = self.out / MODEL_DIR
        with self.parallel.full_weights():
            if self.topology.is_main:
                checkpoint.save_hf_model(self.student, self.tokenizer, model_dir)
        self.parallel.barrier()  # no rank returns before the model is on disk
        return ConsolidateResult(model_dir, self.step, last)

    def save_checkpoint(self) -> Path:
        """Rank 0 writes the checkpoint (weights gathered first under FSDP); all ranks wait for it."""
        optimizer_state = self.parallel.optimizer_state(self.optimizer)
        final = checkpoint.checkpoint_dir(self.out / CHECKPOINT_DIR, self.step)
        with self.parallel.full_weights():
            if self.topology.is_main:
                final = checkpoint.save_checkpoint(self.out / CHECKPOINT_DIR, self.step, model=self.student,
                                                   tokenizer=self.tokenizer, optimizer=self.optimizer,
                                                   config=to_dict(self.config), keep_last=self.config.keep_last,
                                                   optimizer_state=optimizer_state)
        self.parallel.barrier()
        return final

    def close(self) -> None:
        """Leave the process group if this trainer created it (a no-op in a single process)."""
        self.parallel.close()


def consolidate(config: ConsolidateConfig, *, loaded: Any = None, knowledge_texts: Sequence[str] | None = None,
                on_step: Callable[[int, dict[str, float]], None] | None = None) -> ConsolidateResult:
    """Run (or resume) one round's consolidation; returns where the consolidated model is."""
    trainer = Consolidator(config, loaded=loaded, knowledge_texts=knowledge_texts)
    try:
        trainer.prepare_output()
        return trainer.run(on_step)
    finally:
        trainer.close()


def _json(obj: Any, indent: int | None = 2) -> str:
    import json

    return json.dumps(obj, indent=indent, ensure_ascii=False)
