"""Per-row seeded sampling: each completion of a batch draws from its own random stream.

Hugging Face's sampler draws every row of a batch from the one global RNG, so a
completion's sample depends on which other prompts happened to share its batch. For
collection that is wrong: an episode must not change because a neighbour finished early,
and a server that batches concurrent requests must answer a request with a given `seed`
the same way whoever else is in the batch. We therefore sample with the Gumbel-max trick
inside a logits processor: each row owns a `torch.Generator`, adds Gumbel noise to its
temperature/top-k/top-p filtered logits, and the (greedy) argmax of the result is an exact
sample from the filtered distribution. Temperature 0 rows are left untouched (greedy).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

# Uniform draws are clamped away from 0 and 1 so that -log(-log(u)) stays finite.
_UNIFORM_EPS = 1e-10
# 31 bits: llama.cpp reads `seed` as uint32 and some servers as a signed 32-bit int.
_SEED_BITS = 31


def derive_seed(*parts: int) -> int:
    """A well-mixed 31-bit seed from integer parts (base seed, index, ...).

    Sums like `seed + i` make neighbouring streams collide across calls
    (seed 1 row 0 == seed 0 row 1); hashing the tuple does not.
    """
    state = np.random.SeedSequence([int(p) & 0xFFFFFFFFFFFFFFFF for p in parts]).generate_state(2, np.uint64)
    return int((int(state[0]) << 32 ^ int(state[1])) & ((1 << _SEED_BITS) - 1))


def row_seeds(seed: int, count: int) -> list[int]:
    """Every backend's per-completion seeds for one `chat` call: completion i gets derive_seed(seed, i)."""
    return [derive_seed(seed, i) for i in range(count)]


def check_row_seeds(prompts: Sequence[object], seeds: Sequence[int]) -> None:
    """`chat_with_seeds` takes exactly one seed per prompt; say so in one line otherwise."""
    if len(seeds) != len(prompts):
        raise ValueError(f"seeds: expected {len(prompts)} (one per prompt), got {len(seeds)}")


@dataclass(frozen=True)
class RowSampling:
    """The sampling settings of one row of a batch."""

    temperature: float
    top_p: float
    top_k: int
    seed: int

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


class PerRowSampler:
    """A logits processor that turns greedy decoding into per-row seeded sampling.

    Use with `generate(do_sample=False, logits_processor=[sampler])`: it returns scores
    whose argmax is the sampled token (all other entries -inf), or the untouched scores
    for greedy rows. Each row draws the same number of uniforms at every step however the
    batch is composed, so its random stream depends only on its own seed. Its completion does
    too wherever the logits do not depend on the batch: in float32 (in practice: batched kernels
    round differently, by ~1e-4, rarely enough to flip a token); in bf16 a batched row's logits
    can differ by ~0.5 and change the text (docs/collection.md, "Batching and identical answers").
    """

    def __init__(self, rows: Sequence[RowSampling]) -> None:
        self.rows = list(rows)
        self.generators = [torch.Generator().manual_seed(r.seed) for r in self.rows]

    def __call__(self, input_ids: torch.Tensor, scores_BV: torch.Tensor) -> torch.Tensor:
        if all(r.greedy for r in self.rows):
            return scores_BV
        out_BV = scores_BV.clone()
        for i, row in enumerate(self.rows):
            if not row.greedy:
                token = sample_token(scores_BV[i], row, self.generators[i])
                out_BV[i].fill_(float("-inf"))
                out_BV[i, token] = 0.0
        return out_BV


def sample_token(logits_V: torch.Tensor, row: RowSampling, gen: torch.Generator) -> int:
    """One sampled token id: temperature -> top-k -> top-p (the order vLLM and HF use), then Gumbel-max.

    Every engine samples through this function, so a row's random stream (one draw of k uniforms per
    step from its own generator) is the same whichever engine computed its logits; greedy rows
    take the argmax and draw nothing.
    """
    if row.greedy:
        return int(torch.argmax(logits_V))
    vocab = logits_V.shape[-1]
    k = row.top_k if 0 < row.top_k < vocab else vocab
    values_K, index_K = torch.topk(logits_V.float() / row.temperature, k)  # sorted, descending
    if row.top_p < 1.0:
        probs_K = torch.softmax(values_K, dim=-1)
        mass_before_K = torch.cumsum(probs_K, dim=-1) - probs_K
        values_K = values_K.masked_fill(mass_before_K >= row.top_p, float("-inf"))
    u_K = torch.rand(k, generator=gen).clamp_(_UNIFORM_EPS, 1 - _UNIFORM_EPS)
    gumbel_K = -torch.log(-torch.log(u_K))
    return int(index_K[torch.argmax(values_K + gumbel_K)])
