"""Which model to load (`ModelConfig`) and `load_model`: a preset, a .gguf file, an HF directory or a hub id.

The mechanics (assembling presets, the dense safetensors cache, sha256 checks) are in
`oel.models.loading`; this module decides which of them a name needs.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from oel.config import Config, cfg
from oel.errors import ModelLoadError
from oel.models.loading import (
    assemble_preset,
    default_cache_dir,
    gguf_cached,
    load_hf,
    preset_by_name,
    resolve_device,
    resolve_dtype,
    sha256_file,
)
from oel.models.presets import DEFAULT_PRESET, Preset
from oel.models.resolve import check_hub_reachable, local_model_dir
from oel.threads import apply_torch_threads

log = logging.getLogger(__name__)


class ModelConfig(Config):
    """Which model to load and how."""

    name: str = cfg(DEFAULT_PRESET, "offline preset name, path to a .gguf file, Hugging Face model dir, or hub id")
    dtype: Literal["auto", "bfloat16", "float32", "float16"] = cfg(
        "auto", "weights dtype; auto = bfloat16 where the hardware computes it natively, else float32")
    device: str = cfg("auto", "torch device: auto (cuda if available, else cpu), cpu, cuda, cuda:1, ...")
    cache_dir: str | None = cfg(None, "where dense copies of GGUF models are cached; null = $OEL_CACHE_DIR or "
                                      "the user cache dir")
    use_cache: bool = cfg(True, "cache a dense safetensors copy of GGUF models (second load takes seconds)")
    verify_cache: bool = cfg(False, "re-hash the cached weights on every load (they are always re-hashed when "
                                    "their size or mtime changed since written)")
    trust_remote_code: bool = cfg(False, "allow a hub model's own Python code to run (off unless you trust it)")
    revision: str | None = cfg(None, "hub revision (branch, tag or commit) for hub ids")


@dataclass
class LoadedModel:
    """A loaded model, its tokenizer, and where it came from."""

    model: Any
    tokenizer: Any
    model_id: str
    """A stable name for records: the preset name, or the path / hub id given."""
    source: Literal["preset", "gguf", "hf"]
    hf_dir: Path | None
    """A Hugging Face directory holding exactly these weights (the cache entry for GGUF models)."""
    cache_hit: bool
    load_seconds: float
    config: ModelConfig | None = None
    """How it was loaded (`load_model`'s argument): what a stage given the loaded model records as
    its model, and what a second model loaded beside it (another teacher) takes its device from."""


def _finish(model: Any, tok: Any, device: str) -> tuple[Any, Any]:
    """Common post-processing: device, eval mode, a pad token for batched generation."""
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model.to(device)
    model.eval()
    return model, tok


def check_model_name(name: str, key: str = "model.name") -> None:
    """Refuse, in one line and before anything is written or loaded, a model name that cannot load:
    a missing path or .gguf file, or a hub id the hub cannot serve (offline machine)."""
    try:
        if preset_by_name(name) is not None:
            return
        if name.endswith(".gguf"):
            if not Path(name).expanduser().is_file():
                raise ModelLoadError(f"model.name: {name}: GGUF file not found")
            return
        if local_model_dir(name) is None:
            check_hub_reachable(name)
    except ModelLoadError as e:
        raise ModelLoadError(str(e).replace("model.name:", f"{key}:", 1)) from None


def load_model(config: ModelConfig | str) -> LoadedModel:
    """Load `config.name` (see the module docstring for what a name can be)."""
    if isinstance(config, str):
        config = ModelConfig(name=config)
    t0 = time.perf_counter()
    device = resolve_device(config.device)
    if device == "cpu":
        apply_torch_threads()
    dtype = resolve_dtype(config.dtype, device)
    cache_root = Path(config.cache_dir) if config.cache_dir else default_cache_dir()
    preset = preset_by_name(config.name)
    hit = False
    hf_dir: Path | None
    if preset is not None:
        model, tok, hf_dir, hit = _load_preset(preset, config, cache_root, dtype)
        source, model_id = "preset", preset.name
    elif config.name.endswith(".gguf"):
        model, tok, hf_dir, hit = _load_user_gguf(Path(config.name), config, cache_root, dtype)
        source, model_id = "gguf", config.name
    else:
        model, tok, hf_dir = _load_dir_or_hub(config, dtype)
        source, model_id = "hf", config.name
    model, tok = _finish(model, tok, device)
    seconds = time.perf_counter() - t0
    log.info("loaded %s (%s, %s, cache %s) in %.1fs", model_id, source, dtype, "hit" if hit else "miss", seconds)
    return LoadedModel(model, tok, model_id, source, hf_dir, hit, seconds, config)


def _load_dir_or_hub(config: ModelConfig, dtype: Any) -> tuple[Any, Any, Path | None]:
    """A local HF directory (never the network), or a hub id: fetched if the hub is reachable,
    else only from the local hub cache, failing in one line when it is not there either."""
    local = local_model_dir(config.name)
    offline: ModelLoadError | None = None
    if local is None:
        try:
            check_hub_reachable(config.name)
        except ModelLoadError as e:
            offline = e
    try:
        model, tok = load_hf(str(local or config.name), dtype, trust_remote_code=config.trust_remote_code,
                             revision=config.revision, local_only=local is not None or offline is not None)
    except ModelLoadError:
        if offline is not None:
            raise offline from None
        raise
    return model, tok, local


def _load_preset(preset: Preset, config: ModelConfig, cache_root: Path, dtype: Any):
    assembled_dir = cache_root / "gguf"

    def build() -> Path:
        return assemble_preset(preset, assembled_dir)

    result = gguf_cached(
        None, f"{preset.name}-{preset.sha256[:12]}", cache_root, dtype,
        build_gguf=build, use_cache=config.use_cache, verify_cache=config.verify_cache,
        meta={"preset": preset.name, "gguf_sha256": preset.sha256, "upstream": preset.upstream},
    )
    # The assembled GGUF is kept: the llama.cpp engine runs it (oel.models.gguf_file).
    return result


def _load_user_gguf(path: Path, config: ModelConfig, cache_root: Path, dtype: Any):
    if not path.is_file():
        raise ModelLoadError(f"model.name: {path}: GGUF file not found")
    digest = sha256_file(path)
    return gguf_cached(
        path, f"{path.stem}-{digest[:12]}", cache_root, dtype,
        build_gguf=lambda: path, use_cache=config.use_cache, verify_cache=config.verify_cache,
        meta={"gguf_file": str(path.resolve()), "gguf_sha256": digest},
    )
