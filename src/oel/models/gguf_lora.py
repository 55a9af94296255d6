"""A trained model as one GGUF LoRA adapter over the shipped base GGUF (llama.cpp's format).

Each consolidation round trains a fresh PEFT LoRA on the previous round's merged weights, so the
model after round r is `base + sum_k s_k B_k A_k` (s_k = alpha_k / r_k, rsLoRA: alpha_k / sqrt(r_k)).
The sum is itself a LoRA: stack the A's as rows and the scaled B's as columns,

    A = [A_1; ...; A_r]   (R x in),   B = [s_1 B_1, ..., s_r B_r]   (out x R),   B A = sum_k s_k B_k A_k,

written with alpha 0, which llama.cpp reads as "scale 1". The llama.cpp engine then runs round r's
model from the unchanged base file plus this small file: no re-quantization, seconds per round,
and the update is kept exactly in float32 (a merged bf16 checkpoint rounds it).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
PEFT_PREFIX = "base_model.model."
UNSUPPORTED_PEFT = ("use_dora", "modules_to_save")
ROTARY_PERMUTED_ARCHS = frozenset({"llama"})
"""Architectures whose GGUF q/k rows are permuted relative to HF (Qwen2's are not)."""


class AdapterError(ValueError):
    """A PEFT adapter this converter cannot express as a GGUF LoRA (the message names file and field)."""


def read_peft_adapter(adapter_dir: str | os.PathLike) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{HF weight name: (A (r x in), s*B (out x r))} of a PEFT LoRA directory, float32."""
    from safetensors.numpy import load_file

    adapter_dir = Path(adapter_dir)
    config_path = adapter_dir / ADAPTER_CONFIG
    try:
        cfg = json.loads(config_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise AdapterError(f"{config_path}: cannot read the adapter config ({e})") from None
    for key in UNSUPPORTED_PEFT:
        if cfg.get(key):
            raise AdapterError(f"{config_path}: {key}={cfg[key]!r} is not a plain LoRA; llama.cpp cannot apply it")
    if cfg.get("bias", "none") != "none":
        raise AdapterError(f"{config_path}: bias={cfg['bias']!r}: trained biases are not a LoRA; expected 'none'")
    r, alpha = int(cfg["r"]), float(cfg["lora_alpha"])
    scale = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
    tensors = _load_float32(load_file(str(adapter_dir / ADAPTER_WEIGHTS)))
    pairs: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for key, a in tensors.items():
        if ".lora_A." not in key:
            continue
        module = key.split(".lora_A.")[0].removeprefix(PEFT_PREFIX)
        b_key = key.replace(".lora_A.", ".lora_B.")
        if b_key not in tensors:
            raise AdapterError(f"{adapter_dir / ADAPTER_WEIGHTS}: {key} has no matching {b_key}")
        if "embed" in module:
            raise AdapterError(f"{adapter_dir / ADAPTER_WEIGHTS}: {module}: LoRA on embeddings is not supported")
        pairs[module + ".weight"] = (a, tensors[b_key] * np.float32(scale))
    if not pairs:
        raise AdapterError(f"{adapter_dir / ADAPTER_WEIGHTS}: no lora_A/lora_B tensors")
    return pairs


def _load_float32(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}


def stack_adapters(adapters: Sequence[dict[str, tuple[np.ndarray, np.ndarray]]]) -> dict[str, tuple[np.ndarray,
                                                                                                     np.ndarray]]:
    """One LoRA whose update is the sum of `adapters`' updates (ranks concatenated)."""
    names = sorted({n for a in adapters for n in a})
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name in names:
        parts = [a[name] for a in adapters if name in a]
        out[name] = (np.concatenate([p[0] for p in parts], axis=0), np.concatenate([p[1] for p in parts], axis=1))
    return out


@dataclass(frozen=True)
class BaseModelInfo:
    """What the converter needs of the base GGUF: read from its header only."""

    arch: str
    blocks: int
    heads: int
    kv_heads: int
    shapes: dict[str, tuple[int, ...]]
    """{tensor name: numpy-order shape (rows, columns)}"""


def read_base_info(base_gguf: Path) -> BaseModelInfo:
    import gguf

    reader = gguf.GGUFReader(str(base_gguf))

    def field(key: str, default: Any = None) -> Any:
        f = reader.get_field(key)
        return f.contents() if f is not None else default

    arch = field("general.architecture")
    if arch is None:
        raise AdapterError(f"{base_gguf}: no general.architecture")
    heads = int(field(f"{arch}.attention.head_count", 0))
    shapes = {t.name: tuple(int(d) for d in reversed(t.shape.tolist())) for t in reader.tensors}
    return BaseModelInfo(arch, int(field(f"{arch}.block_count", 0)), heads,
                         int(field(f"{arch}.attention.head_count_kv", heads)), shapes)


def _to_gguf_rows(b: np.ndarray, hf_name: str, info: BaseModelInfo) -> np.ndarray:
    """llama-architecture GGUFs store q and k with their rotary halves interleaved (the HF -> GGUF
    converter permutes those rows); an update to them must be permuted the same way."""
    if info.arch not in ROTARY_PERMUTED_ARCHS:
        return b
    heads = {"q_proj": info.heads, "k_proj": info.kv_heads}.get(hf_name.split(".")[-2])
    if heads is None:
        return b
    rows = b.shape[0]
    return np.ascontiguousarray(b.reshape(heads, 2, rows // heads // 2, *b.shape[1:]).swapaxes(1, 2).reshape(b.shape))


def gguf_name(hf_name: str, arch: str, blocks: int) -> str:
    """The GGUF tensor name of an HF weight (e.g. model.layers.3.self_attn.q_proj.weight -> blk.3.attn_q.weight)."""
    import gguf

    arch_ids = {v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}
    if arch not in arch_ids:
        raise AdapterError(f"architecture {arch!r}: unknown to gguf {getattr(gguf, '__version__', '')}")
    name = gguf.get_tensor_name_map(arch_ids[arch], blocks).get_name(hf_name, try_suffixes=(".weight", ".bias"))
    if name is None:
        raise AdapterError(f"{hf_name}: no GGUF tensor of a {arch} model corresponds to it")
    return name


def write_lora_gguf(adapter_dirs: Sequence[str | os.PathLike], base_gguf: str | os.PathLike,
                    out: str | os.PathLike) -> Path:
    """Write the sum of the PEFT adapters in `adapter_dirs` as one GGUF LoRA for `base_gguf`, atomically.

    Every adapted weight must exist in the base file with the adapter's shape (one-line error otherwise).
    """
    import gguf

    base_gguf, out = Path(base_gguf), Path(out)
    info = read_base_info(base_gguf)
    stacked = stack_adapters([read_peft_adapter(d) for d in adapter_dirs])
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".lora.", suffix=".gguf", dir=out.parent)
    os.close(fd)
    try:
        writer = gguf.GGUFWriter(tmp, arch=info.arch)
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, 0.0)  # 0: B already carries each round's scale
        for hf_name, (a, b) in stacked.items():
            name = gguf_name(hf_name, info.arch, info.blocks)
            expected = info.shapes.get(name)
            if expected is None:
                raise AdapterError(f"{base_gguf}: has no tensor {name} (adapter weight {hf_name})")
            if expected != (b.shape[0], a.shape[1]):
                raise AdapterError(f"{hf_name}: adapter is {b.shape[0]}x{a.shape[1]}, {base_gguf.name}'s {name} "
                                   f"is {expected[0]}x{expected[1]} (a different base model?)")
            stem = name.removesuffix(".weight")
            writer.add_tensor(f"{stem}.weight.lora_a", a)
            writer.add_tensor(f"{stem}.weight.lora_b", _to_gguf_rows(b, hf_name, info))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, out)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return out
