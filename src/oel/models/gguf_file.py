"""The GGUF file behind a model name, kept and verified, for the llama.cpp engine.

The HF engine reads a GGUF model once, dequantizes it and caches a dense copy; the llama.cpp engine
reads the GGUF file itself. A split preset is assembled once into the cache (`<cache>/gguf/`) and
kept there beside a record of its verified sha256 and file stat, so later runs skip both the
concatenation and the hash unless the file changed.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from oel.errors import ModelLoadError
from oel.io import atomic_write_text
from oel.models.load import ModelConfig
from oel.models.loading import _stat_key, assemble_preset, default_cache_dir, preset_by_name, sha256_file
from oel.models.presets import Preset

log = logging.getLogger(__name__)

VERIFIED_SUFFIX = ".verified.json"
"""Beside an assembled GGUF: its sha256 and the stat it had when it was hashed."""


def _cache_root(config: ModelConfig) -> Path:
    return Path(config.cache_dir) if config.cache_dir else default_cache_dir()


def preset_gguf(preset: Preset, cache_root: Path) -> Path:
    """The preset's assembled GGUF, verified against its pinned sha256 (hashed again only if it changed)."""
    path = cache_root / "gguf" / preset.gguf_name
    record = path.with_name(path.name + VERIFIED_SUFFIX)
    if path.is_file() and record.is_file():
        try:
            seen = json.loads(record.read_text())
        except json.JSONDecodeError:
            seen = {}
        if seen.get("sha256") == preset.sha256 and seen.get("stat") == _stat_key(path):
            return path
    if path.is_file() and sha256_file(path) == preset.sha256:
        log.info("%s: verified", path)
    else:
        path = assemble_preset(preset, path.parent)
    if path.parent == record.parent:  # single-part presets are used where pip put them
        atomic_write_text(record, json.dumps({"sha256": preset.sha256, "stat": _stat_key(path)}))
    return path


def is_gguf_model(name: str) -> bool:
    """Whether `name` runs from a GGUF file (a preset or a .gguf path), without touching the file."""
    return preset_by_name(name) is not None or name.endswith(".gguf")


def model_gguf(config: ModelConfig | str) -> Path | None:
    """The GGUF file a model name runs from (a preset or a .gguf path); None for an HF directory or hub id."""
    config = ModelConfig(name=config) if isinstance(config, str) else config
    preset = preset_by_name(config.name)
    if preset is not None:
        return preset_gguf(preset, _cache_root(config))
    if config.name.endswith(".gguf"):
        path = Path(config.name)
        if not path.is_file():
            raise ModelLoadError(f"model.name: {path}: GGUF file not found")
        return path
    return None


def load_tokenizer(config: ModelConfig | str, gguf: Path | None = None) -> Any:
    """The model's HF tokenizer without loading its weights: from its dense cache or HF directory when
    there is one, else read from the GGUF file."""
    from transformers import AutoTokenizer

    config = ModelConfig(name=config) if isinstance(config, str) else config
    preset = preset_by_name(config.name)
    if preset is not None:
        dense = sorted((_cache_root(config) / "dense").glob(f"{preset.name}-{preset.sha256[:12]}-*"))
        for d in dense:
            if (d / "tokenizer_config.json").is_file():
                return AutoTokenizer.from_pretrained(d)
    elif not config.name.endswith(".gguf"):
        return AutoTokenizer.from_pretrained(config.name, trust_remote_code=config.trust_remote_code)
    gguf = gguf or model_gguf(config)
    assert gguf is not None
    return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
