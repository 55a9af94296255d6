"""The meter as the games sample: the four answers' distribution after temperature, top-k and top-p.

Why: the meter scores the model's whole move distribution, but held-out play samples it at
T 0.7, top-k 20, top-p 0.8 (docs/method.md), and those truncate. A policy that answers [down] with
probability .85 at every state scores 50% E[mq] on FrozenLake's probe states (half its
shortest-path moves are [down]); sampled at T 0.7 its .85 becomes about .94, top-p 0.8 keeps
that answer alone, and it plays "always [down]", which never wins a 3x3 map. The sharpened
meter shows that before any game is played: a gain that exists only in the full distribution
is a bias the games will not turn into wins.

The transform is applied to the four answers renormalised, as if they were the only tokens,
in the order transformers applies its warpers (temperature, then top-k, then top-p, keeping
the token that crosses top_p). That is exact for the answers' first distinguishing token when
the four answers cover the policy (the meter's coverage near 1), and an approximation otherwise.
Like the meter, it is a diagnostic: never a training signal.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from oel.backends.base import SamplingParams
from oel.evaluate.meter import CANONICAL_MOVES, MeterResult, StateScore

SHARPENED_KEYS = ("emq", "p_invalid", "p_losing")
"""The meter's mass metrics, recomputed on the sharpened distribution."""


def sharpen(p: Sequence[float], temperature: float, top_p: float = 1.0, top_k: int = 0) -> list[float]:
    """`p` (a distribution) as the sampler draws from it: p**(1/T), the top_k largest, the
    smallest prefix (by size) whose mass reaches top_p, renormalised. T = 0 is greedy (the first
    of the largest)."""
    if temperature < 0 or not 0 < top_p <= 1 or top_k < 0:
        raise ValueError(f"sharpen: need temperature >= 0, 0 < top_p <= 1, top_k >= 0; got {temperature}, "
                         f"{top_p}, {top_k}")
    if temperature == 0:
        best = max(range(len(p)), key=lambda i: (p[i], -i))
        return [1.0 if i == best else 0.0 for i in range(len(p))]
    logw = [math.log(x) / temperature if x > 0 else -math.inf for x in p]
    top = max(logw)
    w = [math.exp(x - top) for x in logw]
    order = sorted(range(len(w)), key=lambda i: (-w[i], i))
    keep = order[:top_k] if top_k else order
    total = sum(w[i] for i in keep)
    kept, mass = [], 0.0
    for i in keep:
        kept.append(i)
        mass += w[i] / total
        if mass >= top_p:
            break
    z = sum(w[i] for i in kept)
    return [w[i] / z if i in kept else 0.0 for i in range(len(w))]


def sharpened(result: MeterResult, sampling: SamplingParams) -> MeterResult:
    """`result` with every state's four answers replaced by their sharpened distribution."""
    states = []
    for s in result.states:
        q = sharpen(s.p_move, sampling.temperature, sampling.top_p, sampling.top_k)
        states.append(StateScore(s.layout, s.step, [math.log(x) if x > 0 else -math.inf for x in q],
                                 s.optimal, s.invalid, s.losing))
    return MeterResult(f"{result.setting} (sampled)", states, meta={"sampling": sampling_record(sampling)})


def sampling_record(sampling: SamplingParams) -> dict[str, float]:
    return {"temperature": sampling.temperature, "top_p": sampling.top_p, "top_k": sampling.top_k}


def sampled_summary(result: MeterResult, sampling: SamplingParams) -> dict[str, Any]:
    """What the meter's summary gains: E[mq], P(invalid), P(losing), the move shares and the top
    move's share of the sharpened distribution, and the sampling they assume."""
    s = sharpened(result, sampling)
    return {**{k: s.mean(k) for k in SHARPENED_KEYS}, "moves": s.move_distribution(),
            "top_move_share": s.top_move()[1], "sampling": sampling_record(sampling)}


def opening_check(result: MeterResult, first_moves: dict[str, int], sampling: SamplingParams) -> dict[str, Any]:
    """Does the meter predict how the games open? Its mean distribution at the opening states (step 0,
    no history), whole and sharpened as `sampling` draws, against the share of each move among the
    games' first answers (`first_moves`; an answer with no valid move counts against every move), with
    the total-variation distance of each. The maps need not be the same: this checks shares, not states."""
    first = [s.p_move for s in result.states if s.step == 0]
    whole = [sum(p[i] for p in first) / len(first) for i in range(len(CANONICAL_MOVES))]
    played = [sharpen(p, sampling.temperature, sampling.top_p, sampling.top_k) for p in first]
    sampled = [sum(p[i] for p in played) / len(played) for i in range(len(CANONICAL_MOVES))]
    n = sum(first_moves.values())
    games = [first_moves.get(m, 0) / n for m in CANONICAL_MOVES]

    def distance(q: list[float]) -> float:
        return 0.5 * sum(abs(g - x) for g, x in zip(games, q))

    return {"moves": list(CANONICAL_MOVES), "games": games, "games_count": n, "meter": whole, "meter_sampled": sampled,
            "distance": distance(whole), "distance_sampled": distance(sampled)}
