"""TextArena single-player games whose answer each turn comes from a small finite set.

The grid games (`oel.envs.textarena_games`) are the paper's settings and stay as they are. The
games here (a number to guess, a card hand to play) are what the offline models may actually
learn from: their state is a number or a short list, not a 2-D board. Every such game gives:

* `answers()`: the canonical answers legal to TRY at the current state (the set the exact meter
  scores; `oel.evaluate.answer_meter`). The game may still refuse one (a repeated guess).
* `parse(response)`: the canonical answer in a model's free text (last bracketed one that is an
  answer, after any `</think>`), or None; the game then receives `NO_ACTION_TEXT` and takes its
  own invalid-move path.
* the rules text, checked VERBATIM against what TextArena 0.7.4 prints (a changed text raises
  `EnvironmentTextError`, never leaks or half-replaces); `hide_rules` replaces it with a generic
  description where the rules would give the strategy away.
* an outcome summary for the extractor, and `passed`/`reward` from the game's own scoring
  (evaluation only).

TextArena's `reset(seed)` seeds the GLOBAL random module and draws from it; every call into
TextArena runs under `isolated_global_random`, as for the grid games. Unlike the grid games, some
of these draw during `step` too (the dealer's cards): each episode keeps its own continuation of
the seeded stream (`_episode_random`), restored around every step. Without it every step would
draw from the same restored process state, so the dealer would draw the same cards in every
episode (seen: always-stand winning 23% or 50% of hands depending on the process, not 38%).
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Sequence
from typing import Any, ClassVar

import textarena as ta

from oel.envs import EnvConfig
from oel.envs.actions import NO_ACTION_TEXT, answer_text
from oel.envs.base import StepResult
from oel.envs.seeds import heldout_seeds
from oel.envs.textarena_games import TEXTARENA_PLAYER_ACTION, TEXTARENA_PROMPT, isolated_global_random
from oel.errors import EnvironmentTextError

log = logging.getLogger(__name__)

_BRACKETED = re.compile(r"\[([^\[\]]*)\]")

PLAYER_LABEL = "You answered:"
GAME_LABEL = "The game replied:"
"""How the history renders each answer and reply. Not TextArena's `[Player] [10]` / `[GAME] ...`
lines: with those, the models continue the transcript (writing the game's next reply themselves)
instead of answering, and the meter's answers cover under a fifth of what they emit."""

VALUE_TOLERANCE = 1e-9
"""Answers whose oracle value is within this of the best count as best (`good`)."""

REASON_WON = "won"
REASON_LOST = "lost"
REASON_INVALID = "invalid_moves"
REASON_TURN_LIMIT = "turn_limit"


class TextArenaAnswerGame:
    """A `TextEnv` over one TextArena single-player game with a small answer set."""

    env_id: ClassVar[str]
    game_name: ClassVar[str]
    """The `EnvConfig.game` value that selects this class."""
    hidden_description: ClassVar[str]
    """Shown instead of the rules text when `hide_rules` is on."""

    def __init__(self, config: EnvConfig) -> None:
        self.config = config
        self.textarena_env = self._make_textarena_env()
        self.turns = 0
        self.end_reason: str | None = None
        self._history: list[str] = []
        self._done = True
        self.seed: int | None = None
        self._episode_random: Any = None

    # ---- what a game defines ---------------------------------------------------------------

    def _make_textarena_env(self) -> Any:
        raise NotImplementedError

    def rules_text(self) -> str:
        """TextArena's rules prompt, verbatim, for this game's settings."""
        raise NotImplementedError

    def canonical(self, content: str) -> str | None:
        """The canonical answer for one bracketed content (`' 7 '` -> `'[7]'`), or None."""
        raise NotImplementedError

    def answers(self) -> tuple[str, ...]:
        """Every canonical answer one may try at the current state (the meter's answer set)."""
        raise NotImplementedError

    def answer_labels(self, answers: Sequence[str]) -> tuple[list[float], tuple[bool, ...], tuple[bool, ...]]:
        """The oracle at the current state (measurement only): per answer, (exact value, ok, invalid)."""
        raise NotImplementedError

    def classify(self, reason: str, reward: float) -> str:
        """One of the REASON_* codes for TextArena's end-of-game reason: the wording most TextArena
        single-player games share; a game whose texts differ overrides it."""
        if reason.startswith("Congratulations"):
            return REASON_WON
        if reason.startswith("Invalid Move"):
            return REASON_INVALID
        if reason.startswith("The turn limit"):
            return REASON_TURN_LIMIT
        return REASON_LOST

    def outcome_text(self, passed: bool, reward: float) -> str:
        """Success or failure and why, for the extractor."""
        raise NotImplementedError

    def passed(self, reward: float) -> bool:
        """Whether a finished episode counts as solved (the game's own success): by default, won."""
        return self.end_reason == REASON_WON

    def final_reward(self, textarena_reward: float) -> float:
        """The game's own score for a finished episode: TextArena's reward, unless a game must
        correct it (Bandit-v0's is broken; `oel.envs.bandit` says how)."""
        return textarena_reward

    def capped_reward(self) -> float:
        """The game's own score for an episode our turn cap stopped."""
        return float(self.textarena_env._get_percentage_completion())

    def reference_answer(self, rng: random.Random) -> str:
        """The reference player's answer at the current state (`oel.evaluate.answer_probes`: the
        states the meter probes before any model has played); uniform over `answers()` unless a game
        has a better-informed player (measurement only)."""
        return rng.choice(self.answers())

    @classmethod
    def random_pass_rate(cls, config: EnvConfig) -> float | None:
        """Random play's pass rate in this setting (exact where cheap, else a seeded simulation of
        the real game; each game says which), or None where the game has none."""
        return None

    @classmethod
    def simulated_pass_rate(cls, config: EnvConfig, episodes_per_seed: int, uniform: bool = False) -> float:
        """Random play's pass rate by a seeded simulation of the real game (for games with no exact
        value): the reference player's answers, or uniform ones over `answers()` when `uniform`,
        `episodes_per_seed` episodes on each held-out seed."""
        env, rng, wins, n = cls(config), random.Random(0), 0, 0
        for seed in heldout_seeds():
            for _ in range(episodes_per_seed):
                env.reset(seed)
                result = None
                while not env.done:
                    result = env.step(rng.choice(env.answers()) if uniform else env.reference_answer(rng))
                wins, n = wins + bool(result and result.passed), n + 1
        return wins / n

    # ---- the TextEnv protocol -------------------------------------------------------------

    def parse(self, response: str) -> str | None:
        """The last bracketed answer in `response` (after any `</think>`), canonical, or None."""
        for content in reversed(_BRACKETED.findall(answer_text(response))):
            answer = self.canonical(content)
            if answer is not None:
                return answer
        return None

    def reset(self, seed: int) -> str:
        with isolated_global_random():
            self.textarena_env.reset(num_players=1, seed=seed)
            self._episode_random = random.getstate()
        self.textarena_env.state.error_allowance = self.config.invalid_moves_tolerated
        messages = self._drain()
        if not messages or messages[0][2] != TEXTARENA_PROMPT:
            raise EnvironmentTextError(f"{self.env_id}: reset(seed={seed}) did not start with the rules prompt")
        if messages[0][1] != self.rules_text():
            raise EnvironmentTextError(
                f"{self.env_id} at reset(seed={seed}): its rules prompt is not the verified text of textarena 0.7.4 "
                f"(installed {getattr(ta, '__version__', '?')}); check the new text, then update "
                f"{type(self).__name__}.rules_text")
        intro = self.hidden_description if self.config.hide_rules else messages[0][1].rstrip()
        self._history = [intro] + [self._render(m) for m in messages[1:]]
        self.turns, self.end_reason, self._done, self.seed = 0, None, False, seed
        return self.observation()

    def step(self, response: str) -> StepResult:
        if self._done:
            raise RuntimeError(f"{self.env_id}: step() without an episode in progress; call reset(seed) first")
        action = self.parse(response)
        with isolated_global_random():
            random.setstate(self._episode_random)
            done, _info = self.textarena_env.step(action if action is not None else NO_ACTION_TEXT)
            self._episode_random = random.getstate()
        self.turns += 1
        messages = self._drain()
        self._history.extend(self._render(m) for m in messages)
        feedback = "\n".join(self._render(m) for m in messages if m[2] != TEXTARENA_PLAYER_ACTION)
        state = self.textarena_env.state
        if done:
            reward = self.final_reward(float(state.rewards[0]))
            self.end_reason = self.classify(state.game_info[0].get("reason") or "", reward)
        elif self.turns >= self.config.max_turns:
            reward = self.capped_reward()
            self.end_reason = REASON_TURN_LIMIT
        else:
            return StepResult(feedback=feedback, done=False, observation=self.observation(), action=action)
        self._done = True
        passed = self.passed(reward)
        return StepResult(feedback=feedback, done=True, action=action, outcome=self.outcome_text(passed, reward),
                          passed=passed, reward=reward)

    def observation(self) -> str:
        """The whole game so far as one text."""
        return "\n".join(self._history)

    @property
    def done(self) -> bool:
        return self._done

    def _drain(self) -> list[tuple[int, str, Any]]:
        _player, messages = self.textarena_env.get_observation()
        return list(messages)

    def _render(self, observation: tuple[int, str, Any]) -> str:
        sender, message, _kind = observation
        if sender == ta.GAME_ID:
            return f"{GAME_LABEL} {message.rstrip()}"
        return f"{PLAYER_LABEL} {message.rstrip()}"

    def _turns_text(self) -> str:
        return f"{self.turns} turn{'s' if self.turns != 1 else ''}"


__all__ = ["TextArenaAnswerGame", "REASON_WON", "REASON_LOST", "REASON_INVALID", "REASON_TURN_LIMIT"]
