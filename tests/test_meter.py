"""The exact policy meter against a brute-force enumeration of the answer probabilities."""

from __future__ import annotations

import math

import pytest
import torch

from oel.backends.tiny import tiny_chat_model
from oel.envs.seeds import round_seeds
from oel.evaluate.meter import (
    CANONICAL_MOVES,
    MeterResult,
    StateScore,
    answer_token_ids,
    measure,
    paired_gap,
    policy_variant,
    probe_states,
    knowledge_variant,
)


@pytest.fixture(scope="module")
def tiny():
    return tiny_chat_model(seed=3, dtype=torch.float32)


@pytest.fixture(scope="module")
def states():
    return probe_states(round_seeds(0, "train", 40), max_layouts=2)


def _brute_force_logp(model, prompt_ids, answer_ids):
    """Score each answer token with its own full forward pass (no cache, no batching)."""
    total = 0.0
    with torch.inference_mode():
        for k, tok in enumerate(answer_ids):
            ids = torch.tensor([list(prompt_ids) + list(answer_ids[:k])])
            logits = model(input_ids=ids).logits[0, -1].float()
            total += float(torch.log_softmax(logits, -1)[tok])
    return total


def test_probe_states_follow_one_shortest_path(states):
    assert len({s.layout for s in states}) == 2
    for s in states:
        assert any(s.optimal), "every state on a shortest path has an optimal move"
        assert not any(o and (i or l) for o, i, l in zip(s.optimal, s.invalid, s.losing))
    first = [s for s in states if s.step == 0]
    assert all(s.invalid[CANONICAL_MOVES.index("[up]")] for s in first), "the start is the top-left corner"
    later = [s for s in states if s.step > 0]
    assert all("[Player]" in s.observation for s in later), "history is shown"


def test_answers_end_with_end_of_turn_token(tiny):
    model, tok = tiny
    _prompt, answers = answer_token_ids(tok, policy_variant().build("board"))
    for text, ids in zip(CANONICAL_MOVES, answers):
        assert ids[-1] == tok.eos_token_id
        assert tok.decode(ids[:-1]) == text
    assert len({len(a) for a in answers}) > 1, "answers of different lengths exercise the padding"


@pytest.mark.parametrize("variant", ["policy", "before", "after", "system"])
def test_meter_matches_brute_force(tiny, states, variant, one_thread):
    model, tok = tiny
    v = {"policy": policy_variant(), "before": knowledge_variant("- lesson one"),
         "after": knowledge_variant("- lesson one", "teacher_grid_after_v1"),
         "system": knowledge_variant("- lesson one", "teacher_grid_system_v1")}[variant]
    sample = states[:3]
    result = measure(model, tok, sample, v)
    for st, score in zip(sample, result.states):
        prompt_ids, answers = answer_token_ids(tok, v.build(st.observation))
        brute = [_brute_force_logp(model, prompt_ids, a) for a in answers]
        assert score.logp == pytest.approx(brute, abs=2e-4)
        p = [math.exp(x) for x in brute]
        assert score.coverage == pytest.approx(sum(p), rel=1e-3)
        assert score.p_move == pytest.approx([x / sum(p) for x in p], rel=1e-3)


def test_metrics_and_paired_gap():
    def res(name, good):
        out = []
        for i in range(4):
            lp = [math.log(good), math.log((1 - good) / 3), math.log((1 - good) / 3), math.log((1 - good) / 3)]
            out.append(StateScore(f"L{i}", 0, lp, (True, False, False, False), (False, True, False, False),
                                  (False, False, True, False)))
        return MeterResult(name, out)

    a, b = res("a", 0.7), res("b", 0.4)
    assert a.mean("emq") == pytest.approx(0.7)
    assert a.mean("p_invalid") == pytest.approx(0.1)
    gap = paired_gap(a, b)
    assert gap.diff == pytest.approx(0.3) and gap.lo == pytest.approx(0.3) and gap.hi == pytest.approx(0.3)


def test_the_report_names_a_model_that_collapsed_onto_one_move(tmp_path):
    """The collapse warning and the moves column, on hand-built scores: [down] optimal at half the states."""
    from oel.report.gather import RunData
    from oel.report.tables import collapse_warnings, meter_table

    def res(p_down: float) -> MeterResult:
        rest = (1 - p_down) / 3
        lp = [math.log(rest), math.log(p_down), math.log(rest), math.log(rest)]  # canonical order u/d/l/r
        states = [StateScore(f"L{i}", step, lp, (False, step == 0, False, step == 1), (True, False, True, False),
                             (False,) * 4) for i in range(3) for step in (0, 1)]
        return MeterResult(f"{p_down}", states)

    data = RunData(run_dir=tmp_path, rounds=[0, 1], meters={0: res(0.4), 1: res(0.95)})
    assert data.meters[1].fixed_policy_emq([0, 1, 0, 0]) == pytest.approx(0.5)
    assert data.meters[1].state_blind_emq() == pytest.approx(0.5 * 0.95 + 0.5 * 0.05 / 3)
    warnings = collapse_warnings(data)
    assert len(warnings) == 1 and warnings[0].startswith("WARNING: M_1 puts 95% of its move probability on [down]")
    assert "always [down] scores 50.0% here" in warnings[0]
    assert "| .02/.95/.02/.02 |" in meter_table(data) and "| .20/.40/.20/.20 |" in meter_table(data)


def test_teacher_gap_routes_knowledge_texts_by_layout_and_the_cli_writes_it(tiny, one_thread, tmp_path):
    from types import SimpleNamespace

    from oel.evaluate.gap import teacher_gap

    model, tok = tiny
    states = probe_states(round_seeds(0, "train", 60), max_layouts=3)
    lm = SimpleNamespace(model=model, tokenizer=tok, model_id="tiny")  # what teacher_gap reads of a LoadedModel
    gap = teacher_gap(lm, lm, states, ["- lesson A", "- lesson B"])
    layouts = list(dict.fromkeys(s.layout for s in states))
    for k, text in enumerate(["- lesson A", "- lesson B"]):
        mine = [s for s in states if layouts.index(s.layout) % 2 == k]
        alone = measure(model, tok, mine, knowledge_variant(text))
        got = {(s.layout, s.step): s.logp for s in gap.teacher.states}
        for st in alone.states:
            assert got[(st.layout, st.step)] == pytest.approx(st.logp, abs=1e-4)
    d = gap.to_dict()
    assert set(d["gaps"]) == {"teacher_minus_student", "teacher_minus_control", "control_minus_student"}
    assert d["control_lessons"]["name"] == "control_unrelated_lessons_v1" and isinstance(d["verdict"], str)
    assert gap.gaps()["teacher_minus_student"]["diff"] == pytest.approx(gap.teacher.mean("emq") - gap.student.mean("emq"))


def test_oel_meter_command(tmp_path, capsys):
    import json

    from oel.cli import main
    from oel.backends.tiny import save_tiny_chat_model

    model_dir = save_tiny_chat_model(tmp_path / "tiny", seed=1)
    lessons = tmp_path / "lessons.txt"
    lessons.write_text("- from the top row never answer [up]\n")
    out = tmp_path / "gap.json"
    assert main(["meter", f"model.name={model_dir}", "model.dtype=float32", "model.device=cpu",
                 f"knowledge_file={lessons}", "max_layouts=2", "num_seeds=30", f"out={out}"]) == 0
    printed = capsys.readouterr().out
    assert "teacher minus control" in printed and "| student |" in printed
    data = json.loads(out.read_text())
    assert data["student"]["layouts"] == 2 and 0 <= data["teacher"]["emq"] <= 1
    assert main(["meter", f"model.name={model_dir}"]) == 2  # no knowledge_file: one-line error
