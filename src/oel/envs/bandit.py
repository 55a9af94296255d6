"""Bandit-v0 from TextArena 0.7.4: press buttons that pay 1 or 0, then name the best one.

Why this game: five answers, a state that is a list of (button, reward) lines, and a good policy
a lesson can say in a line (try each button, then keep to the one that paid best; name it at the
end). Each button pays 1 with a fixed hidden chance: one button's is 0.55 (0.5 + p_gap / 2, with
TextArena's p_gap 0.10), the others' uniform in [0.1, 0.45].

An episode: `max_turns - 1` presses (TextArena's `num_turns`, set so that the whole episode fits
our turn cap; TextArena's v0 has 20: `max_turns=21`), then one more answer, the final choice. Pass
= the final choice is the best button, the game's own success.

TextArena's reward is broken in 0.7.4: it compares the chosen button's NAME with the dict of
every button's chance (`button == game_state['ground_truth']`), which is never true, so it never
pays 1 and instead pays the regret (best chance minus the chosen one's): more for a worse button.
oel scores the game as it is meant: 1.0 when the final choice is the best button, else 0.0
(`final_reward`); an episode that does not reach the final choice scores 0.0.

The oracle (measurement only, and it reads the HIDDEN chances, which the player never sees): an
answer's value is the chosen button's true chance; ok = good = the best button. At a press this
is the exploiting answer, not necessarily the most informative one; at the final choice it is
exactly the game's goal.

The rules text says nothing of the strategy, so it is shown (`hide_rules=false`). It does not say
how to answer; the game prompts ask for the answer in square brackets (`[red]`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import textarena as ta

from oel.envs import EnvConfig
from oel.envs.answer_game import VALUE_TOLERANCE, REASON_INVALID, REASON_LOST, REASON_WON, TextArenaAnswerGame
from oel.envs.base import StepResult

BUTTONS: tuple[str, ...] = ("red", "blue", "green", "yellow", "purple")
"""Bandit-v0's buttons (its registration's list, in its order)."""
ANSWERS: tuple[str, ...] = tuple(f"[{b}]" for b in BUTTONS)
FINAL_CHOICE_REASON = "You chose an incorrect button."
"""TextArena's reason once the final choice is made (whatever the choice: see the module docstring)."""
_PRESS = re.compile(r"You pressed the (\w+) button and received a reward of ([01])\.0\.")


class BanditGame(TextArenaAnswerGame):
    """Bandit-v0 (built unwrapped, as `Bandit-v0-raw`) with `max_turns - 1` presses before the choice."""

    env_id = "Bandit-v0-raw"
    game_name = "bandit"
    hidden_description = (f"You are playing a game with {len(BUTTONS)} buttons: {', '.join(BUTTONS)}. A press "
                          "pays 1 or 0 at random. Each turn, answer with one button in square brackets, for "
                          "example [red]; at the end, answer with the button you think pays best.")

    def __init__(self, config: EnvConfig) -> None:
        super().__init__(config)
        self.choice: str | None = None

    def presses(self) -> int:
        """Presses before the final choice (TextArena's `num_turns`)."""
        return self.config.max_turns - 1

    def _make_textarena_env(self) -> Any:
        return ta.make(self.env_id, num_turns=self.presses())

    def rules_text(self) -> str:
        n = self.presses()
        return (
            f"You are in a room with {len(BUTTONS)} buttons: {', '.join(BUTTONS)}. Each button is associated with a "
            "Bernoulli distribution with a fixed but unknown mean; the means for the buttons could be different.\n"
            "For each button, when you press it, you will get a reward that is sampled from associated distribution.\n"
            f"You have {n} time steps and, on each time step, you can choose any button and receive the reward.\n"
            "Your goal is to strategically choose buttons at each time step to collect information about their "
            f"reward distribution, that will let you choose the button with the highest mean reward correctly at "
            f"the end of {n} turns.")

    def canonical(self, content: str) -> str | None:
        name = content.strip().lower()
        return f"[{name}]" if name in BUTTONS else None

    def answers(self) -> tuple[str, ...]:
        return ANSWERS

    def means(self) -> dict[str, float]:
        """Each button's hidden chance of paying 1 (measurement only)."""
        return dict(self.textarena_env.state.game_state["ground_truth"])

    def best(self) -> tuple[str, ...]:
        means = self.means()
        top = max(means.values())
        return tuple(b for b in BUTTONS if means[b] >= top - VALUE_TOLERANCE)

    def answer_labels(self, answers: Sequence[str]) -> tuple[list[float], tuple[bool, ...], tuple[bool, ...]]:
        means, best = self.means(), self.best()
        names = [a.strip("[]") for a in answers]
        return [means[n] for n in names], tuple(n in best for n in names), tuple(False for _ in names)

    def step(self, response: str) -> StepResult:
        answer = self.parse(response)
        self.choice = None if answer is None else answer.strip("[]")
        return super().step(response)

    def final_reward(self, textarena_reward: float) -> float:
        """1.0 when the final choice named the best button, else 0.0 (TextArena's own is broken)."""
        reason = self.textarena_env.state.game_info[0].get("reason") or ""
        return float(reason == FINAL_CHOICE_REASON and self.choice in self.best())

    def capped_reward(self) -> float:
        return 0.0

    def classify(self, reason: str, reward: float) -> str:
        if reason.startswith("Invalid Move"):
            return REASON_INVALID
        return REASON_WON if reward == 1.0 else REASON_LOST

    def press_summary(self) -> str:
        """What the presses showed: per button, the times pressed and the share that paid."""
        paid: dict[str, list[int]] = {b: [] for b in BUTTONS}
        for button, reward in _PRESS.findall(self.observation()):
            paid[button].append(int(reward))
        parts = [f"{b} {sum(r)}/{len(r)}" for b, r in paid.items() if r]
        return ", ".join(parts) if parts else "no presses"

    def outcome_text(self, passed: bool, reward: float) -> str:
        turns, means = self._turns_text(), self.means()
        best = max(BUTTONS, key=lambda b: means[b])
        chances = ", ".join(f"{b} {means[b]:.2f}" for b in BUTTONS)
        tail = f" Your presses paid: {self.press_summary()}. The true chances were: {chances}."
        if passed:
            return f"Success: your final choice, {self.choice}, was the best button, after {turns}.{tail}"
        if self.end_reason == REASON_INVALID:
            why = (self.textarena_env.state.game_info[0].get("reason") or "").removeprefix("Invalid Move:").strip()
            return (f"Failure: {self.config.invalid_moves_tolerated + 1} invalid answers in a row ended the game "
                    f"after {turns} (last one: {why}) The best button was {best}.{tail}")
        if self.end_reason == REASON_LOST:
            return f"Failure: your final choice, {self.choice}, was not the best button ({best}).{tail}"
        return (f"Failure: the turn limit ({self.config.max_turns} turns) was reached before the final choice "
                f"(invalid answers used turns). The best button was {best}.{tail}")

    @classmethod
    def random_pass_rate(cls, config: EnvConfig) -> float:
        """Exact: a final choice uniform over the buttons names the best one with 1 / 5 (uniform
        answers are never invalid, so every episode reaches it)."""
        return 1 / len(BUTTONS)


__all__ = ["BanditGame", "BUTTONS", "ANSWERS", "FINAL_CHOICE_REASON"]
