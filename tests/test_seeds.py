"""The seed scheme: held-out seeds are fixed and never used by any training-side block."""

from __future__ import annotations

import pytest

from oel.envs import EnvConfig, make_env
from oel.envs.seeds import (HELDOUT_COUNT, MAX_SEEDS_PER_BLOCK, PURPOSE_INDEX, SEED_GUARD, heldout_seeds,
                            round_seeds, seed_role)
from oel.envs.solver import distance_to_success

ROUNDS_CHECKED = 50


def test_heldout_is_fixed() -> None:
    assert heldout_seeds() == list(range(HELDOUT_COUNT))
    assert heldout_seeds(16) == list(range(16))


def test_no_overlap_across_rounds_and_purposes() -> None:
    """Every (round, purpose) block is disjoint from the others and from held-out, with a retry guard."""
    held = set(heldout_seeds())
    seen: dict[int, tuple[int, str]] = {}
    for r in range(ROUNDS_CHECKED):
        for purpose in PURPOSE_INDEX:
            block = round_seeds(r, purpose, MAX_SEEDS_PER_BLOCK)
            assert len(set(block)) == len(block)
            # Sokoban retries with seed+1..seed+50: even those stay clear of held-out and other blocks.
            reach = set(range(block[0], block[-1] + SEED_GUARD))
            assert not reach & held
            for s in block:
                assert s not in seen, f"seed {s} in {seen[s]} and {(r, purpose)}"
                seen[s] = (r, purpose)
                assert seed_role(s) == f"round {r} {purpose}"
            assert all(s not in seen or seen[s] == (r, purpose) for s in range(block[-1] + 1, block[-1] + SEED_GUARD))
    assert all(seed_role(s) == "heldout" for s in held)


def test_round_seeds_are_pinned_and_offsettable() -> None:
    """The blocks are fixed numbers: a change here changes every run's maps."""
    assert round_seeds(2, "collect", 5) == [1_200_000, 1_200_001, 1_200_002, 1_200_003, 1_200_004]
    assert round_seeds(0, "extract", 3) == [1_010_000, 1_010_001, 1_010_002]
    assert round_seeds(1, "train", 2) == [1_120_000, 1_120_001]
    assert round_seeds(2, "collect", 5, offset=3)[:2] == [1_200_003, 1_200_004]


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(round=0, purpose="eval", n=1), "purpose must be one of"),
    (dict(round=-1, purpose="collect", n=1), "round must be in"),
    (dict(round=0, purpose="collect", n=MAX_SEEDS_PER_BLOCK + 1), "offset \\+ n must stay within"),
])
def test_bad_requests_fail(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=f"^round_seeds: {message}"):
        round_seeds(**kwargs)


def test_heldout_frozenlake_maps_need_exactly_four_moves() -> None:
    """The paper's setting: with 3x3, start top-left and goal bottom-right, every held-out map needs 4 moves."""
    env = make_env(EnvConfig(game="frozenlake"))
    for seed in heldout_seeds():
        env.reset(seed)
        assert distance_to_success(env.solver_state()) == 4, seed


HELDOUT_MAP_DIGESTS = {"frozenlake": "c7850e9f35559f03", "sokoban": "8b3e2ecccec96b5c"}
"""sha256[:16] of the 128 held-out first observations: pins the maps themselves, so a TextArena
upgrade that changes map generation (and thus silently changes the evaluation set) fails here."""


@pytest.mark.parametrize("game", sorted(HELDOUT_MAP_DIGESTS))
def test_heldout_maps_are_pinned(game: str) -> None:
    import hashlib

    env = make_env(EnvConfig(game=game))
    digest = hashlib.sha256()
    for seed in heldout_seeds():
        digest.update(env.reset(seed).encode())
    assert digest.hexdigest()[:16] == HELDOUT_MAP_DIGESTS[game]
