"""Blackjack-v0 from TextArena 0.7.4, and its exact oracle: a dynamic program over the infinite deck.

The game: each hand, two cards to the player and two to the dealer (one shown); the player
answers [Hit] or [Stand]; the dealer draws to 17 or more (standing on soft 17); no naturals, no
doubling or splitting. Cards are drawn with replacement (TextArena's "infinite deck"), so the
chance of each rank is exactly 1/13 and a hand's future depends only on (hard total, holds an ace,
dealer's up card, turns left): a small DP gives the exact value of every answer.

The game's own score is the share of hands WON (TextArena's reward wins / hands; a draw scores 0),
so the oracle maximises the chance of winning, not the usual win-minus-loss: its `optimal_action`
is the best strategy for THIS game, tested against a long simulation of the real environment.

Our turn cap matters for one-hand episodes: after `max_turns` answers without finishing, the
hand scores 0 (TextArena's partial credit counts only finished hands), and the DP includes it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from functools import cache
from typing import Any

import textarena as ta

from oel.envs import EnvConfig
from oel.envs.answer_game import (
    REASON_INVALID,
    REASON_LOST,
    REASON_TURN_LIMIT,
    REASON_WON,
    VALUE_TOLERANCE,
    TextArenaAnswerGame,
)

HIT, STAND = "[Hit]", "[Stand]"
ANSWERS: tuple[str, ...] = (HIT, STAND)
RANK_VALUES: tuple[int, ...] = (2, 3, 4, 5, 6, 7, 8, 9, 10, 10, 10, 10, 1)
"""Hard value of each of the 13 ranks (2-10, J, Q, K, A counted 1; an ace may add 10)."""
P_RANK = 1 / len(RANK_VALUES)
DEALER_STANDS = 17
BUST = 21
ACE_BONUS = 10
_ANSWER = re.compile(r"\s*(hit|stand)\s*", re.IGNORECASE)
_HAND_END = re.compile(r"Hand (\d+): you (win|lose|draw|bust)\. Your final (\d+), Dealer (\d+)\.")

Hand = tuple[int, bool]
"""(hard total with aces as 1, holds at least one ace)."""


def score(hand: Hand) -> int:
    """TextArena's hand score: aces count 11 unless that busts."""
    hard, ace = hand
    return hard + ACE_BONUS if ace and hard + ACE_BONUS <= BUST else hard


def add(hand: Hand, value: int) -> Hand:
    return hand[0] + value, hand[1] or value == 1


def card_value(card: str) -> int:
    """'K♠' -> 10, 'A♥' -> 1, '7♦' -> 7 (the suit is the last character)."""
    rank = card[:-1]
    return 10 if rank in ("J", "Q", "K") else 1 if rank == "A" else int(rank)


def hand_of(cards: Sequence[str]) -> Hand:
    hand: Hand = (0, False)
    for c in cards:
        hand = add(hand, card_value(c))
    return hand


@cache
def dealer_final(hand: Hand) -> tuple[tuple[int, float], ...]:
    """Distribution of the dealer's final score from `hand` (22 stands for any bust)."""
    s = score(hand)
    if s > BUST:
        return ((BUST + 1, 1.0),)
    if s >= DEALER_STANDS:
        return ((s, 1.0),)
    out: dict[int, float] = {}
    for v in RANK_VALUES:
        for final, q in dealer_final(add(hand, v)):
            out[final] = out.get(final, 0.0) + P_RANK * q
    return tuple(sorted(out.items()))


@cache
def stand_win(player: int, up: int) -> float:
    """Chance of winning by standing on `player` against a dealer showing a card of value `up`
    (the hole card is still unknown: drawn from the infinite deck)."""
    total = 0.0
    for hole in RANK_VALUES:
        for final, q in dealer_final(add((up, up == 1), hole)):
            total += P_RANK * q * (1.0 if final > BUST or player > final else 0.0)
    return total


@cache
def optimal_value(hand: Hand, up: int, turns_left: int) -> float:
    """Best chance of winning this hand with `turns_left` answers left."""
    if turns_left <= 0:
        return 0.0
    return max(hit_value(hand, up, turns_left), stand_win(score(hand), up))


def hit_value(hand: Hand, up: int, turns_left: int) -> float:
    """Chance of winning after [Hit] now, then the best play."""
    total = 0.0
    for v in RANK_VALUES:
        nxt = add(hand, v)
        if score(nxt) <= BUST:
            total += P_RANK * optimal_value(nxt, up, turns_left - 1)
    return total


def action_values(cards: Sequence[str], dealer_card: str, answers: Sequence[str] = ANSWERS,
                  turns_left: int = 64) -> list[float]:
    """Exact chance of winning after each answer ([Hit] / [Stand]), best play afterwards."""
    hand, up = hand_of(cards), card_value(dealer_card)
    values = {HIT: hit_value(hand, up, turns_left), STAND: stand_win(score(hand), up)}
    return [values[a] for a in answers]


def optimal_action(hand: Hand, up: int, turns_left: int = 64) -> str:
    return HIT if hit_value(hand, up, turns_left) > stand_win(score(hand), up) else STAND


def policy_value(p_hit: Mapping[tuple[int, bool, int], float], hand: Hand, up: int, turns_left: int) -> float:
    """Exact chance of winning from `hand` for a policy hitting with probability p_hit[(hard, ace, up)]
    (a state the mapping lacks is played optimally)."""
    if turns_left <= 0:
        return 0.0
    key = (hand[0], hand[1], up)
    p = p_hit.get(key, 1.0 if optimal_action(hand, up, turns_left) == HIT else 0.0)
    hit = 0.0
    for v in RANK_VALUES:
        nxt = add(hand, v)
        if score(nxt) <= BUST:
            hit += P_RANK * policy_value(p_hit, nxt, up, turns_left - 1)
    return p * hit + (1 - p) * stand_win(score(hand), up)


def hand_start_value(p_hit: Mapping[tuple[int, bool, int], float], turns: int) -> float:
    """Exact chance of winning a freshly dealt hand (two player cards, dealer up card) for a policy."""
    total = 0.0
    for a in RANK_VALUES:
        for b in RANK_VALUES:
            for up in RANK_VALUES:
                total += P_RANK ** 3 * policy_value(p_hit, add(add((0, False), a), b), up, turns)
    return total


def uniform_hit_table(p_hit: float = 0.5) -> dict[tuple[int, bool, int], float]:
    """The same P([Hit]) at every (hard total, ace, dealer card): e.g. random play at 0.5."""
    return {(h, a, u): p_hit for h in range(2, 32) for a in (False, True) for u in range(1, 11)}


class BlackjackGame(TextArenaAnswerGame):
    """Blackjack-v0 (built unwrapped, as `Blackjack-v0-raw`), `blackjack_hands` hands per episode."""

    env_id = "Blackjack-v0-raw"
    game_name = "blackjack"
    hidden_description = ("You are playing a card game against a dealer. Each turn, answer [Hit] to take another "
                          "card or [Stand] to keep your hand.")

    def _make_textarena_env(self) -> Any:
        return ta.make(self.env_id, num_hands=self.config.blackjack_hands)

    @classmethod
    def random_pass_rate(cls, config: EnvConfig) -> float | None:
        """Exact for one hand per episode ([Hit] or [Stand] at even odds, through the DP); None for more."""
        return hand_start_value(uniform_hit_table(), config.max_turns) if config.blackjack_hands == 1 else None

    def rules_text(self) -> str:
        return ("You are playing Blackjack against the dealer.\nYour goal is to get as close to 21 as possible "
                "without going over.\nOn your turn, choose '[Hit]' to draw another card or '[Stand]' to hold.\n"
                "J/Q/K = 10 points; A = 11 or 1, whichever is better.\n")

    def canonical(self, content: str) -> str | None:
        m = _ANSWER.fullmatch(content)
        return None if m is None else HIT if m.group(1).lower() == "hit" else STAND

    def answers(self) -> tuple[str, ...]:
        return ANSWERS

    def player_cards(self) -> list[str]:
        return list(self.textarena_env.state.game_state["player_hand"])

    def dealer_card(self) -> str:
        return str(self.textarena_env.state.game_state["dealer_hand"][0])

    def answer_labels(self, answers: Sequence[str]) -> tuple[list[float], tuple[bool, ...], tuple[bool, ...]]:
        values = action_values(self.player_cards(), self.dealer_card(), answers, self.turns_left())
        best = max(values)
        return values, tuple(v >= best - VALUE_TOLERANCE for v in values), tuple(False for _ in answers)

    def turns_left(self) -> int:
        """Answers left for this hand (the episode's cap binds a one-hand episode exactly)."""
        return self.config.max_turns - self.turns if self.config.blackjack_hands == 1 else 64

    def classify(self, reason: str, reward: float) -> str:
        if reason.startswith("Invalid Move"):
            return REASON_INVALID
        return REASON_WON if reward > 0 else REASON_LOST

    def passed(self, reward: float) -> bool:
        """Won more hands than lost and drawn together (a one-hand episode: won the hand)."""
        return self.end_reason == REASON_WON and reward > 0.5

    def outcome_text(self, passed: bool, reward: float) -> str:
        turns = self._turns_text()
        summary = self.textarena_env.state.game_state["results_summary"]
        tally = f"{summary['win']} won, {summary['lose']} lost, {summary['draw']} drawn"
        if self.end_reason == REASON_INVALID:
            return f"Failure: invalid answers ended the game after {turns} ({tally})."
        if self.end_reason == REASON_TURN_LIMIT:
            return (f"Failure: the turn limit ({self.config.max_turns} turns) ended the game before the hand was "
                    f"finished ({tally}).")
        verdict = "Success" if passed else "Failure"
        hands = "; ".join(self._hand_reasons())
        return f"{verdict}: {tally} of {self.config.blackjack_hands} hand(s) in {turns} ({hands})."

    def _hand_reasons(self) -> list[str]:
        """Why each hand ended, restated from the game's own "Hand k: you lose. Your final 23, Dealer 10."."""
        out = []
        for m in _HAND_END.finditer(self.observation()):
            hand, result, player, dealer = m.group(1), m.group(2), int(m.group(3)), int(m.group(4))
            if player > BUST:
                why = f"your score went over 21 ({player})"
            elif dealer > BUST:
                why = f"the dealer went over 21 ({dealer}) while you stood on {player}"
            else:
                why = f"you stood on {player} against the dealer's {dealer}"
            out.append(f"hand {hand} "
                       f"{'lost' if result in ('lose', 'bust') else 'won' if result == 'win' else 'drawn'}: {why}")
        return out

__all__ = ["BlackjackGame", "ANSWERS", "HIT", "STAND", "action_values", "optimal_action", "policy_value",
           "hand_start_value", "uniform_hit_table", "stand_win", "score", "hand_of"]
