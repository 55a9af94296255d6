"""Extraction and the experience store, driven by a scripted fake extractor (no model)."""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from oel import prompts
from oel.backends.base import Generation, SamplingParams
from oel.config import to_dict
from oel.errors import ConfigError, DataError
from oel.extract import (
    ExtractCommandConfig,
    ExtractConfig,
    diff_experience,
    extract_command,
    extract_round,
    format_diff,
    knowledge_texts,
    read_experience,
    step_path,
    strip_thinking,
)
from oel.extract.render import build_extraction_prompt
from oel.extract.store import manifest_path, read_manifest
from oel.extract.text import approx_token_count, parse_items, token_counter
from oel.trajectory import Message, Trajectory, Turn

TAG = re.compile(r"Outcome: (T\d+)")


class ScriptedExtractor:
    """A deterministic ChatBackend: `script(prompt_text, params)` decides each answer."""

    def __init__(self, script: Callable[[str, SamplingParams], str], model_id: str = "scripted") -> None:
        self.script = script
        self.model_id = model_id
        self.prompts: list[str] = []

    def chat(self, prompts_: Sequence[Sequence[Message]], params: SamplingParams) -> list[Generation]:
        out = []
        for chat in prompts_:
            text = chat[-1].content
            self.prompts.append(text)
            answer = self.script(text, params)
            out.append(Generation(answer, approx_token_count(text), approx_token_count(answer)))
        return out


class CrashAfter(ScriptedExtractor):
    """Raises after `n` answers: a process killed mid-round."""

    def __init__(self, script: Callable[[str, SamplingParams], str], n: int) -> None:
        super().__init__(script)
        self.left = n

    def chat(self, prompts_: Sequence[Sequence[Message]], params: SamplingParams) -> list[Generation]:
        if self.left <= 0:
            raise KeyboardInterrupt
        self.left -= len(prompts_)
        return super().chat(prompts_, params)


def make_traj(i: int, turns: int = 2, obs: str = "map", response: str = "[down]") -> Trajectory:
    """Trajectory `t{i}` whose outcome line carries the tag `T{i}` (the fake reads it back)."""
    ts = [Turn(prompt=[Message(role="user", content=f"{obs} {j}")], observation=f"{obs} {j}",
               response=response, feedback=f"moved {j}") for j in range(turns)]
    return Trajectory(id=f"t{i}", env_id="fake", seed=i, model_id="m", turns=ts,
                      outcome=f"T{i} fell into a hole", passed=False)


def lesson_per_game(text: str, params: SamplingParams) -> str:
    return f"Here you go:\n- EXPERIENCE ITEM: lesson from {TAG.search(text).group(1)}\n"


def config(tmp_path: Path, **kw) -> ExtractCommandConfig:
    base = dict(out_dir=str(tmp_path / "store"), num_runs=1, num_trajectories=4, budget_tokens=1000,
                max_input_tokens=4000)
    base.update(kw)
    return ExtractCommandConfig(**base)


def knowledge_part(prompt_text: str) -> str:
    """The knowledge slot of a rendered structured prompt."""
    return prompt_text.split("do not repeat or rephrase any of these):", 1)[1].split("Record of the game:", 1)[0]


def test_accumulation_order_trajectory_i_sees_e_i_minus_1(tmp_path):
    fake = ScriptedExtractor(lesson_per_game)
    trajs = [make_traj(i) for i in range(1, 5)]
    extract_command(config(tmp_path), trajs, fake)
    assert len(fake.prompts) == 4
    for i, p in enumerate(fake.prompts, start=1):
        assert TAG.search(p).group(1) == f"T{i}"
        seen = knowledge_part(p)
        assert [f"T{j}" for j in range(1, i)] == re.findall(r"lesson from (T\d+)", seen)
    assert "(none yet)" in knowledge_part(fake.prompts[0])
    final = read_experience(step_path(tmp_path / "store", 0, 0, 4))
    assert final.texts == [f"- EXPERIENCE ITEM: lesson from T{i}" for i in range(1, 5)]
    assert [it.step_added for it in final.items] == [1, 2, 3, 4]
    assert [it.source_trajectory_id for it in final.items] == ["t1", "t2", "t3", "t4"]
    assert final.items[0].extractor_model == "scripted" and final.prompt["name"] == "extract_structured_v1"


def test_structured_marker_filtering_and_thinking_removed():
    answer = ("<think>- EXPERIENCE ITEM: hidden reasoning</think>Sure!\n- EXPERIENCE ITEM: a\n"
              "* EXPERIENCE ITEM: b\n1. - EXPERIENCE ITEM: c\n   - EXPERIENCE ITEM:   d  \n- EXPERIENCE ITEM:   \n")
    assert parse_items(strip_thinking(answer), "structured") == ["- EXPERIENCE ITEM: a", "- EXPERIENCE ITEM: d"]
    assert parse_items(strip_thinking(answer), "structured", max_items=1) == ["- EXPERIENCE ITEM: a"]
    assert parse_items("one\n\n two  lines\n", "unstructured") == ["one", "two lines"]


@pytest.mark.parametrize("text, want", [
    ("<think>x</think>answer", "answer"),
    ("reasoning only</think> answer", "answer"),          # template opened the block in the prompt
    ("answer <think>unterminated thought", "answer"),     # hit the token limit while thinking
    ("<think>a</think>b<think>c</think>d", "bd"),
])
def test_strip_thinking_shapes(text, want):
    assert strip_thinking(text) == want


def test_exact_repeats_are_deduplicated(tmp_path):
    fake = ScriptedExtractor(lambda t, p: "- EXPERIENCE ITEM: walls block you\n- EXPERIENCE ITEM:  walls  block you")
    extract_command(config(tmp_path, num_trajectories=3), [make_traj(i) for i in range(1, 4)], fake)
    final = read_experience(step_path(tmp_path / "store", 0, 0, 3))
    assert final.texts == ["- EXPERIENCE ITEM: walls block you"]
    first = read_experience(step_path(tmp_path / "store", 0, 0, 1)).record
    assert first.new_items == ["- EXPERIENCE ITEM: walls block you"] and len(first.duplicates_dropped) == 1
    assert final.record.new_items == [] and len(final.record.duplicates_dropped) == 2


def test_budget_keeps_newest_whole_items(tmp_path):
    # Each item is 40 characters -> 12 approximate tokens; a joined pair with "\n" is 81 chars -> 24 tokens.
    def item(text, params):
        return "- EXPERIENCE ITEM: " + TAG.search(text).group(1).ljust(21, "x")

    budget = 30  # two items fit (24 tokens), three (122 chars -> 35 tokens) do not
    extract_command(config(tmp_path, num_trajectories=5, budget_tokens=budget), [make_traj(i) for i in range(1, 6)],
                  ScriptedExtractor(item))
    final = read_experience(step_path(tmp_path / "store", 0, 0, 5))
    assert [t.split(": ")[1][:2] for t in final.texts] == ["T4", "T5"]
    assert all(len(t) == 40 for t in final.texts)  # whole items, nothing cut mid-item
    assert approx_token_count(final.rendered) <= budget
    assert final.record.budget_dropped == 1  # T3 left at step 5


def test_left_truncation_keeps_instructions_and_outcome():
    template = prompts.get("extract_structured_v1")
    head, tail = template.text.split("{knowledge}")[0], template.text.split("{trajectory}")[1]
    traj = make_traj(7, turns=30, obs="a long observation " * 10)
    count = token_counter(None)
    full = build_extraction_prompt(template, "", traj, count=count, max_input_tokens=100_000)
    assert not full.truncated
    limit = full.input_tokens // 3
    cut = build_extraction_prompt(template, "", traj, count=count, max_input_tokens=limit)
    assert cut.truncated and cut.dropped_turns > 0 and cut.input_tokens <= limit
    assert cut.text.startswith(head) and cut.text.endswith(tail)
    assert "Turn 1\n" not in cut.text and "Turn 30\n" in cut.text and "Outcome: T7" in cut.text
    assert f"[{cut.dropped_turns} earlier turn(s) omitted for length]" in cut.text


def test_single_huge_turn_is_cut_by_characters_from_the_left():
    template = prompts.get("extract_structured_v1")
    traj = make_traj(8, turns=1, response="blah " * 2000 + "FINAL [down]")
    count = token_counter(None)
    p = build_extraction_prompt(template, "", traj, count=count, max_input_tokens=600)
    assert p.cut_chars > 0 and p.input_tokens <= 600
    assert "FINAL [down]" in p.text and p.text.endswith(template.text.split("{trajectory}")[1])
    with pytest.raises(DataError, match="t8"):
        build_extraction_prompt(template, "", traj, count=count, max_input_tokens=50)


def test_truncation_is_recorded_in_the_step_record(tmp_path):
    trajs = [make_traj(i, turns=40, obs="observation text " * 8) for i in range(1, 3)]
    extract_command(config(tmp_path, num_trajectories=2, budget_tokens=100, max_input_tokens=700), trajs,
                  ScriptedExtractor(lesson_per_game))
    rec = read_experience(step_path(tmp_path / "store", 0, 0, 1)).record
    assert rec.input_truncated and rec.dropped_turns > 0 and rec.input_tokens <= 700


def test_k_runs_give_k_sets_with_distinct_seeds(tmp_path):
    fake = ScriptedExtractor(lambda t, p: f"- EXPERIENCE ITEM: seen with seed {p.seed}")
    cfg, store = ExtractConfig(num_runs=3, num_trajectories=2, use_step=1), tmp_path / "store"
    result = extract_round(cfg, [make_traj(i) for i in range(1, 3)], fake, store=store, round=2, source="t.jsonl")
    texts = knowledge_texts(store, 2)
    assert len(texts) == 3 and len(set(texts)) == 3 and result.texts == texts and result.step == 1
    seeds = {read_experience(step_path(store, 2, k, 1)).record.sampling_seed for k in range(3)}
    assert len(seeds) == 3
    assert len(knowledge_texts(store, 2, step=2)) == 3
    # the manifest records the settings with the inputs, as `oel extract`'s config dumps them
    recorded = read_manifest(store, 2).config
    assert list(recorded) == list(ExtractCommandConfig.field_order())
    assert recorded == to_dict(ExtractCommandConfig(**to_dict(cfg), trajectories="t.jsonl", out_dir=str(store),
                                                    round=2))


def test_resume_continues_at_last_completed_step(tmp_path):
    trajs = [make_traj(i) for i in range(1, 5)]
    with pytest.raises(KeyboardInterrupt):
        extract_command(config(tmp_path), trajs, CrashAfter(lesson_per_game, 2))
    assert read_experience(step_path(tmp_path / "store", 0, 0, 2)).step == 2
    assert not step_path(tmp_path / "store", 0, 0, 3).exists()
    second = ScriptedExtractor(lesson_per_game)
    extract_command(config(tmp_path), trajs, second)
    assert [TAG.search(p).group(1) for p in second.prompts] == ["T3", "T4"]
    reference = config(tmp_path / "ref")
    extract_command(reference, trajs, ScriptedExtractor(lesson_per_game))
    assert knowledge_texts(tmp_path / "store", 0) == knowledge_texts(reference.out_dir, 0)


def test_resume_with_changed_settings_is_refused(tmp_path):
    trajs = [make_traj(i) for i in range(1, 5)]
    extract_command(config(tmp_path), trajs, ScriptedExtractor(lesson_per_game))
    with pytest.raises(ConfigError, match="budget_tokens"):
        extract_command(config(tmp_path, budget_tokens=500), trajs, ScriptedExtractor(lesson_per_game))
    extract_command(config(tmp_path, budget_tokens=500, overwrite=True), trajs, ScriptedExtractor(lesson_per_game))


def _first_file(tmp_path: Path) -> Path:
    extract_command(config(tmp_path, num_trajectories=2), [make_traj(i) for i in range(1, 3)],
                  ScriptedExtractor(lesson_per_game))
    return step_path(tmp_path / "store", 0, 0, 2)


def test_corrupt_item_error_names_file_and_item(tmp_path):
    path = _first_file(tmp_path)
    data = json.loads(path.read_text())
    data["items"][1]["text"] = ""
    path.write_text(json.dumps(data))
    with pytest.raises(DataError) as e:
        read_experience(path)
    msg = str(e.value)
    assert str(path) in msg and "item 1 (id 'r0-k0-s2-0')" in msg and "text" in msg and "\n" not in msg


def test_hand_edited_text_without_rerender_is_caught(tmp_path):
    path = _first_file(tmp_path)
    data = json.loads(path.read_text())
    data["items"][0]["text"] = "- EXPERIENCE ITEM: edited by hand"
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"rendered: does not match the items"):
        read_experience(path)
    data["items"][0]["round"] = 3
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"item 0 \(id 'r0-k0-s1-0'\): round/seed 3/0"):
        read_experience(path)
    path.write_text("{not json")
    with pytest.raises(DataError, match=rf"{re.escape(str(path))}:1: invalid JSON"):
        read_experience(path)


def test_diff_between_steps(tmp_path):
    extract_command(config(tmp_path, budget_tokens=20), [make_traj(i) for i in range(1, 5)],
                  ScriptedExtractor(lesson_per_game))
    a = read_experience(step_path(tmp_path / "store", 0, 0, 1))
    b = read_experience(step_path(tmp_path / "store", 0, 0, 4))
    d = diff_experience(a, b)
    assert d.removed == ["- EXPERIENCE ITEM: lesson from T1"]
    assert d.added == ["- EXPERIENCE ITEM: lesson from T3", "- EXPERIENCE ITEM: lesson from T4"]
    out = format_diff(d, "step 1", "step 4")
    assert out.splitlines()[:3] == ["--- step 1", "+++ step 4", "2 added, 1 removed, 0 unchanged"]
    assert "- - EXPERIENCE ITEM: lesson from T1" in out and "+ - EXPERIENCE ITEM: lesson from T4" in out


def test_raw_trajectories_baseline_fills_budget_with_newest_games(tmp_path):
    cfg = config(tmp_path, kind="raw_trajectories", num_trajectories=4, budget_tokens=60)
    extract_command(cfg, [make_traj(i) for i in range(1, 5)], None)
    final = read_experience(step_path(cfg.out_dir, 0, 0, 4))
    assert final.extractor_model == "none" and final.items
    assert final.texts[-1].startswith("Earlier game t4:") and "Result: T4 fell into a hole" in final.texts[-1]
    assert approx_token_count(final.rendered) <= 60 and len(final.items) < 4
    assert "\n\n" in final.rendered or len(final.items) == 1


def test_other_model_provenance_is_recorded(tmp_path):
    extract_command(config(tmp_path, num_trajectories=1), [make_traj(1)],
                  ScriptedExtractor(lesson_per_game, model_id="bigger-model"))
    f = read_experience(step_path(tmp_path / "store", 0, 0, 1))
    assert f.extractor_model == "bigger-model" and f.items[0].extractor_model == "bigger-model"


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="use_step"):
        ExtractConfig(num_trajectories=4, use_step=5)
    with pytest.raises(ConfigError, match="max_input_tokens"):
        ExtractConfig(budget_tokens=100, max_input_tokens=50)


def test_history_replaying_observations_are_not_repeated():
    from oel.extract.render import turn_blocks

    board0, reply0 = "rules\nBoard A", "You moved down.\nBoard B"
    obs1 = f"{board0}\n[Player] [down]\n{reply0}"
    turns = [Turn(prompt=[Message(role="user", content=board0)], observation=board0, response="[down]", feedback=reply0),
             Turn(prompt=[Message(role="user", content=obs1)], observation=obs1, response="[right]", feedback="hole")]
    traj = Trajectory(id="h", env_id="fake", seed=0, model_id="m", turns=turns, outcome="fell", passed=False)
    text = "\n\n".join(turn_blocks(traj, strip_response_thinking=True))
    assert text.count("Board B") == 1 and text.count("Board A") == 1 and "[Player]" not in text
    assert "Turn 2\nAgent: [right]\nGame reply: hole" in text


def test_unstructured_keeps_every_line_and_budgets_by_line(tmp_path):
    def notes(text, params):
        tag = TAG.search(text).group(1)
        return f"<think>private</think>Note {tag} one.\n\nNote {tag} two."

    cfg = config(tmp_path, format="unstructured", num_trajectories=3, budget_tokens=10)
    extract_command(cfg, [make_traj(i) for i in range(1, 4)], ScriptedExtractor(notes))
    final = read_experience(step_path(cfg.out_dir, 0, 0, 3))
    assert final.prompt["name"] == "extract_unstructured_v1"
    assert final.texts == ["Note T3 one.", "Note T3 two."]  # 25 chars -> 8 tokens; three lines are 11
    first = read_experience(step_path(cfg.out_dir, 0, 0, 1))
    assert first.texts == ["Note T1 one.", "Note T1 two."] and "private" not in first.rendered


def test_config_from_overrides():
    from oel.config import load_config

    cfg = load_config(ExtractConfig, None, ["num_runs=2", "extractor.model.name=other", "sampling.max_new_tokens=32",
                                            "kind=raw_trajectories"])
    assert cfg.num_runs == 2 and cfg.extractor.model.name == "other" and cfg.sampling.max_new_tokens == 32
    assert cfg.resolved_use_step == cfg.num_trajectories and cfg.prompt_name == "extract_structured_v1"
    with pytest.raises(ConfigError, match="kind"):
        load_config(ExtractConfig, None, ["kind=bogus"])


class LengthCapped(ScriptedExtractor):
    """Every answer hit the token limit mid-line."""

    def chat(self, prompts_, params):
        return [Generation(g.text, g.prompt_tokens, g.completion_tokens, finish_reason="length")
                for g in super().chat(prompts_, params)]


def test_answer_cut_by_token_limit_loses_its_unfinished_last_line(tmp_path):
    fake = LengthCapped(lambda t, p: "- EXPERIENCE ITEM: holes end the game\n- EXPERIENCE ITEM: walls do not")
    extract_command(config(tmp_path, num_trajectories=1), [make_traj(1)], fake)
    f = read_experience(step_path(tmp_path / "store", 0, 0, 1))
    assert f.texts == ["- EXPERIENCE ITEM: holes end the game"]
    assert f.record.unfinished_dropped == "- EXPERIENCE ITEM: walls do not"


def test_an_item_longer_than_the_budget_does_not_empty_the_knowledge(tmp_path):
    cfg = config(tmp_path, kind="raw_trajectories", num_trajectories=3, budget_tokens=50)
    trajs = [make_traj(1), make_traj(2), make_traj(3, turns=12, obs="x")]  # 29, 29 (58 joined) and 110 tokens
    extract_command(cfg, trajs, None)
    final = read_experience(step_path(cfg.out_dir, 0, 0, 3))
    assert [it.source_trajectory_id for it in final.items] == ["t2"]  # t3 too long alone; t1 + t2 too long together
    assert final.record.budget_dropped == 1  # t3 (t1 went at step 2)


def test_new_item_cap_counts_only_items_that_are_not_repeats(tmp_path):
    answers = iter(["- EXPERIENCE ITEM: a\n- EXPERIENCE ITEM: b",
                    "- EXPERIENCE ITEM: a\n- EXPERIENCE ITEM: b\n- EXPERIENCE ITEM: c\n- EXPERIENCE ITEM: d\n"
                    "- EXPERIENCE ITEM: e"])
    extract_command(config(tmp_path, num_trajectories=2), [make_traj(1), make_traj(2)],
                  ScriptedExtractor(lambda t, p: next(answers)))
    f = read_experience(step_path(tmp_path / "store", 0, 0, 2))
    assert [t[-1] for t in f.texts] == ["a", "b", "c", "d"]  # copies of a, b do not use up the cap of 2
    assert f.record.over_cap_dropped == ["- EXPERIENCE ITEM: e"] and len(f.record.duplicates_dropped) == 2


RESTATED = [  # three lessons a 0.5B extractor wrote in one round (the online demo): two are one idea
    "- EXPERIENCE ITEM: The agent must always aim to reach the goal of the game, even if it's not the most efficient path.",
    "- EXPERIENCE ITEM: You must always aim to reach the goal of the game, even if it's not the most efficient path.",
    "- EXPERIENCE ITEM: To avoid getting stuck in walls, always aim to move in a straight line or avoid obstacles.",
]


def test_near_duplicates_are_dropped_only_when_asked(tmp_path):
    from oel.extract.text import dedup_new, item_words, jaccard

    assert dedup_new([], RESTATED) == (RESTATED, [])
    assert dedup_new([], RESTATED, near=0.7) == ([RESTATED[0], RESTATED[2]], [RESTATED[1]])
    # the threshold against a brute-force count of shared words
    a, b = item_words(RESTATED[0]), item_words(RESTATED[1])
    shared = [w for w in a if w in b]
    assert jaccard(a, b) == len(shared) / (len(a) + len(b) - len(shared)) > 0.7
    # moves are words of their own: rules that differ only in the move are different rules
    up, down = "- EXPERIENCE ITEM: From the top row never answer [up].", "- EXPERIENCE ITEM: From the top row never answer [down]."
    assert dedup_new([up], [down], near=0.7) == ([down], [])
    fake = ScriptedExtractor(lambda t, p: "\n".join(RESTATED))
    extract_command(config(tmp_path, num_trajectories=2, near_duplicate=0.7, max_new_items=0),
                  [make_traj(i) for i in range(1, 3)], fake)
    final = read_experience(step_path(tmp_path / "store", 0, 0, 2))
    assert final.texts == [RESTATED[0], RESTATED[2]] and len(final.record.duplicates_dropped) == 3


def test_near_duplicate_setting_is_checked_and_part_of_the_resume_fingerprint(tmp_path):
    with pytest.raises(ConfigError, match=r"near_duplicate: must be in \[0, 1\], got 1.5"):
        config(tmp_path, near_duplicate=1.5)
    trajs = [make_traj(i) for i in range(1, 3)]
    extract_command(config(tmp_path, num_trajectories=2), trajs, ScriptedExtractor(lesson_per_game))
    with pytest.raises(ConfigError, match="near_duplicate"):
        extract_command(config(tmp_path, num_trajectories=2, near_duplicate=0.7), trajs, ScriptedExtractor(lesson_per_game))


FROZENLAKE_BOARD = """[GAME] Current Board:

+-----+-----+-----+
|  P  |     |  H  |
+-----+-----+-----+
|     |     |  H  |
+-----+-----+-----+
|     |     |  G  |
+-----+-----+-----+

Available Actions: [up], [down], [left], [right]"""


def test_compact_record_redraws_table_boards_as_rows_of_cells():
    from oel.extract.render import compact_tables

    assert compact_tables(FROZENLAKE_BOARD) == ("[GAME] Current Board:\nP . H\n. . H\n. . G\n"
                                                "Available Actions: [up], [down], [left], [right]")
    sokoban = "# # # #\n# P O #\n# # # #"  # not a table: kept as it is
    assert compact_tables(sokoban) == sokoban
    # an empty row and a wider cell
    assert compact_tables("+--+----+\n|  | XY |\n+--+----+") == ". XY"


def test_compact_record_is_what_the_extractor_reads_and_part_of_the_fingerprint(tmp_path):
    ts = [Turn(prompt=[Message(role="user", content=FROZENLAKE_BOARD)], observation=FROZENLAKE_BOARD,
               response="[up]", feedback="You tried to move up but hit a wall!\n" + FROZENLAKE_BOARD)]
    trajs = [Trajectory(id=f"t{i}", env_id="FrozenLake-v0-raw", seed=i, model_id="m", turns=ts,
                        outcome=f"T{i} two invalid moves", passed=False) for i in (1, 2)]
    fake = ScriptedExtractor(lesson_per_game)
    extract_command(config(tmp_path, num_trajectories=2, record="compact"), trajs, fake)
    assert all("P . H\n. . H\n. . G" in p and "+-----+" not in p for p in fake.prompts)
    assert read_manifest(tmp_path / "store", 0).fingerprint["record"] == "compact"
    with pytest.raises(ConfigError, match="record"):
        extract_command(config(tmp_path, num_trajectories=2), trajs, ScriptedExtractor(lesson_per_game))
    full = ScriptedExtractor(lesson_per_game)
    extract_command(config(tmp_path / "full", num_trajectories=2), trajs, full)
    assert all("+-----+" in p for p in full.prompts)
    assert "record" not in read_manifest(tmp_path / "full" / "store", 0).fingerprint  # old stores still resume


def test_tally_record_counts_each_answer_and_the_replies_to_it(tmp_path):
    from oel.extract.render import TALLY_HEADER, tally_blocks

    wall = "[GAME] You attempted an invalid move. Reason: You tried to move up but hit a wall!\n" + FROZENLAKE_BOARD
    moved = "[GAME] You moved down to position (1, 0).\n" + FROZENLAKE_BOARD
    turns = [Turn(prompt=[Message(role="user", content=FROZENLAKE_BOARD)], observation=FROZENLAKE_BOARD,
                  response=r, feedback=f) for r, f in
             (("[up]", wall), ("<think>x</think>[up]", wall), ("[down]", moved), ("[right]", ""))]
    traj = Trajectory(id="t", env_id="FrozenLake-v0-raw", seed=1, model_id="m", turns=turns,
                      outcome="T1 Failure: you fell into a hole after 4 turns.", passed=False)
    start, tally = tally_blocks(traj, strip_response_thinking=True)
    assert "P . H\n. . H\n. . G" in start and "+-----+" not in start
    assert tally.splitlines() == [
        TALLY_HEADER,
        '- [up]: 2 times; "You attempted an invalid move. Reason: You tried to move up but hit a wall!" 2 times',
        '- [down]: 1 time; "You moved down to position (1, 0)." 1 time',
        '- [right]: 1 time; "(no reply)" 1 time',
        "- the game ended right after the last [right]",
    ]
    fake = ScriptedExtractor(lesson_per_game)
    extract_command(config(tmp_path, num_trajectories=1, record="tally"), [traj], fake)
    assert TALLY_HEADER in fake.prompts[0] and fake.prompts[0].count("Outcome: T1 Failure") == 1
    assert "Turn 1" not in fake.prompts[0]
    assert read_manifest(tmp_path / "store", 0).fingerprint["record"] == "tally"


def test_step_files_and_the_manifest_are_their_owners_only(tmp_path):
    """Lessons are drawn from users' conversations in the online mode: 0600 files in 0700 folders,
    like the store, whatever the umask."""
    old = os.umask(0o022)
    try:
        extract_command(config(tmp_path, num_trajectories=2), [make_traj(i) for i in range(1, 3)],
                        ScriptedExtractor(lesson_per_game))
    finally:
        os.umask(old)
    step = step_path(tmp_path / "store", 0, 0, 2)
    for path in (step, step.with_suffix(".txt"), manifest_path(tmp_path / "store", 0)):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    for folder in (step.parent, step.parent.parent):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder


GAME_RECORD = "Guess a number between 1 and 20 within 3 turns.\nYou answered: [8]\nThe game replied: higher.\n" \
              "You answered: [10]\nOutcome: Success: you guessed the secret number 10 in 2 turns."


def test_a_lesson_stating_a_number_its_writer_never_saw_is_not_grounded():
    from oel.extract.text import split_grounded, stated_numbers

    assert stated_numbers("answer [10] first, 3 turns, 2.5 points, v2 and abc12") == {"10", "3", "2.5"}
    right = "- EXPERIENCE ITEM: The game revealed that the hidden answer was 10."
    misread = "- EXPERIENCE ITEM: The game revealed that the hidden answer was not [10], but [15]."  # written after this game
    no_number = "- EXPERIENCE ITEM: When the game says higher, guess higher."
    assert split_grounded([right, misread, no_number], GAME_RECORD) == ([right, no_number], [misread])
    # brute force: an item is grounded iff each of its numbers occurs as a whole number in the shown text
    for n in range(0, 25):
        item = f"- EXPERIENCE ITEM: answer [{n}] first."
        whole = any(tok == str(n) for tok in re.split(r"[^0-9.]+", GAME_RECORD.replace(".\n", " ").rstrip(".")))
        assert (split_grounded([item], GAME_RECORD)[0] == [item]) == whole, n


def test_grounded_numbers_drops_misread_values_records_them_and_guards_resume(tmp_path):
    answer = "- EXPERIENCE ITEM: the game ended on 7\n- EXPERIENCE ITEM: lesson from {tag}, after move 1"
    fake = ScriptedExtractor(lambda t, p: answer.format(tag=TAG.search(t).group(1)))
    trajs = [make_traj(1)]  # shows "map 0", "map 1", "moved 0", "moved 1": 7 never appears
    extract_command(config(tmp_path, num_trajectories=1, grounded_numbers=True), trajs, fake)
    f = read_experience(step_path(tmp_path / "store", 0, 0, 1))
    assert f.texts == ["- EXPERIENCE ITEM: lesson from T1, after move 1"]
    assert f.record.ungrounded_dropped == ["- EXPERIENCE ITEM: the game ended on 7"]
    with pytest.raises(ConfigError, match="grounded_numbers"):
        extract_command(config(tmp_path, num_trajectories=1), trajs, fake)
    extract_command(config(tmp_path / "off", num_trajectories=1), trajs, fake)  # off: both kept, as before
    assert len(read_experience(step_path(tmp_path / "off" / "store", 0, 0, 1)).texts) == 2
