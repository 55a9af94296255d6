"""A store of attention KV for token sequences the backend has already processed.

In a multi-turn game, turn t+1's prompt is turn t's prompt + the model's answer + a new
observation, and every episode's prompt opens with the same system text and rules. With
answers of ~4 tokens, recomputing those shared tokens is nearly all the work of a turn
(docs/method.md: prefill dominates). The backend therefore keeps the KV of each row it generated
(prompt + answer) and, for a new prompt, starts from the stored sequence that shares the
longest token prefix with it: only the tokens after that prefix are run through the model.

The key of an entry is its exact token ids, so reuse needs no knowledge of chat templates
or of how an answer re-tokenises: a KV vector depends only on the tokens up to its
position, and only positions whose tokens match are reused. Entries hold the weights'
KV, so a store must be cleared whenever the weights change (consolidation never uses one).
Eviction is least-recently-used under a byte budget.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

DEFAULT_PREFIX_CACHE_BYTES = 1 << 30
"""1 GiB: about 85k tokens of the 0.5B preset's KV (24 layers x 2 KV heads x 64 dims, bf16)."""
MIN_REUSE_TOKENS = 16
"""Shorter shared prefixes are recomputed: copying their KV saves less than it costs."""


@dataclass(eq=False)  # identity, not tensor comparison
class PrefixEntry:
    """The KV of one processed sequence: per layer (keys, values), each [kv_heads, T, head_dim]."""

    ids: Tensor
    kv: list[tuple[Tensor, Tensor]]
    shared: bool = False
    """An opening many prompts share: never dropped as superseded, only by LRU."""
    nbytes: int = 0
    last_used: int = 0

    def __post_init__(self) -> None:
        self.nbytes = sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in self.kv)


@dataclass(frozen=True)
class PrefixMatch:
    """Where a prompt's reusable KV comes from: `length` leading tokens of `entry` (0: none)."""

    entry: PrefixEntry | None
    length: int


NO_MATCH = PrefixMatch(None, 0)


@dataclass
class PrefixKVStore:
    """LRU store of processed sequences, looked up by longest common token prefix."""

    max_bytes: int = DEFAULT_PREFIX_CACHE_BYTES
    min_tokens: int = MIN_REUSE_TOKENS
    entries: list[PrefixEntry] = field(default_factory=list)
    hits: int = 0
    reused_tokens: int = 0
    looked_up_tokens: int = 0
    _clock: int = 0

    @property
    def nbytes(self) -> int:
        return sum(e.nbytes for e in self.entries)

    def clear(self) -> None:
        self.entries.clear()

    def lookup(self, ids: Sequence[int]) -> PrefixMatch:
        """The entry sharing the longest prefix with `ids`, capped so one token is left to run.

        At least the prompt's last token must go through the model: its logits start generation.
        """
        self.looked_up_tokens += len(ids)
        best, best_len = self._longest(ids, len(ids) - 1)
        if best is None or best_len < self.min_tokens:
            return NO_MATCH
        self._clock += 1
        best.last_used = self._clock
        self.hits += 1
        self.reused_tokens += best_len
        return PrefixMatch(best, best_len)

    def peek(self, ids: Sequence[int]) -> int:
        """How many leading tokens of `ids` the store holds (no statistics, no LRU touch)."""
        return self._longest(ids, len(ids))[1]

    def _longest(self, ids: Sequence[int], cap: int) -> tuple[PrefixEntry | None, int]:
        if not self.entries or cap < 1:
            return None, 0
        query = torch.as_tensor(list(ids), dtype=torch.long)
        best, best_len = None, 0
        for entry in self.entries:
            n = min(len(entry.ids), cap)
            if n <= best_len:
                continue
            diff = (entry.ids[:n] != query[:n]).nonzero()
            common = int(diff[0, 0]) if len(diff) else n
            if common > best_len:
                best, best_len = entry, common
        return best, best_len

    def add(self, ids: Sequence[int], kv: list[tuple[Tensor, Tensor]], *, supersedes: PrefixEntry | None = None,
            shared: bool = False) -> None:
        """Store a processed sequence; drop `supersedes` (the entry it extends) and evict LRU over budget."""
        if self.max_bytes <= 0 or len(ids) < self.min_tokens:
            return
        entry = PrefixEntry(torch.as_tensor(list(ids), dtype=torch.long), kv, shared=shared)
        if entry.nbytes > self.max_bytes:
            return
        if supersedes is not None and not supersedes.shared and _is_prefix(supersedes.ids, entry.ids):
            self.entries = [e for e in self.entries if e is not supersedes]
        self._clock += 1
        entry.last_used = self._clock
        self.entries.append(entry)
        total = self.nbytes
        if total > self.max_bytes:
            for old in sorted(self.entries, key=lambda e: e.last_used):
                if total <= self.max_bytes:
                    break
                if old is not entry:
                    self.entries = [e for e in self.entries if e is not old]
                    total -= old.nbytes

    def stats(self) -> dict[str, float]:
        """Hits, reused share of looked-up prompt tokens, entries and bytes held."""
        share = self.reused_tokens / self.looked_up_tokens if self.looked_up_tokens else 0.0
        return {"hits": self.hits, "reused_tokens": self.reused_tokens, "reused_share": share,
                "entries": len(self.entries), "bytes": self.nbytes}


def common_prefix_length(seqs: Sequence[Sequence[int]]) -> int:
    """Length of the longest token prefix every sequence starts with (0 for no sequences)."""
    if not seqs:
        return 0
    first = seqs[0]
    for i in range(min(len(s) for s in seqs)):
        if any(s[i] != first[i] for s in seqs):
            return i
    return min(len(s) for s in seqs)


def _is_prefix(short: Tensor, long: Tensor) -> bool:
    return len(short) <= len(long) and bool(torch.equal(short, long[: len(short)]))
