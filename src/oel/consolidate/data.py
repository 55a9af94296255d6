"""The consolidation dataset, and what each step draws from it.

The dataset is every prefix of the round's trajectories (what the student sees) paired with
one of the K knowledge texts (what the teacher's prompt adds). A step's rows are a pure
function of (seed, step): `draw` picks them, and each row samples its response with its own
seed (`row_sampling`), derived from the row's index in the GLOBAL batch so that the ranks'
blocks together sample exactly what one process would. Prompts are token ids from the
collection stage's own chat encoding (`make_encoder`), so the student sees exactly what it
played with; they are cached, since a prefix's prompts do not change during a round.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from oel.backends.hf import HFBackend
from oel.backends.prefix_cache import common_prefix_length
from oel.backends.sampling import RowSampling, derive_seed
from oel.consolidate import distributed
from oel.consolidate.config import ConsolidateConfig
from oel.consolidate.samplers import Sample
from oel.consolidate.teacher import teacher_messages
from oel.errors import DataError
from oel.prompts import TASK_TEACHER_TEMPLATE, TEACHER_TEMPLATE
from oel.trajectory import Message, Prefix

# Named random streams: derive_seed(config.seed, STREAM, step, ...) never collide across uses.
STREAM_DATA = 1
"""Which (prefix, knowledge) pairs a step trains on."""
STREAM_SAMPLING = 2
"""Each row's response sampling."""
STREAM_INIT = 3
"""The LoRA adapter's initial weights (see `build.prepare_student`)."""

STUDENT = -1
"""The knowledge index of the student's prompt: the prefix's own prompt, no knowledge in it."""


def check_knowledge(texts: Sequence[str]) -> list[str]:
    """The round's knowledge texts, refused if there is none or one is blank (it would teach nothing)."""
    if not texts or not all(k.strip() for k in texts):
        raise DataError("knowledge: every knowledge text must be non-empty, and at least one is needed")
    return list(texts)


def draw(seed: int, step: int, n_prefixes: int, n_knowledge: int, batch_size: int) -> list[tuple[int, int]]:
    """(prefix index, knowledge index) per row of step `step`: a pure function of its arguments.

    Distinct prefixes while the batch fits in the dataset (a random permutation's head), drawn
    with replacement beyond that; one knowledge text per row, uniformly.
    """
    gen = torch.Generator().manual_seed(derive_seed(seed, STREAM_DATA, step))
    rows = (torch.randperm(n_prefixes, generator=gen)[:batch_size] if batch_size <= n_prefixes
            else torch.randint(n_prefixes, (batch_size,), generator=gen))
    ks = torch.randint(n_knowledge, (batch_size,), generator=gen)
    return list(zip(rows.tolist(), ks.tolist()))


def row_sampling(config: ConsolidateConfig, step: int, rows: Iterable[int]) -> list[RowSampling]:
    """The sampling settings of the given GLOBAL batch rows of step `step` (one seed each)."""
    c = config
    return [RowSampling(c.temperature, c.top_p, c.sample_top_k, derive_seed(c.seed, STREAM_SAMPLING, step, i))
            for i in rows]


@dataclass(frozen=True)
class StepRows:
    """One rank's rows of a step, before any response exists: picks, both prompts, sampling."""

    picks: list[tuple[int, int]]
    """(prefix index, knowledge index) per row."""
    student_prompts: list[list[int]]
    teacher_prompts: list[list[int]]
    sampling: list[RowSampling]

    def __len__(self) -> int:
        return len(self.picks)

    def part(self, rows: slice) -> StepRows:
        """The same rows cut to `rows` (a micro-batch)."""
        return StepRows(self.picks[rows], self.student_prompts[rows], self.teacher_prompts[rows], self.sampling[rows])

    def samples(self, responses: Sequence[list[int]]) -> list[Sample]:
        """The training rows once each row has its response."""
        return [Sample(p, k, sp, tp, r)
                for (p, k), sp, tp, r in zip(self.picks, self.student_prompts, self.teacher_prompts, responses)]


class ConsolidationData:
    """The prefixes and knowledge texts of one round, with their prompts encoded once each."""

    def __init__(self, prefixes: Sequence[Prefix], knowledge: Sequence[str],
                 encode: Callable[[list[Message]], list[int]], teacher_template: str = TEACHER_TEMPLATE,
                 task_teacher_template: str = TASK_TEACHER_TEMPLATE) -> None:
        """`encode`: chat messages to prompt token ids (`make_encoder(...).encode`)."""
        self.prefixes = list(prefixes)
        self.knowledge = list(knowledge)
        self.teacher_template = teacher_template
        self.task_teacher_template = task_teacher_template
        self._encode_messages = encode
        self._prompt_cache: dict[tuple[int, int], list[int]] = {}
        self._teacher_heads: dict[int, list[int]] = {}

    def encode(self, prefix_index: int, knowledge_index: int) -> list[int]:
        """Token ids of a prompt; knowledge_index `STUDENT` (-1) = the student's prompt (no knowledge)."""
        key = (prefix_index, knowledge_index)
        if key not in self._prompt_cache:
            prefix = self.prefixes[prefix_index]
            msgs = list(prefix.prompt) if knowledge_index < 0 else teacher_messages(
                prefix, self.knowledge[knowledge_index], self.teacher_template, self.task_teacher_template)
            self._prompt_cache[key] = self._encode_messages(msgs)
        return self._prompt_cache[key]

    def teacher_head(self, knowledge_index: int) -> list[int]:
        """The opening every teacher prompt with this knowledge text shares, whichever prefix it reads (each
        prompt keeps at least one token of its own): what the teacher runs once for the whole round."""
        if knowledge_index not in self._teacher_heads:
            prompts = [self.encode(p, knowledge_index) for p in range(len(self.prefixes))]
            shared = common_prefix_length(prompts) if prompts else 0
            shared = min(shared, min((len(p) for p in prompts), default=1) - 1)
            self._teacher_heads[knowledge_index] = prompts[0][:max(shared, 0)] if prompts else []
        return self._teacher_heads[knowledge_index]

    def draw(self, config: ConsolidateConfig, step: int) -> list[tuple[int, int]]:
        """The whole (global) batch of step `step`."""
        return draw(config.seed, step, len(self.prefixes), len(self.knowledge), config.batch_size)

    def rows(self, config: ConsolidateConfig, step: int, topology: distributed.Topology) -> StepRows:
        """This rank's block of step `step` (all of it in a single process)."""
        everyone = self.draw(config, step)
        mine = distributed.my_rows(len(everyone), topology)
        picks = [everyone[i] for i in mine]
        return StepRows(picks, [self.encode(p, STUDENT) for p, _ in picks], [self.encode(p, k) for p, k in picks],
                        row_sampling(config, step, mine))


def make_encoder(student: Any, tokenizer: Any, model_id: str) -> Any:
    """The collection stage's own chat encoding (an `HFBackend`): its `encode`, `pad_id`, `stop_ids`."""
    # No prefix store: the weights change every step, so stored KV would be stale.
    return HFBackend(student, tokenizer, model_id=model_id, prefix_cache_bytes=0)
