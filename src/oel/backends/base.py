"""The generation interface every stage uses: batched chat completion.

Collection, evaluation, extraction and the consolidation's student sampling all ask a
model the same question -- "complete these chats" -- so they share one interface, and any
implementation (an in-process Hugging Face model, an OpenAI-compatible endpoint such as
vLLM or a llama.cpp server) can serve any stage.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from oel.config import Config, cfg
from oel.trajectory import Message


class SamplingParams(Config):
    """How to sample one completion. Defaults follow the play setting of docs/method.md."""

    temperature: float = cfg(0.7, "sampling temperature; 0 means greedy")
    top_p: float = cfg(0.8, "nucleus sampling mass")
    top_k: int = cfg(20, "sample among the k most likely tokens; 0 disables")
    max_new_tokens: int = cfg(64, "most tokens generated per completion")
    seed: int = cfg(0, "base sampling seed; completion i of a batch is reproducible from it")
    enable_thinking: bool = cfg(False, "ask models whose chat template supports it to think first")

    def model_post_init(self, context: Any, /) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature: must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p: must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens: must be >= 1, got {self.max_new_tokens}")


@dataclass(frozen=True)
class Generation:
    """One completion and what it cost."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str = "stop"


@runtime_checkable
class ChatBackend(Protocol):
    """Completes a batch of chats. Implementations batch internally as they see fit."""

    model_id: str

    def chat(self, prompts: Sequence[Sequence[Message]], params: SamplingParams) -> list[Generation]:
        """Return one Generation per prompt, in order."""
        ...
