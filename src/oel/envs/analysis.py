"""How hard are the held-out maps? Solvability within the turn cap and calibration pass rates.

`ceiling_report(config, seeds)` answers, for one game:

* how many maps can be won within `max_turns` moves at all (the pass-rate ceiling; the paper
  reports ~12% of Sokoban held-out maps unsolvable in 5 turns);
* the BFS-optimal policy's pass rate, PLAYED through the real environment (it must equal the
  solvable share -- a check that the solver and the game agree);
* the uniform-random policy's pass rate, computed EXACTLY (`random_pass_probability`, averaged
  over maps) and, if asked, also estimated by playing random episodes through the environment.

`prior_pass_rate(config, seeds, prior)` is the exact pass rate of a state-blind move prior (the
same move probabilities at every board): what a teacher with only a direction habit can win.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from oel.envs import EnvConfig, make_env
from oel.envs.policies import OptimalPolicy, RandomPolicy, play_episode
from oel.envs.solver import blind_pass_probability, distance_to_success, random_pass_probability


@dataclass
class CeilingReport:
    """The numbers `oel envs` prints for one game."""

    game: str
    env_id: str
    max_turns: int
    maps: int
    solvable: int
    """Maps winnable within `max_turns` moves."""
    optimal_passed: int
    """Maps the BFS-optimal policy passed, playing through the environment."""
    random_pass_rate_exact: float
    """Mean over maps of the exact probability that uniform random moves win."""
    random_episodes: int = 0
    random_passed: int = 0
    """Passes among `random_episodes` sampled random episodes (0 episodes: not sampled)."""
    shortest_lengths: dict[str, int] = field(default_factory=dict)
    """Number of maps per shortest-solution length ('unsolvable' when it cannot be won at all)."""
    unsolvable_seeds: list[int] = field(default_factory=list)
    """Seeds of maps that cannot be won within `max_turns`."""

    def lines(self) -> list[str]:
        """Human-readable summary, one fact per line."""
        out = [
            f"{self.game} ({self.env_id}), {self.maps} maps, at most {self.max_turns} turns:",
            f"  solvable within {self.max_turns} turns : {self.solvable}/{self.maps} ({self.solvable / self.maps:.1%});"
            f" unsolvable: {self.maps - self.solvable}",
            f"  shortest solution lengths   : {', '.join(f'{k}: {v}' for k, v in self.shortest_lengths.items())}",
            f"  BFS-optimal policy pass rate: {self.optimal_passed}/{self.maps} "
            f"({self.optimal_passed / self.maps:.1%}),"
            " played through the environment",
            f"  random policy pass rate     : {self.random_pass_rate_exact:.2%} (exact expectation over maps)",
        ]
        if self.random_episodes:
            out.append(f"  random policy, sampled      : {self.random_passed}/{self.random_episodes}"
                       f" ({self.random_passed / self.random_episodes:.2%}) played episodes")
        return out


def _length_key(distance: int | None) -> str:
    return "unsolvable" if distance is None else str(distance)


def ceiling_report(config: EnvConfig, seeds: list[int], *, random_episodes_per_map: int = 0,
                   random_seed: int = 0) -> CeilingReport:
    """Measure solvability, optimal and random pass rates of `config`'s game on maps `seeds`."""
    env = make_env(config)
    solvable, optimal_passed, random_total = 0, 0, 0.0
    lengths: Counter[str] = Counter()
    unsolvable: list[int] = []
    for seed in seeds:
        env.reset(seed)
        start = env.solver_state()  # type: ignore[attr-defined]
        distance = distance_to_success(start)
        lengths[_length_key(distance)] += 1
        if distance is not None and distance <= config.max_turns:
            solvable += 1
        else:
            unsolvable.append(seed)
        random_total += random_pass_probability(start, config.max_turns, config.invalid_moves_tolerated)
        optimal_passed += play_episode(env, OptimalPolicy(), seed).passed
    random_passed = 0
    policy = RandomPolicy(random_seed)
    for seed in seeds:
        for _ in range(random_episodes_per_map):
            random_passed += play_episode(env, policy, seed).passed
    ordered = dict(sorted(lengths.items(),
                          key=lambda kv: (kv[0] == "unsolvable", int(kv[0]) if kv[0].isdigit() else 0)))
    return CeilingReport(
        game=config.game, env_id=env.env_id, max_turns=config.max_turns, maps=len(seeds), solvable=solvable,
        optimal_passed=optimal_passed, random_pass_rate_exact=random_total / len(seeds),
        random_episodes=random_episodes_per_map * len(seeds), random_passed=random_passed,
        shortest_lengths=ordered, unsolvable_seeds=unsolvable,
    )


def prior_pass_rate(config: EnvConfig, seeds: Sequence[int], prior: Mapping[str, float]) -> float:
    """Mean over maps `seeds` of the exact chance that the state-blind policy `prior` (canonical move ->
    probability, the same at every board) wins (`oel.envs.solver.blind_pass_probability`)."""
    env = make_env(config)
    total = 0.0
    for seed in seeds:
        env.reset(seed)
        start = env.solver_state()  # type: ignore[attr-defined]
        total += blind_pass_probability(start, prior, config.max_turns, config.invalid_moves_tolerated)
    return total / len(seeds)
