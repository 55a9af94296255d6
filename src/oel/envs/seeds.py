"""The one seed scheme: which map seeds are held out, and which each round may use.

A map is fully determined by (game settings, seed). Seeds are split into fixed,
non-overlapping blocks so that no training-side stage can ever play a held-out map seed:

    held-out (evaluation)     [0, 128)                      identical in every round
    round r, purpose p        TRAIN_BASE + r * ROUND_STRIDE + PURPOSE_INDEX[p] * PURPOSE_STRIDE
                              + [0, n),  n <= MAX_SEEDS_PER_BLOCK

with TRAIN_BASE = 1_000_000, ROUND_STRIDE = 100_000, PURPOSE_STRIDE = 10_000 and
purposes "collect" (episodes whose trajectories feed consolidation), "extract"
(episodes the extractor reads), "train" (spare block for any other training-side use).

Why a guard gap: TextArena's Sokoban retries a failed room generation with `seed + 1`,
`seed + 2`, ... (up to 50 tries), so seed s can yield the same room as seed s + k. Each block
therefore ends SEED_GUARD seeds before the next one begins, and held-out seeds sit a million
seeds away from the first training block.

Caveat (inherent to the paper's setting, not to this scheme): a 3x3 FrozenLake with 2 holes
has only 19 solvable layouts and the held-out maps use all of them, so disjoint seeds still
replay the same layouts; only Sokoban's rooms are genuinely unseen at evaluation.
"""

from __future__ import annotations

HELDOUT_BASE = 0
"""First held-out seed."""
HELDOUT_COUNT = 128
"""The paper's number of held-out maps."""
TRAIN_BASE = 1_000_000
"""First seed of round 0's first block; far above any held-out seed plus retries."""
ROUND_STRIDE = 100_000
"""Seeds reserved per round (for all purposes together)."""
PURPOSE_STRIDE = 10_000
"""Seeds reserved per (round, purpose) block."""
SEED_GUARD = 64
"""Unused seeds at the end of every block: more than TextArena's Sokoban generation retries (50)."""
MAX_SEEDS_PER_BLOCK = PURPOSE_STRIDE - SEED_GUARD
MAX_ROUNDS = 10_000
"""Keeps every seed below 2**31 (some RNGs want 32-bit seeds)."""

PURPOSE_INDEX: dict[str, int] = {"collect": 0, "extract": 1, "train": 2}
"""Block index of each training-side purpose within a round."""


def heldout_seeds(n: int = HELDOUT_COUNT) -> list[int]:
    """The first `n` of the fixed held-out seeds (the same list in every round and run)."""
    if not 0 < n <= HELDOUT_COUNT:
        raise ValueError(f"heldout_seeds: n must be in 1..{HELDOUT_COUNT}, got {n}")
    return list(range(HELDOUT_BASE, HELDOUT_BASE + n))


def round_seeds(round: int, purpose: str, n: int, *, offset: int = 0) -> list[int]:
    """Seeds `offset .. offset+n-1` of the block for (`round`, `purpose`); never held-out seeds.

    `offset` lets a stage take more seeds from the same block later (e.g. a resumed collection).
    """
    if purpose not in PURPOSE_INDEX:
        raise ValueError(f"round_seeds: purpose must be one of {sorted(PURPOSE_INDEX)}, got {purpose!r}")
    if not 0 <= round < MAX_ROUNDS:
        raise ValueError(f"round_seeds: round must be in 0..{MAX_ROUNDS - 1}, got {round}")
    if n < 0 or offset < 0 or offset + n > MAX_SEEDS_PER_BLOCK:
        raise ValueError(f"round_seeds: offset + n must stay within 0..{MAX_SEEDS_PER_BLOCK}, got "
                         f"offset={offset} n={n}")
    start = TRAIN_BASE + round * ROUND_STRIDE + PURPOSE_INDEX[purpose] * PURPOSE_STRIDE + offset
    return list(range(start, start + n))


def seed_role(seed: int) -> str:
    """Where `seed` belongs: 'heldout', 'round R collect' etc., or 'unassigned' (e.g. a guard seed)."""
    if HELDOUT_BASE <= seed < HELDOUT_BASE + HELDOUT_COUNT:
        return "heldout"
    rel = seed - TRAIN_BASE
    if rel < 0 or rel >= MAX_ROUNDS * ROUND_STRIDE:
        return "unassigned"
    round_, rest = divmod(rel, ROUND_STRIDE)
    block, index = divmod(rest, PURPOSE_STRIDE)
    for purpose, b in PURPOSE_INDEX.items():
        if b == block and index < MAX_SEEDS_PER_BLOCK:
            return f"round {round_} {purpose}"
    return "unassigned"
