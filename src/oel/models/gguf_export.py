"""A Hugging Face Qwen2 model written as a float32 GGUF file that llama.cpp runs.

The presets already ship as GGUF; this is for the rest: a model built in a test (the tiny random
Qwen2 on which the engines are compared exactly) or a user's own Qwen2-family checkpoint. Weights
are written unquantized, so llama.cpp computes with the very numbers HF holds; the tokenizer is
written as a byte-level BPE vocabulary (the engine is given token ids by the HF tokenizer, so
llama.cpp's own tokenizer is only loaded, never used to encode).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from oel.models.gguf_lora import gguf_name

ARCH = "qwen2"
TOKEN_NORMAL, TOKEN_CONTROL = 1, 3
"""llama.cpp's token types (gguf.TokenType.NORMAL / CONTROL)."""


def write_qwen2_gguf(model: Any, tokenizer: Any, out: str | os.PathLike) -> Path:
    """Write `model` (a transformers Qwen2ForCausalLM) and `tokenizer` as a GGUF file, atomically."""
    import gguf

    cfg = model.config
    if getattr(cfg, "model_type", None) != ARCH:
        raise ValueError(f"model_type: expected {ARCH!r}, got {getattr(cfg, 'model_type', None)!r}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".export.", suffix=".gguf", dir=out.parent)
    os.close(fd)
    try:
        w = gguf.GGUFWriter(tmp, arch=ARCH)
        w.add_name("oel export")
        w.add_context_length(cfg.max_position_embeddings)
        w.add_embedding_length(cfg.hidden_size)
        w.add_block_count(cfg.num_hidden_layers)
        w.add_feed_forward_length(cfg.intermediate_size)
        w.add_head_count(cfg.num_attention_heads)
        w.add_head_count_kv(cfg.num_key_value_heads)
        w.add_rope_freq_base(float(getattr(cfg, "rope_theta", None) or cfg.rope_parameters["rope_theta"]))
        w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
        w.add_file_type(gguf.LlamaFileType.ALL_F32)
        _add_tokenizer(w, tokenizer, vocab_size=cfg.vocab_size)
        for name, tensor in model.state_dict().items():
            if name == "lm_head.weight" and cfg.tie_word_embeddings:
                continue  # llama.cpp reuses token_embd when there is no output tensor
            w.add_tensor(gguf_name(name, ARCH, cfg.num_hidden_layers),
                         np.ascontiguousarray(tensor.detach().float().cpu().numpy()))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        os.replace(tmp, out)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return out


def _add_tokenizer(w: Any, tokenizer: Any, *, vocab_size: int) -> None:
    """The vocabulary (padded to the embedding's rows), its merges, specials and chat template."""
    vocab = tokenizer.get_vocab()
    by_id = {i: t for t, i in vocab.items()}
    special = set(tokenizer.all_special_ids)
    tokens = [by_id.get(i, f"[PAD{i}]") for i in range(vocab_size)]
    types = [TOKEN_CONTROL if (i in special or i not in by_id) else TOKEN_NORMAL for i in range(vocab_size)]
    model_json = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model_json.get("merges", [])]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    if not merges:
        raise ValueError("tokenizer: a BPE vocabulary without merges cannot be written to GGUF (llama.cpp and "
                         "transformers' GGUF reader refuse it); use a tokenizer with merges")
    w.add_token_merges(merges)
    w.add_token_scores([0.0] * vocab_size)
    w.add_eos_token_id(tokenizer.eos_token_id)
    if tokenizer.pad_token_id is not None:
        w.add_pad_token_id(tokenizer.pad_token_id)
    w.add_add_bos_token(False)
    if tokenizer.chat_template:
        w.add_chat_template(tokenizer.chat_template)
