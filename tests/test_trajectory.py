"""The trajectory JSONL format: valid files round-trip; every malformed one names file:line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from oel.cli import main
from oel.errors import DataError
from oel.trajectory import (
    Message,
    Trajectory,
    Turn,
    append_trajectory,
    import_openai_messages,
    read_trajectories,
    write_trajectories,
)


def traj(i: int = 0) -> Trajectory:
    obs = "board: P . G"
    prompt = [Message(role="user", content=f"play\n{obs}")]
    return Trajectory(id=f"t{i}", env_id="E", seed=i, model_id="m",
                      turns=[Turn(prompt=prompt, observation=obs, response="[right]", action="[right]",
                                  feedback="moved", prompt_tokens=9, response_tokens=3)],
                      outcome="success: reached the goal", passed=True, reward=1.0)


def good_record(i: int = 0) -> dict:
    return traj(i).model_dump(mode="json")


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    for i in range(3):
        append_trajectory(path, traj(i))
    assert read_trajectories(path) == [traj(i) for i in range(3)]
    write_trajectories(tmp_path / "w.jsonl", [traj(5)])
    assert read_trajectories(tmp_path / "w.jsonl") == [traj(5)]


def one_line_error(path: Path) -> str:
    with pytest.raises(DataError) as e:
        read_trajectories(path)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_bad_json_names_file_and_line(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "t.jsonl", [json.dumps(good_record()), '{"id": "t1", '])
    assert one_line_error(path).startswith(f"{path}:2: invalid JSON")


def test_not_an_object(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "t.jsonl", ["[1, 2]"])
    assert one_line_error(path).startswith(f"{path}:1: expected a JSON object")


def test_missing_field(tmp_path: Path) -> None:
    rec = good_record()
    del rec["outcome"]
    path = write_lines(tmp_path / "t.jsonl", [json.dumps(good_record(1)), "", json.dumps(rec)])
    msg = one_line_error(path)
    assert msg.startswith(f"{path}:3:") and "outcome" in msg


def test_wrong_role_order(tmp_path: Path) -> None:
    rec = good_record()
    rec["turns"][0]["prompt"] = [{"role": "assistant", "content": "hi"}, {"role": "user", "content": "x"}]
    path = write_lines(tmp_path / "t.jsonl", [json.dumps(rec)])
    msg = one_line_error(path)
    assert msg.startswith(f"{path}:1: turns[0]:") and "prompt message 0 has role 'assistant'" in msg


def test_prompt_ending_with_assistant(tmp_path: Path) -> None:
    rec = good_record()
    rec["turns"][0]["prompt"].append({"role": "assistant", "content": "[up]"})
    path = write_lines(tmp_path / "t.jsonl", [json.dumps(rec)])
    assert "end with a user message" in one_line_error(path)


def test_wrong_type_and_unknown_field(tmp_path: Path) -> None:
    rec = good_record()
    rec["seed"] = "seven"
    path = write_lines(tmp_path / "t.jsonl", [json.dumps(rec)])
    assert one_line_error(path).startswith(f"{path}:1: seed")
    rec = good_record()
    rec["colour"] = "blue"
    path = write_lines(tmp_path / "u.jsonl", [json.dumps(rec)])
    assert "colour" in one_line_error(path)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text("")
    assert one_line_error(path) == f"{path}:1: file is empty, expected at least one record"
    assert read_trajectories(path, allow_empty=True) == []


def test_missing_file_and_duplicate_ids(tmp_path: Path) -> None:
    assert "file not found" in one_line_error(tmp_path / "nope.jsonl")
    path = write_lines(tmp_path / "t.jsonl", [json.dumps(good_record(1))] * 2)
    assert "appears twice" in one_line_error(path)


CHAT_LOG = [
    {"messages": [
        {"role": "user", "content": "board 1"}, {"role": "assistant", "content": "[down]"},
        {"role": "user", "content": "you moved down; board 2"}, {"role": "assistant", "content": "[right]"},
        {"role": "user", "content": "success: reached the goal"}],
     "passed": True, "seed": 4},
    {"messages": [
        {"role": "system", "content": "be brief"}, {"role": "user", "content": "board"},
        {"role": "assistant", "content": "<think>hmm</think>[up]"}], "outcome": "failure: hit the wall"},
]


def test_import_logs_round_trip_through_the_cli(tmp_path: Path) -> None:
    src = write_lines(tmp_path / "chats.jsonl", [json.dumps(r) for r in CHAT_LOG])
    out = tmp_path / "traj.jsonl"
    assert main(["import-logs", str(src), str(out), "--env-id", "FrozenLake-v0-raw", "--model-id", "mine"]) == 0
    a, b = read_trajectories(out)
    assert (a.env_id, a.model_id, a.seed, a.passed, a.source) == ("FrozenLake-v0-raw", "mine", 4, True, "import")
    assert [t.response for t in a.turns] == ["[down]", "[right]"]
    assert [t.feedback for t in a.turns] == ["you moved down; board 2", "success: reached the goal"]
    assert a.turns[1].prompt == [Message(**m) for m in CHAT_LOG[0]["messages"][:3]]
    assert a.outcome == "success: reached the goal"
    assert b.turns[0].prompt[0].role == "system" and b.outcome == "failure: hit the wall"
    assert b.turns[0].response == "<think>hmm</think>[up]"
    # The conversation is recoverable from the trajectory: the last turn's prompt + response + feedback.
    last = a.turns[-1]
    rebuilt = [m.model_dump() for m in last.prompt] + [{"role": "assistant", "content": last.response},
                                                       {"role": "user", "content": last.feedback}]
    assert rebuilt == CHAT_LOG[0]["messages"]


@pytest.mark.parametrize("record, expected", [
    ({"nomessages": []}, "missing field 'messages'"),
    ({"messages": [{"role": "user", "content": "only a question"}]}, "no assistant message"),
    ({"messages": [{"role": "assistant", "content": "first"}]}, "prompt has no messages"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "messages"),
])
def test_import_logs_errors_name_the_line(tmp_path: Path, record: dict, expected: str) -> None:
    src = write_lines(tmp_path / "chats.jsonl", [json.dumps(CHAT_LOG[0]), json.dumps(record)])
    with pytest.raises(DataError) as e:
        import_openai_messages(src)
    assert str(e.value).startswith(f"{src}:2:") and expected in str(e.value)


def test_import_logs_cli_reports_errors_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src = tmp_path / "empty.jsonl"
    src.write_text("")
    assert main(["import-logs", str(src), str(tmp_path / "o.jsonl")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"oel: error: {src}:1: file is empty, expected at least one record"
    assert not (tmp_path / "o.jsonl").exists()


def test_atomic_writes_get_ordinary_permissions(tmp_path):
    import os
    import stat

    from oel.io import FILE_MODE, atomic_write_text

    atomic_write_text(tmp_path / "x.txt", "hi")
    assert stat.S_IMODE(os.stat(tmp_path / "x.txt").st_mode) == FILE_MODE
