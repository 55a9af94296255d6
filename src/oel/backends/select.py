"""Which engine answers a stage: llama.cpp or HF in this process, or an OpenAI-compatible endpoint.

`auto` (the default) runs a GGUF model (a preset or a .gguf file) on llama.cpp where HF would run it
in float32 on the CPU (CPUs without native bf16: AVX2 laptops and cloud VMs) and the engine is
installed: the shipped quantized weights, several times faster at decoding than HF's dequantized
float32. Work that is mostly decoding (extraction's long answers) takes llama.cpp on CPUs with native
bf16 too, where it is still about twice as fast; game turns (short answers after long prompts) stay on
HF there, whose batched bf16 prefill is faster (both measured in docs/engines.md). Everything else runs
on HF: GPUs, Hugging Face directories and hub ids, and any machine where llama.cpp is not built (with
one warning saying what that costs).
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from oel.backends.base import ChatBackend
from oel.backends.hf import HFBackend
from oel.backends.openai_endpoint import EndpointConfig, OpenAIBackend
from oel.config import Config, cfg
from oel.models import ModelConfig

log = logging.getLogger(__name__)

BackendKind = Literal["auto", "hf", "llamacpp", "openai"]
EngineKind = Literal["auto", "hf", "llamacpp"]
DEFAULT_MAX_BATCH_SIZE = 8
"""Prompts of one forward pass when a stage does not say: the K extraction runs of a step fit."""
FALLBACK_COST = ("llama.cpp engine not installed (`make engine` builds it): running on HF instead, whose "
                 "float32 decoding is ~4-6x slower on CPUs without bf16")

_warned: set[str] = set()


class BackendConfig(Config):
    """A model a stage talks to: by default a preset, in-process; or any OpenAI-compatible endpoint."""

    backend: BackendKind = cfg("auto", "auto: llamacpp for a GGUF model on CPU if installed, else hf; "
                                       "openai: call `endpoint` (docs/engines.md)")
    model: ModelConfig = cfg(help="the model when backend is auto, hf or llamacpp", factory=ModelConfig)
    endpoint: EndpointConfig = cfg(help="the OpenAI-compatible endpoint when backend=openai", factory=EndpointConfig)
    max_batch_size: int = cfg(DEFAULT_MAX_BATCH_SIZE, "in-process engines: most prompts decoded together")


def engine_available() -> str | None:
    """None if the llama.cpp engine can be imported, else why not."""
    try:
        import llama_cpp  # noqa: F401
    except ImportError as e:
        return str(e)
    return None


def resolve_engine(requested: EngineKind, model: ModelConfig, *, why: str = "",
                   decoding_bound: bool = False) -> Literal["hf", "llamacpp"]:
    """The in-process engine `requested` means for `model` on this machine (see the module docstring).
    An explicit `llamacpp` that cannot run is an error; `auto` falls back to HF, warning once.
    `decoding_bound`: the work is mostly long answers (extraction), where llama.cpp's decoding is
    faster than HF's even in native bf16, so `auto` takes it on any CPU."""
    from oel.models.gguf_file import is_gguf_model
    from oel.models.loading import cpu_bf16_native, resolve_device

    if requested == "hf":
        return "hf"
    missing = engine_available()
    if requested == "llamacpp":
        if missing is not None:
            raise ValueError(f"backend=llamacpp: {FALLBACK_COST.split(':')[0]} ({missing})")
        if not is_gguf_model(model.name):
            raise ValueError(f"backend=llamacpp: {model.name} is not a GGUF model (a preset or a .gguf file)")
        return "llamacpp"
    if resolve_device(model.device) != "cpu" or not is_gguf_model(model.name):
        return "hf"
    hf_float32 = model.dtype == "float32" or (model.dtype == "auto" and not cpu_bf16_native())
    if not hf_float32 and not decoding_bound:
        return "hf"  # native bf16: HF's batched prefill beats llama.cpp on game turns (docs/engines.md)
    if missing is not None:
        if FALLBACK_COST not in _warned:
            _warned.add(FALLBACK_COST)
            log.warning("%s%s", FALLBACK_COST, f" ({why})" if why else "")
        return "hf"
    return "llamacpp"


def llamacpp_backend(model: ModelConfig, *, max_batch_size: int, adapter: Any = None, model_id: str | None = None,
                     tokenizer: Any = None, hf_model: Any = None) -> ChatBackend:
    """The llama.cpp engine on `model`'s GGUF (with `adapter`, a GGUF LoRA, if given)."""
    from oel.backends.llamacpp import LlamaCppBackend
    from oel.models.gguf_file import load_tokenizer, model_gguf

    gguf = model_gguf(model)
    assert gguf is not None
    return LlamaCppBackend(gguf, tokenizer if tokenizer is not None else load_tokenizer(model, gguf),
                           model_id=model_id or model.name, adapter=adapter, max_batch_size=max_batch_size,
                           model_config=model, hf_model=hf_model)


def make_backend(kind: BackendKind, *, model: Any, endpoint: Any, **hf_options: Any) -> ChatBackend:
    """The backend a stage config asks for: `openai` -> its endpoint; `auto` / `hf` / `llamacpp` -> load
    `model` in process (`hf_options` go to the engine, e.g. max_batch_size)."""
    if kind == "openai":
        return OpenAIBackend(endpoint)
    if resolve_engine(kind, model) == "llamacpp":
        return llamacpp_backend(model, max_batch_size=hf_options.get("max_batch_size", DEFAULT_MAX_BATCH_SIZE))
    return HFBackend.from_model_config(model, **hf_options)


def from_config(config: BackendConfig) -> ChatBackend:
    """The backend `config` names (loads the model for the in-process engines)."""
    return make_backend(config.backend, model=config.model, endpoint=config.endpoint,
                        max_batch_size=config.max_batch_size)
