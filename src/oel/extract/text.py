"""Pure text helpers of extraction: thinking removal, item parsing, dedup, the token budget.

Everything here is a small pure function so that the accumulation logic (extract.py) can
be tested with scripted strings and no model. Token counts go through a
:class:`TokenCounter`, which uses the extractor's own tokenizer when one is available and
otherwise a documented character-based approximation.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

Format = Literal["structured", "unstructured"]

STRUCTURED_MARKER = "- EXPERIENCE ITEM:"
"""Only lines starting with this (after leading whitespace) are kept in the structured format."""

CHARS_PER_TOKEN_APPROX = 3.5
"""Fallback when no tokenizer is known: English BPE text averages ~4 characters per token;
3.5 over-counts slightly, so a budget computed with it is never exceeded by much in
practice with the real tokenizer (erring on the side of a shorter knowledge text)."""

_THINK_BLOCK = re.compile(r"<think>.*?</think>", re.DOTALL)
_THINK_OPEN = "<think>"
_THINK_CLOSE = "</think>"


def strip_thinking(text: str) -> str:
    """Remove reasoning from a model answer, keeping only the answer part.

    Handles the three shapes thinking models produce: complete `<think>...</think>`
    blocks; a lone `</think>` (the chat template opened the block inside the prompt, so
    everything before the close is reasoning); and an unterminated `<think>` (generation
    hit the token limit mid-thought: everything after it is reasoning, no answer).
    """
    text = _THINK_BLOCK.sub("", text)
    if _THINK_CLOSE in text:
        text = text.rsplit(_THINK_CLOSE, 1)[1]
    if _THINK_OPEN in text:
        text = text.split(_THINK_OPEN, 1)[0]
    return text.strip()


def normalize_item(text: str) -> str:
    """The dedup key of an item: whitespace collapsed; an exact repeat modulo spacing is a repeat."""
    return " ".join(text.split())


def parse_items(text: str, fmt: Format, *, max_items: int = 0) -> list[str]:
    """Split an (already thinking-free) extractor answer into knowledge items.

    Structured: one item per line starting with :data:`STRUCTURED_MARKER`; every other
    line (preambles, numbering, chatter) is dropped. Unstructured: every non-blank line
    is kept as an item, so the token budget can drop old lines one at a time.
    `max_items` > 0 keeps only the first that many (the prompt asks for one or two;
    a model that writes ten would otherwise flood the budget in one step).
    """
    items: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        if fmt == "structured":
            if not line.startswith(STRUCTURED_MARKER) or not line[len(STRUCTURED_MARKER):].strip():
                continue
        items.append(normalize_item(line))
    return items[:max_items] if max_items > 0 else items


_WORD = re.compile(r"\[?[a-z0-9']+\]?")


def item_words(text: str) -> frozenset[str]:
    """The words of an item, lower-cased, the structured marker and punctuation left out (bracketed
    moves such as [up] stay whole: "answer [up]" and "answer [down]" are different rules)."""
    body = text[len(STRUCTURED_MARKER):] if text.startswith(STRUCTURED_MARKER) else text
    return frozenset(_WORD.findall(body.lower()))


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    """|a & b| / |a | b|; two empty sets are the same item (1.0)."""
    return len(a & b) / len(a | b) if a or b else 1.0


def restates(a: frozenset[str], b: frozenset[str], near: float) -> bool:
    """Whether two items' words say the same thing: Jaccard >= `near` and the same bracketed answers
    (a rule is about its move: "never answer [up]" and "never answer [down]" are two rules)."""
    answers = {w for w in a if w.startswith("[")}, {w for w in b if w.startswith("[")}
    return answers[0] == answers[1] and jaccard(a, b) >= near


def dedup_new(existing: Sequence[str], new: Sequence[str], *, near: float = 0.0) -> tuple[list[str], list[str]]:
    """(kept, dropped): new items that repeat neither an existing item nor an earlier new one.

    An exact repeat (modulo spacing) always counts. With `near` > 0, so does an item whose word set
    overlaps an earlier one's by a Jaccard similarity of at least `near` and names the same bracketed
    answers: small models restate a lesson with a word or two changed ("The agent must..." / "You
    must..."), which fills the budget with one idea. The first wording is kept.
    """
    seen = {normalize_item(t) for t in existing}
    seen_words = [item_words(t) for t in existing] if near > 0 else []
    kept: list[str] = []
    dropped: list[str] = []
    for t in new:
        key = normalize_item(t)
        words = item_words(t) if near > 0 else frozenset()
        if key in seen or any(restates(words, w, near) for w in seen_words):
            dropped.append(t)
            continue
        seen.add(key)
        if near > 0:
            seen_words.append(words)
        kept.append(t)
    return kept, dropped


_NUMBER = re.compile(r"(?<![\w.])\d+(?:\.\d+)?")
"""A number as a lesson states it: digits, optionally with a decimal part, not inside a word."""


def stated_numbers(text: str) -> set[str]:
    """The numbers a text states (`[10]`, `10.`, `3 turns`), as written."""
    return set(_NUMBER.findall(text))


def split_grounded(items: Sequence[str], shown: str) -> tuple[list[str], list[str]]:
    """(grounded, ungrounded): items every number of which appears in `shown`, and the rest.

    `shown` is the whole prompt the writer read (its instructions, the lessons so far and the
    record of the game). A small writer asked what a game revealed sometimes states a value the
    game never showed ("the hidden answer was 15" after a game that ended on 10); a number it
    was never shown cannot be something it learned, so such a lesson is not kept. This reads
    only the writer's own input, never the game's hidden state.
    """
    seen = stated_numbers(shown)
    grounded: list[str] = []
    ungrounded: list[str] = []
    for item in items:
        (ungrounded if stated_numbers(item) - seen else grounded).append(item)
    return grounded, ungrounded


@dataclass(frozen=True)
class TokenCounter:
    """Counts tokens of a text: the extractor's tokenizer, or the documented approximation."""

    count_fn: Callable[[str], int]
    name: str

    def __call__(self, text: str) -> int:
        return self.count_fn(text)


def approx_token_count(text: str) -> int:
    """ceil(characters / CHARS_PER_TOKEN_APPROX): used only when no tokenizer is available."""
    return math.ceil(len(text) / CHARS_PER_TOKEN_APPROX)


def token_counter(tokenizer: Any | None = None) -> TokenCounter:
    """A counter from a Hugging Face tokenizer (no special tokens), else the approximation."""
    if tokenizer is None:
        return TokenCounter(approx_token_count, f"approx:{CHARS_PER_TOKEN_APPROX}chars/token")

    def count(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=False))

    # The directory's last part only: a machine's cache path must not make two stores differ.
    name = str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__).rstrip("/").rsplit("/", 1)[-1]
    return TokenCounter(count, f"tokenizer:{name}")


def counter_for_backend(backend: Any | None) -> TokenCounter:
    """Use the backend's tokenizer if it exposes one (`backend.tokenizer`), else approximate."""
    return token_counter(getattr(backend, "tokenizer", None))


def fit_newest(items: Sequence[str], budget_tokens: int, count: TokenCounter, sep: str) -> list[int]:
    """Indices of the items kept so that the kept items, joined by `sep`, fit in the budget.

    An item longer than the whole budget on its own can never be kept, so it is dropped
    first (otherwise one over-long newest item -- a long raw game -- would empty the
    knowledge). Of the rest, the newest contiguous run of WHOLE items that fits is kept:
    walking back from the newest, the first item that would not fit and everything older
    is dropped; an item is never cut in half.
    """
    candidates = [i for i, text in enumerate(items) if count(text) <= budget_tokens]
    kept: list[int] = []
    for i in reversed(candidates):
        if count(sep.join(items[j] for j in [i, *kept])) > budget_tokens:
            break
        kept.insert(0, i)
    return kept
