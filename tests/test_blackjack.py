"""Blackjack as oel plays it, and its DP oracle against brute force and long simulations."""

from __future__ import annotations

import random

import pytest

from oel.envs import EnvConfig
from oel.envs.blackjack import (ANSWERS, BUST, HIT, RANK_VALUES, STAND, BlackjackGame, action_values, add,
                                hand_of, hand_start_value, optimal_action, policy_value, score, stand_win)
from oel.errors import EnvironmentTextError
from oel.evaluate.answer_probes import label, played_probes, uniform_answer
from game_helpers import game_factory

SEED = 1_000_000
TURNS = 5


game = game_factory("blackjack", BlackjackGame)


def test_scores_follow_textarena():
    assert score(hand_of(["A♠", "K♦"])) == 21
    assert score(hand_of(["A♠", "A♦", "9♣"])) == 21
    assert score(hand_of(["A♠", "9♦", "5♣"])) == 15
    env = game()
    for seed in range(SEED, SEED + 20):
        env.reset(seed)
        assert score(hand_of(env.player_cards())) == env.textarena_env._hand_score(env.player_cards())


def brute_stand(player: int, up: int) -> float:
    """Enumerate the dealer's card sequences explicitly (depth-first, no memo)."""
    def play(hand, prob):
        s = score(hand)
        if s > BUST:
            return prob
        if s >= 17:
            return prob * (player > s)
        return sum(play(add(hand, v), prob / 13) for v in RANK_VALUES)
    return sum(play(add((up, up == 1), hole), 1 / 13) for hole in RANK_VALUES)


@pytest.mark.parametrize("player,up", [(12, 10), (16, 7), (18, 1), (20, 6), (21, 10), (4, 2)])
def test_stand_value_matches_enumeration(player, up):
    assert stand_win(player, up) == pytest.approx(brute_stand(player, up))


def test_optimal_policy_value_matches_a_long_simulation():
    """The DP's chance of winning a fresh hand with its own optimal policy (5-answer cap) against
    200,000 simulated hands on the infinite deck."""
    exact = hand_start_value({}, TURNS)
    rng = random.Random(0)
    draw = lambda: rng.choice(RANK_VALUES)  # noqa: E731
    wins, n = 0, 200_000
    for _ in range(n):
        hand, up = add(add((0, False), draw()), draw()), draw()
        dealer = add((up, up == 1), draw())
        for turn in range(TURNS):
            if optimal_action(hand, up, TURNS - turn) == STAND:
                while score(dealer) < 17:
                    dealer = add(dealer, draw())
                wins += score(dealer) > BUST or score(hand) > score(dealer)
                break
            hand = add(hand, draw())
            if score(hand) > BUST:
                break
    assert wins / n == pytest.approx(exact, abs=4 * (exact * (1 - exact) / n) ** 0.5)


def test_policy_value_in_the_real_game():
    """The always-stand policy's exact value against 3,000 hands of the real TextArena game."""
    always_stand = {(h, a, u): 0.0 for h in range(2, 32) for a in (False, True) for u in range(1, 11)}
    exact = hand_start_value(always_stand, TURNS)
    env, wins, n = game(), 0, 3000
    for seed in range(SEED, SEED + n):
        env.reset(seed)
        wins += env.step(STAND).passed
    assert wins / n == pytest.approx(exact, abs=4 * (exact * (1 - exact) / n) ** 0.5)


def test_action_values_and_labels():
    hit, stand = action_values(["10♠", "6♦"], "10♣", ANSWERS, TURNS)
    assert stand == pytest.approx(stand_win(16, 10))
    assert action_values(["10♠", "Q♦"], "6♣")[0] < action_values(["10♠", "Q♦"], "6♣")[1]  # never hit 20
    assert optimal_action(hand_of(["2♠", "3♦"]), 10) == HIT
    probes = played_probes(EnvConfig(game="blackjack"), range(SEED, SEED + 10), uniform_answer)
    assert probes and all(p.answers == ANSWERS and sum(p.ok) >= 1 and not any(p.invalid) for p in probes)


def test_policy_value_interpolates():
    hand, up = hand_of(["10♠", "6♦"]), 10
    hit_all = {(hand[0], hand[1], up): 1.0}
    stand_all = {(hand[0], hand[1], up): 0.0}
    half = {(hand[0], hand[1], up): 0.5}
    a, b = policy_value(hit_all, hand, up, TURNS), policy_value(stand_all, hand, up, TURNS)
    assert policy_value(half, hand, up, TURNS) == pytest.approx((a + b) / 2)


def test_parse_outcomes_and_rules_check():
    env = game()
    assert env.parse("I'd say [hit]... no, [ STAND ]") == STAND
    assert env.parse("hit me") is None
    env.reset(SEED)
    result = env.step(STAND)
    assert result.done and result.outcome.startswith(("Success: 1 won", "Failure: 0 won"))
    env.reset(SEED)
    assert not env.step("?").done  # one invalid answer is forgiven
    assert env.step("??").done
    env.textarena_env._generate_player_prompt = lambda player_id, game_state: "Play blackjack; basic strategy wins."
    with pytest.raises(EnvironmentTextError):
        env.reset(SEED)


def test_labels_at_a_real_state():
    env = game()
    env.reset(SEED)
    probe = label(env, "k", SEED)
    values = action_values(env.player_cards(), env.dealer_card(), ANSWERS, TURNS)
    assert list(probe.value) == pytest.approx(values)


def test_canonical_hands_render_the_real_game_and_cover_the_table():
    from oel.evaluate.blackjack_meter import canonical_hands, canonical_probe, fill_table

    env = game()
    hands = list(canonical_hands())
    assert len(hands) == 240 and len({(h.hand, h.up) for h in hands}) == 240
    probe = canonical_probe(env, hands[0], SEED)
    assert probe.observation.endswith("Your hand: 2♥, 3♦ (Score: 5)\nDealer shows: 2♠")
    # the DP's own answers at the canonical hands, filled to every state, lose almost nothing
    table = {(h.hand[0], h.hand[1], h.up): float(optimal_action(h.hand, h.up, TURNS) == HIT) for h in hands}
    assert hand_start_value(fill_table(table), TURNS) == pytest.approx(hand_start_value({}, TURNS), abs=0.005)
