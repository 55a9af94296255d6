"""parse_action: the model's answer -> exactly one canonical move, or None."""

from __future__ import annotations

import re

import pytest

from oel.envs.actions import NO_ACTION_TEXT, answer_text, canonical, parse_action

STRICT_CASES = [
    # (response, expected) -- strict mode
    ("[up]", "[up]"),
    ("[down]", "[down]"),
    ("[left]", "[left]"),
    ("[right]", "[right]"),
    ("[w]", "[up]"),
    ("[a]", "[left]"),
    ("[s]", "[down]"),
    ("[d]", "[right]"),
    ("[UP]", "[up]"),
    ("[ Right ]", "[right]"),
    ("[\tD\n]", "[right]"),
    ("I will go [down].", "[down]"),
    ("[up] hits the wall, so [right]", "[right]"),          # the LAST bracketed move wins
    ("[right] then [note: careful]", "[right]"),            # non-move brackets are skipped
    ("Step [1]: [left]", "[left]"),
    ("[left] [1]", "[left]"),
    ("<think>maybe [up]</think>[down]", "[down]"),          # thinking is not an answer
    ("<think>[up]</think>", None),
    ("<think>a</think> x <think>[left]</think> [s]", "[down]"),
    ("[left] <think>unfinished [up]", "[left]"),            # an unclosed thought is ignored
    ("right", None),                                        # bare words need lenient mode
    ("move up please", None),
    ("", None),
    ("[]", None),
    ("[upward]", None),
    ("[up down]", None),
    ("[north]", None),
    ("[[up]]", "[up]"),
    ("up]", None),
    ("[up", None),
    ("(up)", None),
    ("{right}", None),
]

LENIENT_CASES = [
    ("right", "[right]"),
    ("I would go Down.", "[down]"),
    ("left or maybe up", "[up]"),                           # the last bare word wins
    ("[left] but actually up", "[left]"),                   # a bracketed move beats bare words
    ("upward", None),                                       # whole words only
    ("d", None),                                            # bare keys are not accepted
    ("<think>right</think>", None),
    ("<think>x</think> go left", "[left]"),
    ("[up]", "[up]"),
    ("nothing here", None),
]


@pytest.mark.parametrize("response,expected", STRICT_CASES)
def test_strict(response: str, expected: str | None) -> None:
    assert parse_action(response) == expected
    assert parse_action(response, strict=True) == expected


@pytest.mark.parametrize("response,expected", LENIENT_CASES)
def test_lenient(response: str, expected: str | None) -> None:
    assert parse_action(response, strict=False) == expected


@pytest.mark.parametrize("response", [r for r, e in STRICT_CASES if e is not None])
def test_lenient_never_changes_a_strict_answer(response: str) -> None:
    assert parse_action(response, strict=False) == parse_action(response, strict=True)


def test_every_result_is_accepted_by_both_textarena_patterns() -> None:
    """FrozenLake tolerates spaces inside brackets, Sokoban does not; canonical moves suit both."""
    frozenlake = re.compile(r"\[\s*(up|down|left|right|w|a|s|d)\s*\]", re.IGNORECASE)
    sokoban = re.compile(r"\[(up|down|left|right|w|a|s|d)\]", re.IGNORECASE)
    for response, expected in STRICT_CASES + LENIENT_CASES:
        if expected is not None:
            assert frozenlake.fullmatch(expected) and sokoban.fullmatch(expected)


def test_no_action_text_holds_no_move() -> None:
    assert parse_action(NO_ACTION_TEXT) is None
    assert parse_action(NO_ACTION_TEXT, strict=False) is None
    assert "[" not in NO_ACTION_TEXT


def test_helpers() -> None:
    assert answer_text("<think>a</think>b<think>c") == "b"
    assert answer_text("plain") == "plain"
    assert canonical(" W ") == "[up]"
    assert canonical("jump") is None


def test_reasoning_prompt_has_one_field_and_its_answer_style_parses() -> None:
    """policy_grid_reason_v1 asks for a short thought, then the move last: the last bracketed move counts."""
    from oel import prompts

    template = prompts.get("policy_grid_reason_v1")
    assert template.fields == {"observation"}
    assert template.render(observation="BOARD").endswith("BOARD")
    assert parse_action("P is top left; [up] hits the wall and H is right of me, so I go down. [down]") == "[down]"
