"""Probe states from games a policy actually played: the meter at the positions it reached.

Why: `meter.probe_states` scores one shortest path per map, the positions a perfect player sees.
Consolidation trains on something else: the student's own games, with their refused moves,
edge positions and long histories. A teacher can lean one way on the first kind of state and
another on the second, so "what does the teacher prefer where the student actually is?" needs
the meter on those states.

Each trajectory is replayed through the REAL environment from its seed with the recorded raw
responses (what `oel collect` sent), and at each turn the replayed observation must equal the
recorded one, so the scored prompt is exactly what the player saw. The game's true state labels
the moves (solver) and is never shown to a model; measurement only, as for every meter state.
"""

from __future__ import annotations

import os
from typing import Any

from oel.envs import EnvConfig, make_env
from oel.envs.solver import optimal_actions
from oel.errors import DataError
from oel.evaluate.meter import ProbeState, move_labels, layout_key
from oel.io import iter_jsonl
from oel.trajectory import parse_trajectory


def visited_states(path: str | os.PathLike, env_config: EnvConfig | None = None, *,
                   max_layouts: int | None = None) -> list[ProbeState]:
    """Every turn's state of every trajectory in `path` (a collect JSONL) as a probe state.

    States are grouped by map (the bootstrap unit) and numbered in order of appearance within
    their map (`ProbeState.step` is that index here, not a distance along a shortest path).
    Trajectories on maps that cannot be won are skipped, as `probe_states` skips them;
    `max_layouts` keeps the first that many distinct maps. A trajectory recorded under another
    game, or whose replay does not reproduce its observations, is a one-line DataError.
    """
    env_config = env_config or EnvConfig()
    env: Any = make_env(env_config)
    out: list[ProbeState] = []
    per_layout: dict[str, int] = {}
    for lineno, obj in iter_jsonl(path):
        where = f"{path}:{lineno}"
        try:
            traj = parse_trajectory(obj)
        except ValueError as e:
            raise DataError(f"{where}: {e}") from None
        if traj.env_id != env.env_id:
            raise DataError(f"{where}: env_id {traj.env_id!r}, but the meter's game is {env.env_id!r} (set env.*)")
        observation = env.reset(traj.seed)
        state = env.solver_state()
        key = layout_key(state)
        if optimal_actions(state) is None:
            continue
        if key not in per_layout and max_layouts is not None and len(per_layout) >= max_layouts:
            continue
        per_layout.setdefault(key, 0)
        for t, turn in enumerate(traj.turns):
            if observation != turn.observation:
                raise DataError(f"{where}: turn {t}: replaying seed {traj.seed} shows a different observation than "
                                f"the one recorded (was it played with other env.* settings?)")
            opt, inv, lose = move_labels(state)
            out.append(ProbeState(key, traj.seed, per_layout[key], observation, opt, inv, lose))
            per_layout[key] += 1
            result = env.step(turn.response)
            if result.done:
                if t != len(traj.turns) - 1:
                    raise DataError(f"{where}: turn {t}: the replayed game ended, but {len(traj.turns) - 1 - t} "
                                    f"more turns are recorded")
                break
            observation, state = result.observation, env.solver_state()
    if not out:
        raise DataError(f"{path}: no playable turns (empty, or every map unwinnable)")
    return out
