"""Hangman-v0 from TextArena 0.7.4: find a hidden English word one letter at a time.

Why this game: its state is a short pattern (`_ A _ _`) and a list of letters tried; a good answer
depends on that state (a letter that the words still fitting the pattern contain), and part of a
good policy is a prior a small model can carry (which letters to try first): what the small-answer
screen looks for (docs/results/answer-games).

The word list. TextArena draws the word uniformly from NLTK's `words` corpus, file `en-basic`
(C.K. Ogden's 850 Basic English words, public domain), and downloads that corpus when its Hangman
module is imported. The machines oel runs on reach no NLTK server, so oel ships the same file
(`oel/envs/data/hangman_en_basic.txt`, byte for byte; its SHA-256 is pinned in a test, which also
compares it with the NLTK corpus where one is installed) and builds TextArena's `HangmanEnv` with
it: TextArena's own `reset` and `step` play the game, and with the same list in the same order a
seed draws the same word as TextArena does. The import-time download is skipped (the list is here).

The oracle (measurement only) reasons from what the player was told: the words of the list that
fit the revealed pattern, contain no letter tried and missing, and are not a word guessed wrongly.
A letter's value is the share of those words containing it (the chance it is in the word); ok =
not tried yet and in at least one of them; invalid = tried already (the game refuses a repeat).

Settings: TextArena's Hangman has no turn limit, only six wrong letters; our `max_turns` caps an
episode (a word needs up to 6 + its distinct letters answers: set it to about 20). The rules text
gives no strategy away, so it is shown (`hide_rules=false`).
"""

from __future__ import annotations

import hashlib
import math
import random
import re
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import textarena as ta

from oel.envs import EnvConfig
from oel.envs.answer_game import REASON_INVALID, REASON_LOST, TextArenaAnswerGame

WORD_LIST_FILE = "hangman_en_basic.txt"
WORD_LIST_SHA256 = "b00de5c6438714a6abaa906ec85f063f63c0606f713cbe8728b21c42664e5fce"
"""SHA-256 of NLTK's `corpora/words/en-basic` (words.zip of nltk_data), which the shipped file copies."""
LETTERS: tuple[str, ...] = tuple(chr(c) for c in range(ord("A"), ord("Z") + 1))
ANSWERS: tuple[str, ...] = tuple(f"[{c}]" for c in LETTERS)
LIVES = 6
"""Wrong letters that end the game (TextArena's `tries_left` starts at 6)."""
HIDDEN = "_"
_GUESS = re.compile(r"\s*([A-Za-z]+)\s*")
_WRONG_WORD = re.compile(r"Your guess of '([A-Z]+)' is not the target word\.")
_IMPORT_LOCK = threading.Lock()


@cache
def word_list() -> tuple[str, ...]:
    """The words TextArena's Hangman-v0 draws from, in the corpus order (NLTK reads one per line)."""
    text = resources.files("oel.envs").joinpath("data", WORD_LIST_FILE).read_text(encoding="utf-8")
    return tuple(line for line in text.split("\n") if line)


def word_list_sha256() -> str:
    return hashlib.sha256(resources.files("oel.envs").joinpath("data", WORD_LIST_FILE).read_bytes()).hexdigest()


@dataclass(frozen=True)
class HangmanState:
    """What the player knows: the pattern (letters or '_'), the letters tried, wrong word guesses."""

    pattern: tuple[str, ...]
    tried: frozenset[str]
    wrong_words: frozenset[str] = frozenset()

    def fits(self, word: str) -> bool:
        """Whether `word` could be the hidden word given everything the game said."""
        w = word.upper()
        if len(w) != len(self.pattern) or w in self.wrong_words:
            return False
        return all(c == p if p != HIDDEN else c not in self.tried for c, p in zip(w, self.pattern))

    def candidates(self, words: Iterable[str]) -> list[str]:
        """The words still possible (with their multiplicity in the list: the draw is uniform over it)."""
        return [w for w in words if self.fits(w)]


def letter_values(state: HangmanState, answers: Sequence[str], words: Iterable[str]) -> list[float]:
    """Each letter's chance of being in the word, given what the player was told (0 for a letter
    already tried: it reveals nothing new)."""
    cands = [w.upper() for w in state.candidates(words)]
    out = []
    for a in answers:
        letter = a.strip("[]")
        out.append(0.0 if letter in state.tried or not cands else sum(letter in w for w in cands) / len(cands))
    return out


def random_win_probability(distinct: int, turns: int, *, alphabet: int = len(LETTERS), lives: int = LIVES) -> float:
    """Exact chance that letters tried in a uniformly random order (no repeats) find all `distinct`
    letters of a word within `turns` answers and fewer than `lives` misses.

    The last of the word's letters comes at position L of the order; it wins iff L <= turns and
    the misses before it, L - distinct, stay below `lives`. P(L <= l) = C(l, d) / C(alphabet, d).
    """
    last = min(turns, distinct + lives - 1, alphabet)
    return math.comb(last, distinct) / math.comb(alphabet, distinct) if last >= distinct else 0.0


def _import_hangman_env() -> type:
    """TextArena's HangmanEnv class, imported without its module-level `nltk.download('words')`
    (oel ships the word list; the download needs a network these machines lack)."""
    import nltk

    with _IMPORT_LOCK:
        download = nltk.download
        nltk.download = lambda *args, **kwargs: True
        try:
            from textarena.envs.Hangman.env import HangmanEnv
        finally:
            nltk.download = download
    return HangmanEnv


class HangmanGame(TextArenaAnswerGame):
    """Hangman-v0 (TextArena's `HangmanEnv`, unwrapped, non-hardcore), its word list shipped by oel."""

    env_id = "Hangman-v0-raw"
    game_name = "hangman"
    hidden_description = ("You are playing a word game. A hidden English word is shown as '_' for each letter. "
                          "Each turn, answer with one letter in square brackets, for example [E]; six wrong "
                          "letters end the game.")

    def _make_textarena_env(self) -> Any:
        env_class = _import_hangman_env()
        env = env_class.__new__(env_class)  # its __init__ reads the NLTK corpus; the rest is TextArena's
        ta.Env.__init__(env)
        env.hardcore = False
        env.word_list = list(word_list())
        return env

    def rules_text(self) -> str:
        return (
            "You are playing Hangman. The objective of the game is to guess the word by providing one letter "
            "guesses or the entire word.\n"
            "Each column is numbered. The cells that need to be populated with letters are represented by '_'.\n\n"
            "There are two ways you can answer. You can provide one letter guesses in the format of '[L]', or you "
            "can guess the entire word in the format of '[LIGHT]'.\n"
            "If the given letter is in the word, it will be revealed in the grid.\n"
            "If the given word is correct, you win.\n"
            "As you play, the history of your choices will be appended below. Use the information to figure out "
            "the word and win.\n"
            "You have 6 incorrect tries before the game ends.\n\n")

    def canonical(self, content: str) -> str | None:
        """A letter (`' e '` -> `'[E]'`) or a whole-word guess (`'light'` -> `'[LIGHT]'`, which the
        game accepts too; the meter scores letters only)."""
        m = _GUESS.fullmatch(content)
        return f"[{m.group(1).upper()}]" if m else None

    def answers(self) -> tuple[str, ...]:
        return ANSWERS

    def player_state(self) -> HangmanState:
        """The pattern, the letters tried and the wrong word guesses, as the player was told them."""
        gs = self.textarena_env.state.game_state
        wrong = frozenset(_WRONG_WORD.findall(self.observation()))
        return HangmanState(tuple(gs["current_board"]), frozenset(gs["guessed_letters"]), wrong)

    def answer_labels(self, answers: Sequence[str]) -> tuple[list[float], tuple[bool, ...], tuple[bool, ...]]:
        state = self.player_state()
        values = letter_values(state, answers, word_list())
        tried = tuple(a.strip("[]") in state.tried for a in answers)
        return values, tuple(v > 0 and not t for v, t in zip(values, tried)), tried

    def reference_answer(self, rng: random.Random) -> str:
        """A letter not tried yet that some possible word contains (uniform among them)."""
        _, ok, _ = self.answer_labels(ANSWERS)
        return rng.choice([a for a, good in zip(ANSWERS, ok) if good] or list(ANSWERS))

    def target(self) -> str:
        """The hidden word (measurement only)."""
        return str(self.textarena_env.state.game_state["target_word"])

    def outcome_text(self, passed: bool, reward: float) -> str:
        turns, word = self._turns_text(), self.target().upper()
        if passed:
            return f"Success: you found the word {word} in {turns}."
        state = self.player_state()
        misses = sorted(c for c in state.tried if c not in word)
        shown = " ".join(state.pattern)
        tried = f" Letters tried and missing: {', '.join(misses) or 'none'}."
        if self.end_reason == REASON_INVALID:
            why = (self.textarena_env.state.game_info[0].get("reason") or "").removeprefix("Invalid Move:").strip()
            return (f"Failure: {self.config.invalid_moves_tolerated + 1} invalid answers in a row ended the game "
                    f"after {turns} (last one: {why}) The word was {word}; you had {shown}.{tried}")
        if self.end_reason == REASON_LOST:
            return (f"Failure: {LIVES} wrong letters ended the game after {turns}. "
                    f"The word was {word}; you had {shown}.{tried}")
        return (f"Failure: the turn limit ({self.config.max_turns} turns) was reached before you found the word. "
                f"The word was {word}; you had {shown}.{tried}")

    @classmethod
    def random_pass_rate(cls, config: EnvConfig) -> float:
        """Exact: letters tried uniformly among those not yet tried, the word uniform over the list."""
        words = word_list()
        return sum(random_win_probability(len(set(w.upper())), config.max_turns) for w in words) / len(words)


__all__ = ["HangmanGame", "HangmanState", "ANSWERS", "LETTERS", "LIVES", "word_list", "word_list_sha256",
           "letter_values", "random_win_probability", "WORD_LIST_SHA256"]
