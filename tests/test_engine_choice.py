"""Which engine `auto` picks: llama.cpp only for a GGUF model that HF would run in float32 on the CPU,
and only where it is installed (else HF, with one warning saying what that costs)."""

from __future__ import annotations

import logging

import pytest

from oel.backends import select
from oel.models import ModelConfig

PRESET = "qwen2.5-coder-0.5b-instruct"


@pytest.fixture
def machine(monkeypatch):
    """Set (native bf16, llama.cpp installed) for the test."""
    def set_(bf16: bool, installed: bool) -> None:
        monkeypatch.setattr("oel.models.loading.cpu_bf16_native", lambda cpuinfo=None: bf16)
        monkeypatch.setattr(select, "engine_available", lambda: None if installed else "No module named 'llama_cpp'")
        monkeypatch.setattr(select, "_warned", set())
    return set_


@pytest.mark.parametrize(("bf16", "installed", "dtype", "name", "expected"), [
    (False, True, "auto", PRESET, "llamacpp"),  # an AVX2 CPU: HF would run float32
    (True, True, "auto", PRESET, "hf"),  # native bf16: HF's batched prefill wins the game turns
    (True, True, "float32", PRESET, "llamacpp"),  # float32 asked for: llama.cpp is the faster way to read it
    (False, True, "auto", "runs/x/round_0/consolidate/model", "hf"),  # an HF directory has no GGUF
    (False, True, "auto", "my-model.gguf", "llamacpp"),
    (False, False, "auto", PRESET, "hf"),  # not installed: HF, with a warning
])
def test_auto_picks_llamacpp_where_hf_would_run_float32(machine, bf16, installed, dtype, name, expected):
    machine(bf16, installed)
    assert select.resolve_engine("auto", ModelConfig(name=name, dtype=dtype, device="cpu")) == expected


def test_the_fallback_warns_once_saying_what_it_costs(machine, caplog):
    machine(False, False)
    with caplog.at_level(logging.WARNING, logger="oel.backends.select"):
        for _ in range(3):
            assert select.resolve_engine("auto", ModelConfig(name=PRESET, device="cpu")) == "hf"
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "make engine" in warnings[0] and "slower" in warnings[0]


def test_an_explicit_engine_that_cannot_run_is_an_error(machine):
    machine(False, False)
    with pytest.raises(ValueError, match=r"llamacpp: llama.cpp engine not installed"):
        select.resolve_engine("llamacpp", ModelConfig(name=PRESET))
    machine(False, True)
    with pytest.raises(ValueError, match=r"is not a GGUF model"):
        select.resolve_engine("llamacpp", ModelConfig(name="runs/x/model"))
    assert select.resolve_engine("hf", ModelConfig(name=PRESET)) == "hf"


@pytest.mark.parametrize(("bf16", "installed", "name", "expected"), [
    (True, True, PRESET, "llamacpp"),  # native bf16: decoding-bound work still goes to llama.cpp
    (False, True, PRESET, "llamacpp"),
    (True, False, PRESET, "hf"),
    (True, True, "runs/x/round_0/consolidate/model", "hf"),
])
def test_decoding_bound_work_takes_llamacpp_on_any_cpu(machine, bf16, installed, name, expected):
    machine(bf16, installed)
    assert select.resolve_engine("auto", ModelConfig(name=name, device="cpu"), decoding_bound=True) == expected


@pytest.mark.parametrize(("engine", "extract_engine", "bf16", "expected"), [
    ("auto", "auto", True, ("hf", "llamacpp")),  # the bf16 machine: games on HF, lessons on llama.cpp
    ("auto", "auto", False, ("llamacpp", "llamacpp")),
    ("hf", "auto", True, ("hf", "hf")),  # an explicit engine holds for extraction too
    ("hf", "llamacpp", True, ("hf", "llamacpp")),
])
def test_the_loop_records_both_engines(machine, engine, extract_engine, bf16, expected):
    from oel.loop.config import LoopConfig, with_engine_resolved

    machine(bf16, True)
    config = with_engine_resolved(LoopConfig(model=ModelConfig(name=PRESET, device="cpu"), engine=engine,
                                             extract_engine=extract_engine))
    assert (config.engine, config.extract_engine) == expected
    full = with_engine_resolved(LoopConfig(model=ModelConfig(name=PRESET, device="cpu"),
                                           consolidate={"finetune": "full"}))
    assert (full.engine, full.extract_engine) == ("hf", "hf")  # no LoRA to give llama.cpp: every stage on HF
