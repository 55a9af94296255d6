"""Hot swap for vLLM LoRA deployments: each published version becomes a LoRA adapter vLLM loads.

A team that serves the base model with vLLM (`vllm serve BASE --enable-lora
--max-lora-rank R`, and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True) need not restart it per
version: with `consolidate.finetune=lora`, publishing version N POSTs
`/v1/load_lora_adapter {"lora_name": "<prefix>-vN", "lora_path": <dir>}` and then
`/v1/unload_lora_adapter {"lora_name": "<prefix>-v<parent>"}`; clients ask for the model
`<prefix>-vN` (GET /v1/models lists it). Load first, unload second: no moment without an adapter.

vLLM applies an adapter to the base model it serves, while round r consolidated into version
r-1 (already base + earlier rounds). The adapter loaded is therefore the *cumulative* one, base ->
version N, which is exact for LoRA: W_N = W_0 + sum_i s_i B_i A_i, one LoRA whose A stacks the
rounds' A's (rows) and whose B stacks their B's (columns), the B's rescaled to one scaling. Its
rank is the sum of the rounds' ranks, so vLLM's --max-lora-rank must cover the rounds kept
live. Written beside the version as `<version dir>/vllm_lora/` (PEFT format: adapter_config.json,
adapter_model.safetensors), from the round's own adapter, which consolidation saves in the
model directory as `lora_adapter/` (oel.consolidate.checkpoint), and the parent's cumulative one.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from oel.errors import DataError
from oel.online.config import VllmLoraConfig
from oel.online.versions import Version, Versions, version_name

log = logging.getLogger(__name__)

ROUND_ADAPTER_DIR = "lora_adapter"
"""Inside a published model dir: the round's own adapter (relative to the round's start model)."""
CUMULATIVE_DIR = "vllm_lora"
"""Beside a version's model dir: the adapter from the base model to that version."""
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
HTTP_TIMEOUT_S = 120.0


def _read(adapter: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    from safetensors.torch import load_file

    if not (adapter / CONFIG_FILE).is_file() or not (adapter / WEIGHTS_FILE).is_file():
        raise DataError(f"{adapter}: not a LoRA adapter directory ({CONFIG_FILE} + {WEIGHTS_FILE}); "
                        "vLLM hot swap needs consolidate.finetune=lora")
    config = json.loads((adapter / CONFIG_FILE).read_text())
    if config.get("use_rslora") or config.get("use_dora") or config.get("rank_pattern") or config.get("alpha_pattern"):
        raise DataError(f"{adapter}: rsLoRA, DoRA and per-module ranks cannot be stacked into one adapter")
    return config, load_file(str(adapter / WEIGHTS_FILE))


def stack(earlier: Path, later: Path, out: Path) -> Path:
    """Write the LoRA equal to applying `earlier` then `later` (deltas add) to `out`, atomically."""
    from safetensors.torch import save_file
    import torch

    (c1, w1), (c2, w2) = _read(earlier), _read(later)
    if set(w1) != set(w2):
        raise DataError(f"{later}: adapts other modules than {earlier}; they cannot be stacked")
    s1, s2 = c1["lora_alpha"] / c1["r"], c2["lora_alpha"] / c2["r"]
    merged = {}
    for key in w1:
        if "lora_A" in key:
            merged[key] = torch.cat([w1[key], w2[key]], dim=0).contiguous()
        elif "lora_B" in key:
            merged[key] = torch.cat([w1[key], w2[key] * (s2 / s1)], dim=1).contiguous()
        else:
            raise DataError(f"{later}: unexpected adapter weight {key}")
    r = c1["r"] + c2["r"]
    config = {**c1, "r": r, "lora_alpha": s1 * r}  # scaling alpha / r stays s1: B1 unchanged, B2 rescaled
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(merged, str(tmp / WEIGHTS_FILE))
    (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def cumulative_adapter(model_dir: str, parent_model_dir: str | None) -> Path:
    """The adapter from the base model to the version in `model_dir` (made once, then reused)."""
    out = Path(model_dir).parent / CUMULATIVE_DIR
    if (out / WEIGHTS_FILE).is_file():
        return out
    own = Path(model_dir) / ROUND_ADAPTER_DIR
    if parent_model_dir is None:  # the round started from the base model
        _read(own)
        shutil.copytree(own, out)
        return out
    parent = Path(parent_model_dir).parent / CUMULATIVE_DIR
    if not (parent / WEIGHTS_FILE).is_file():
        raise DataError(f"{parent}: the parent version has no cumulative LoRA adapter (not published with "
                        "consolidate.finetune=lora and the vLLM hook?)")
    return stack(parent, own, out)


def _post(base_url: str, path: str, body: dict[str, Any], api_key: str | None) -> tuple[int, str]:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {api_key}"} if api_key else {})}
    request = urllib.request.Request(base_url.rstrip("/") + path, data=json.dumps(body).encode(), headers=headers,
                                     method="POST")
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:
            return response.status, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8", "replace")


def adapter_name(prefix: str, version: int) -> str:
    return f"{prefix}-v{version}"


def swap(base_url: str, *, version: int, adapter_dir: Path, previous: int | None, prefix: str = "oel",
         api_key: str | None = None) -> dict[str, Any]:
    """Load version's adapter into vLLM, then unload the previous version's; the outcome for the publish marker.

    A refused load raises (the version is published, vLLM still serves the previous one); a refused
    unload is only logged (the old adapter stays loaded, nothing is served wrong)."""
    name = adapter_name(prefix, version)
    try:
        status, text = _post(base_url, "/v1/load_lora_adapter",
                             {"lora_name": name, "lora_path": str(Path(adapter_dir).absolute())}, api_key)
    except OSError as e:
        raise DataError(f"vllm_lora.url {base_url}: cannot reach vLLM ({e})") from None
    if status != 200:
        raise DataError(f"vllm_lora.url {base_url}: /v1/load_lora_adapter answered {status}: "
                        f"{' '.join(text.split())[:200]}")
    out: dict[str, Any] = {"vllm_lora_loaded": name}
    if previous is not None and previous > 0:
        old = adapter_name(prefix, previous)
        try:
            status, text = _post(base_url, "/v1/unload_lora_adapter", {"lora_name": old}, api_key)
        except OSError as e:
            status, text = -1, str(e)
        out["vllm_lora_unloaded"] = old if status == 200 else None
        if status != 200:
            log.warning("vLLM kept adapter %s loaded (unload answered %s: %s)", old, status,
                        " ".join(text.split())[:200])
    return out


def swap_published(cfg: VllmLoraConfig, versions: Versions, v: Version) -> dict[str, Any]:
    """The scheduler's step after publishing `v`: its cumulative adapter loaded into vLLM.

    A failure is logged and returned for the publish marker, not raised: the version stays published
    and vLLM keeps serving the previous adapter."""
    parent = versions.get(v.parent) if v.parent else None  # version 0 is the base model itself
    try:
        adapter = cumulative_adapter(v.model_dir, parent.model_dir if parent else None)
        return swap(cfg.url, version=v.version, adapter_dir=adapter, previous=v.parent, prefix=cfg.prefix,
                    api_key=os.environ.get(cfg.api_key_env) or None)
    except DataError as e:
        log.error("round %s: vLLM LoRA hot swap of %s failed: %s", v.round, version_name(v.version), e)
        return {"vllm_lora_error": str(e)}
