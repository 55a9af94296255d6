"""GuessTheNumber with a hidden band: a fact of the deployment the model is never told.

The band is fixed per deployment (every map's secret lies in it), no text the model reads differs
from the plain game's with the same secret, and the oracle's values agree with a brute-force
search over candidate sets.
"""

from __future__ import annotations

import functools
import random

import pytest

from oel.config import load_config
from oel.envs import EnvConfig, make_env
from oel.envs.guess_number import (GuessState, answer_values, deployment_band, halving_pass_probability,
                                   HINT_HIGHER, HINT_LOWER)
from oel.errors import ConfigError

SEEDS = range(40)


def _config(**kw) -> EnvConfig:
    return EnvConfig(game="guess_number", max_turns=3, **kw)


def test_the_band_is_fixed_per_deployment_and_holds_every_secret():
    bands = {}
    for d in range(6):
        config = _config(guess_band=4, deployment=d)
        band = deployment_band(config)
        assert band is not None and band[1] - band[0] + 1 == 4 and 1 <= band[0] and band[1] <= 20
        assert deployment_band(_config(guess_band=4, deployment=d)) == band  # drawn the same way every time
        game = make_env(config)
        secrets = []
        for seed in SEEDS:
            game.reset(seed)
            secrets.append(game.target())
        assert all(band[0] <= s <= band[1] for s in secrets) and len(set(secrets)) > 1
        again = make_env(config)
        assert [again.reset(seed) and again.target() for seed in SEEDS] == secrets  # a map's secret is its seed's
        bands[d] = band
    assert len(set(bands.values())) > 2, "deployments should draw different bands"
    assert deployment_band(_config()) is None


def _episode_texts(config: EnvConfig, seed: int, guesses: list[int], secret: int | None = None) -> list[str]:
    game = make_env(config)
    texts = [game.reset(seed)]
    if secret is not None:  # the plain game, made to hide the same secret
        game.textarena_env.game_number = secret
        game.textarena_env.state.game_state["game_number"] = secret
    for g in guesses:
        result = game.step(f"I guess [{g}]")
        texts += [result.observation, result.feedback, result.outcome]
        if result.done:
            break
    return texts


@pytest.mark.parametrize("hide_rules", [False, True])
def test_no_text_the_model_reads_differs_from_the_plain_game_with_the_same_secret(hide_rules):
    rng = random.Random(0)
    for d in range(3):
        config = _config(guess_band=4, deployment=d, hide_rules=hide_rules)
        band = deployment_band(config)
        for seed in range(12):
            game = make_env(config)
            game.reset(seed)
            secret = game.target()
            guesses = [rng.randint(1, 20) for _ in range(3)]
            banded = _episode_texts(config, seed, guesses)
            plain = _episode_texts(_config(hide_rules=hide_rules), seed, guesses, secret=secret)
            assert banded == plain
            # nor does the first prompt depend on the deployment at all
            assert banded[0] == _episode_texts(_config(guess_band=4, deployment=d + 7, hide_rules=hide_rules),
                                               seed, [])[0]
            assert f"{band[0]} and {band[1]}" not in "\n".join(banded)


def _split(cands: frozenset[int], g: int) -> tuple[frozenset[int], frozenset[int]]:
    return frozenset(c for c in cands if c < g), frozenset(c for c in cands if c > g)


@functools.lru_cache(maxsize=None)
def _best(cands: frozenset[int], turns: int, numbers: tuple[int, ...]) -> float:
    """Brute force: the best winning chance over every guess sequence, secret uniform over `cands`."""
    if not cands or turns == 0:
        return 0.0
    return max(_value(cands, turns, g, numbers) for g in numbers)


def _value(cands: frozenset[int], turns: int, g: int, numbers: tuple[int, ...]) -> float:
    below, above = _split(cands, g)
    return ((g in cands) + len(below) * _best(below, turns - 1, numbers)
            + len(above) * _best(above, turns - 1, numbers)) / len(cands)


def test_the_oracle_agrees_with_brute_force_on_every_state_and_answer():
    numbers = tuple(range(1, 11))
    answers = [f"[{n}]" for n in numbers]
    rng = random.Random(1)
    checked = 0
    for band in [(3, 6), (1, 4), (7, 10), (2, 8), None]:
        for _ in range(30):
            secret = rng.randint(*(band or (1, 10)))
            history: list[tuple[int, str]] = []
            for _ in range(rng.randint(0, 2)):
                g = rng.randint(1, 10)
                if g != secret:
                    history.append((g, HINT_HIGHER if secret > g else HINT_LOWER))
            state = GuessState(1, 10, tuple(history))
            cands = frozenset(state.candidates(band))
            assert secret in cands
            for turns in (1, 2, 3):
                got = answer_values(state, answers, turns, band)
                want = [_value(cands, turns, n, numbers) for n in numbers]
                assert got == pytest.approx(want, abs=1e-12)
                checked += 1
    assert checked == 450


def test_the_game_labels_read_the_band_and_halving_is_exact():
    config = _config(guess_band=4, deployment=1)
    band = deployment_band(config)
    game = make_env(config)
    game.reset(3)
    values, ok, invalid = game.answer_labels(game.answers())
    assert [a for a, o in zip(game.answers(), ok) if o] == [f"[{n}]" for n in range(band[0], band[1] + 1)]
    assert max(values) == 1.0 and not any(invalid)  # knowing a band of 4, three guesses always win
    # halving the whole range, played through the real game for every secret of the band
    wins = 0
    for seed in SEEDS:
        game.reset(seed)
        lo, hi = 1, 20
        for _ in range(3):
            guess = (lo + hi) // 2
            result = game.step(f"[{guess}]")
            if result.done:
                wins += result.passed
                break
            lo, hi = (guess + 1, hi) if "higher" in result.feedback else (lo, guess - 1)
    expected = sum(halving_pass_probability(1, 20, 3, (s, s)) for s in _secrets(config))
    assert wins == expected
    for low, high, turns in ((1, 20, 3), (1, 20, 4), (3, 11, 2), (1, 100, 5)):
        whole_range = halving_pass_probability(low, high, turns, (low, high))
        assert whole_range == pytest.approx(halving_pass_probability(low, high, turns))
    assert halving_pass_probability(1, 20, 3) == pytest.approx(7 / 20)


def _secrets(config: EnvConfig) -> list[int]:
    game = make_env(config)
    out = []
    for seed in SEEDS:
        game.reset(seed)
        out.append(game.target())
    return out


def test_a_band_outside_the_range_is_refused_in_one_line():
    with pytest.raises(ConfigError, match=r"^guess_band: must be in 0\.\.20"):
        load_config(EnvConfig, None, ["game=guess_number", "guess_band=21"])
    with pytest.raises(ConfigError, match=r"^deployment: must be >= 0"):
        load_config(EnvConfig, None, ["deployment=-1"])
