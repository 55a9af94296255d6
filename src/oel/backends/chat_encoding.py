"""Chats -> prompt token ids, one way for every in-process engine.

The HF and llama.cpp engines must feed a model the very same tokens for the same chat (their
answers are compared token by token), so both render the chat with the checkpoint's own chat
template and tokenize with its Hugging Face tokenizer, here.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from oel.trajectory import Message

log = logging.getLogger(__name__)


class ChatEncoder:
    """The chat template and tokenizer of one checkpoint."""

    def __init__(self, tokenizer: Any, model_id: str) -> None:
        if getattr(tokenizer, "chat_template", None) is None:
            raise ValueError(f"tokenizer of {model_id} has no chat template")
        self.tokenizer = tokenizer
        self.model_id = model_id
        self._template_thinks = "enable_thinking" in str(tokenizer.chat_template)
        self._warned_thinking = False

    def render(self, messages: Sequence[Message], enable_thinking: bool = False) -> str:
        """The prompt text: the chat template with the assistant turn opened."""
        kwargs: dict[str, Any] = {}
        if self._template_thinks:
            kwargs["enable_thinking"] = enable_thinking
        elif enable_thinking and not self._warned_thinking:
            log.warning("%s: chat template has no thinking switch; enable_thinking ignored", self.model_id)
            self._warned_thinking = True
        chat = [{"role": m.role, "content": m.content} for m in messages]
        return self.tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True, **kwargs)

    def encode(self, messages: Sequence[Message], enable_thinking: bool = False) -> list[int]:
        # The template already wrote any BOS it wants; adding special tokens would double it.
        return list(self.tokenizer(self.render(messages, enable_thinking), add_special_tokens=False)["input_ids"])

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)


def stop_token_ids(tokenizer: Any, generation_config: Any = None) -> frozenset[int]:
    """The checkpoint's end-of-turn tokens: its generation config's eos id(s) and the tokenizer's."""
    ids: set[int] = set()
    eos = getattr(generation_config, "eos_token_id", None)
    ids.update([eos] if isinstance(eos, int) else list(eos or []))
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    if not ids:
        raise ValueError("model and tokenizer define no end-of-sequence token")
    return frozenset(ids)
