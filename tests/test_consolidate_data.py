"""The consolidation data on its own (no model): the per-step draw, per-row sampling seeds, prompts."""

from __future__ import annotations

import pytest

from oel import prompts
from oel.consolidate.config import ConsolidateConfig
from oel.consolidate.data import ConsolidationData, StepRows, check_knowledge, draw, row_sampling
from oel.consolidate.distributed import Topology
from oel.consolidate.teacher import teacher_messages
from oel.errors import DataError
from oel.trajectory import Message, Prefix

OBSERVATIONS = ["Turn 1\nP . .\n. H .\n. . G", "Turn 2\n. P .\n. H .\n. . G", "Turn 1\nP . H\n. . .\nH . G"]


def _prefixes() -> list[Prefix]:
    render = prompts.get(prompts.POLICY_TEMPLATE).render
    return [Prefix("t", i, (Message(role="user", content=render(observation=o)),), o, prompts.POLICY_TEMPLATE)
            for i, o in enumerate(OBSERVATIONS)]


class CountingEncoder:
    """Stands in for the chat encoding: one fake token per character, and a count of calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, messages: list[Message]) -> list[int]:
        self.calls += 1
        return [ord(ch) for m in messages for ch in m.content]


def test_draw_is_a_pure_function_of_its_arguments():
    assert draw(0, 3, 10, 2, 4) == draw(0, 3, 10, 2, 4)
    assert draw(0, 3, 10, 2, 4) != draw(0, 4, 10, 2, 4)  # another step, another batch
    assert draw(0, 3, 10, 2, 4) != draw(1, 3, 10, 2, 4)  # another seed, another batch


@pytest.mark.parametrize(("n_prefixes", "batch_size"), [(10, 4), (4, 4), (3, 8)])
def test_draw_takes_distinct_prefixes_while_they_last(n_prefixes, batch_size):
    rows = draw(7, 1, n_prefixes, 3, batch_size)
    assert len(rows) == batch_size
    assert all(0 <= p < n_prefixes and 0 <= k < 3 for p, k in rows)
    picked = [p for p, _ in rows]
    if batch_size <= n_prefixes:
        assert len(set(picked)) == batch_size


def test_row_seeds_follow_the_global_row_so_rank_blocks_add_up_to_one_process():
    config = ConsolidateConfig(batch_size=4, seed=3)
    data = ConsolidationData(_prefixes(), ["Go right.", "Avoid H."], CountingEncoder())
    one = data.rows(config, 2, Topology())
    blocks = [data.rows(config, 2, Topology(rank=r, world_size=2)) for r in range(2)]
    assert blocks[0].picks + blocks[1].picks == one.picks == data.draw(config, 2)
    assert blocks[0].sampling + blocks[1].sampling == one.sampling == row_sampling(config, 2, range(4))
    assert len({s.seed for s in one.sampling}) == 4
    assert {(s.temperature, s.top_p, s.top_k) for s in one.sampling} == {(0.7, 1.0, 0)}


def test_prompts_are_encoded_once_each_and_the_teacher_reads_the_knowledge():
    encoder = CountingEncoder()
    pre = _prefixes()
    data = ConsolidationData(pre, ["Go right.", "Avoid H."], encoder)
    student, teacher = data.encode(1, -1), data.encode(1, 0)
    assert student == encoder(list(pre[1].prompt))
    assert teacher == encoder(teacher_messages(pre[1], "Go right."))
    encoder.calls = 0
    assert data.encode(1, -1) is student and data.encode(1, 0) is teacher
    assert encoder.calls == 0


def test_step_rows_cut_into_micro_batches_and_become_samples():
    config = ConsolidateConfig(batch_size=3, micro_batch_size=1)
    data = ConsolidationData(_prefixes(), ["Go right."], CountingEncoder())
    rows = data.rows(config, 1, Topology())
    part = rows.part(slice(1, 3))
    assert isinstance(part, StepRows) and len(part) == 2 and part.picks == rows.picks[1:]
    samples = part.samples([[5], [6, 7]])
    assert [(s.prefix_index, s.knowledge_index, s.response) for s in samples] == [
        (p, k, r) for (p, k), r in zip(rows.picks[1:], [[5], [6, 7]])]
    assert samples[0].student_prompt == rows.student_prompts[1] and samples[1].teacher_prompt == rows.teacher_prompts[2]


def test_knowledge_as_strings_or_files_and_never_blank(tmp_path):
    from oel.knowledge import Knowledge

    (tmp_path / "k.txt").write_text("Go right.\n")
    (tmp_path / "empty.txt").write_text(" \n")
    read = Knowledge.read([tmp_path / "k.txt"])
    assert read.texts == ("Go right.",) and read.files == (str(tmp_path / "k.txt"),)
    assert check_knowledge(Knowledge.of(["a", "b"]).texts) == ["a", "b"]
    with pytest.raises(DataError, match="knowledge file is empty"):
        Knowledge.read([tmp_path / "k.txt", tmp_path / "empty.txt"])
    assert Knowledge.read([tmp_path / "empty.txt", tmp_path / "k.txt"], skip_empty=True).files == (str(tmp_path / "k.txt"),)
    for bad in ([], ["a", "  "]):
        with pytest.raises(DataError, match="non-empty"):
            check_knowledge(bad)
