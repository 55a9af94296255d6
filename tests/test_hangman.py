"""Hangman as oel plays it: the real TextArena game on the shipped word list, parsing, outcomes,
and the oracle pinned against a brute-force replay of the game for every word of the list."""

from __future__ import annotations

import itertools
import math
import os
import random
import subprocess
import sys
import textwrap
import zipfile

import pytest

from oel.envs import EnvConfig
from oel.envs.hangman import (ANSWERS, LETTERS, LIVES, WORD_LIST_SHA256, HangmanGame, HangmanState, letter_values,
                              random_win_probability, word_list, word_list_sha256)
from oel.errors import ConfigError, EnvironmentTextError
from oel.evaluate.answer_probes import label, played_probes, reference_policy
from game_helpers import game_factory

SEED = 1_000_000
TURNS = 20


game = game_factory("hangman", HangmanGame, max_turns=TURNS)


def seed_with(predicate) -> int:
    """The first training-side seed whose word satisfies `predicate`."""
    env = game()
    for seed in range(SEED, SEED + 5000):
        env.reset(seed)
        if predicate(env.target().upper()):
            return seed
    raise AssertionError("no seed found")


def test_the_word_list_is_nltks_en_basic():
    assert word_list_sha256() == WORD_LIST_SHA256
    words = word_list()
    assert len(words) == 850 and words[:3] == ("I", "a", "able") and words[-1] == "young"


def test_the_word_list_equals_an_installed_nltk_corpus():
    nltk = pytest.importorskip("nltk")
    try:
        nltk.data.find("corpora/words")
    except LookupError:
        pytest.skip("NLTK's words corpus is not installed here (oel ships en-basic; see oel.envs.hangman)")
    from nltk.corpus import words

    assert tuple(words.words("en-basic")) == word_list()


def test_textarenas_own_constructor_draws_the_same_words(tmp_path):
    """TextArena's Hangman made by `ta.make` (its __init__ reading an NLTK corpus built from the
    shipped file) and oel's construction draw the same word for every seed."""
    corpus = tmp_path / "corpora"
    corpus.mkdir()
    text = "\n".join(word_list()) + "\n"
    with zipfile.ZipFile(corpus / "words.zip", "w") as z:
        z.writestr("words/en-basic", text)
        z.writestr("words/en", text)
        z.writestr("words/README", "test copy\n")
    script = textwrap.dedent(f"""
        import nltk
        nltk.download = lambda *a, **k: True  # no network: the corpus is in NLTK_DATA
        import textarena as ta
        from oel.envs import EnvConfig, make_env
        from oel.envs.textarena_games import isolated_global_random
        real, ours = ta.make("Hangman-v0-raw"), make_env(EnvConfig(game="hangman"))
        for seed in range({SEED}, {SEED} + 60):
            with isolated_global_random():
                real.reset(num_players=1, seed=seed)
            ours.reset(seed)
            assert real.state.game_state["target_word"] == ours.target(), seed
        print("same")
    """)
    env = {**os.environ, "NLTK_DATA": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "same", done.stderr[-2000:]


def test_observation_parse_and_feedback():
    env = game()
    first = env.reset(SEED)
    assert first.startswith("You are playing Hangman.") and "You have 6 tries left." in first
    assert env.parse("<think>[Q]</think> I try [ e ]") == "[E]"
    assert env.parse("the word is [light]") == "[LIGHT]"
    assert env.parse("no letter [1]") is None
    word = env.target().upper()
    letter = word[0]
    result = env.step(f"[{letter.lower()}]")
    assert result.action == f"[{letter}]" and f"Your guess of {letter} is in the word" in result.feedback
    assert result.observation.count("You answered:") == 1


def test_hidden_rules_show_a_generic_description():
    first = game(hide_rules=True).reset(SEED)
    assert "Hangman" not in first and "[E]" in first and "Current board" in first


def test_win_loss_and_invalid_paths():
    env = game()
    env.reset(SEED)
    word = env.target().upper()
    result = None
    for letter in dict.fromkeys(word):
        result = env.step(f"[{letter}]")
    assert result is not None and result.done and result.passed and result.reward == 1.0
    assert result.outcome.startswith(f"Success: you found the word {word}")

    env.reset(SEED)
    misses = [c for c in LETTERS if c not in word][:LIVES]
    for c in misses[:-1]:
        assert not env.step(f"[{c}]").done
    result = env.step(f"[{misses[-1]}]")
    assert result.done and not result.passed and result.outcome.startswith("Failure: 6 wrong letters")

    env.reset(SEED)
    result = env.step(f"[{word.lower()}]")  # the whole word wins at once
    assert result.done and result.passed
    env.reset(SEED)
    wrong_word = "X" * len(word)
    assert "is not the target word" in env.step(f"[{wrong_word}]").feedback
    assert env.player_state().wrong_words == {wrong_word}
    env.step(f"[{misses[0]}]")
    assert "already been guessed" in env.step(f"[{misses[0]}]").feedback  # a repeat is forgiven once
    result = env.step("I give up")  # the second invalid answer in a row ends it
    assert result.done and result.outcome.startswith("Failure: 2 invalid answers in a row")


def test_turn_cap_scores_the_share_of_letters_found():
    env = game(max_turns=1)
    env.reset(SEED)
    word = env.target().upper()
    result = env.step(f"[{word[0]}]")
    assert result.done and not result.passed and "turn limit (1 turns)" in result.outcome
    assert result.reward == pytest.approx(word.count(word[0]) / len(word))


def test_a_changed_rules_text_is_refused():
    env = game()
    env.textarena_env._generate_player_prompt = lambda player_id, game_state: "Hangman: try E, T, A first."
    with pytest.raises(EnvironmentTextError, match="rules prompt is not the verified text"):
        env.reset(SEED)


def test_a_game_that_does_not_exist_fails_in_one_line():
    with pytest.raises(ConfigError, match="game: expected one of"):
        EnvConfig(game="hang_man")  # type: ignore[arg-type]


# ---- the oracle against brute force ---------------------------------------------------------


def replay(word: str, guesses: list[str]) -> tuple[str, frozenset[str], tuple[bool, ...]]:
    """What the player would have been told had `word` been hidden: the pattern, the letters
    tried, and for each guess whether it hit (a plain re-implementation of the game's rules)."""
    w = word.upper()
    tried: set[str] = set()
    hits = []
    for g in guesses:
        if len(g) == 1:
            tried.add(g)
        hits.append(g in w if len(g) == 1 else g == w)
    return "".join(c if c in tried else "_" for c in w), frozenset(tried), tuple(hits)


@pytest.mark.parametrize("offset", range(6))
def test_candidates_and_values_match_a_replay_of_every_word(offset):
    """At every state of a played game, the oracle's candidates are exactly the words that would
    have produced the same replies, and each letter's value is their share containing it."""
    env, rng = game(), random.Random(offset)
    env.reset(SEED + offset)
    guesses: list[str] = []
    while not env.done:
        told = replay(env.target(), guesses)
        brute = [w for w in word_list() if replay(w, guesses) == told]
        state = env.player_state()
        assert "".join(state.pattern) == told[0] and state.tried == told[1]  # the real game agrees
        assert state.candidates(word_list()) == brute and env.target() in brute
        values = letter_values(state, ANSWERS, word_list())
        for letter, v in zip(LETTERS, values):
            expected = 0.0 if letter in state.tried else sum(letter in w.upper() for w in brute) / len(brute)
            assert v == pytest.approx(expected)
        guess = rng.choice([c for c in LETTERS if c not in state.tried] + ["XYZ"])
        guesses.append(guess)
        env.step(f"[{guess}]")


def test_random_win_probability_matches_enumeration():
    alphabet, lives = 6, 3
    for distinct, turns in itertools.product(range(1, 4), range(1, 7)):
        word = set(range(distinct))
        wins = 0
        orders = list(itertools.permutations(range(alphabet)))
        for order in orders:
            found, misses = set(), 0
            for letter in order[:turns]:
                if letter in word:
                    found.add(letter)
                else:
                    misses += 1
                if misses == lives or found == word:
                    break
            wins += found == word and misses < lives
        exact = random_win_probability(distinct, turns, alphabet=alphabet, lives=lives)
        assert exact == pytest.approx(wins / len(orders)), (distinct, turns)


def test_random_play_in_the_real_game():
    """Uniform letters not yet tried, against 3,000 games of the real TextArena Hangman on a short
    word (its exact chance is high enough to check)."""
    seed = seed_with(lambda w: len(set(w)) == 2)
    env, rng, wins, n = game(), random.Random(7), 0, 3000
    for _ in range(n):
        env.reset(seed)
        order = rng.sample(LETTERS, len(LETTERS))
        result = None
        for letter in order:
            result = env.step(f"[{letter}]")
            if result.done:
                break
        wins += bool(result and result.passed)
    exact = random_win_probability(2, TURNS)
    assert wins / n == pytest.approx(exact, abs=4 * math.sqrt(exact * (1 - exact) / n))
    assert 0.0 < HangmanGame.random_pass_rate(EnvConfig(game="hangman", max_turns=TURNS)) < 0.02


def test_probes_from_the_reference_player():
    config = EnvConfig(game="hangman", max_turns=8)
    probes = played_probes(config, [SEED, SEED + 1], reference_policy(config))
    assert probes and len(probes) <= 16
    for p in probes:
        assert p.answers == ANSWERS and sum(p.ok) >= 1
        assert all(v > 0 for v, ok in zip(p.value, p.ok) if ok)
        assert not any(o and i for o, i in zip(p.ok, p.invalid))
    env = game()
    env.reset(SEED)
    env.step("[E]")
    probe = label(env, "k", SEED)
    assert probe.invalid == tuple(a == "[E]" for a in ANSWERS)
    assert HangmanState(("_",), frozenset()).candidates(word_list()) == ["I", "a"]
