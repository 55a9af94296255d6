"""GuessTheNumber-v0 from TextArena 0.7.4: find a secret number from 'higher'/'lower' hints.

Why this game: its state is a short list of (guess, hint) pairs, which models that cannot read a
2-D board can still read; a good answer depends on that state (a guess that agrees with every
hint), and a good policy (halve the remaining range) is something a lesson can say in one line.

Settings: numbers `guess_min..guess_max` (TextArena's 1..20), and TextArena's own turn limit set
to our `max_turns` so that the rules text the model reads ("within N turns") is true. With 20
numbers, halving the range wins every game within 5 guesses; a guess at random among the numbers
not yet tried wins 5 of 20 (25%).

The rules text does not give the strategy away, so it is shown by default (`hide_rules=false`);
hidden, the model reads only that it must find a number in the range, answering `[n]`.

The hidden-band variant (`guess_band=W`): a fact about the deployment that only experience can
reveal. Each deployment (`deployment=d`) draws once a band of W consecutive numbers inside the
range, and every secret of that deployment, held-out maps included, is uniform over the band. The
model is told only the whole range, as in the plain game (the prompts are the plain game's, byte
for byte); what it can learn is what its games show, the secret numbers at their ends. With few
turns the band decides the game: at 3 turns halving 1..20 finds 7 of the 20 numbers (35%), a
player who knows a band of up to 7 numbers finds every secret. The oracle (measurement only)
reads the band: a guess is `ok` when it agrees with every hint AND lies in the band, and its value
is the exact winning chance of a secret uniform over the band's numbers still consistent.
"""

from __future__ import annotations

import re
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import textarena as ta

from oel.envs import EnvConfig
from oel.envs.answer_game import REASON_INVALID, TextArenaAnswerGame

BAND_STREAM = "oel/guess-number/band"
"""Seeds the draw of a deployment's band apart from every other seeded draw (with the deployment)."""
SECRET_STREAM = "oel/guess-number/secret"
"""Seeds a map's secret within the band (with the deployment and the map seed)."""

_NUMBER = re.compile(r"\s*(\d{1,4})\s*")
HINT_HIGHER = "higher"
HINT_LOWER = "lower"
_HINT = re.compile(r"The target number is (higher|lower)\.")


@dataclass(frozen=True)
class GuessState:
    """What the player knows: the range and every valid guess with its hint (the game's true
    target is NOT part of it; the meter's oracle reasons only from what the player was told)."""

    low: int
    high: int
    history: tuple[tuple[int, str], ...]

    def candidates(self, band: tuple[int, int] | None = None) -> tuple[int, ...]:
        """The numbers still consistent with every hint (and not yet guessed); with a hidden `band`
        (the oracle's knowledge, never the player's), only those inside it."""
        lo, hi = self.low, self.high
        if band is not None:
            lo, hi = max(lo, band[0]), min(hi, band[1])
        for guess, hint in self.history:
            if hint == HINT_HIGHER:
                lo = max(lo, guess + 1)
            else:
                hi = min(hi, guess - 1)
        tried = {g for g, _ in self.history}
        return tuple(n for n in range(lo, hi + 1) if n not in tried)


class GuessTheNumberGame(TextArenaAnswerGame):
    """GuessTheNumber-v0 (built unwrapped, as `GuessTheNumber-v0-raw`)."""

    env_id = "GuessTheNumber-v0-raw"
    game_name = "guess_number"

    @property
    def hidden_description(self) -> str:  # type: ignore[override]
        c = self.config
        return (f"You are playing a guessing game. A secret whole number lies between {c.guess_min} and "
                f"{c.guess_max}.\nEach turn, answer with one number in square brackets, for example [5].")

    def _make_textarena_env(self) -> Any:
        c = self.config
        return ta.make(self.env_id, min_number=c.guess_min, max_number=c.guess_max, max_turns=c.max_turns)

    def band(self) -> tuple[int, int] | None:
        """The deployment's hidden band (lowest, highest), None in the plain game (measurement only)."""
        return deployment_band(self.config)

    def reset(self, seed: int) -> str:
        observation = super().reset(seed)
        band = self.band()
        if band is not None:  # TextArena compares guesses with its attribute, reports the state's copy
            secret = random.Random(f"{SECRET_STREAM}/{self.config.deployment}/{seed}").randint(*band)
            self.textarena_env.game_number = secret
            self.textarena_env.state.game_state["game_number"] = secret
        return observation

    def rules_text(self) -> str:
        c = self.config
        return (
            "You are Player 0. You are playing Guess The Number.\n"
            f"You have to guess the number between {c.guess_min} and {c.guess_max} within {c.max_turns} turns.\n"
            "As you enter your guess, the game will provide you with hints such as 'higher' or 'lower'.\n"
            "You may provide your response in any manner. Only the number that is wrapped in square brackets "
            "will be considered as your guess. For example, [5].\n"
            "As you play, the history of your guesses will be appended below. Use the information to complete "
            "the game before you run out of guesses.\n"
            "Enter your guess.")

    def canonical(self, content: str) -> str | None:
        m = _NUMBER.fullmatch(content)
        return f"[{int(m.group(1))}]" if m else None

    def answers(self) -> tuple[str, ...]:
        return tuple(f"[{n}]" for n in range(self.config.guess_min, self.config.guess_max + 1))

    def player_state(self) -> GuessState:
        """The range and the hints so far, as the player was told them (for the meter's oracle)."""
        history = tuple((int(g), h) for g, h in self.textarena_env.state.game_state["guess_history"])
        return GuessState(self.config.guess_min, self.config.guess_max, history)

    def answer_labels(self, answers: Sequence[str]) -> tuple[list[float], tuple[bool, ...], tuple[bool, ...]]:
        state, band = self.player_state(), self.band()
        cands = set(state.candidates(band))
        tried = {g for g, _ in state.history}
        numbers = [int(a.strip("[]")) for a in answers]
        return (answer_values(state, answers, self.config.max_turns - self.turns, band),
                tuple(n in cands for n in numbers), tuple(n in tried for n in numbers))

    def target(self) -> int:
        """The secret number (measurement only: e.g. checking that probe states are replayed exactly)."""
        return int(self.textarena_env.state.game_state["game_number"])

    def outcome_text(self, passed: bool, reward: float) -> str:
        turns = self._turns_text()
        if passed:
            return f"Success: you guessed the secret number {self.target()} in {turns}."
        guesses = self.player_state().history
        last = f" Your last valid guess was {guesses[-1][0]}." if guesses else ""
        if self.end_reason == REASON_INVALID:
            reason = (self.textarena_env.state.game_info[0].get("reason") or "").removeprefix("Invalid Move:").strip()
            return (f"Failure: {self.config.invalid_moves_tolerated + 1} invalid answers in a row ended the game after "
                    f"{turns} (last one: {reason}) The secret number was {self.target()}.{last}")
        return (f"Failure: the turn limit ({self.config.max_turns} turns) was reached before you found the number. "
                f"The secret number was {self.target()}.{last}")

    @classmethod
    def random_pass_rate(cls, config: EnvConfig) -> float:
        """Exact: a number drawn uniformly among those not yet tried (`random_pass_probability`)."""
        return random_pass_probability(config.guess_min, config.guess_max, config.max_turns)


def random_pass_probability(low: int, high: int, max_turns: int) -> float:
    """Exact pass rate of guessing uniformly among the numbers not yet tried (no hint used).

    Each guess is a fresh number; the target is equally likely any of the n, so the chance it is
    among the first k distinct guesses is k / n.
    """
    n = high - low + 1
    return min(max_turns, n) / n


def bisect_pass_probability(low: int, high: int, max_turns: int) -> float:
    """Exact pass rate of always guessing the middle of the numbers still consistent.

    The numbers findable within t guesses by halving number 2**t - 1.
    """
    n = high - low + 1
    return min(n, 2 ** max_turns - 1) / n


def halving_pass_probability(low: int, high: int, max_turns: int, band: tuple[int, int] | None = None) -> float:
    """Exact pass rate of halving the whole range (guess the middle of the numbers still consistent,
    rounding down) when the secret is uniform over `band`: the best play of a player who does not know
    the band, which finds only the numbers its halving tree reaches. Which of them lie in the band
    depends on the band's place, hence the walk down the tree; without a band it is the closed form."""
    if band is None:
        return bisect_pass_probability(low, high, max_turns)
    lo_s, hi_s = band
    found = 0
    for secret in range(lo_s, hi_s + 1):
        lo, hi = low, high
        for _ in range(max_turns):
            guess = (lo + hi) // 2
            if guess == secret:
                found += 1
                break
            lo, hi = (guess + 1, hi) if secret > guess else (lo, guess - 1)
    return found / (hi_s - lo_s + 1)


def win_probability(candidates: int, turns: int) -> float:
    """Best achievable chance of finding a target uniform over `candidates` numbers in `turns`
    guesses: a tree of `turns` levels holds at most 2**turns - 1 numbers."""
    if candidates <= 0:
        return 0.0
    return min(candidates, 2 ** turns - 1) / candidates if turns > 0 else 0.0


def deployment_band(config: EnvConfig) -> tuple[int, int] | None:
    """Deployment `config.deployment`'s band of `guess_band` numbers in guess_min..guess_max (None when
    guess_band is 0): drawn uniformly from its own seeded stream, the same for every map."""
    width = config.guess_band
    if width == 0:
        return None
    low = random.Random(f"{BAND_STREAM}/{config.deployment}").randint(config.guess_min, config.guess_max - width + 1)
    return low, low + width - 1


def answer_values(state: GuessState, answers: Sequence[str], turns_left: int,
                  band: tuple[int, int] | None = None) -> list[float]:
    """Exact chance of winning after each answer, if every later guess is the best one.

    A consistent guess k splits the candidates into L below and R above: it wins now with 1/n, else
    the hint leaves L or R candidates and turns_left - 1 turns. Any other answer (inconsistent,
    repeated, out of range, outside a hidden `band`) tells nothing new and costs the turn. With a
    band the secret is uniform over the candidates inside it (the hints cut an interval of them).
    """
    cands = state.candidates(band)
    n = len(cands)
    out: list[float] = []
    for a in answers:
        k = int(a.strip("[]"))
        if k in cands:
            below = sum(1 for c in cands if c < k)
            above = n - 1 - below
            out.append((1 + below * win_probability(below, turns_left - 1)
                        + above * win_probability(above, turns_left - 1)) / n)
        else:
            out.append(win_probability(n, turns_left - 1))
    return out


__all__ = ["GuessTheNumberGame", "GuessState", "HINT_HIGHER", "HINT_LOWER", "random_pass_probability",
           "bisect_pass_probability", "win_probability", "answer_values", "deployment_band",
           "halving_pass_probability"]
