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
