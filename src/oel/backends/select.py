"""Which backend answers a stage: a model loaded in this process, or an OpenAI-compatible endpoint."""

from __future__ import annotations

from typing import Any, Literal

from oel.backends.base import ChatBackend
from oel.backends.hf import HFBackend
from oel.backends.openai_endpoint import EndpointConfig, OpenAIBackend
from oel.config import Config, cfg
from oel.models import ModelConfig

BackendKind = Literal["hf", "openai"]
DEFAULT_MAX_BATCH_SIZE = 8
"""Prompts of one forward pass when a stage does not say: the K extraction runs of a step fit."""


class BackendConfig(Config):
    """A model a stage talks to: by default a preset, in-process; or any OpenAI-compatible endpoint."""

    backend: BackendKind = cfg("hf", "hf: load `model` in this process; openai: call `endpoint`")
    model: ModelConfig = cfg(help="the model when backend=hf", factory=ModelConfig)
    endpoint: EndpointConfig = cfg(help="the OpenAI-compatible endpoint when backend=openai", factory=EndpointConfig)
    max_batch_size: int = cfg(DEFAULT_MAX_BATCH_SIZE, "backend=hf: most prompts in one forward pass")


def make_backend(kind: BackendKind, *, model: Any, endpoint: Any, **hf_options: Any) -> ChatBackend:
    """The backend a stage config asks for: `openai` -> its endpoint; `hf` -> load `model` in process
    (`hf_options` go to `HFBackend.from_model_config`, e.g. max_batch_size)."""
    if kind == "openai":
        return OpenAIBackend(endpoint)
    return HFBackend.from_model_config(model, **hf_options)


def from_config(config: BackendConfig) -> ChatBackend:
    """The backend `config` names (loads the model for backend=hf)."""
    return make_backend(config.backend, model=config.model, endpoint=config.endpoint,
                        max_batch_size=config.max_batch_size)
