"""Checkpoints: plain Hugging Face directories, plus what it takes to resume a round.

A checkpoint directory `checkpoints/step-000010/` holds
- the student's weights with any LoRA MERGED in (safetensors), its config, generation
  config and tokenizer: `AutoModelForCausalLM.from_pretrained(dir)` loads it, no peft and
  no merge step needed;
- `trainer_state.json`: the step reached and the config it was trained under;
- `optimizer.pt`: AdamW's state (moments and step counts; tensors only, loaded with
  `weights_only=True`); under `parallel=fsdp` instead `optimizer_fsdp.pt`, the gathered
  full state keyed by parameter name (torch.distributed.checkpoint's format), so a
  sharded run can resume on any number of ranks;
- `adapter.safetensors` (LoRA only): the unmerged adapter weights. Resuming rebuilds the
  round-start model + adapter from these, so the teacher (adapter off) is still exactly
  the round-start model.
Random state needs no saving: every random choice derives from (seed, step, row).

Every directory is written under a temporary name and renamed into place, so a crash
mid-write leaves no half checkpoint that a resume could pick up.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from oel.errors import TrainingError
from oel.io import read_json

CHECKPOINT_RE = re.compile(r"^step-(\d{6})$")
STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.pt"
OPTIMIZER_FSDP_FILE = "optimizer_fsdp.pt"
ADAPTER_FILE = "adapter.safetensors"
LORA_ADAPTER_DIR = "lora_adapter"
"""In the final model dir of a LoRA round: the unmerged adapter in PEFT's format."""
LORA_KEY = "lora_"


def _lora_layers(model: Any) -> dict[str, Any]:
    """{module path inside the base model: peft LoRA layer} (empty for a plain model)."""
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:  # peft is a dependency, but a plain model needs none of it
        return {}
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return {name: m for name, m in base.named_modules() if isinstance(m, LoraLayer)}


def merged_state_dict(model: Any) -> dict[str, torch.Tensor]:
    """The weights a plain model of the same architecture needs, LoRA deltas added in.

    Computed out of place: the live model is not merged and unmerged (in bf16 that round
    trip would not give back the exact base weights, and the base weights are the teacher).
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    state = module_tensors(base) if _is_sharded(base) else base.state_dict()
    layers = _lora_layers(model)
    if not layers:
        return dict(state)
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if LORA_KEY in key:
            continue
        out[key.replace(".base_layer.", ".")] = value
    for name, layer in layers.items():
        weight_key = f"{name}.weight"
        merged = out[weight_key].float()
        for adapter in layer.active_adapters:
            merged = merged + layer.get_delta_weight(adapter).float()
        out[weight_key] = merged.to(out[weight_key].dtype)
    return out


def _is_sharded(module: Any) -> bool:
    """Does FSDP2 manage part of this module (its state_dict() would then return shards)?"""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:
        return False
    return any(isinstance(m, FSDPModule) for m in module.modules())


def module_tensors(module: Any) -> dict[str, torch.Tensor]:
    """What `state_dict()` holds, read straight off the modules, bypassing state-dict hooks.

    FSDP2's hook swaps gathered weights back to shards before `state_dict()` reads them;
    inside `full_weights()` the modules hold the gathered ones, and this reads those.
    """
    out: dict[str, torch.Tensor] = {}
    for prefix, mod in module.named_modules(remove_duplicate=False):
        dot = f"{prefix}." if prefix else ""
        for name, param in mod._parameters.items():
            if param is not None:
                out[dot + name] = param.detach()
        for name, buf in mod._buffers.items():
            if buf is not None and name not in mod._non_persistent_buffers_set:
                out[dot + name] = buf
    return out


def checkpoint_dir(root: str | os.PathLike, step: int) -> Path:
    return Path(root) / f"step-{step:06d}"


def save_hf_model(model: Any, tokenizer: Any, directory: str | os.PathLike) -> Path:
    """Write the merged model + tokenizer as a Hugging Face directory (and a LoRA round's adapter), atomically."""
    final = Path(directory)
    tmp = _tmp_dir(final)
    try:
        _write_hf(tmp, model, tokenizer)
        if hasattr(model, "peft_config") and _lora_layers(model):
            # The adapter alone, in PEFT's format, for servers that apply it to the round's start
            # model (vLLM LoRA hot swap, oel.online.vllm_lora); loaders of the merged model ignore it.
            model.save_pretrained(tmp / LORA_ADAPTER_DIR, safe_serialization=True)
        _replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _write_hf(directory: Path, model: Any, tokenizer: Any) -> None:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    base.save_pretrained(directory, state_dict=merged_state_dict(model), safe_serialization=True)
    tokenizer.save_pretrained(directory)


def save_checkpoint(root: str | os.PathLike, step: int, *, model: Any, tokenizer: Any, optimizer: Any,
                    config: dict[str, Any], keep_last: int,
                    optimizer_state: tuple[str, dict[str, Any]] | None = None) -> Path:
    """Write `root/step-NNNNNN` atomically, then prune to the `keep_last` newest.

    `optimizer_state`: (file name, state) to write instead of `optimizer.state_dict()`
    (FSDP passes its gathered full state)."""
    final = checkpoint_dir(root, step)
    tmp = _tmp_dir(final)
    try:
        _write_hf(tmp, model, tokenizer)
        name, state = optimizer_state or (OPTIMIZER_FILE, optimizer.state_dict())
        torch.save(state, tmp / name)
        adapter = _adapter_state(model)
        if adapter:
            from safetensors.torch import save_file

            save_file(adapter, str(tmp / ADAPTER_FILE))
        (tmp / STATE_FILE).write_text(json.dumps({"step": step, "config": config}, indent=2) + "\n")
        _replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    prune(root, keep_last)
    return final


def _adapter_state(model: Any) -> dict[str, torch.Tensor]:
    if not _lora_layers(model):
        return {}
    return {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}


def list_checkpoints(root: str | os.PathLike) -> list[tuple[int, Path]]:
    """(step, path) of complete checkpoints, oldest first (temporary directories ignored)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = CHECKPOINT_RE.match(p.name)
        if m and (p / STATE_FILE).is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def prune(root: str | os.PathLike, keep_last: int) -> None:
    for _, path in list_checkpoints(root)[:-keep_last]:
        shutil.rmtree(path)


def read_state(path: Path) -> dict[str, Any]:
    """`trainer_state.json` of a checkpoint: {"step": int, "config": resolved config dict}."""
    return read_json(path / STATE_FILE, "trainer state")


def load_checkpoint(path: Path, *, model: Any, optimizer: Any) -> int:
    """Restore the student's trainable weights and AdamW's state from `path`; returns its step."""
    state = read_state(path)
    if not (path / OPTIMIZER_FILE).is_file():
        raise TrainingError(f"{path}: has no {OPTIMIZER_FILE} (written by parallel=fsdp? resume it with parallel=fsdp)")
    if (path / ADAPTER_FILE).is_file():
        from safetensors.torch import load_file

        adapter = load_file(str(path / ADAPTER_FILE))
        params = dict(model.named_parameters())
        missing = [n for n in adapter if n not in params]
        if missing:
            raise TrainingError(f"{path / ADAPTER_FILE}: adapter weight {missing[0]} not in the model "
                                "(different LoRA config?)")
        with torch.no_grad():
            for name, value in adapter.items():
                params[name].copy_(value)
    else:
        _load_full_weights(path, model)
    optimizer.load_state_dict(torch.load(path / OPTIMIZER_FILE, weights_only=True))
    return int(state["step"])


def _load_full_weights(path: Path, model: Any) -> None:
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for f in sorted(path.glob("*.safetensors")):
        state.update(load_file(str(f)))
    result = model.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"} if getattr(model.config, "tie_word_embeddings", False) else set()
    missing = [k for k in result.missing_keys if k not in tied]
    if missing or result.unexpected_keys:
        bad = (missing or result.unexpected_keys)[0]
        raise TrainingError(f"{path}: checkpoint weights do not match the model (first mismatch: {bad})")


def _tmp_dir(final: Path) -> Path:
    tmp = final.parent / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def _replace_dir(tmp: Path, final: Path) -> None:
    """Rename `tmp` to `final`; an existing `final` is moved aside first and deleted after."""
    old = final.parent / f".old-{final.name}-{os.getpid()}"
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
