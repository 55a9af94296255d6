"""The consolidation stage: one round of on-policy context distillation (docs/method.md).

    from oel.consolidate import ConsolidateConfig, consolidate
    result = consolidate(ConsolidateConfig(steps=10), model=ModelConfig(name="qwen2.5-coder-0.5b-instruct"),
                         knowledge=Knowledge.read(["k0.txt", "k1.txt"]), trajectories="t.jsonl",
                         output_dir="runs/r0/consolidate")
    result.model_dir   # plain HF directory: next round's policy, extractor and teacher

The config holds the user's settings only; what the run reads and writes, and which model it
trains, are arguments (the loop passes its round's; `oel consolidate` reads them from its keys,
`ConsolidateCommandConfig`). One model argument: its config (loaded here, on this rank's device
under a launcher) or the model already loaded (the loop's M_r, whose config it carries).

Each step: draw `batch_size` prefixes and one knowledge text per prefix (from seed and
step), let the sampler write one response per prefix, score the response tokens under
the student (prompt without knowledge) and the teacher (same prompt with the knowledge),
and take one AdamW step on the token-mean loss. The batch runs as micro-batches whose
gradients add up to exactly the full batch's (each micro-batch's token-mean is weighted by
its share of the batch's response tokens).

`Consolidator` composes the parts and owns the run around the steps:
- `data`: the dataset, the per-step draw, prompt encoding, per-row sampling seeds;
- `build`: the student (LoRA or full fine-tune), its compute precision, the optimizer;
- `fast_paths`: which switched computations run here (a pure decision, logged here);
- `step`: one training step (`TrainingStep`): losses, gradient accumulation, checks;
- here: the run directory (on_existing, resume, config and prompt records), the loop,
  checkpoints and the final model.

Run directory: `config.yaml` (the run record: inputs + settings), `prompts.json`, `metrics.jsonl` (one line
per step, keys prefixed `consolidate/`), `checkpoints/step-NNNNNN/`, and `model/`: the final
consolidated model, LoRA merged.

Under `torchrun` / `accelerate launch` with `parallel=ddp|fsdp` the same loop runs on every
rank over its block of each step's batch; `oel.consolidate.distributed` holds everything that
differs (process group, wrappers, reductions) and explains why the result equals one process's.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from oel import progress
from oel.config import save_config
from oel.consolidate import build, checkpoint, distributed
from oel.consolidate.config import (ConsolidateCommandConfig, ConsolidateConfig, ConsolidateInputs, OnExisting,
                                    run_record)
from oel.consolidate.data import ConsolidationData, check_knowledge, make_encoder
from oel.consolidate.data import draw as draw_rows
from oel.consolidate.fast_paths import FastPaths, decide_fast_paths
from oel.consolidate.samplers import SAMPLERS, GenerationSettings, Sample
from oel.consolidate.scoring import ResponseScorer
from oel.consolidate.step import LOSSES, TrainingStep
from oel.consolidate.teacher import Teacher, prompt_records, prompts_changed
from oel.errors import ConfigError, TrainingError
from oel.io import append_jsonl, atomic_write_text, check_writable_dir, iter_jsonl, repair_jsonl_tail
from oel.knowledge import Knowledge
from oel.layout import METRICS_FILE, MODEL_DIR, PROMPTS_FILE
from oel.memory import peak_rss_mib
from oel.models import LoadedModel, ModelConfig, check_model_name
from oel.provenance import as_today, refuse_if_different
from oel.trajectory import Prefix, prefixes, read_trajectories

__all__ = ["LOSSES", "ConsolidateResult", "Consolidator", "command_trainer", "consolidate", "consolidate_command"]
"""`LOSSES` is re-exported: it is the very dict `step` looks losses up in (tests patch it here)."""

log = logging.getLogger(__name__)

METRIC_PREFIX = "consolidate/"
"""Added to every metric name in this stage's own metrics.jsonl (and by the loop in its own)."""
CHECKPOINT_DIR = "checkpoints"
# Config keys that may differ between a run and its resumption (they do not change what is learned).
RESUME_MAY_CHANGE = frozenset({"steps", "save_every", "keep_last", "on_existing", "num_threads", "output_dir",
                               "parallel", "teacher_prefix_cache", "student_prefix_cache",
                               "shared_student_prefill"})


@dataclass(frozen=True)
class ConsolidateResult:
    """Where the consolidated model is, how many steps it has, and the last step's metrics."""

    model_dir: Path
    steps: int
    last_metrics: dict[str, float]


class Consolidator:
    """Holds the student, teacher, optimizer and data of one round; `run()` trains it."""

    def __init__(self, config: ConsolidateConfig, *, model: ModelConfig | LoadedModel, knowledge: Knowledge,
                 trajectories: str | Path, output_dir: str | Path, on_existing: OnExisting = "resume") -> None:
        """`model`: M_r, as a config to load here (after joining a launcher's process group, on this
        rank's device) or already loaded (it then carries its config). A loaded model is CONSUMED:
        LoRA layers are injected into it in place; reload `result.model_dir` afterwards.
        `knowledge`: the K texts (one drawn per prefix). `trajectories`: the round's JSONL.
        `output_dir`: the run directory; `on_existing` says what to do if it already holds a run."""
        self.config = config
        model_config = model if isinstance(model, ModelConfig) else model.config
        if model_config is None:
            raise ConfigError("model: a loaded model must carry the config it was loaded with (oel.models.load_model)")
        self.inputs = ConsolidateInputs(trajectories=str(trajectories), knowledge=list(knowledge.files),
                                        output_dir=str(output_dir), model=model_config, on_existing=on_existing)
        # Inputs (and where the output goes) first: a bad path fails before any model is loaded.
        self.out = check_writable_dir(output_dir, "consolidation output_dir")
        if isinstance(model, ModelConfig):
            check_model_name(model.name)
        if config.teacher_model:
            check_model_name(config.teacher_model, "teacher_model")
        round_prefixes: list[Prefix] = prefixes(read_trajectories(trajectories))
        texts = check_knowledge(knowledge.texts)
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        self.topology = distributed.setup(config.parallel)
        loaded = build.load_round_model(model, self.topology) if isinstance(model, ModelConfig) else model
        self.tokenizer = loaded.tokenizer
        self.model_id = loaded.model_id
        self.student = build.prepare_student(loaded.model, config)
        self.scorer = ResponseScorer(self.student)
        self.teacher = Teacher(self.scorer, lora=config.finetune == "lora",
                               other=build.load_teacher_model(config, self.topology, loaded, model_config))
        self.parallel = distributed.make_strategy(config.parallel, self.topology, self.scorer,
                                                  self.teacher.frozen_model,
                                                  mixed_precision=config.fsdp_mixed_precision)
        self.params = [p for p in self.student.parameters() if p.requires_grad]
        self.optimizer = build.make_optimizer(self.params, config)
        self.sampler = SAMPLERS[config.sampler]()
        encoder = make_encoder(self.student, self.tokenizer, self.model_id)
        self.data = ConsolidationData(round_prefixes, texts, encoder.encode, config.teacher_template,
                                       config.task_teacher_template)
        self.training_step = TrainingStep(
            config=config, data=self.data, topology=self.topology, student=self.student, scorer=self.scorer,
            teacher=self.teacher, parallel=self.parallel, sampler=self.sampler,
            generation=GenerationSettings(pad_id=encoder.pad_id, stop_ids=encoder.stop_ids,
                                          max_new_tokens=config.max_new_tokens, chunk_size=config.micro_batch_size,
                                          synced=self.parallel.synced_generation),
            optimizer=self.optimizer, params=self.params, fast_paths=self._fast_paths(),
            compute_dtype=build.student_compute_dtype(loaded.model, config))
        self.step = 0

    def _fast_paths(self) -> FastPaths:
        """The switched computations in use here, with a log line for each one skipped."""
        fsdp = self.topology.distributed and self.config.parallel == "fsdp"
        paths, skipped = decide_fast_paths(self.config, distributed=self.topology.distributed, fsdp=fsdp)
        for name, reasons in skipped.items():
            log.info("%s: skipped here (%s)", name, ", ".join(reasons))
        return paths

    # -- what the parts hold, under the names callers use -----------------------------------
    @property
    def prefixes(self) -> list[Prefix]:
        return self.data.prefixes

    @property
    def knowledge(self) -> list[str]:
        return self.data.knowledge

    @property
    def generation(self) -> GenerationSettings:
        """How responses are generated (pad/stop tokens, length, chunking); settable, e.g. to add stop ids."""
        return self.training_step.generation

    @generation.setter
    def generation(self, settings: GenerationSettings) -> None:
        self.training_step.generation = settings

    @property
    def shared_prefill(self) -> bool:
        return self.training_step.fast_paths.shared_prefill

    @property
    def student_head_cache(self) -> bool:
        return self.training_step.fast_paths.student_head_cache

    @property
    def teacher_head_cache(self) -> bool:
        return self.training_step.fast_paths.teacher_head_cache

    @property
    def student_dtype(self) -> torch.dtype | None:
        """The autocast dtype of the student's passes (None: none, float32)."""
        return self.training_step.compute_dtype

    # -- the run directory -------------------------------------------------------------------
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
            if self.inputs.on_existing == "error":
                raise TrainingError(f"{self.out}: already holds a run (set on_existing=resume or overwrite)")
            if self.inputs.on_existing == "overwrite":
                if self.topology.is_main:
                    shutil.rmtree(self.out)
                existing = []
            else:
                self._check_same_prompts()
        if self.topology.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
        self.parallel.barrier()
        if existing:
            _, path = existing[-1]
            self._check_same_run(path)
            self.step = self.parallel.load_checkpoint(path, self.student, self.optimizer)
            if self.topology.is_main:
                log.info("resumed from %s (step %d)", path, self.step)
        if not self.topology.is_main:
            return
        self._truncate_metrics(self.step)
        log.info("%d prefixes, %d knowledge texts, starting at step %d; peak RSS after setup %.0f MiB",
                 len(self.prefixes), len(self.knowledge), self.step, peak_rss_mib())
        save_config(self.record(), self.out / "config.yaml")
        atomic_write_text(self.out / PROMPTS_FILE, _json(self.prompt_records()))

    def record(self) -> dict[str, Any]:
        """The run record (config.yaml, each checkpoint's config): inputs and settings as one mapping."""
        return run_record(self.config, self.inputs)

    def prompt_records(self) -> list[dict[str, str]]:
        return prompt_records(self.config.teacher_template, self.config.task_teacher_template)

    def _check_same_prompts(self) -> None:
        """A template file edited under the same path leaves the config unchanged: compare the sha256s."""
        changed = prompts_changed(self.out / PROMPTS_FILE, self.prompt_records())
        if changed:
            raise TrainingError(f"{self.out / PROMPTS_FILE}: {changed} since the run started; "
                                "use on_existing=overwrite or a new output_dir")

    def _check_same_run(self, path: Path) -> None:
        """Resuming under different training settings would silently mix two runs: refuse."""
        now = self.record()
        saved = as_today(checkpoint.read_state(path)["config"], run_record(ConsolidateConfig(), ConsolidateInputs()))
        refuse_if_different(saved, now, where=str(path),
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

    # -- one step (the parts in `step` and `data` do the work) ------------------------------
    def draw(self, step: int) -> list[tuple[int, int]]:
        """(prefix index, knowledge index) per row of step `step`: a pure function of (seed, step)."""
        return draw_rows(self.config.seed, step, len(self.prefixes), len(self.knowledge), self.config.batch_size)

    def sample(self, step: int) -> list[Sample]:
        """This rank's rows of step `step` (all of them in a single process), with responses."""
        return self.training_step.sample(step)

    def train_step(self, step: int) -> dict[str, float]:
        """Sample, score, update (`TrainingStep.run`). A non-finite loss or gradient raises before
        anything changes."""
        return self.training_step.run(step)

    # -- the loop --------------------------------------------------------------------------
    def run(self, on_step: Callable[[int, dict[str, float]], None] | None = None) -> ConsolidateResult:
        """Train from the current step to `config.steps`, checkpointing; write the final model."""
        c = self.config
        last: dict[str, float] = {}
        with progress.task("consolidate: training steps", total=c.steps) as counted:
            counted.done = self.step
            while self.step < c.steps:
                step = self.step + 1
                metrics = self.train_step(step)
                self.step = step
                last = metrics
                if self.topology.is_main:
                    append_jsonl(self.out / METRICS_FILE,
                                 {"step": step, **{f"{METRIC_PREFIX}{k}": v for k, v in metrics.items()}})
                    log.info("step %d/%d loss %.4f mass %.3f %.1fs", step, c.steps, metrics["loss"],
                             metrics["student_topk_mass"], metrics["step_s"])
                progress.advance(counted)
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
                                                   config=self.record(), keep_last=self.config.keep_last,
                                                   optimizer_state=optimizer_state)
        self.parallel.barrier()
        return final

    def close(self) -> None:
        """Leave the process group if this trainer created it (a no-op in a single process)."""
        self.parallel.close()


def consolidate(config: ConsolidateConfig, *, model: ModelConfig | LoadedModel, knowledge: Knowledge,
                trajectories: str | Path, output_dir: str | Path, on_existing: OnExisting = "resume",
                on_step: Callable[[int, dict[str, float]], None] | None = None) -> ConsolidateResult:
    """Run (or resume) one round's consolidation; returns where the consolidated model is.
    The arguments are `Consolidator`'s; `on_step(step, metrics)` after every step."""
    trainer = Consolidator(config, model=model, knowledge=knowledge, trajectories=trajectories,
                           output_dir=output_dir, on_existing=on_existing)
    try:
        trainer.prepare_output()
        return trainer.run(on_step)
    finally:
        trainer.close()


def command_trainer(command: ConsolidateCommandConfig) -> Consolidator:
    """The trainer of `oel consolidate`: its keys turned into the settings and the arguments."""
    return Consolidator(command.settings(), **command.arguments())


def consolidate_command(command: ConsolidateCommandConfig,
                        on_step: Callable[[int, dict[str, float]], None] | None = None) -> ConsolidateResult:
    """`oel consolidate` without its progress bar: `consolidate()` with the command's keys as arguments."""
    return consolidate(command.settings(), **command.arguments(), on_step=on_step)


def _json(obj: Any, indent: int | None = 2) -> str:
    import json

    return json.dumps(obj, indent=indent, ensure_ascii=False)
