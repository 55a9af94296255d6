"""The fast-path decision on its own: a table of (config, processes, sharding) -> what runs, and why not.

`tests/test_consolidate_shared_prefill.py::test_switched_paths_run_only_where_they_can` checks the same
decision through a built trainer (and that its step runs); this table covers the launcher cases too,
which a single-process test cannot build.
"""

from __future__ import annotations

import dataclasses

import pytest

from oel.consolidate.config import ConsolidateConfig
from oel.consolidate.fast_paths import FastPaths, decide_fast_paths

ALL_OFF = {"shared_student_prefill": False, "student_prefix_cache": False, "teacher_prefix_cache": False}
GC = "gradient_checkpointing"

CASES = [
    # (id, config fields, distributed, fsdp, (shared_prefill, student_head_cache, teacher_head_cache), skipped)
    ("defaults", {}, False, False, (True, True, True), {}),
    ("off_policy", {"sampler": "off_policy", "loss": "forward_kl"}, False, False, (False, True, True),
     {"shared_student_prefill": ["sampler=off_policy"]}),
    ("lora_dropout", {"lora_dropout": 0.1}, False, False, (False, True, True),
     {"shared_student_prefill": ["lora_dropout > 0"]}),
    ("dropout_without_lora", {"finetune": "full", "lora_dropout": 0.1}, False, False, (True, True, True), {}),
    ("checkpointing", {GC: True}, False, False, (False, False, True),
     {"shared_student_prefill": [GC], "student_prefix_cache": [GC]}),
    ("checkpointing_student_cache_off", {GC: True, "student_prefix_cache": False}, False, False,
     (False, False, True), {"shared_student_prefill": [GC]}),
    ("all_off", ALL_OFF, False, False, (False, False, False), {}),
    ("all_off_is_never_skipped", {**ALL_OFF, GC: True, "sampler": "off_policy"}, True, True, (False, False, False), {}),
    ("ddp", {"parallel": "ddp"}, True, False, (False, True, True),
     {"shared_student_prefill": ["more than one process"]}),
    ("fsdp", {"parallel": "fsdp"}, True, True, (False, False, False),
     {"shared_student_prefill": ["more than one process"], "student_prefix_cache": ["FSDP"],
      "teacher_prefix_cache": ["FSDP"]}),
    ("every_reason_in_table_order", {"parallel": "fsdp", "sampler": "off_policy", "lora_dropout": 0.1, GC: True},
     True, True, (False, False, False),
     {"shared_student_prefill": ["sampler=off_policy", "lora_dropout > 0", GC, "more than one process"],
      "student_prefix_cache": [GC, "FSDP"], "teacher_prefix_cache": ["FSDP"]}),
]


@pytest.mark.parametrize(("fields", "distributed", "fsdp", "expected", "skipped"),
                         [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_decision_table(fields, distributed, fsdp, expected, skipped):
    config = ConsolidateConfig(**fields)
    before = config.model_dump()
    paths, reasons = decide_fast_paths(config, distributed=distributed, fsdp=fsdp)
    assert (paths.shared_prefill, paths.student_head_cache, paths.teacher_head_cache) == expected
    assert reasons == skipped
    assert list(reasons) == [name for name in ("shared_student_prefill", "student_prefix_cache",
                                               "teacher_prefix_cache") if name in skipped]  # the log's order
    assert config.model_dump() == before  # pure: the config is read, not changed
    assert decide_fast_paths(config, distributed=distributed, fsdp=fsdp) == (paths, reasons)


def test_a_switch_is_used_only_where_it_is_on_and_unblocked():
    """Every combination of the three switches, on one process: each runs exactly where it is on."""
    for bits in range(8):
        on = {name: bool(bits >> i & 1) for i, name in enumerate(ALL_OFF)}
        paths, reasons = decide_fast_paths(ConsolidateConfig(**on), distributed=False, fsdp=False)
        assert paths == FastPaths(shared_prefill=on["shared_student_prefill"],
                                  student_head_cache=on["student_prefix_cache"],
                                  teacher_head_cache=on["teacher_prefix_cache"])
        assert reasons == {}


def test_the_decision_cannot_be_changed_afterwards():
    paths, _ = decide_fast_paths(ConsolidateConfig(), distributed=False, fsdp=False)
    with pytest.raises(dataclasses.FrozenInstanceError):
        paths.shared_prefill = False  # type: ignore[misc]
