"""User-supplied template files: accepted wherever a template name is, fields checked with a
one-line error naming the config key and the file, recorded by name and sha256 so that editing
the file makes a different run; and the built-in game templates unchanged."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from oel import prompts
from oel.cli import main
from oel.config import load_config
from oel.consolidate import ConsolidateConfig
from oel.consolidate.teacher import prompt_records, teacher_messages
from oel.errors import ConfigError
from oel.extract import ExtractCommandConfig, ExtractConfig, extract_command, read_experience, step_path
from oel.trajectory import Message, Prefix

from test_extract import ScriptedExtractor, lesson_per_game, make_traj

QUICKSTART_DIGESTS = {
    "policy_grid_v1": "7401f4b50b23", "teacher_grid_v1": "f7486886b461", "knowledge_block_v1": "6a750f97446d",
    "extract_structured_v1": "8a018d307d55", "extract_unstructured_v1": "f68e9a709ae5",
    "raw_trajectory_v1": "0a42569c9b15",
}
"""The wording the quick start and the committed results were made with: it must not change."""

EXTRACT_TEXT = "Shell review.\nKnown:\n{knowledge}\nLog:\n{trajectory}\nWrite - EXPERIENCE ITEM: lines; {{literal}}."
TEACHER_TEXT = "Lessons:\n{knowledge}\n\nNow:\n{observation}"


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def sha12(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def test_the_quick_start_templates_are_unchanged():
    assert {name: prompts.get(name).digest for name in QUICKSTART_DIGESTS} == QUICKSTART_DIGESTS


def test_a_custom_extraction_template_is_used_and_recorded_by_path_and_hash(tmp_path):
    path = write(tmp_path / "shell.txt", EXTRACT_TEXT + "\n")
    cfg = load_config(ExtractCommandConfig, None, [f"out_dir={tmp_path / 's'}", "num_runs=1", "num_trajectories=2",
                                            f"prompt={path}"])
    fake = ScriptedExtractor(lesson_per_game)
    extract_command(cfg, [make_traj(1), make_traj(2)], fake)
    assert fake.prompts[0].startswith("Shell review.\nKnown:\n(none yet)\nLog:\nTurn 1")
    assert fake.prompts[0].endswith("{literal}.")  # doubled braces are literal ones
    record = read_experience(step_path(tmp_path / "s", 0, 0, 2)).prompt
    assert record == {"name": str(path), "sha256": sha12(EXTRACT_TEXT)}


def test_editing_the_template_file_makes_a_different_run(tmp_path):
    path = write(tmp_path / "shell.txt", EXTRACT_TEXT)
    fields = {"out_dir": str(tmp_path / "s"), "num_runs": 1, "num_trajectories": 1, "prompt": str(path)}
    extract_command(ExtractCommandConfig(**fields), [make_traj(1)], ScriptedExtractor(lesson_per_game))
    write(path, EXTRACT_TEXT.replace("Shell review.", "Shell review, second wording."))
    with pytest.raises(ConfigError, match=r"prompt\.sha256="):
        extract_command(ExtractCommandConfig(**fields), [make_traj(1)], ScriptedExtractor(lesson_per_game))
    extract_command(ExtractCommandConfig(**fields, overwrite=True), [make_traj(1)], ScriptedExtractor(lesson_per_game))
    assert read_experience(step_path(tmp_path / "s", 0, 0, 1)).prompt["sha256"] == sha12(path.read_text())


BAD_EXTRACTION_TEMPLATES = [
    ("{knowledge} only", r"has no \{trajectory\} field \(an extraction template needs \{knowledge\} and \{trajectory\}\)"),
    ("{knowledge} {trajectory} {traj}", r"has unknown field \{traj\}"),
    ("{knowledge} {trajectory} {}", r"has a positional \{\} field"),
    ("{knowledge} {trajectory} { oops", r"is not a valid template .*write \{\{ and \}\} for a literal brace"),
    ("{knowledge} {trajectory.id}", r"has unknown field \{trajectory.id\}"),
    ("\n\n", r"is empty"),
]


@pytest.mark.parametrize("text,problem", BAD_EXTRACTION_TEMPLATES)
def test_an_extraction_template_with_wrong_fields_is_refused_naming_key_and_file(tmp_path, text, problem):
    path = write(tmp_path / "bad.txt", text)
    with pytest.raises(ConfigError, match=problem) as e:
        load_config(ExtractConfig, None, [f"prompt={path}"])
    message = str(e.value)
    assert message.startswith("prompt: ") and str(path) in message and "\n" not in message


def test_a_missing_or_undecodable_template_file_is_a_one_line_config_error(tmp_path):
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("{knowledge} {trajectory} caf\xe9".encode("latin-1"))
    folder = tmp_path / "folder.txt"
    folder.mkdir()
    for path, problem in [(tmp_path / "nope.txt", "not found"), (latin1, "not UTF-8 text (byte 0xe9 at offset 28)"),
                          (folder, "is a directory")]:
        with pytest.raises(ConfigError) as e:
            load_config(ExtractConfig, None, [f"prompt={path}"])
        assert str(e.value) == f"prompt: template file {path}: {problem}"


def test_the_extract_command_prints_the_template_error_on_one_line(tmp_path, capsys):
    missing = tmp_path / "gone.txt"
    assert main(["extract", f"trajectories={tmp_path / 't.jsonl'}", f"prompt={missing}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"prompt: template file {missing}: not found" in err


def test_a_builtin_extraction_template_is_checked_too():
    with pytest.raises(ConfigError, match=r"^prompt: 'policy_grid_v1' has unknown field \{observation\}"):
        ExtractConfig(prompt="policy_grid_v1")
    with pytest.raises(ConfigError, match=r"^prompt: prompt 'nope': no such template .*ends in \.txt"):
        ExtractConfig(prompt="nope")


def test_a_custom_teacher_template_file(tmp_path):
    path = write(tmp_path / "teacher.txt", TEACHER_TEXT)
    cfg = load_config(ConsolidateConfig, None, [f"teacher_template={path}"])
    assert cfg.teacher_template == str(path)
    obs = "Turn 1\nP . G"
    prefix = Prefix("t", 0, (Message(role="user", content=prompts.get("policy_grid_v1").render(observation=obs)),),
                    obs, prompts.POLICY_TEMPLATE)
    msgs = teacher_messages(prefix, "Go right.", str(path))
    assert [m.content for m in msgs] == ["Lessons:\nGo right.\n\nNow:\nTurn 1\nP . G"]
    assert prompt_records(str(path))[1] == {"name": str(path), "sha256": sha12(TEACHER_TEXT)}


@pytest.mark.parametrize("key,text,problem", [
    ("teacher_template", "{observation} only", r"has no \{knowledge\} field"),
    ("teacher_template", "{knowledge} {trajectory}",
     r"has unknown field \{trajectory\} \(a teacher template needs \{knowledge\} and may have \{observation\}"),
    ("task_teacher_template", "Notes only",
     r"has no \{knowledge\} field \(a task-neutral knowledge block needs \{knowledge\}\)"),
    ("task_teacher_template", "{knowledge}\n{observation}", r"has unknown field \{observation\}"),
])
def test_a_teacher_template_file_with_wrong_fields_is_refused(tmp_path, key, text, problem):
    path = write(tmp_path / "teacher.txt", text)
    with pytest.raises(ConfigError, match=problem) as e:
        load_config(ConsolidateConfig, None, [f"{key}={path}"])
    assert f"{key}: '{path}'" in str(e.value) and "\n" not in str(e.value)


def test_a_teacher_template_file_is_recorded_by_a_consolidation_run(grid_consolidation_config, tmp_path, one_thread):
    from oel.consolidate import consolidate_command

    path = write(tmp_path / "system.txt", "Experience for this task:\n{knowledge}")
    consolidate_command(grid_consolidation_config("run", teacher_template=str(path)))
    records = json.loads((tmp_path / "run" / "prompts.json").read_text())
    assert {"name": str(path), "sha256": sha12(path.read_text())} in records


def test_an_edited_template_file_is_read_again(tmp_path):
    path = write(tmp_path / "t.txt", "A {knowledge}")
    first = prompts.get(str(path))
    write(path, "Another wording, {knowledge}")
    assert prompts.get(str(path)).text == "Another wording, {knowledge}" and first.text == "A {knowledge}"


def test_a_custom_task_teacher_block_is_put_in_front_of_a_non_game_prompt(tmp_path):
    path = write(tmp_path / "block.txt", "Notes from earlier attempts:\n{knowledge}")
    prefix = Prefix("t", 0, (Message(role="system", content="You help in a shell."),
                             Message(role="user", content="List the files.")), "List the files.", "imported")
    msgs = teacher_messages(prefix, "Use ls -la.", task_template=str(path))
    assert [m.content for m in msgs] == ["You help in a shell.", "Notes from earlier attempts:\nUse ls -la.\n\nList the files."]
    config = load_config(ConsolidateConfig, None, [f"task_teacher_template={path}"])
    assert prompt_records(config.teacher_template, config.task_teacher_template)[2] == {
        "name": str(path), "sha256": sha12(path.read_text())}


def test_resuming_after_the_teacher_template_file_was_edited_is_refused(grid_consolidation_config, tmp_path, one_thread):
    from oel.consolidate import consolidate_command
    from oel.errors import TrainingError

    path = write(tmp_path / "teacher.txt", "Lessons:\n{knowledge}\n\nNow:\n{observation}")
    consolidate_command(grid_consolidation_config("run", teacher_template=str(path), save_every=1))
    again = grid_consolidation_config("run", teacher_template=str(path), save_every=1, steps=2, on_existing="resume")
    write(path, "Earlier lessons:\n{knowledge}\n\n{observation}")
    with pytest.raises(TrainingError, match=r"prompts\.json: prompt '.*teacher\.txt' changed \(sha256 \w+ -> \w+\) since "
                                            r"the run started; use on_existing=overwrite"):
        consolidate_command(again)
    write(path, "Lessons:\n{knowledge}\n\nNow:\n{observation}")
    consolidate_command(again)
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 2
