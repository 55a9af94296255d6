"""Extraction of tasks that are not grid games: the automatic template choice, the task-neutral
record, and an imported shell-helper log taken end to end (import-logs -> extract -> consolidate)
on a tiny random model."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from oel import prompts
from oel.cli import main
from oel.consolidate.teacher import teacher_messages
from oel.extract import (
    ExtractCommandConfig,
    accumulate,
    extract_command,
    read_experience,
    step_path,
)
from oel.extract.render import render_raw_trajectory
from oel.extract.templates import (
    GRID_ENV_IDS,
    GRID_STYLE,
    TASK_STYLE,
    extraction_template,
    round_style,
)
from oel.trajectory import Message, Trajectory, Turn, prefixes, read_trajectories

from test_extract import ScriptedExtractor, lesson_per_game, make_traj

GAME_WORDS = re.compile(r"\b(maps?|moves?|games?)\b", re.IGNORECASE)

SHELL_CONVERSATIONS = [
    ("How do I count the lines of every .py file under this folder?", "wc -l *.py | sort",
     "zsh: no matches found: *.py (the files are in subfolders)", "find . -name '*.py' -exec wc -l {} +"),
    ("Show the disk usage of my home folder, biggest first.", "du -h ~ | sort -r",
     "the order is wrong: 4.0K is listed before 2.1G", "du -h ~ | sort -rh"),
    ("Delete every .log file older than 7 days under /var/tmp.", "find /var/tmp -name *.log -mtime 7 -delete",
     "find: paths must precede expression: app.log", "find /var/tmp -name '*.log' -mtime +7 -delete"),
    ("Print the third column of data.csv.", "awk '{print $3}' data.csv",
     "it prints whole lines: the columns are separated by commas", "awk -F, '{print $3}' data.csv"),
]
SHELL_OUTCOME = "the user ran the corrected command and it worked"


def write_shell_log(path: Path) -> Path:
    """~4 shell-helper chats: a request, a wrong command, the error the user reports, the fix."""
    with path.open("w") as f:
        for i, (ask, first, error, fix) in enumerate(SHELL_CONVERSATIONS):
            messages = [{"role": "system", "content": "You are a shell helper. Answer with one command."},
                        {"role": "user", "content": ask}, {"role": "assistant", "content": first},
                        {"role": "user", "content": f"That failed: {error}"}, {"role": "assistant", "content": fix}]
            f.write(json.dumps({"id": f"shell-{i}", "messages": messages, "outcome": SHELL_OUTCOME}) + "\n")
    return path


def imported(i: int) -> Trajectory:
    """make_traj(i) as `oel import-logs` would have written it: another task, source import."""
    return make_traj(i).model_copy(update={"env_id": "imported", "source": "import"})


def test_the_games_oel_plays_are_grid_env_ids():
    from oel.envs.textarena_games import FrozenLakeGame, SokobanGame

    assert {FrozenLakeGame.env_id, SokobanGame.env_id} <= GRID_ENV_IDS


@pytest.mark.parametrize("fmt", ["structured", "unstructured"])
def test_auto_picks_the_grid_template_for_games_and_the_task_template_otherwise(fmt):
    games = [make_traj(1), imported(2).model_copy(update={"env_id": "Sokoban-v0-raw"})]
    assert round_style(games) is GRID_STYLE
    assert round_style([imported(1), imported(2)]) is TASK_STYLE
    assert round_style([make_traj(1), imported(2)]) is TASK_STYLE  # mixed: words true of both
    assert extraction_template("", fmt, GRID_STYLE).name == f"extract_{fmt}_v1"
    assert extraction_template("auto", fmt, TASK_STYLE).name == f"extract_task_{fmt}_v1"
    assert extraction_template("extract_reason_rules_v1", fmt, TASK_STYLE).name == "extract_reason_rules_v1"


def test_the_task_templates_speak_of_no_game():
    for name in ("extract_task_structured_v1", "extract_task_unstructured_v1", "raw_task_v1",
                 prompts.TASK_TEACHER_TEMPLATE):
        assert not GAME_WORDS.search(prompts.get(name).text), name


def test_a_grid_round_is_extracted_exactly_as_before(tmp_path):
    """Collected games keep the grid wording: the quick start's prompts do not change."""
    fake = ScriptedExtractor(lesson_per_game)
    extract_command(ExtractCommandConfig(out_dir=str(tmp_path / "s"), num_runs=1, num_trajectories=2), [make_traj(1), make_traj(2)], fake)
    assert all(p.startswith(prompts.get("extract_structured_v1").text.split("{knowledge}")[0]) for p in fake.prompts)
    assert "Game reply: moved 0" in fake.prompts[0]
    assert read_experience(step_path(tmp_path / "s", 0, 0, 2)).prompt == prompts.get("extract_structured_v1").record()


def test_an_imported_round_gets_the_task_record(tmp_path):
    fake = ScriptedExtractor(lesson_per_game)
    extract_command(ExtractCommandConfig(out_dir=str(tmp_path / "s"), num_runs=1, num_trajectories=2), [imported(1), imported(2)], fake)
    first = fake.prompts[0]
    assert "Feedback: moved 0" in first and "Game" not in first and "Outcome: T1" in first
    assert read_experience(step_path(tmp_path / "s", 0, 0, 2)).prompt["name"] == "extract_task_structured_v1"


def test_the_raw_baseline_of_a_task_has_no_game_words():
    text = render_raw_trajectory(imported(1), style=TASK_STYLE)
    assert text.startswith("Earlier attempt t1:") and "  turn 1: [down]" in text and not GAME_WORDS.search(text)
    assert render_raw_trajectory(make_traj(1)).startswith("Earlier game t1:")


def test_shell_log_import_extract_consolidate_end_to_end(tmp_path, monkeypatch, one_thread):
    from oel.backends.tiny import save_tiny_chat_model

    tiny = save_tiny_chat_model(tmp_path / "model", seed=3)
    model = [f"model.name={tiny}", "model.dtype=float32", "model.device=cpu"]
    trajs_file = tmp_path / "trajectories.jsonl"
    assert main(["import-logs", str(write_shell_log(tmp_path / "chats.jsonl")), str(trajs_file)]) == 0

    sent: list[str] = []
    real_generate = accumulate._generate

    def spy(backend, built, seeds, params):
        sent.extend(p.text for p in built)
        return real_generate(backend, built, seeds, params)

    monkeypatch.setattr(accumulate, "_generate", spy)
    store = tmp_path / "store"
    assert main(["extract", f"trajectories={trajs_file}", f"out_dir={store}", "num_runs=1", "num_trajectories=4",
                 "format=unstructured", "sampling.max_new_tokens=24", *[f"extractor.{m}" for m in model]]) == 0
    assert len(sent) == len(SHELL_CONVERSATIONS)
    for text, (ask, first, error, fix) in zip(sent, SHELL_CONVERSATIONS):
        assert not GAME_WORDS.search(text), GAME_WORDS.search(text)
        assert all(part in text for part in (ask, first, error, fix, SHELL_OUTCOME))
    final = read_experience(step_path(store, 0, 0, 4))
    assert final.prompt["name"] == "extract_task_unstructured_v1" and final.rendered.strip()

    knowledge = step_path(store, 0, 0, 4).with_suffix(".txt")
    for prefix in prefixes(read_trajectories(trajs_file)):
        teacher = teacher_messages(prefix, knowledge.read_text())
        assert not any(GAME_WORDS.search(m.content) for m in teacher)
        assert teacher[1].content.startswith(prompts.get(prompts.TASK_TEACHER_TEMPLATE).text.split("{knowledge}")[0])

    out = tmp_path / "consolidate"
    assert main(["consolidate", f"trajectories={trajs_file}", f"knowledge=[{knowledge}]", f"output_dir={out}", *model,
                 "steps=2", "batch_size=2", "micro_batch_size=2", "max_new_tokens=4", "top_k=16", "save_every=1"]) == 0
    losses = [json.loads(line)["consolidate/loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    assert (out / "checkpoints" / "step-000001" / "trainer_state.json").is_file()
    assert (out / "model" / "model.safetensors").is_file()
    records = json.loads((out / "prompts.json").read_text())
    assert prompts.get(prompts.TASK_TEACHER_TEMPLATE).record() in records


def test_an_explicit_template_overrides_auto_for_imported_logs(tmp_path):
    fake = ScriptedExtractor(lesson_per_game)
    cfg = ExtractCommandConfig(out_dir=str(tmp_path / "s"), num_runs=1, num_trajectories=1, prompt="extract_structured_v1")
    extract_command(cfg, [imported(1)], fake)
    assert "Record of the game:" in fake.prompts[0] and "Feedback: moved 0" in fake.prompts[0]


def test_a_chat_with_a_system_message_gets_the_block_in_its_first_user_message():
    prompt = (Message(role="system", content="Be brief."), Message(role="user", content="List files."))
    prefix = prefixes([Trajectory(id="x", env_id="imported", seed=0, model_id="m", source="import", outcome="ok",
                                  passed=False, turns=[Turn(prompt=list(prompt), observation="List files.",
                                                            response="ls")])])[0]
    msgs = teacher_messages(prefix, "Prefer ls -la.")
    assert msgs[0] == prompt[0] and msgs[1].content.endswith("Prefer ls -la.\n\nList files.")
