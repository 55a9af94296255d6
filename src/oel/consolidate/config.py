"""`ConsolidateConfig`: the settings of one round's consolidation, every field documented;
`ConsolidateCommandConfig`: those plus the inputs, the keys of `oel consolidate`.

Defaults are sized for a 2-core CPU and the 0.5B preset (LoRA, batch 4, short
responses). Recipes are config files, not code: the paper's GPU recipe (full fine-tuning,
batch 64, 1024-token responses, LR 5e-6 for 1.7B / 1e-6 for 4B-8B, 20 or 100 steps) is
configs/gpu/qwen3-1.7b-frozenlake.yaml (and configs/gpu/consolidate-8gpu-*.yaml for one round
on 8 GPUs).
"""

from __future__ import annotations

from typing import Any, Literal

from oel import prompts
from oel.config import CommandConfig, Config, cfg, merged, updated
from oel.errors import ConfigError
from oel.knowledge import Knowledge
from oel.models import ModelConfig

Sampler = Literal["on_policy", "off_policy"]
OnExisting = Literal["resume", "overwrite", "error"]
TeacherDtype = Literal["model", "bfloat16", "float32"]
LossName = Literal["topk_reverse_kl", "reverse_kl", "sampled_reverse_kl", "forward_kl", "sft"]

DEFAULT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class ConsolidateConfig(Config):
    """One round of consolidation: on-policy context distillation (or the off-policy baseline).

    Only the user's settings: which trajectories, which knowledge, which model and where the run
    goes are arguments of `consolidate()` (the loop passes its round's; `oel consolidate` takes
    them as the keys of `ConsolidateCommandConfig`)."""

    teacher_model: str = cfg("", "a different frozen teacher model (same vocabulary); empty = the round-start "
                                 "model (the paper)")
    teacher_dtype: TeacherDtype = cfg("model", "teacher_model's weights dtype: model = model.dtype; needs "
                                               "teacher_model")
    teacher_template: str = cfg("teacher_grid_v1", "the teacher's prompt for grid-game prefixes: a "
                                                   "teacher_grid_* name or a .txt template")
    task_teacher_template: str = cfg(prompts.TASK_TEACHER_TEMPLATE, "the teacher's knowledge block for every "
                                                                    "other prefix (imported logs, other tasks)")
    sampler: Sampler = cfg("on_policy", "on_policy: the student (no knowledge) writes the responses; "
                                        "off_policy: the teacher (with knowledge) does (baseline)")
    loss: LossName = cfg("topk_reverse_kl", "token loss; topk_reverse_kl is the paper's; forward_kl or sft for "
                                            "the off-policy baseline")
    top_k: int = cfg(256, "top_k_reverse_kl: the student's k most likely tokens (of the full-vocab softmax, no "
                          "renormalisation)")
    loss_temperature: float = cfg(0.7, "temperature applied to both student and teacher logits inside the loss")

    steps: int = cfg(10, "optimizer steps this round (paper: 20 or 100)")
    batch_size: int = cfg(4, "prefixes per optimizer step (paper: 64)")
    micro_batch_size: int = cfg(4, "prefixes per forward/backward pass; gradients accumulate over "
                                   "batch_size/micro_batch_size passes")
    lr: float = cfg(5e-5, "constant learning rate (LoRA on CPU; paper, full fine-tune: 5e-6 for 1.7B, 1e-6 for 4B/8B)")
    weight_decay: float = cfg(0.01, "AdamW weight decay")
    adam_beta1: float = cfg(0.9, "AdamW beta1")
    adam_beta2: float = cfg(0.999, "AdamW beta2")
    grad_clip: float = cfg(1.0, "clip the global gradient norm to this; 0 disables")

    temperature: float = cfg(0.7, "sampling temperature of the responses")
    top_p: float = cfg(1.0, "nucleus sampling mass of the responses (1.0 = plain temperature sampling)")
    sample_top_k: int = cfg(0, "sample among the k most likely tokens; 0 = whole vocabulary")
    max_new_tokens: int = cfg(64, "most tokens per sampled response (paper: 1024)")

    finetune: Literal["lora", "full"] = cfg("lora", "lora: train an adapter, teacher = adapter off; full: all "
                                                    "weights, teacher = frozen copy")
    lora_r: int = cfg(16, "LoRA rank")
    lora_alpha: int = cfg(32, "LoRA alpha (the update is scaled by alpha / r)")
    lora_dropout: float = cfg(0.0, "LoRA dropout")
    lora_target_modules: list[str] = cfg(help="module names that get LoRA adapters",
                                         factory=lambda: list(DEFAULT_LORA_TARGETS))
    lora_compute_dtype: Literal["model", "float32"] = cfg("model", "dtype of the adapter's matmuls in the "
                                                                   "student's passes: model (autocast) or float32")
    gradient_checkpointing: bool = cfg(False, "recompute activations in backward (less memory, ~30% slower)")
    # The three switches below change how the same numbers are computed, not what is learned
    # (equal up to float rounding: docs/performance.md measures each against float32). Each one
    # is used where it can run and skipped, with a log line, where it cannot.
    student_prefix_cache: bool = cfg(True, "run the opening all student prompts of a micro-batch share once "
                                           "(same numbers, faster)")
    shared_student_prefill: bool = cfg(True, "on-policy: one student prompt pass both samples and scores (same "
                                             "numbers, faster)")
    teacher_prefix_cache: bool = cfg(True, "run each knowledge text's teacher prompt head once, kept for every "
                                           "step (frozen teacher; same numbers)")

    seed: int = cfg(0, "base seed: prefix/knowledge choice and every sampled response derive from it and the step")
    save_every: int = cfg(5, "write a resumable checkpoint every this many steps (0: only the final model)")
    keep_last: int = cfg(2, "keep this many most recent checkpoints")
    num_threads: int = cfg(0, "torch CPU threads; 0 = torch's default")
    parallel: Literal["none", "ddp", "fsdp"] = cfg("none", "under torchrun / accelerate launch: ddp (replicas) "
                                                           "or fsdp (FSDP2 shards)")
    fsdp_mixed_precision: bool = cfg(False, "parallel=fsdp: compute in bfloat16 on float32 master weights")

    def model_post_init(self, context: Any, /) -> None:
        positive = ("steps", "batch_size", "micro_batch_size", "top_k", "max_new_tokens", "lora_r", "lora_alpha")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.micro_batch_size > self.batch_size:
            raise ValueError(f"micro_batch_size: {self.micro_batch_size} exceeds batch_size {self.batch_size}")
        for name in ("loss_temperature", "temperature", "lr"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}: must be > 0, got {getattr(self, name)}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p: must be in (0, 1], got {self.top_p}")
        if self.fsdp_mixed_precision and self.parallel != "fsdp":
            raise ValueError(f"fsdp_mixed_precision: needs parallel=fsdp, got parallel={self.parallel}")
        _check_template("teacher_template", self.teacher_template, prompts.TEACHER_ROLE)
        _check_template("task_teacher_template", self.task_teacher_template, prompts.TASK_TEACHER_ROLE)
        if self.teacher_dtype != "model" and not self.teacher_model:
            raise ValueError(f"teacher_dtype: {self.teacher_dtype} needs teacher_model (the round-start teacher "
                             "shares the student's weights and dtype)")
        if self.teacher_model and self.parallel == "fsdp":
            raise ValueError("teacher_model: not supported with parallel=fsdp (the other teacher would not be "
                             "sharded); use ddp")
        if self.save_every < 0 or self.keep_last < 1:
            raise ValueError("save_every/keep_last: need save_every >= 0 and keep_last >= 1, got "
                             f"{self.save_every}/{self.keep_last}")

    def teacher_model_config(self, student: ModelConfig) -> ModelConfig:
        """How to load `teacher_model`: the student's settings (device, ...) with the teacher's name and
        `teacher_dtype`; one place, so the loop's teacher-gap meter measures the teacher consolidation uses."""
        dtype = student.dtype if self.teacher_dtype == "model" else self.teacher_dtype
        return updated(student, name=self.teacher_model, dtype=dtype)


def _check_template(key: str, spec: str, role: prompts.Role) -> None:
    """A template name or .txt file whose fields fit `role`; ValueError (the config layer names the
    section) naming `key` and the file otherwise, so a bad template fails at start, not mid-round."""
    try:
        prompts.load(spec, key=key, role=role)
    except ConfigError as e:
        raise ValueError(str(e)) from None


class ConsolidateInputs(Config):
    """What a consolidation run reads and writes, and which model it trains: run plumbing, which
    `consolidate()` takes as arguments and `oel consolidate` as keys."""

    trajectories: str = cfg("", "the round's trajectory JSONL; every turn of every trajectory is one training prefix")
    knowledge: list[str] = cfg(help="knowledge text files (plain text, one knowledge text each); one is drawn "
                                    "at random per prefix", factory=list)
    output_dir: str = cfg("", "run directory: metrics.jsonl, config.yaml, checkpoints/, model/ (the "
                              "consolidated model)")
    model: ModelConfig = cfg(help="the round-start model M_r: student's starting point AND the frozen teacher",
                             factory=ModelConfig)
    on_existing: OnExisting = cfg("resume", "if output_dir already holds a run: resume from its last checkpoint, "
                                            "delete it, or stop")


class ConsolidateCommandConfig(ConsolidateConfig, ConsolidateInputs, CommandConfig):
    """`oel consolidate`: the inputs and the settings, as flat keys (in the order they had as one config)."""

    SETTINGS, INPUTS, INPUTS_AFTER = ConsolidateConfig, ConsolidateInputs, {"on_existing": "keep_last"}

    def check_inputs(self) -> None:
        """The keys a run cannot start without (left optional so presets can be built first)."""
        for name in ("trajectories", "output_dir"):
            if not getattr(self, name):
                raise ConfigError(f"{name}: required, got an empty value")
        if not self.knowledge:
            raise ConfigError("knowledge: give at least one knowledge text file")

    def arguments(self) -> dict[str, Any]:
        """`consolidate()`'s keyword arguments for these keys (the knowledge files read here)."""
        self.check_inputs()
        return {"model": self.model, "knowledge": Knowledge.read(self.knowledge), "trajectories": self.trajectories,
                "output_dir": self.output_dir, "on_existing": self.on_existing}


def run_record(config: ConsolidateConfig, inputs: ConsolidateInputs) -> dict[str, Any]:
    """What a run writes as its config.yaml and into every checkpoint (compared on resume): its
    inputs and settings as `oel consolidate`'s config would dump them, keys in the same order as
    before the inputs became arguments, so a record reads the same whichever version wrote it."""
    return merged(config, inputs, ConsolidateCommandConfig)
