"""The meter on states a policy visited: replayed games give the exact states and labels."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from oel.envs import EnvConfig, make_env
from oel.envs.policies import OptimalPolicy, play_episode
from oel.envs.seeds import round_seeds
from oel.errors import DataError
from oel.evaluate.meter import CANONICAL_MOVES, probe_states
from oel.evaluate.visited import visited_states
from oel.trajectory import Message, Trajectory, Turn, write_trajectories

TOP_ROW_REFUSED = "[up]"
"""From the start (top-left) this move is refused, so the state repeats with a longer history."""


def _trajectory(seed: int, responses: list[str], *, env_config: EnvConfig | None = None) -> Trajectory:
    """Play `responses` on map `seed` through the real game and record them as `oel collect` would."""
    env = make_env(env_config or EnvConfig())
    observation, turns, result = env.reset(seed), [], None
    for response in responses:
        result = env.step(response)
        turns.append(Turn(prompt=[Message(role="user", content=observation)], observation=observation,
                          response=response, action=result.action, feedback=result.feedback))
        if result.done:
            break
        observation = result.observation
    return Trajectory(id=f"s{seed}-{'-'.join(responses)}", env_id=env.env_id, seed=seed, model_id="script", turns=turns,
                      outcome=result.outcome if result else "", passed=bool(result and result.passed))


def _winnable_seed() -> int:
    return probe_states(round_seeds(0, "train", 20), max_layouts=1)[0].seed


def test_a_shortest_path_game_gives_the_shortest_path_probe_states(tmp_path: Path) -> None:
    seed = _winnable_seed()
    env = make_env(EnvConfig())
    played = play_episode(env, OptimalPolicy(), seed).responses
    path = tmp_path / "train.jsonl"
    write_trajectories(path, [_trajectory(seed, played)])
    assert visited_states(path) == probe_states([seed])


def test_refused_and_unparsable_answers_replay_as_the_game_saw_them(tmp_path: Path) -> None:
    seed = _winnable_seed()
    path = tmp_path / "train.jsonl"
    write_trajectories(path, [_trajectory(seed, [TOP_ROW_REFUSED, "I think I will go", "[down]"])])
    states = visited_states(path)
    assert [s.step for s in states] == list(range(len(states))) and len(states) >= 2
    first = states[0]
    assert first.invalid[CANONICAL_MOVES.index(TOP_ROW_REFUSED)]
    assert states[1].observation != first.observation  # the history shows the refused move
    assert all(s.layout == first.layout for s in states)
    # the refused move leaves the player where it was: the same labels one turn later
    assert states[1].optimal == first.optimal and states[1].invalid == first.invalid


def test_two_games_on_one_map_share_its_layout_with_distinct_steps(tmp_path: Path) -> None:
    seed = _winnable_seed()
    path = tmp_path / "train.jsonl"
    write_trajectories(path, [_trajectory(seed, ["[down]"] * 3), _trajectory(seed, ["[right]"] * 3)])
    states = visited_states(path)
    assert len({s.layout for s in states}) == 1
    assert len({(s.layout, s.step) for s in states}) == len(states)


def test_a_tampered_observation_or_another_game_is_a_one_line_error(tmp_path: Path) -> None:
    seed = _winnable_seed()
    traj = _trajectory(seed, ["[down]", "[right]"]).model_dump(mode="json")
    traj["turns"][1]["observation"] = "a board that was never shown"
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(traj) + "\n")
    with pytest.raises(DataError, match=r"bad\.jsonl:1: turn 1: replaying seed"):
        visited_states(path)
    traj["env_id"] = "Sokoban-v0-raw"
    path.write_text("\n" + json.dumps(traj) + "\n")
    with pytest.raises(DataError, match=r"bad\.jsonl:2: env_id 'Sokoban-v0-raw'"):
        visited_states(path)


def test_oel_meter_on_collected_games_with_k_lessons_files(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from oel.cli import main
    from oel.backends.tiny import save_tiny_chat_model

    model_dir = save_tiny_chat_model(tmp_path / "tiny", seed=1)
    games = tmp_path / "train.jsonl"
    common = [f"model.name={model_dir}", "model.dtype=float32", "model.device=cpu"]
    assert main(["collect", *common, "seeds=train", "num_seeds=4", "batch_size=4", "sampling.max_new_tokens=4",
                 f"out={games}"]) == 0
    lessons = []
    for k, text in enumerate(["- from the top row never answer [up]", "- answer [down] or [right]"]):
        lessons.append(tmp_path / f"knowledge_{k}.txt")
        lessons[-1].write_text(text + "\n")
    out = tmp_path / "gap.json"
    assert main(["meter", *common, f"visited={games}", f"knowledge=[{lessons[0]},{lessons[1]}]", f"out={out}"]) == 0
    data = json.loads(out.read_text())
    expected = visited_states(games)
    assert data["student"]["states"] == len(expected) and data["knowledge_texts"] == 2
    assert data["visited"] == str(games) and "seeds" not in data
    capsys.readouterr()
    assert main(["meter", *common, f"knowledge_file={lessons[0]}", f"knowledge=[{lessons[1]}]"]) == 2
    assert "not both" in capsys.readouterr().err
    assert main(["meter", *common, f"visited={tmp_path / 'missing.jsonl'}", f"knowledge_file={lessons[0]}"]) == 2
    assert "missing.jsonl" in capsys.readouterr().err
