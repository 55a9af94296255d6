"""The guard that keeps the games' rules hidden: every TextArena message is checked before use.

The paper's setting hides what the board's symbols mean; the agent must find out by
playing. TextArena 0.7.4 explains them only in its rules prompt, which we compare verbatim
and replace. A later TextArena could explain them elsewhere: a legend under the board,
"X is a box" in a move's reply. So every message a game sends -- at reset and after every
move -- is also matched against patterns of a symbol legend, and anything unexpected
stops the episode with one error that says which TextArena is installed and what to update.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from oel.errors import EnvironmentTextError

VERIFIED_TEXTARENA = "0.7.4"
"""The TextArena release whose texts the game classes copy verbatim."""

_SYMBOL = r"""(?<![\w'"])['"]?[A-Z#_@$*+.]['"]?(?![\w'"])"""
"""One board symbol, optionally quoted, standing alone (so words and coordinates do not match)."""
_MEANING = r"(?i:=|:|->|→|marks?|means?|represents?|stands? for|denotes?|is (?:a|an|the|your)|are)"
_THING = r"(?i:hole|goal|box(?:es)?|wall|target|frozen|ice|player|you|empty|floor|safe|lake|water|gift|start)"

LEGEND_PATTERNS: tuple[re.Pattern[str], ...] = (
    re.compile(r"(?i:\blegend\b|\bsymbols?\s*(?:key|guide|meaning)|\bkey\s*:)"),
    re.compile(_SYMBOL + r"\s*" + _MEANING + r"\s*(?:a |an |the )?" + _THING + r"\b"),
    re.compile(r"\b" + _THING + r"s?\s*(?i:=|:|is marked|are marked|marked as|shown as)\s*" + _SYMBOL),
)
"""What a symbol legend looks like: 'Legend', `H = hole`, "'X' is a box", `goal: G`."""


def legend_in(message: str) -> str | None:
    """The first legend-like phrase in `message`, or None."""
    for pattern in LEGEND_PATTERNS:
        m = pattern.search(message)
        if m:
            return m.group(0)
    return None


def check_messages(env_id: str, game: str, rules_text: str, messages: Iterable[tuple[int, str, Any]],
                   prompt_kind: Any, *, at: str) -> None:
    """Refuse a rules prompt other than the verified one, and any legend-like game message.

    `at` says where in the episode (`reset(seed=3)`, `step 4`), for the error message.
    """
    for _sender, message, kind in messages:
        if kind == prompt_kind:
            if message != rules_text:
                raise rules_error(env_id, game, at, "its rules prompt is not the verified rules text")
            continue
        phrase = legend_in(message)
        if phrase is not None:
            raise rules_error(env_id, game, at, f"a game message explains symbols ({phrase!r})")


def rules_error(env_id: str, game: str, at: str, what: str) -> EnvironmentTextError:
    import textarena as ta

    return EnvironmentTextError(
        f"{env_id} at {at}: {what}; refusing to show it to the agent (textarena "
        f"{getattr(ta, '__version__', '?')}, verified {VERIFIED_TEXTARENA}): check the new text, then update "
        f"{game}.rules_text or oel.envs.rules_guard.LEGEND_PATTERNS")
