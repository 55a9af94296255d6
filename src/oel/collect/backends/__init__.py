"""Generation backends: where a stage's responses come from (see `make_backend`)."""

from __future__ import annotations

from typing import Any, Literal

from oel.collect.backends.base import ChatBackend


def make_backend(kind: Literal["hf", "openai"], *, model: Any, endpoint: Any, **hf_options: Any) -> ChatBackend:
    """The backend a stage config asks for: `openai` -> its endpoint; `hf` -> load `model` in process
    (`hf_options` go to `HFBackend.from_model_config`, e.g. max_batch_size)."""
    if kind == "openai":
        from oel.collect.backends.openai_endpoint import OpenAIBackend

        return OpenAIBackend(endpoint)
    from oel.collect.backends.hf import HFBackend

    return HFBackend.from_model_config(model, **hf_options)
