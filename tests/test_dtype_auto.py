"""model.dtype=auto: bf16 only where the hardware computes it natively.

Why: on an AVX2-only CPU torch emulates bf16 and a model runs tens of times slower than in float32,
so a bf16 default that suits an AVX-512 BF16 machine makes the quick start unusable elsewhere.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from oel.models import loading

AVX2_EPYC = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx avx2 fma bmi2\n"
SAPPHIRE_RAPIDS = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_vnni avx512_bf16 amx_tile amx_bf16\n"
ICELAKE = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_vnni\n"
GRAVITON3 = "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n"
GRAVITON2 = "processor\t: 0\nFeatures\t: fp asimd atomics\n"


@pytest.mark.parametrize(("cpuinfo", "native"), [
    (AVX2_EPYC, False), (SAPPHIRE_RAPIDS, True), (ICELAKE, False), (GRAVITON3, True), (GRAVITON2, False), ("", False),
    ("model name\t: some bf16 marketing name\n", False),  # only the flags/Features lines count
])
def test_native_bf16_is_read_from_the_cpu_flags(cpuinfo: str, native: bool) -> None:
    assert loading.cpu_bf16_native(cpuinfo) is native


def test_auto_follows_the_cpu_and_explicit_dtypes_are_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loading, "cpu_bf16_native", lambda cpuinfo=None: False)
    assert loading.resolve_dtype("auto", "cpu") is torch.float32
    monkeypatch.setattr(loading, "cpu_bf16_native", lambda cpuinfo=None: True)
    assert loading.resolve_dtype("auto", "cpu") is torch.bfloat16
    for name, dtype in loading.DTYPES.items():
        assert loading.resolve_dtype(name, "cpu") is dtype


def test_auto_on_a_gpu_asks_the_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert loading.resolve_dtype("auto", "cuda") is torch.float32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert loading.resolve_dtype("auto", "cuda:1") is torch.bfloat16


@pytest.mark.parametrize(("cpuinfo", "native"), [(SAPPHIRE_RAPIDS, True), (AVX2_EPYC, False), (None, False)])
def test_the_live_check_reads_proc_cpuinfo(monkeypatch: pytest.MonkeyPatch, cpuinfo: str | None,
                                           native: bool) -> None:
    """Without text, the check reads /proc/cpuinfo; an unreadable file counts as not native (float32)."""
    read = []

    def fake_read_text(path: Path, *args: object, **kwargs: object) -> str:
        read.append(str(path))
        if cpuinfo is None:
            raise OSError(2, "No such file or directory", str(path))
        return cpuinfo

    monkeypatch.setattr(Path, "read_text", fake_read_text)
    assert loading.cpu_bf16_native() is native
    assert read == ["/proc/cpuinfo"]
