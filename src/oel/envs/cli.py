"""`oel envs`: how hard are the held-out maps? Solvability, BFS-optimal and random pass rates.

    oel envs                              # both games, the 128 held-out maps, paper settings
    oel envs --game sokoban --random-episodes 20
    oel envs --max-turns 8 --maps 64
"""

from __future__ import annotations

import argparse
import time

from oel.envs import EnvConfig
from oel.envs.analysis import ceiling_report
from oel.envs.seeds import HELDOUT_COUNT, heldout_seeds
from oel.errors import ConfigError

GAMES = ("frozenlake", "sokoban")


def cmd_envs(ns: argparse.Namespace) -> int:
    if not 1 <= ns.maps <= HELDOUT_COUNT:
        raise ConfigError(f"--maps: must be in 1..{HELDOUT_COUNT}, got {ns.maps}")
    games = GAMES if ns.game == "both" else (ns.game,)
    for game in games:
        started = time.perf_counter()
        config = EnvConfig(game=game, max_turns=ns.max_turns)
        report = ceiling_report(config, heldout_seeds(ns.maps), random_episodes_per_map=ns.random_episodes,
                                random_seed=ns.seed)
        print("\n".join(report.lines()))
        if report.unsolvable_seeds:
            print(f"  unsolvable held-out seeds   : {report.unsolvable_seeds}")
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
    p.set_defaults(func=cmd_envs)
