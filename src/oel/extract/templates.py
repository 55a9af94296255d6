"""Which words the extractor reads: a grid game's, or any task's.

A round of extraction is either a round of the grid games oel plays (its records say "Game:",
its prompt speaks of maps and moves, as the quick start always has) or a round of some other
task (imported chat logs, a deployment's conversations), whose record and prompt must not
pretend it was a game. `round_style(trajectories)` decides once per round, from the
trajectories themselves:

- a trajectory is a grid game when its env_id is one of the TextArena games oel knows
  (`GRID_ENV_IDS`), or when `oel collect` played it (`source: collect`: collection only plays
  those games, through the grid policy prompt);
- the small-answer games (`ANSWER_ENV_IDS`: GuessTheNumber, Blackjack, Hangman, ...) get GAME_STYLE: game
  words, without maps, symbols or moves (`extract_game_<format>_v1`);
- a round is a grid round only when every trajectory is one; a round that mixes both is shown
  with the task-neutral words (true of a game too, while game words are false of a task).

The extractor prompt is then `extract.prompt` when set (a built-in name or a `.txt` file),
else (`''` or `auto`) the style's template for the format: `extract_<format>_v1` for games,
`extract_task_<format>_v1` for anything else.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from oel import prompts
from oel.extract.text import Format
from oel.trajectory import Trajectory

log = logging.getLogger(__name__)

AUTO_PROMPT = "auto"
"""extract.prompt: choose the template from the trajectories ('' means the same)."""

GRID_ENV_IDS = frozenset({"FrozenLake-v0-raw", "Sokoban-v0-raw", "FrozenLake-v0", "Sokoban-v0"})
"""The TextArena grid games: the env ids oel's games record (`oel.envs.textarena_games`, checked
by a test) and the same games as TextArena itself names them (an imported log of one)."""

ANSWER_ENV_IDS = frozenset({"GuessTheNumber-v0-raw", "Blackjack-v0-raw", "Hangman-v0-raw", "TowerOfHanoi-v0-raw",
                            "Bandit-v0-raw", "2048-v0-3x3-raw", "Minesweeper-v0-small-raw"})
"""The small-answer games oel plays (`oel.envs.answer_game`): game words, but no maps or moves."""

COLLECTED_SOURCE = "collect"
"""Trajectory.source of episodes `oel collect` played (only grid games, with the grid policy prompt)."""


@dataclass(frozen=True)
class RecordStyle:
    """The words a round's records and default prompt use (labels are what the extractor reads)."""

    name: str
    observation_label: str
    feedback_label: str
    raw_template: str
    raw_body_field: str
    raw_step_label: str
    default_prompt: str
    """`str.format` pattern of the default extraction template's name, over {format}."""

    def prompt_for(self, fmt: Format) -> str:
        return self.default_prompt.format(format=fmt)


GRID_STYLE = RecordStyle(
    name="grid", observation_label="Game", feedback_label="Game reply", raw_template=prompts.RAW_TRAJECTORY_TEMPLATE,
    raw_body_field="moves", raw_step_label="move", default_prompt="extract_{format}_v1")
GAME_STYLE = RecordStyle(
    name="game", observation_label="Game", feedback_label="Game reply", raw_template=prompts.RAW_TRAJECTORY_TEMPLATE,
    raw_body_field="moves", raw_step_label="answer", default_prompt="extract_game_{format}_v1")
TASK_STYLE = RecordStyle(
    name="task", observation_label="Input", feedback_label="Feedback", raw_template=prompts.RAW_TASK_TEMPLATE,
    raw_body_field="turns", raw_step_label="turn", default_prompt="extract_task_{format}_v1")


def is_auto(prompt: str) -> bool:
    """True when extract.prompt leaves the choice to the trajectories."""
    return prompt in ("", AUTO_PROMPT)


def is_grid_game(traj: Trajectory) -> bool:
    """A trajectory of one of oel's grid games (see the module docstring)."""
    if traj.env_id in ANSWER_ENV_IDS:
        return False
    return traj.env_id in GRID_ENV_IDS or traj.source == COLLECTED_SOURCE


def round_style(trajs: Sequence[Trajectory]) -> RecordStyle:
    """GRID_STYLE when every trajectory is a grid game, GAME_STYLE when every one is a small-answer
    game, else TASK_STYLE (logged when mixed)."""
    if trajs and all(t.env_id in ANSWER_ENV_IDS for t in trajs):
        return GAME_STYLE
    grid = [is_grid_game(t) for t in trajs]
    if all(grid):
        return GRID_STYLE
    if any(grid):
        log.info("extract: %d of %d trajectories are grid games, the others not: using task-neutral wording",
                 sum(grid), len(grid))
    return TASK_STYLE


def extraction_template(prompt: str, fmt: Format, style: RecordStyle) -> prompts.Template:
    """The extractor's template: `prompt` (a name or a .txt file, fields checked) or the style's default."""
    spec = style.prompt_for(fmt) if is_auto(prompt) else prompt
    return prompts.load(spec, key="prompt", role=prompts.EXTRACTION_ROLE)
