"""`oel envs`: how hard are the held-out maps? Solvability, BFS-optimal and random pass rates.

    oel envs                              # both games, the 128 held-out maps, paper settings
    oel envs --game sokoban --random-episodes 20
    oel envs --max-turns 8 --maps 64
    oel envs --game frozenlake --prior "[down]=0.5,[right]=0.5"   # what a state-blind move habit wins
"""

from __future__ import annotations

import argparse
import time

from oel.envs import EnvConfig
from oel.envs.analysis import ceiling_report, prior_pass_rate
from oel.envs.seeds import HELDOUT_COUNT, heldout_seeds, round_seeds
from oel.envs.solver import MOVES
from oel.errors import ConfigError

GAMES = ("frozenlake", "sokoban")
PRIOR_TRAINING_ROUND = 1
"""Whose collection block gives the training maps a prior is also scored on (never held-out maps)."""
PRIOR_TOLERANCE = 0.01
"""How far a prior's probabilities may miss 1 (shares rounded to a few places); they are then rescaled."""


def parse_prior(spec: str) -> dict[str, float]:
    """'[down]=0.5,[right]=0.5' -> {'[down]': 0.5, '[right]': 0.5}; a one-line ConfigError otherwise."""
    prior: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        move, eq, value = part.partition("=")
        try:
            prior[move.strip()] = float(value) if eq else float("nan")
        except ValueError:
            prior[move.strip()] = float("nan")
        if move.strip() not in MOVES or not 0 <= prior[move.strip()] <= 1:
            raise ConfigError(f"--prior: {part!r}: expected MOVE=PROBABILITY with MOVE one of {', '.join(MOVES)} "
                              "and a probability in [0, 1]")
    total = sum(prior.values())
    if abs(total - 1) > PRIOR_TOLERANCE:
        raise ConfigError(f"--prior: {spec!r}: expected moves whose probabilities sum to 1, got {total:g}")
    return {move: q / total for move, q in prior.items()}


def cmd_envs(ns: argparse.Namespace) -> int:
    if not 1 <= ns.maps <= HELDOUT_COUNT:
        raise ConfigError(f"--maps: must be in 1..{HELDOUT_COUNT}, got {ns.maps}")
    games = GAMES if ns.game == "both" else (ns.game,)
    priors = [parse_prior(spec) for spec in ns.prior]
    for game in games:
        started = time.perf_counter()
        config = EnvConfig(game=game, max_turns=ns.max_turns)
        report = ceiling_report(config, heldout_seeds(ns.maps), random_episodes_per_map=ns.random_episodes,
                                random_seed=ns.seed)
        print("\n".join(report.lines()))
        if report.unsolvable_seeds:
            print(f"  unsolvable held-out seeds   : {report.unsolvable_seeds}")
        for spec, prior in zip(ns.prior, priors):
            held = prior_pass_rate(config, heldout_seeds(ns.maps), prior)
            train = prior_pass_rate(config, round_seeds(PRIOR_TRAINING_ROUND, "collect", ns.maps), prior)
            print(f"  state-blind prior {spec}: {held:.1%} of the held-out maps, {train:.1%} of {ns.maps} training "
                  f"maps (round {PRIOR_TRAINING_ROUND}'s collection block), exact")
        print(f"  ({time.perf_counter() - started:.1f}s)")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "envs", help="report the held-out maps' ceiling: solvable share, BFS-optimal and random pass rates",
        description="For the held-out maps of each game: how many can be solved within the turn cap, the "
                    "pass rate of a BFS-optimal scripted policy (played through the environment), and the "
                    "pass rate of uniform random moves (exact expectation; optionally also sampled).")
    p.add_argument("--game", choices=(*GAMES, "both"), default="both", help="which game to report (default: both)")
    p.add_argument("--maps", type=int, default=HELDOUT_COUNT,
                   help=f"how many held-out maps, from the first (default: {HELDOUT_COUNT})")
    paper_turns = EnvConfig().max_turns
    p.add_argument("--max-turns", type=int, default=paper_turns,
                   help=f"model turns per episode (default: the paper's {paper_turns})")
    p.add_argument("--random-episodes", type=int, default=0,
                   help="also PLAY this many random-policy episodes per map (default 0: exact expectation only)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random policy's own RNG (sampled episodes)")
    p.add_argument("--prior", action="append", default=[], metavar="MOVE=P,...",
                   help="also the exact pass rate of this state-blind move prior, e.g. '[down]=0.5,[right]=0.5' "
                        "(repeatable)")
    p.set_defaults(func=cmd_envs)
