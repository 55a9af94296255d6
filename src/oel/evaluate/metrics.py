"""Pure metrics of held-out play: pass rate with a Wilson interval, move quality, a summary.

Everything here reads finished trajectories (and, for move quality, the start position of
each map) and returns numbers; nothing plays a game or calls a model, so every function is
tested on hand-computed cases.

Definitions (also in docs/evaluation.md):

* pass rate: passed episodes / all episodes, over every (map, sampling seed) pair; the 95%
  interval is Wilson's score interval, which stays inside [0, 1] and is honest at 0/n --
  the common case for small models here.
* per-seed pass rate: the same ratio within each sampling seed; mean and sample standard
  deviation across seeds show how much a single run of the benchmark can move.
* tokens per turn: response tokens (thinking included, stop token included) / model turns.
* steps per episode: model turns per episode, invalid turns included.
* move quality: the share of model turns whose move lies on SOME shortest path to success
  from the position where it was played (BFS over the true map, `oel.envs.solver`). A turn
  with no valid action, a move into a wall or a hole, and any move in an already-lost
  position count as not optimal. Diagnostic only: never a training signal.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from oel.envs.solver import GridState
from oel.envs.solver import move_quality as solver_move_marks
from oel.envs.solver import optimal_share, replay
from oel.trajectory import Trajectory

UNKNOWN_END_REASON = "unknown"
"""End reason recorded for trajectories whose environment does not report one."""

Z_95 = 1.959963984540054
"""Standard normal quantile for a two-sided 95% interval."""


def wilson_interval(successes: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion: sane at 0/n and n/n, unlike p +- z*se."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def wilson_ci(successes: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval for `successes` out of `n`; (0, 1) when there is no data.

    Chosen over the normal approximation p +- z*se because that one collapses to a zero-width
    interval at 0/n and n/n, exactly where small models sit on these games. The formula is the
    one of `wilson_interval` (which the in-context curve uses); this adds argument checks.
    """
    if successes < 0 or successes > n:
        raise ValueError(f"wilson_ci: successes must be in 0..n, got {successes} of {n}")
    return wilson_interval(successes, n, z)



def percent_points(diff: float, lo: float, hi: float) -> str:
    """A difference of two rates and its interval in percent points: '+8.3 [+4.7, +12.1]'."""
    return f"{100 * diff:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"


def newcombe_interval(successes_a: int, n_a: int, successes_b: int, n_b: int,
                      z: float = Z_95) -> tuple[float, float]:
    """95% interval of the difference of two proportions, a - b, by Newcombe's hybrid score method.

    Built from the two Wilson intervals, so it inherits their sanity at 0/n (where a Wald interval of
    a difference collapses). It treats the two samples as independent: two models' games on the same
    seeds are paired by map, so the interval is, if anything, a little wide.
    """
    pa, pb = successes_a / n_a, successes_b / n_b
    (la, ua), (lb, ub) = wilson_ci(successes_a, n_a, z), wilson_ci(successes_b, n_b, z)
    return (pa - pb - math.sqrt((pa - la) ** 2 + (ub - pb) ** 2),
            pa - pb + math.sqrt((ua - pa) ** 2 + (pb - lb) ** 2))

BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
"""Fixed, so the same episodes always give the same interval."""


def _percentiles(stats: Any, level: float) -> tuple[float, float]:
    import numpy as np

    alpha = (1 - level) / 2
    return float(np.quantile(stats, alpha)), float(np.quantile(stats, 1 - alpha))


def bootstrap_mean_ci(values: Sequence[float], *, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED,
                      level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values` (one value per independent unit, e.g. a map)."""
    import numpy as np

    if not values:
        raise ValueError("bootstrap_mean_ci: no values")
    x = np.asarray(values, dtype=float)
    idx = np.random.default_rng(seed).integers(0, len(x), size=(resamples, len(x)))
    return _percentiles(x[idx].mean(axis=1), level)


def cluster_ratio_ci(numerators: Sequence[float], denominators: Sequence[float], *,
                     resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED,
                     level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of sum(num) / sum(den), resampling whole clusters.

    For move quality the clusters are maps: the moves of one map's episodes are not independent
    (the same board, often the same first move), so resampling single moves would be too narrow.
    """
    import numpy as np

    num, den = np.asarray(numerators, dtype=float), np.asarray(denominators, dtype=float)
    if len(num) != len(den) or not len(num) or den.sum() <= 0:
        raise ValueError("cluster_ratio_ci: need equally many clusters, at least one, and some denominator")
    idx = np.random.default_rng(seed).integers(0, len(num), size=(resamples, len(num)))
    tot = den[idx].sum(axis=1)
    ratios = np.divide(num[idx].sum(axis=1), tot, out=np.full(resamples, np.nan), where=tot > 0)
    return _percentiles(ratios[~np.isnan(ratios)], level)


def episode_move_marks(start: GridState, trajectory: Trajectory) -> list[bool]:
    """For each turn of `trajectory`, played from `start`: was its move on a shortest path?

    Trajectories record the action sent to the game (`Turn.action`, None when no valid move)
    but not the position, so the positions are recomputed by replaying the actions through
    the solver's exact model of the game. Turns after a win or a loss (there should be none)
    are marked not optimal so that the list always has one entry per turn.
    """
    actions = [turn.action for turn in trajectory.turns]
    marks = solver_move_marks(start, actions)
    return marks + [False] * (len(actions) - len(marks))


def random_move_shares(start: GridState, trajectory: Trajectory) -> list[float]:
    """For each scored turn of `trajectory`: the chance a uniformly random move would have been
    optimal at the position the model was in. Their mean is random play's move quality at the
    model's own positions: the reference line move quality is read against."""
    return [optimal_share(s) for s in replay(start, [turn.action for turn in trajectory.turns])]


@dataclass(frozen=True)
class MoveQuality:
    """How many model turns played a shortest-path move."""

    optimal: int
    moves: int

    @property
    def share(self) -> float | None:
        """optimal / moves; None when no move was scored."""
        return self.optimal / self.moves if self.moves else None


def move_quality(marks: Sequence[Sequence[bool]]) -> MoveQuality:
    """Pool per-episode move marks (one list per episode) into one share over all turns."""
    return MoveQuality(optimal=sum(sum(m) for m in marks), moves=sum(len(m) for m in marks))


@dataclass(frozen=True)
class SeedPassRate:
    """Pass rate within one sampling seed."""

    seed: int
    episodes: int
    passed: int

    @property
    def pass_rate(self) -> float:
        return self.passed / self.episodes if self.episodes else 0.0


@dataclass
class GameSummary:
    """What `summarise` computes from a set of held-out episodes."""

    episodes: int
    passed: int
    pass_rate: float
    ci_low: float
    ci_high: float
    per_seed: list[SeedPassRate]
    seed_mean: float
    seed_std: float
    """Sample standard deviation of the per-seed pass rates (0 with a single seed)."""
    turns: int
    response_tokens: int
    tokens_per_turn: float
    steps_per_episode: float
    end_reasons: dict[str, int]
    move_quality: float | None
    optimal_moves: int
    scored_moves: int
    move_quality_ci_low: float | None = None
    move_quality_ci_high: float | None = None
    """95% interval of move quality, bootstrapping whole maps (`cluster_ratio_ci`)."""
    random_move_quality: float | None = None
    """Random play's move quality at the same positions (`random_move_shares`)."""
    random_pass_rate: float | None = None
    """The uniform random policy's pass rate on the same maps, exact (`solver.random_pass_probability`)."""
    first_moves: dict[str, int] = field(default_factory=dict)
    """How often each action opened an episode ('none' = no valid action): a cheap bias check."""


def _end_reason(trajectory: Trajectory) -> str:
    return str(trajectory.meta.get("end_reason") or UNKNOWN_END_REASON)


def _per_seed(trajectories: Sequence[Trajectory], seed_of: Mapping[int, int]) -> list[SeedPassRate]:
    """Group by sample index; `seed_of` maps a sample index to its sampling seed."""
    episodes: Counter[int] = Counter()
    passed: Counter[int] = Counter()
    for t in trajectories:
        episodes[t.sample] += 1
        passed[t.sample] += int(t.passed)
    return [SeedPassRate(seed_of.get(k, k), episodes[k], passed[k]) for k in sorted(episodes)]


def summarise(trajectories: Sequence[Trajectory], marks: Mapping[str, Sequence[bool]] | None = None,
              seed_of: Mapping[int, int] | None = None) -> GameSummary:
    """All game metrics of `trajectories`.

    `marks` maps trajectory id -> per-turn move marks (`episode_move_marks`); trajectories
    without an entry are left out of move quality (e.g. environments without a solver).
    `seed_of` maps a trajectory's `sample` index to the sampling seed it was played with.
    """
    if not trajectories:
        raise ValueError("summarise: no trajectories to summarise")
    n = len(trajectories)
    passed = sum(int(t.passed) for t in trajectories)
    low, high = wilson_ci(passed, n)
    per_seed = _per_seed(trajectories, seed_of or {})
    rates = [s.pass_rate for s in per_seed]
    turns = sum(len(t.turns) for t in trajectories)
    tokens = sum(t.num_response_tokens for t in trajectories)
    scored = move_quality([marks[t.id] for t in trajectories if marks and t.id in marks])
    mq_low = mq_high = None
    if scored.moves:
        by_map: dict[int, list[int]] = {}
        for t in trajectories:
            if marks and t.id in marks:
                counts = by_map.setdefault(t.seed, [0, 0])
                counts[0] += sum(marks[t.id])
                counts[1] += len(marks[t.id])
        mq_low, mq_high = cluster_ratio_ci([o for o, _ in by_map.values()], [m for _, m in by_map.values()])
    first = Counter(t.turns[0].action or "none" for t in trajectories)
    return GameSummary(
        episodes=n, passed=passed, pass_rate=passed / n, ci_low=low, ci_high=high, per_seed=per_seed,
        seed_mean=statistics.fmean(rates), seed_std=statistics.stdev(rates) if len(rates) > 1 else 0.0,
        turns=turns, response_tokens=tokens, tokens_per_turn=tokens / turns, steps_per_episode=turns / n,
        end_reasons=dict(sorted(Counter(_end_reason(t) for t in trajectories).items())),
        move_quality=scored.share, optimal_moves=scored.optimal, scored_moves=scored.moves,
        move_quality_ci_low=mq_low, move_quality_ci_high=mq_high,
        first_moves=dict(sorted(first.items())),
    )


def summary_dict(summary: GameSummary) -> dict[str, Any]:
    """`summary` as plain JSON data, per-seed rates included."""
    from dataclasses import asdict

    out = asdict(summary)
    out["per_seed"] = [{**asdict(s), "pass_rate": s.pass_rate} for s in summary.per_seed]
    return out
