"""Reading the move out of a model's free-text answer.

TextArena's grid games take the FIRST bracketed move in whatever string they are given,
while models often think aloud ("[up] would hit the wall, so [right]") and state their
final answer last. So we decide the action ourselves, with one pure function, and hand
the game exactly one canonical `[move]` string (or `NO_ACTION_TEXT` when there is none).

Rules of :func:`parse_action`:

1. Thinking is not an answer: only the text after the last `</think>` is read. If a
   `<think>` was opened after that and never closed (generation cut off mid-thought),
   the unfinished thought is ignored too.
2. The LAST bracketed group whose content is a move wins; other bracketed text
   (`[note]`, `[1]`) is skipped. Inside the brackets case and surrounding whitespace do
   not matter: `[ Up ]` is `[up]`.
3. Moves are `up/down/left/right` or the keys `w/a/s/d`; all are normalised to the
   direction word, e.g. `[d]` -> `[right]`, which every TextArena grid game accepts.
4. `strict=False` (lenient) additionally accepts a bare direction WORD (`right`, not `d`:
   single letters are too common in prose) when the answer holds no bracketed move.
   The last such word wins.
"""

from __future__ import annotations

import re

DIRECTIONS: tuple[str, ...] = ("up", "down", "left", "right")
"""The canonical move names, in TextArena's order."""

KEY_ALIASES: dict[str, str] = {"w": "up", "a": "left", "s": "down", "d": "right"}
"""Keyboard keys the games also accept, mapped to their direction word."""

NO_ACTION_TEXT = "No valid move was given."
"""What the game receives when the response holds no valid action: no bracketed move in it,
so TextArena registers an invalid move (and says so) instead of guessing one."""

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"

_BRACKETED = re.compile(r"\[([^\[\]]*)\]")
_BARE_WORD = re.compile(r"\b(up|down|left|right)\b", re.IGNORECASE)


def answer_text(response: str) -> str:
    """The part of `response` that is the answer: after the last `</think>`, minus an unclosed `<think>`."""
    tail = response.rsplit(THINK_CLOSE, 1)[-1]
    return tail.split(THINK_OPEN, 1)[0]


def canonical(move: str) -> str | None:
    """`' W '` -> `'[up]'`; None when `move` is not a direction word or key."""
    name = move.strip().lower()
    name = KEY_ALIASES.get(name, name)
    return f"[{name}]" if name in DIRECTIONS else None


def parse_action(response: str, *, strict: bool = True) -> str | None:
    """The canonical action (`'[up]'`, `'[down]'`, `'[left]'`, `'[right]'`) in `response`, or None.

    See the module docstring for the exact rules; `strict=False` also accepts a bare
    direction word when no bracketed move is present.
    """
    text = answer_text(response)
    for content in reversed(_BRACKETED.findall(text)):
        action = canonical(content)
        if action is not None:
            return action
    if strict:
        return None
    words = _BARE_WORD.findall(text)
    return canonical(words[-1]) if words else None
