"""Building the student a round trains: load, adapter or full fine-tune, precision, optimizer.

Everything here runs once, before the first step, and in a fixed order that matters for
reproducibility: peft draws the LoRA adapter's initial weights from torch's global RNG, so
`prepare_student` seeds it from the run's own seed first (stream `data.STREAM_INIT`).
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Sequence
from typing import Any

import torch

from oel.backends.sampling import derive_seed
from oel.config import updated
from oel.consolidate.config import ConsolidateConfig
from oel.consolidate.data import STREAM_INIT
from oel.consolidate.distributed import Topology
from oel.consolidate.scoring import model_device
from oel.errors import ConfigError
from oel.models import ModelConfig, load_model

log = logging.getLogger(__name__)


def load_round_model(model_config: ModelConfig, topology: Topology) -> Any:
    """The round-start model (`oel.models.LoadedModel`), on this rank's device under a launcher."""
    if topology.device is not None:  # one device per rank: cuda:LOCAL_RANK (or cpu)
        model_config = updated(model_config, device=topology.device)
    return load_model(model_config)


def load_teacher_model(config: ConsolidateConfig, topology: Topology, student: Any,
                       student_config: ModelConfig) -> Any | None:
    """`config.teacher_model` loaded frozen (None when the teacher is the student's own start), after
    checking that it scores the same tokens: same vocabulary, same output width. `student_config`:
    how the student was named and loaded (the teacher takes its device and, by default, dtype)."""
    if not config.teacher_model:
        return None
    other = load_round_model(config.teacher_model_config(student_config), topology)
    if other.tokenizer.get_vocab() != student.tokenizer.get_vocab():
        raise ConfigError(f"teacher_model: {config.teacher_model} has another vocabulary than the student "
                          f"{student_config.name}; a teacher must score the student's own tokens")
    rows = (student.model.get_output_embeddings().weight.shape[0], other.model.get_output_embeddings().weight.shape[0])
    if rows[0] != rows[1]:
        raise ConfigError(f"teacher_model: {config.teacher_model} has {rows[1]} output logits, the student {rows[0]}")
    other.model.eval()
    other.model.requires_grad_(False)
    log.info("teacher: %s (frozen, %s, %.0f MiB of weights)", other.model_id, next(other.model.parameters()).dtype,
             sum(p.numel() * p.element_size() for p in other.model.parameters()) / 2**20)
    return other.model


PEFT_DEPRECATION = r"`is_gradient_checkpointing` is deprecated"
"""The one warning peft (not oel) triggers in transformers >= 5.24."""


def add_lora(model: Any, lora: Any) -> Any:
    """`peft.get_peft_model`, without the deprecation warning peft itself causes (it reads
    transformers' renamed `is_gradient_checkpointing`; nothing to fix on our side)."""
    from peft import get_peft_model

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=PEFT_DEPRECATION, category=FutureWarning)
        return get_peft_model(model, lora)


def enable_checkpointing(model: Any) -> None:
    """Activation checkpointing under its current name (`activation_checkpointing_enable` from
    transformers 5.24, `gradient_checkpointing_enable` before); non-reentrant by default (DDP-safe)."""
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable()


def prepare_student(model: Any, config: ConsolidateConfig) -> Any:
    """The model to train, in place: a seeded LoRA adapter injected (peft), or every weight trainable.

    Returned in eval mode: generation and the teacher's passes run in eval, and the student's
    own scoring pass switches to train() around itself.
    """
    c = config
    if c.finetune == "lora":
        from peft import LoraConfig

        lora = LoraConfig(r=c.lora_r, lora_alpha=c.lora_alpha, lora_dropout=c.lora_dropout,
                          target_modules=list(c.lora_target_modules), task_type="CAUSAL_LM")
        # peft draws the adapter's initial A matrices from torch's global RNG.
        torch.manual_seed(derive_seed(c.seed, STREAM_INIT))
        model = add_lora(model, lora)
    else:
        model.requires_grad_(True)
        if next(model.parameters()).dtype != torch.float32:
            log.warning("full fine-tuning with %s weights: AdamW updates smaller than the weights' rounding step "
                        "(~0.4%% of a weight in bf16) are lost; set model.dtype=float32 for small learning rates",
                        next(model.parameters()).dtype)
    if c.gradient_checkpointing:
        enable_checkpointing(model)
        if hasattr(model, "enable_input_require_grads"):
            model.enable_input_require_grads()
    model.eval()
    return model


def student_compute_dtype(model: Any, config: ConsolidateConfig) -> torch.dtype | None:
    """The autocast dtype of the student's passes (None: no autocast).

    peft keeps LoRA weights in float32 and casts each adapted module's input up to match; with
    `lora_compute_dtype=model` the adapter's matmuls run in the weights' own low precision
    instead (the float32 weights are cast down inside autocast, gradients flow back to them),
    so backward keeps a bf16 copy of those inputs rather than a float32 one.
    """
    dtype = next(model.parameters()).dtype
    if config.finetune != "lora" or config.lora_compute_dtype == "float32" or dtype == torch.float32:
        return None
    return dtype


def student_precision(student: Any, dtype: torch.dtype | None) -> contextlib.AbstractContextManager[Any]:
    """Autocast to the student's compute dtype around its passes (a no-op for None: float32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=model_device(student).type, dtype=dtype)


def make_optimizer(params: Sequence[torch.nn.Parameter], config: ConsolidateConfig) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters, at the config's constant learning rate."""
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay,
                             betas=(config.adam_beta1, config.adam_beta2))
