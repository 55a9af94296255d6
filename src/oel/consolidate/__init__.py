"""Consolidation (docs/method.md#consolidation): distil what the knowledge-reading teacher does into the weights.

Modules: `losses` (pure token losses), `scoring` (response-position logits, sampling),
`teacher` (teacher prompt + frozen-teacher views), `samplers` (on-policy / off-policy),
`data` (the dataset, per-step draw, prompt encoding), `build` (student, precision, optimizer),
`fast_paths` (which switched computations run), `step` (one training step: loss, accumulation,
checks), `checkpoint` (HF-directory checkpoints, resume), `trainer` (composes them: run dir,
the loop), `cli` (`oel consolidate`).
"""

from oel.consolidate.config import ConsolidateCommandConfig, ConsolidateConfig
from oel.consolidate.trainer import ConsolidateResult, Consolidator, command_trainer, consolidate, consolidate_command

__all__ = ["ConsolidateCommandConfig", "ConsolidateConfig", "ConsolidateResult", "Consolidator", "command_trainer",
           "consolidate", "consolidate_command"]
