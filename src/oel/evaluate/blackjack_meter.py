"""Blackjack's exact policy value: the model's P([Hit]) at every canonical hand, fed to the DP.

A fresh hand is described by (the player's two cards, the dealer's up card). For every player total
and every dealer card we build the real game's text for one such hand (TextArena renders it:
`_observe_state` on a dealt hand), score [Hit] and [Stand] exactly through the chat template, and
hand the table P([Hit] | hard total, ace, dealer card) to `oel.envs.blackjack.hand_start_value`:
the exact chance that this policy wins a freshly dealt hand, with no sampling noise at all. Later
decisions of a hand reuse the table (the model sees a longer history there; the table is its
answer to a hand as first dealt). The same table sharpened as the games sample it
(`oel.evaluate.sharpen`) gives the win chance of the policy the games actually play.
`oel meter env.game=blackjack policy_value=true` prints both for every setting.

Diagnostic only: never a training signal, never used to choose lessons.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from oel.backends.base import SamplingParams
from oel.envs import EnvConfig, make_env
from oel.envs.blackjack import (
    ANSWERS,
    HIT,
    BlackjackGame,
    Hand,
    hand_of,
    hand_start_value,
    optimal_action,
    score,
    uniform_hit_table,
)
from oel.evaluate.answer_meter import AnswerProbe, measure_answers
from oel.evaluate.meter import PromptVariant
from oel.evaluate.sharpen import sharpen

DEALER_CARDS: tuple[str, ...] = ("2♠", "3♠", "4♠", "5♠", "6♠", "7♠", "8♠", "9♠", "K♠", "A♠")
"""One up card per dealer value (2-9, ten, ace)."""
HARD_HANDS: tuple[tuple[str, str], ...] = (
    ("2♥", "3♦"), ("2♥", "4♦"), ("2♥", "5♦"), ("2♥", "6♦"), ("3♥", "6♦"), ("4♥", "6♦"), ("5♥", "6♦"), ("4♥", "8♦"),
    ("5♥", "8♦"), ("6♥", "8♦"), ("7♥", "8♦"), ("7♥", "9♦"), ("8♥", "9♦"), ("8♥", "K♦"), ("9♥", "K♦"), ("Q♥", "K♦"))
"""Two-card hands without an ace for hard totals 5 to 20."""
SOFT_HANDS: tuple[tuple[str, str], ...] = tuple(("A♥", f"{n}♦") for n in range(2, 10))
"""Ace plus 2..9: soft 13 to soft 20."""


@dataclass(frozen=True)
class CanonicalHand:
    cards: tuple[str, str]
    dealer: str

    @property
    def hand(self) -> Hand:
        return hand_of(self.cards)

    @property
    def up(self) -> int:
        return hand_of([self.dealer])[0]


def canonical_hands() -> Iterator[CanonicalHand]:
    for cards in HARD_HANDS + SOFT_HANDS:
        for dealer in DEALER_CARDS:
            yield CanonicalHand(cards, dealer)


def canonical_probe(game: BlackjackGame, hand: CanonicalHand, seed: int) -> AnswerProbe:
    """The real game's text at the start of `hand` (TextArena renders the dealt cards)."""
    game.reset(seed)
    state = game.textarena_env.state.game_state
    state["player_hand"] = list(hand.cards)
    state["dealer_hand"] = [hand.dealer, state["dealer_hand"][1]]
    intro = game.observation().split("\n" + _first_state_line(game))[0]
    game.textarena_env.get_observation()  # drop what reset queued
    game.textarena_env._observe_state()
    _player, messages = game.textarena_env.get_observation()
    observation = "\n".join([intro] + [game._render(m) for m in messages])
    best = optimal_action(hand.hand, hand.up, game.config.max_turns)
    good = tuple(a == best for a in ANSWERS)
    return AnswerProbe(f"{hand.cards}/{hand.dealer}", seed, 0, observation, ANSWERS, good, good, (False, False),
                       tuple(float(g) for g in good))


def _first_state_line(game: BlackjackGame) -> str:
    return next(line for line in game.observation().splitlines() if "Hand 1/" in line)


@dataclass
class PolicyValue:
    """The exact win chance of the model's [Hit]/[Stand] table, as scored and as sampled, with references."""

    win_rate: float
    win_rate_as_sampled: float
    optimal: float
    always_stand: float
    random: float
    p_hit: dict[tuple[int, bool, int], float]
    p_hit_as_sampled: dict[tuple[int, bool, int], float]
    agreement: float
    """Mean probability the model puts on the DP's best answer over the canonical hands."""

    def to_dict(self) -> dict[str, Any]:
        return {"win_rate": self.win_rate, "win_rate_as_sampled": self.win_rate_as_sampled, "optimal": self.optimal,
                "always_stand": self.always_stand, "random": self.random, "agreement": self.agreement,
                "mean_p_hit": sum(self.p_hit.values()) / len(self.p_hit),
                "mean_p_hit_as_sampled": sum(self.p_hit_as_sampled.values()) / len(self.p_hit_as_sampled),
                "p_hit": {f"{h},{int(a)},{u}": p for (h, a, u), p in sorted(self.p_hit.items())}}


def policy_value_meter(model: Any, tokenizer: Any, variant: PromptVariant, config: EnvConfig | None = None,
                       *, seed: int = 1_000_000, sampling: SamplingParams | None = None) -> PolicyValue:
    """Score [Hit]/[Stand] at every canonical hand under `variant`; the DP gives the policy's win rate,
    as scored and as `sampling` (default: the games' T 0.7, top-p 0.8, top-k 20) plays it."""
    config = config or EnvConfig(game="blackjack")
    sampling = sampling or SamplingParams()
    game: Any = make_env(config)
    hands = list(canonical_hands())
    probes = [canonical_probe(game, h, seed) for h in hands]
    result = measure_answers(model, tokenizer, probes, variant)
    table: dict[tuple[int, bool, int], float] = {}
    agree = []
    for h, s in zip(hands, result.scores):
        p_hit = float(s.p[ANSWERS.index(HIT)])
        hard, ace = h.hand
        table[(hard, ace, h.up)] = p_hit
        agree.append(float(s.p[s.probe.good.index(True)]))
    # ANSWERS is ([Hit], [Stand]): P([Hit]) as the games play it, hand by hand
    played = {k: sharpen([p, 1 - p], sampling.temperature, sampling.top_p, sampling.top_k)[0] for k, p in table.items()}
    turns = config.max_turns
    return PolicyValue(hand_start_value(fill_table(table), turns), hand_start_value(fill_table(played), turns),
                       hand_start_value({}, turns), hand_start_value(uniform_hit_table(0.0), turns),
                       hand_start_value(uniform_hit_table(), turns), table, played, sum(agree) / len(agree))


def fill_table(table: dict[tuple[int, bool, int], float]) -> dict[tuple[int, bool, int], float]:
    """Every (hard, ace, up) the DP may visit, from the measured table: a hand scoring s takes the
    measured answer of the same kind (soft/hard) at the nearest measured score (totals the canonical
    hands do not reach: hard 4, 21, three-card softs)."""
    out: dict[tuple[int, bool, int], float] = {}
    measured = {(score((h, a)), score((h, a)) != h, u): p for (h, a, u), p in table.items()}
    for hard in range(2, 32):
        for ace in (False, True):
            for up in range(1, 11):
                s = score((hard, ace))
                soft = s != hard
                same = [(abs(ms - s), p) for (ms, msoft, mu), p in measured.items() if msoft == soft and mu == up]
                if not same:
                    same = [(abs(ms - s), p) for (ms, _msoft, mu), p in measured.items() if mu == up]
                out[(hard, ace, up)] = min(same)[1]
    return out
