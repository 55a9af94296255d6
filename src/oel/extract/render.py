"""How a trajectory is shown to the extractor, and how an over-long one is cut.

The extractor prompt is a template with two slots: the knowledge so far and the
trajectory. The instructions live in the template around both slots, so they must never
be cut (the original implementation truncated the whole prompt on the right and lost
them). When the prompt is too long, only the trajectory slot shrinks, from the LEFT:
whole oldest turns first, then -- if even the newest turn is too long -- the oldest
characters of what is left. The outcome summary at the end is always kept, because it
is the one line that says how the game ended. What was cut is returned so that the step
record can say so.

The record's labels come from a `RecordStyle` (`oel.extract.templates`): a grid game's turns
read "Game:" / "Game reply:", any other task's "Input:" / "Feedback:".

`record="compact"` redraws ASCII tables (FrozenLake's `+-----+` boards) as rows of cells, one
symbol each and `.` for an empty cell, and drops blank lines: a 4x4 board costs 4 short lines
instead of 9 long ones, and a small extractor can read which symbol is next to which. Nothing
else changes; the text is the game's own, reformatted, never annotated.

`record="tally"` does not replay the game: it shows the first observation (compact) and then,
answer by answer, how often the agent gave it and what the game replied each time (the first
line of the reply), with the answer after which the game ended marked. Extractors of 1.5B
parameters misread even short records of whole games (docs/results/teacher-gap-search); a tally
asks them to read one line per answer. It is built only from what the agent saw -- its answers
and the game's replies -- never from the game's hidden state.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Literal

from oel import prompts
from oel.errors import DataError
from oel.extract.templates import GRID_STYLE, RecordStyle
from oel.extract.text import TokenCounter, strip_thinking
from oel.trajectory import Trajectory, Turn

EMPTY_KNOWLEDGE = "(none yet)"
"""What the extractor sees in the knowledge slot before the first item exists."""

OMITTED_TURNS_NOTE = "[{n} earlier turn(s) omitted for length]"
CUT_TEXT_NOTE = "[...]"

RecordFormat = Literal["full", "compact", "tally"]
EMPTY_CELL = "."
"""How `record="compact"` shows a table cell with nothing in it."""
_TABLE_RULE = re.compile(r"^\s*\+(-+\+)+\s*$")
_TABLE_ROW = re.compile(r"^\s*\|(.*\|)\s*$")
_REPLY_TAG = re.compile(r"^\s*\[[A-Z]+\]\s*")
"""The speaker tag TextArena puts before a game's reply (`[GAME] You moved down ...`)."""
TALLY_START_LABEL = "Start of the game"
TALLY_HEADER = "What each answer did in this game (answer: times given; the game's replies):"
TALLY_NO_REPLY = "(no reply)"
TALLY_LAST_MOVE = "the game ended right after the last {answer}"


def new_part(previous: str, current: str) -> str:
    """The part of `current` not already in `previous`.

    Environments often show the whole game history at every turn; printing it again at
    each turn would make the record quadratic in length. When an observation extends
    the previous one, only the extension is shown.
    """
    if previous and current.startswith(previous):
        return current[len(previous):].strip("\n")
    return current


def shown_observation(prev_obs: str, prev_feedback: str, prev_response: str, obs: str) -> str:
    """What this turn's observation adds to what the record already shows.

    Environments that replay the whole history each turn repeat the previous turn's reply
    and echo the agent's move (TextArena: `[Player] [down]`); the record already shows
    both, so they are removed: first the part shared with the previous observation, then
    the previous reply, then lines that end with the previous answer (the echo).
    """
    part = new_part(prev_obs, obs)
    fb = prev_feedback.strip()
    if fb and fb in part:
        part = part.replace(fb, "", 1)
    echo = prev_response.strip()
    lines = [ln for ln in part.splitlines() if ln.strip() and not (echo and ln.strip().endswith(echo))]
    return "\n".join(lines).strip()


def compact_tables(text: str) -> str:
    """`text` with ASCII tables redrawn as rows of space-separated cells, and no blank lines.

    A table rule (`+-----+-----+`) is dropped; a table row (`|  P  |     |  H  |`) becomes
    `P . H`. Any other line is kept as it is.
    """
    out = []
    for line in text.splitlines():
        if not line.strip() or _TABLE_RULE.match(line):
            continue
        row = _TABLE_ROW.match(line)
        if row:
            cells = [c.strip() or EMPTY_CELL for c in row.group(1).split("|")[:-1]]
            line = " ".join(cells)
        out.append(line.rstrip())
    return "\n".join(out)


def shown_response(turn: Turn, strip_response_thinking: bool) -> str:
    """The agent's answer as the record shows it: thinking removed unless asked to keep it."""
    return strip_thinking(turn.response) if strip_response_thinking else turn.response


def reply_headline(feedback: str) -> str:
    """The first non-empty line of a game's reply, without its speaker tag (`[GAME]`)."""
    for line in feedback.splitlines():
        if line.strip():
            return _REPLY_TAG.sub("", line).strip()
    return TALLY_NO_REPLY


def tally_blocks(traj: Trajectory, *, strip_response_thinking: bool, style: RecordStyle = GRID_STYLE) -> list[str]:
    """`record="tally"`: the first observation, then one line per distinct answer (first given first).

    Each line counts the answer and the distinct headlines of the game's replies to it, e.g.
    `[up]: 2 times; "You attempted an invalid move. ..." 2 times`; the answer the game ended
    after says so. Two blocks, so that an over-long tally is cut like any record (from the left).
    """
    answers = [" ".join(shown_response(t, strip_response_thinking).split()) or TALLY_NO_REPLY for t in traj.turns]
    replies: dict[str, Counter[str]] = {}
    for answer, turn in zip(answers, traj.turns):
        replies.setdefault(answer, Counter())[reply_headline(turn.feedback)] += 1
    lines = [TALLY_HEADER]
    for answer, per_reply in replies.items():
        shown = "; ".join(f'"{reply}" {_times(n)}' for reply, n in per_reply.items())
        lines.append(f"- {answer}: {_times(per_reply.total())}; {shown}")
    if answers:
        lines.append(f"- {TALLY_LAST_MOVE.format(answer=answers[-1])}")
    start = traj.turns[0].observation if traj.turns else ""
    return [f"{TALLY_START_LABEL} ({style.observation_label}): {compact_tables(start.strip())}", "\n".join(lines)]


def _times(n: int) -> str:
    return "1 time" if n == 1 else f"{n} times"


def record_blocks(traj: Trajectory, *, strip_response_thinking: bool, style: RecordStyle = GRID_STYLE,
                  record: RecordFormat = "full") -> list[str]:
    """The trajectory slot's blocks in the chosen `record` format (see the module docstring)."""
    if record == "tally":
        return tally_blocks(traj, strip_response_thinking=strip_response_thinking, style=style)
    return turn_blocks(traj, strip_response_thinking=strip_response_thinking, style=style, record=record)


def turn_blocks(traj: Trajectory, *, strip_response_thinking: bool, style: RecordStyle = GRID_STYLE,
                record: RecordFormat = "full") -> list[str]:
    """One text block per turn: what the game showed (new parts only), the agent's answer, the reply."""
    shape = compact_tables if record == "compact" else str.strip
    blocks: list[str] = []
    prev_obs = prev_fb = prev_resp = ""
    for i, turn in enumerate(traj.turns, start=1):
        response = shown_response(turn, strip_response_thinking)
        lines = [f"Turn {i}"]
        shown = turn.observation.strip() if i == 1 else shown_observation(prev_obs, prev_fb, prev_resp,
                                                                          turn.observation)
        if shown:
            lines.append(f"{style.observation_label}: {shape(shown)}")
        lines.append(f"Agent: {response.strip()}")
        if turn.feedback.strip():
            lines.append(f"{style.feedback_label}: {shape(turn.feedback.strip())}")
        blocks.append("\n".join(lines))
        prev_obs, prev_fb, prev_resp = turn.observation, turn.feedback, turn.response
    return blocks


def outcome_line(traj: Trajectory) -> str:
    return f"Outcome: {traj.outcome.strip()}"


@dataclass(frozen=True)
class ExtractionPrompt:
    """The rendered extractor input and what had to be cut to fit it."""

    text: str
    input_tokens: int
    dropped_turns: int
    cut_chars: int

    @property
    def truncated(self) -> bool:
        return self.dropped_turns > 0 or self.cut_chars > 0


def build_extraction_prompt(
    template: prompts.Template,
    knowledge: str,
    traj: Trajectory,
    *,
    count: TokenCounter,
    max_input_tokens: int,
    strip_response_thinking: bool = True,
    style: RecordStyle = GRID_STYLE,
    record: RecordFormat = "full",
) -> ExtractionPrompt:
    """Fill the template; if over `max_input_tokens`, cut the trajectory from the left only."""
    knowledge = knowledge.strip() or EMPTY_KNOWLEDGE

    def render(trajectory_text: str) -> str:
        return template.render(knowledge=knowledge, trajectory=trajectory_text)

    blocks = record_blocks(traj, strip_response_thinking=strip_response_thinking, style=style, record=record)
    tail = outcome_line(traj)
    for dropped in range(len(blocks)):
        shown = blocks[dropped:]
        head = [OMITTED_TURNS_NOTE.format(n=dropped)] if dropped else []
        text = render("\n\n".join(head + shown + [tail]))
        n = count(text)
        if n <= max_input_tokens:
            return ExtractionPrompt(text, n, dropped, 0)
    return _cut_last_turn(render, blocks[-1], tail, len(blocks) - 1, traj.id, count, max_input_tokens)


def _cut_last_turn(render, block: str, tail: str, dropped: int, traj_id: str,
                   count: TokenCounter, max_input_tokens: int) -> ExtractionPrompt:
    """Even the newest turn alone is too long: keep its last characters that fit (binary search)."""
    head = OMITTED_TURNS_NOTE.format(n=dropped) if dropped else ""

    def with_cut(cut: int) -> str:
        shown = CUT_TEXT_NOTE + block[cut:] if cut else block
        return render("\n\n".join([p for p in (head, shown, tail) if p]))

    if count(with_cut(len(block))) > max_input_tokens:
        raise DataError(
            f"trajectory {traj_id}: the extractor prompt exceeds max_input_tokens={max_input_tokens} "
            f"even with the whole game cut (instructions + knowledge + outcome are "
            f"{count(with_cut(len(block)))} tokens); raise max_input_tokens or lower the knowledge budget")
    lo, hi = 1, len(block)  # smallest cut that fits lies in [lo, hi]
    while lo < hi:
        mid = (lo + hi) // 2
        if count(with_cut(mid)) <= max_input_tokens:
            hi = mid
        else:
            lo = mid + 1
    text = with_cut(lo)
    return ExtractionPrompt(text, count(text), dropped, lo)


def render_raw_trajectory(traj: Trajectory, *, strip_response_thinking: bool = True,
                          style: RecordStyle = GRID_STYLE) -> str:
    """A compact one-game text for the raw-trajectories baseline: moves, replies, result.

    Observations are left out (they repeat the map every turn); the replies carry what
    happened, with their line structure kept (a board is 2-D) and blank lines removed.
    The agent's answer is shown after thinking removal, on one line.
    """
    moves = []
    for i, turn in enumerate(traj.turns, start=1):
        response = shown_response(turn, strip_response_thinking)
        moves.append(f"  {style.raw_step_label} {i}: {' '.join(response.split())}")
        # Keep the reply's line structure (a board is 2-D), without blank lines.
        moves += [f"    {line.rstrip()}" for line in turn.feedback.splitlines() if line.strip()]
    return prompts.get(style.raw_template).render(
        trajectory_id=traj.id, outcome=" ".join(traj.outcome.split()), **{style.raw_body_field: "\n".join(moves)})
