"""llama.cpp generation on the CPU: the shipped GGUF itself, many chats decoded together.

On CPUs without native bf16 (AVX2 machines: most laptops and cloud VMs) the HF engine runs the
dequantized model in float32 and spends its time moving 4x more weight bytes than the
Q4_K_M file holds; llama.cpp computes on the quantized weights directly and decodes several
times faster. It is the engine of every stage that only reads the model: collection,
extraction, evaluation games and serving. Training stays on HF (llama.cpp cannot backpropagate).

What makes the answers comparable with the HF engine:
- the same prompt tokens (`ChatEncoder`: the checkpoint's chat template and HF tokenizer; llama.cpp
  is given token ids, never text) and the same detokenization;
- the same sampler (`sample_token`, per-row seeded), applied to llama.cpp's logits;
- the same weights: the base is the GGUF the HF model was dequantized from, and a trained model
  reaches the engine as a GGUF LoRA adapter holding every round's update (`oel.models.gguf_lora`).

How a call runs: prompts are cut into groups of at most `max_batch_size` rows that fit the KV
cache. The opening a group's prompts share (system text, rules; for the K extraction runs of one
step, the whole prompt) is computed once into sequence 0 and copied into each row's sequence;
it stays in sequence 0 for the next call, whose prompts usually open the same way. Each row's
remaining prompt tokens are then prefilled together, and every decoding step runs all
unfinished rows in one `llama_decode`.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from oel import progress
from oel.backends.base import Generation
from oel.backends.chat_encoding import ChatEncoder
from oel.backends.hf import ChatByRows, RowRequest
from oel.backends.prefix_cache import common_prefix_length
from oel.backends.sampling import RowSampling, sample_token
from oel.threads import cpu_threads

log = logging.getLogger(__name__)

DEFAULT_MAX_BATCH_SIZE = 8
DEFAULT_CONTEXT_TOKENS = 16_384
"""KV cells shared by all sequences (unified cache): the shared opening once, plus each row's rest."""
PREFILL_CHUNK_TOKENS = 512
"""Tokens per `llama_decode` call while prefilling (llama.cpp's logical and physical batch)."""
HEAD_SEQ = 0
"""The sequence that keeps the shared opening of the last call's prompts."""
MIN_SHARED_HEAD = 16
"""A shorter common opening is not worth a sequence copy."""


class EngineUnavailable(RuntimeError):
    """llama.cpp (the `llama_cpp` package) cannot be imported here."""


def llama_cpp_module() -> Any:
    """The `llama_cpp` module, or EngineUnavailable saying how to get it."""
    try:
        import llama_cpp
    except ImportError as e:
        raise EngineUnavailable(f"llama.cpp engine unavailable: cannot import llama_cpp ({e}); "
                                "install it with `make engine` (a source build, ~10 minutes on 2 cores)") from None
    return llama_cpp


def _quiet_logs(llama_cpp: Any) -> None:
    """Send llama.cpp's own stderr chatter nowhere (errors surface as return codes we check)."""
    @llama_cpp.llama_log_callback
    def _drop(level: int, text: bytes, user_data: Any) -> None:
        return None

    llama_cpp.llama_log_set(_drop, ctypes.c_void_p(0))
    _quiet_logs.callback = _drop  # type: ignore[attr-defined]  # keep the C callback alive


@dataclass
class _Row:
    index: int
    ids: list[int]
    request: RowRequest
    seq: int = 0
    new: list[int] = field(default_factory=list)
    logits: torch.Tensor | None = None
    gen: torch.Generator | None = None
    done: bool = False

    @property
    def sampling(self) -> RowSampling:
        p = self.request.params
        return RowSampling(p.temperature, p.top_p, p.top_k, self.request.seed)


class LlamaCppBackend(ChatByRows):
    """A ChatBackend (and scorer) over a GGUF model in llama.cpp, with an optional LoRA adapter."""

    def __init__(self, gguf_path: str | Path, tokenizer: Any, *, model_id: str, adapter: str | Path | None = None,
                 stop_ids: frozenset[int] | None = None, max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
                 context_tokens: int = DEFAULT_CONTEXT_TOKENS, threads: int | None = None,
                 exact: bool = False, model_config: Any = None,
                 hf_model: Callable[[], Any] | None = None) -> None:
        """`exact`: a float32 KV cache and attention without llama.cpp's flash kernels (which round Q, K
        and V to float16): the same numbers as a float32 HF model, for comparisons; slower.
        `model_config`: the model these weights are (its HF form: `reference_model`); `hf_model`: how to
        get that HF model if not by loading `model_config` (the loop shares the round's loaded model)."""
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size: must be >= 1, got {max_batch_size}")
        self.lib = llama_cpp_module()
        _quiet_logs(self.lib)
        self.lib.llama_backend_init()
        self.encoder = ChatEncoder(tokenizer, model_id)
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.model_config = model_config
        self._hf_model = hf_model
        self.gguf_path = Path(gguf_path)
        self.max_batch_size = max_batch_size
        self.threads = threads or cpu_threads()
        self.exact = exact
        mparams = self.lib.llama_model_default_params()
        self.llama_model = self.lib.llama_model_load_from_file(str(self.gguf_path).encode(), mparams)
        if not self.llama_model:
            raise ValueError(f"{self.gguf_path}: llama.cpp cannot load this GGUF file")
        self.vocab = self.lib.llama_model_get_vocab(self.llama_model)
        self.n_vocab = self.lib.llama_vocab_n_tokens(self.vocab)
        trained = self.lib.llama_model_n_ctx_train(self.llama_model)
        self.context_tokens = min(context_tokens, trained * (max_batch_size + 1))
        self.ctx = self._new_context()
        self.stop_ids = stop_ids if stop_ids is not None else self._eog_ids(tokenizer)
        self._head: list[int] = []
        self._adapter: Any = None
        self.adapter_path: Path | None = None
        self.set_adapter(adapter)

    # -- lifetime ------------------------------------------------------------------------
    def _new_context(self) -> Any:
        lib = self.lib
        cparams = lib.llama_context_default_params()
        cparams.n_ctx = self.context_tokens
        cparams.n_batch = cparams.n_ubatch = PREFILL_CHUNK_TOKENS
        cparams.n_seq_max = self.max_batch_size + 1  # the shared head + one per row
        cparams.kv_unified = True  # sequences share cells: a copied head costs no memory
        cparams.n_threads = cparams.n_threads_batch = self.threads
        cparams.no_perf = True
        if self.exact:
            cparams.type_k = cparams.type_v = lib.GGML_TYPE_F32
            cparams.flash_attn_type = lib.LLAMA_FLASH_ATTN_TYPE_DISABLED
        ctx = lib.llama_init_from_model(self.llama_model, cparams)
        if not ctx:
            raise ValueError(f"{self.gguf_path}: llama.cpp cannot create a context of {self.context_tokens} tokens")
        self.memory = lib.llama_get_memory(ctx)
        return ctx

    def close(self) -> None:
        """Free the context, adapter and model (also done at garbage collection)."""
        lib = getattr(self, "lib", None)
        if lib is None:
            return
        if getattr(self, "ctx", None):
            lib.llama_free(self.ctx)
            self.ctx = None
        if getattr(self, "_adapter", None):
            lib.llama_adapter_lora_free(self._adapter)
            self._adapter = None
        if getattr(self, "llama_model", None):
            lib.llama_model_free(self.llama_model)
            self.llama_model = None

    def __del__(self) -> None:
        self.close()

    def reference_model(self) -> Any:
        """The same weights as an HF model (`oel.models.LoadedModel`), for what needs exact logits of
        the trained weights (the meter) rather than llama.cpp's quantized kernels."""
        if self._hf_model is not None:
            return self._hf_model()
        if self.model_config is None:
            raise ValueError(f"{self.model_id}: no model config to load the HF form of these weights from")
        from oel.models import load_model

        return load_model(self.model_config)

    def set_adapter(self, path: str | Path | None) -> None:
        """Apply the GGUF LoRA adapter at `path` (None: the base model alone). Takes effect for
        the next call; the kept KV is dropped, since it was computed with the old weights."""
        lib = self.lib
        new = None
        if path is not None:
            new = lib.llama_adapter_lora_init(self.llama_model, str(path).encode())
            if not new:
                raise ValueError(f"{path}: llama.cpp cannot apply this LoRA adapter to {self.gguf_path.name}")
            arr = (lib.llama_adapter_lora_p_ctypes * 1)(new)
            scales = (ctypes.c_float * 1)(1.0)
            rc = lib.llama_set_adapters_lora(self.ctx, arr, 1, scales)
        else:
            rc = lib.llama_set_adapters_lora(self.ctx, None, 0, None)
        if rc != 0:
            raise RuntimeError(f"llama.cpp refused the adapter {path} (code {rc})")
        if self._adapter:
            lib.llama_adapter_lora_free(self._adapter)
        self._adapter, self.adapter_path = new, Path(path) if path is not None else None
        self._reset_memory()

    def _reset_memory(self) -> None:
        self.lib.llama_memory_clear(self.memory, True)
        self._head = []

    def _eog_ids(self, tokenizer: Any) -> frozenset[int]:
        """End-of-generation tokens: the GGUF's EOG set and the tokenizer's eos."""
        ids = {t for t in range(self.n_vocab) if self.lib.llama_vocab_is_eog(self.vocab, t)}
        if tokenizer.eos_token_id is not None:
            ids.add(int(tokenizer.eos_token_id))
        return frozenset(ids)

    # -- the ChatBackend interface (chat, chat_with_seeds: ChatByRows) -----------------------
    prefix_store = None
    """No HF prefix KV store here (the serving stack asks): the KV of a call's shared opening is kept in
    HEAD_SEQ instead."""

    def encode(self, messages: Sequence[Any], enable_thinking: bool = False) -> list[int]:
        """The prompt tokens this engine runs for `messages` (the serving stack counts them)."""
        return self.encoder.encode(messages, enable_thinking)

    def generate_rows(self, rows: Sequence[RowRequest]) -> list[Generation]:
        """Complete rows that may each carry their own settings (the server batches these)."""
        todo = [_Row(i, self.encoder.encode(r.messages, r.params.enable_thinking), r) for i, r in enumerate(rows)]
        # Sorting the token lists puts prompts that open alike side by side: a group shares more.
        todo.sort(key=lambda r: r.ids)
        results: list[Generation | None] = [None] * len(rows)
        for group in self._groups(todo):
            for row in self._generate_group(group):
                results[row.index] = self._finish(row)
        return [g for g in results if g is not None]

    def _groups(self, rows: list[_Row]) -> list[list[_Row]]:
        """Consecutive rows, at most max_batch_size a group, whose tokens fit the KV cache: the
        opening they share once, plus each row's rest and answer."""
        groups: list[list[_Row]] = []
        for row in rows:
            if self._cells([row]) > self.context_tokens:
                raise ValueError(f"prompt of {len(row.ids)} tokens + max_new_tokens "
                                 f"{row.request.params.max_new_tokens} exceed the engine's {self.context_tokens}")
            if (not groups or len(groups[-1]) >= self.max_batch_size
                    or self._cells(groups[-1] + [row]) > self.context_tokens):
                groups.append([])
            groups[-1].append(row)
        return groups

    @staticmethod
    def _cells(group: list[_Row]) -> int:
        """KV cells a group needs (its rows are sorted, so the first and last bound the shared opening)."""
        head = common_prefix_length([group[0].ids, group[-1].ids]) if len(group) > 1 else 0
        return head + sum(len(r.ids) - head + r.request.params.max_new_tokens for r in group)

    # -- one group ---------------------------------------------------------------------------
    def _generate_group(self, group: list[_Row]) -> list[_Row]:
        for seq in range(1, self.max_batch_size + 1):  # the previous group's rows
            self.lib.llama_memory_seq_rm(self.memory, seq, -1, -1)
        head = self._shared_head([r.ids for r in group])
        for seq, row in enumerate(group, start=1):
            row.seq = seq
            row.gen = torch.Generator().manual_seed(row.request.seed)
            if head:
                self.lib.llama_memory_seq_cp(self.memory, HEAD_SEQ, seq, 0, head)
        self._prefill([(row, head) for row in group])
        active = list(group)
        while active:
            for row in active:
                self._step(row)
            progress.add_tokens(len(active))
            active = [r for r in active if not r.done]
            if active:
                self._decode_next(active)
        return group

    def _shared_head(self, prompts: list[list[int]]) -> int:
        """Keep in HEAD_SEQ the opening all `prompts` share (reusing what it already holds);
        returns its length (0: too short to share)."""
        head = common_prefix_length(prompts)
        head = min(head, min(len(p) for p in prompts) - 1)  # every row keeps >= 1 token to prefill
        if head < MIN_SHARED_HEAD:  # nothing worth sharing: free the cells an older head holds
            self.lib.llama_memory_seq_rm(self.memory, HEAD_SEQ, -1, -1)
            self._head = []
            return 0
        kept = common_prefix_length([self._head, prompts[0][:head]]) if self._head else 0
        self.lib.llama_memory_seq_rm(self.memory, HEAD_SEQ, kept, -1)
        tokens = prompts[0][kept:head]
        for start in range(0, len(tokens), PREFILL_CHUNK_TOKENS):
            chunk = tokens[start:start + PREFILL_CHUNK_TOKENS]
            self._decode([(t, kept + start + j, HEAD_SEQ, False) for j, t in enumerate(chunk)])
        self._head = prompts[0][:head]
        return head

    def _prefill(self, rows: list[tuple[_Row, int]]) -> None:
        """Run each row's prompt after the shared head, many rows per llama_decode; keep each
        row's last-position logits. A row whose prompt an earlier row has too (the sampling seeds of
        one evaluation map) is not run: it takes a copy of that row's sequence and logits."""
        pending: list[tuple[int, int, int, bool]] = []
        owners: list[_Row | None] = []
        first_of: dict[tuple[int, ...], _Row] = {}
        repeats: list[tuple[_Row, _Row]] = []
        for row, head in rows:
            source = first_of.setdefault(tuple(row.ids), row)
            if source is not row:
                repeats.append((row, source))
                continue
            rest = row.ids[head:]
            for j, tok in enumerate(rest):
                last = j == len(rest) - 1
                pending.append((tok, head + j, row.seq, last))
                owners.append(row if last else None)
        for start in range(0, len(pending), PREFILL_CHUNK_TOKENS):
            chunk = pending[start:start + PREFILL_CHUNK_TOKENS]
            self._decode(chunk)
            for i, owner in enumerate(owners[start:start + PREFILL_CHUNK_TOKENS]):
                if owner is not None:
                    owner.logits = self._logits(i)
        for row, source in repeats:
            self.lib.llama_memory_seq_cp(self.memory, source.seq, row.seq, 0, len(row.ids))
            assert source.logits is not None
            row.logits = source.logits.clone()

    def _step(self, row: _Row) -> None:
        assert row.logits is not None and row.gen is not None
        token = sample_token(row.logits, row.sampling, row.gen)
        row.new.append(token)
        if row.request.on_token is not None:
            try:
                row.request.on_token(len(row.new) - 1, token)
            except Exception:  # noqa: BLE001 - one reader's failure is not its batch-mates'
                log.exception("streaming callback failed; the row's stream stops")
                object.__setattr__(row.request, "on_token", None)
        gone = row.request.cancelled is not None and row.request.cancelled()  # its client has gone
        row.done = gone or token in self.stop_ids or len(row.new) >= row.request.params.max_new_tokens

    def _decode_next(self, active: list[_Row]) -> None:
        self._decode([(r.new[-1], len(r.ids) + len(r.new) - 1, r.seq, True) for r in active])
        for i, row in enumerate(active):
            row.logits = self._logits(i)

    # -- llama.cpp calls ----------------------------------------------------------------------
    def _decode(self, tokens: list[tuple[int, int, int, bool]]) -> None:
        """One llama_decode of (token, position, sequence, wants logits) entries."""
        lib = self.lib
        batch = lib.llama_batch_init(len(tokens), 0, 1)
        try:
            for i, (tok, pos, seq, want) in enumerate(tokens):
                batch.token[i] = tok
                batch.pos[i] = pos
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = seq
                batch.logits[i] = want
            batch.n_tokens = len(tokens)
            rc = lib.llama_decode(self.ctx, batch)
        finally:
            lib.llama_batch_free(batch)
        if rc != 0:
            raise RuntimeError(f"llama_decode failed with code {rc} ({len(tokens)} tokens; KV cache full?)")

    def _logits(self, i: int) -> torch.Tensor:
        ptr = self.lib.llama_get_logits_ith(self.ctx, i)
        return torch.from_numpy(np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).copy())

    def _finish(self, row: _Row) -> Generation:
        finish = "stop" if row.new and row.new[-1] in self.stop_ids else "length"
        text_ids = row.new[:-1] if finish == "stop" else row.new
        # Counted like vLLM and llama.cpp: every generated token, the stop token included.
        return Generation(text=self.encoder.decode(text_ids), prompt_tokens=len(row.ids),
                          completion_tokens=len(row.new), finish_reason=finish)

    # -- scoring ------------------------------------------------------------------------------
    def token_logprobs(self, ids: Sequence[int], start: int) -> list[float]:
        """log p(ids[t] | ids[:t]) for t in [start, len(ids)): what this engine's weights say
        of a given continuation (the engines' agreement tests and the meter's cross-check)."""
        if not 1 <= start < len(ids):
            raise ValueError(f"start: expected 1 <= start < {len(ids)}, got {start}")
        self._reset_memory()
        out: list[float] = []
        positions = list(range(len(ids) - 1))
        for s in range(0, len(positions), PREFILL_CHUNK_TOKENS):
            chunk = positions[s:s + PREFILL_CHUNK_TOKENS]
            self._decode([(ids[p], p, HEAD_SEQ, p + 1 >= start) for p in chunk])
            for i, p in enumerate(chunk):
                if p + 1 >= start:
                    out.append(float(torch.log_softmax(self._logits(i).double(), -1)[ids[p + 1]]))
        self._reset_memory()
        return out
