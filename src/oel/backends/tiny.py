"""A tiny random chat model for tests and smoke runs: no download, built in a second.

A byte-level tokenizer (256 byte tokens + ChatML specials, with a chat template that
honours `enable_thinking`) and a two-layer Qwen2 with random weights. It writes nothing
sensible, but it exercises every code path of generation, serving and collection exactly
as a real checkpoint does. `save_tiny_chat_model(dir)` writes it as a normal Hugging Face
directory, loadable by path (e.g. from a subprocess or `oel serve`).
"""

from __future__ import annotations

import os
from typing import Any

BYTE_VOCAB = 256
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
TINY_HIDDEN = 64
TINY_LAYERS = 2
TINY_HEADS = 4
TINY_KV_HEADS = 2
TINY_INTERMEDIATE = 128
TINY_MAX_POSITIONS = 4096
# Wider than the usual 0.02 so that the random model writes varied text, not one repeated byte.
TINY_INIT_STD = 0.3

CHATML_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n{% endif %}"
    "{% endif %}"
)


def tiny_tokenizer() -> Any:
    """A byte-level BPE tokenizer without merges: every byte is a token, specials on top."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   additional_special_tokens=["<|im_start|>"])
    fast.chat_template = CHATML_TEMPLATE
    return fast


MERGES_CORPUS = ("You hold 16 and the dealer shows 9. [Hit] or [Stand]? The lessons say: stand on a strong "
                 "hand, hit on a weak one. Answer with one bracketed move. ") * 4
"""What the merging tokenizer learns its merges from (fixed: the tokenizer is the same on every machine)."""
MERGING_VOCAB = 320


def tiny_merging_tokenizer() -> Any:
    """A byte-level BPE tokenizer with real merges, learned from `MERGES_CORPUS`: what a GGUF vocabulary
    needs (llama.cpp and transformers' GGUF reader both refuse a BPE vocabulary without merges)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=MERGING_VOCAB, special_tokens=list(SPECIAL_TOKENS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([MERGES_CORPUS], trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   additional_special_tokens=["<|im_start|>"])
    fast.chat_template = CHATML_TEMPLATE
    return fast


def tiny_chat_model(seed: int = 0, dtype: Any = None, tokenizer: Any = None) -> tuple[Any, Any]:
    """(model, tokenizer): a random two-layer Qwen2 sized to the tiny tokenizer (or to `tokenizer`)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = tokenizer if tokenizer is not None else tiny_tokenizer()
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=TINY_HIDDEN, intermediate_size=TINY_INTERMEDIATE,
        num_hidden_layers=TINY_LAYERS, num_attention_heads=TINY_HEADS, num_key_value_heads=TINY_KV_HEADS,
        max_position_embeddings=TINY_MAX_POSITIONS, tie_word_embeddings=True, initializer_range=TINY_INIT_STD,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    if dtype is not None:
        model = model.to(dtype)
    return model.eval(), tokenizer


def save_tiny_chat_model(directory: str | os.PathLike, seed: int = 0) -> str:
    """Write the tiny model + tokenizer as a Hugging Face directory; returns its path."""
    model, tokenizer = tiny_chat_model(seed)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)
