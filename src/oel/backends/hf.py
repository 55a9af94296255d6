"""In-process Hugging Face generation: many chats per forward pass.

With the ~3-token answers small models give in these games, the cost of a turn is the
prompt prefill (docs/method.md), so throughput comes from batching prompts of many concurrent
episodes into one padded forward pass. Prompts are LEFT-padded (new tokens are appended
on the right of every row), sorted by length so that each micro-batch wastes little on
padding, and cut into micro-batches of at most `max_batch_size` rows and
`max_batch_tokens` padded prompt tokens so that the prefill activations and KV cache stay
within memory. Only the last position's logits are computed
(`generate` asks the model for `logits_to_keep=1`), never the full-vocabulary logits of
a long prompt.

Sampling is per-row seeded (see :mod:`oel.backends.sampling`): the random draws of
completion i of a `chat` call depend on `params.seed` and i alone, whatever else shares its
batch. Its logits do not: a padded batch rounds differently from a row alone. At float32 that
is below 1e-4 of a logit and left every tested text unchanged; at bf16 it is 0.6-0.7 and
changes sampled text (measured in docs/collection.md, "Batching and identical answers").

With a prefix store (:mod:`oel.backends.prefix_cache`, on by default), the KV of every
processed row is kept, and a prompt that extends an earlier one (the next turn of an
episode) or shares the opening of a call's other prompts (the system text and rules) only
runs its new tokens. A batch then has the layout `[pad | reused KV | pad | new tokens]` per
row: the reused KV is copied into a padded cache, the attention mask has holes, and
positions are counted over real tokens only, exactly as in a fresh prefill. The results
equal the fresh computation up to floating-point summation order.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from oel import progress
from oel.backends.base import Generation, SamplingParams
from oel.backends.chat_encoding import ChatEncoder, stop_token_ids
from oel.backends.prefix_cache import (DEFAULT_PREFIX_CACHE_BYTES, NO_MATCH, PrefixKVStore, PrefixMatch,
                                      common_prefix_length)
from oel.backends.sampling import PerRowSampler, RowSampling, check_row_seeds, row_seeds
from oel.models import load_model
from oel.models.kv_cache import cache_arg
from oel.trajectory import Message

log = logging.getLogger(__name__)

CANCELLED = "cancelled"
"""The finish_reason of a row stopped by RowRequest.cancelled (nobody reads it: its client has gone)."""
DEFAULT_MAX_BATCH_SIZE = 16
DEFAULT_MAX_BATCH_TOKENS = 32_768
"""Padded prompt tokens per forward pass: bounds prefill memory when prompts are long."""


@dataclass(frozen=True)
class RowRequest:
    """One completion to produce: its chat, its settings, and its own sampling seed."""

    messages: Sequence[Message]
    params: SamplingParams
    seed: int
    on_token: Callable[[int, int], None] | None = field(default=None, compare=False)
    """Called from the generating thread with (step, token id) as each token is sampled (streaming);
    the stop token is passed too, nothing after it or beyond max_new_tokens."""
    cancelled: Callable[[], bool] | None = field(default=None, compare=False)
    """Polled after each sampled token: once true, this row stops there (its client has gone) while
    its batch-mates go on; a batch whose rows have all stopped ends at once."""


@dataclass(frozen=True)
class _Encoded:
    index: int
    ids: list[int]
    request: RowRequest
    match: PrefixMatch = field(default_factory=lambda: NO_MATCH)

    @property
    def new_tokens(self) -> int:
        return len(self.ids) - self.match.length


class ChatByRows:
    """`chat` and `chat_with_seeds` for an engine that completes `RowRequest`s (`generate_rows`)."""

    def generate_rows(self, rows: Sequence[RowRequest]) -> list[Generation]:
        raise NotImplementedError

    def chat(self, prompts: Sequence[Sequence[Message]], params: SamplingParams) -> list[Generation]:
        """Complete every chat; completion i is sampled with seed derive_seed(params.seed, i)."""
        return self.chat_with_seeds(prompts, params, row_seeds(params.seed, len(prompts)))

    def chat_with_seeds(self, prompts: Sequence[Sequence[Message]], params: SamplingParams,
                        seeds: Sequence[int]) -> list[Generation]:
        """Like `chat`, but completion i is sampled with `seeds[i]` (collection seeds per episode)."""
        check_row_seeds(prompts, seeds)
        return self.generate_rows([RowRequest(p, params, s) for p, s in zip(prompts, seeds)])


class HFBackend(ChatByRows):
    """A ChatBackend over a loaded `transformers` causal LM and its tokenizer.

    The model is used as given (dtype and device included): the loader decides bf16,
    and the consolidation stage can hand the very model it is training -- with
    `prefix_cache_bytes=0`, since stored KV goes stale when the weights change.
    """

    def __init__(self, model: Any, tokenizer: Any, *, model_id: str,
                 max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
                 max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
                 prefix_cache_bytes: int = DEFAULT_PREFIX_CACHE_BYTES, model_config: Any = None) -> None:
        """`model_config`: how the model was loaded (an `oel.models.ModelConfig`), where known: what a
        stage given this backend records as its model (an evaluation's record)."""
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size: must be >= 1, got {max_batch_size}")
        if max_batch_tokens < 1:
            raise ValueError(f"max_batch_tokens: must be >= 1, got {max_batch_tokens}")
        self.encoder = ChatEncoder(tokenizer, model_id)
        self.model = model
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.model_config = model_config
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        self.pad_id = _pad_token_id(tokenizer)
        self.stop_ids = stop_token_ids(tokenizer, getattr(model, "generation_config", None))
        self.prefix_store = PrefixKVStore(max_bytes=prefix_cache_bytes) if prefix_cache_bytes > 0 else None

    @classmethod
    def from_model_config(cls, model_cfg: Any, *, max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
                          max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
                          prefix_cache_bytes: int = DEFAULT_PREFIX_CACHE_BYTES) -> "HFBackend":
        """Load a model preset or directory through `oel.models` and wrap it."""
        lm = load_model(model_cfg)
        return cls(lm.model, lm.tokenizer, model_id=lm.model_id, max_batch_size=max_batch_size,
                   max_batch_tokens=max_batch_tokens, prefix_cache_bytes=prefix_cache_bytes, model_config=lm.config)

    # -- the ChatBackend interface (chat, chat_with_seeds: ChatByRows) -----------------------
    def generate_rows(self, rows: Sequence[RowRequest]) -> list[Generation]:
        """Complete rows that may each carry their own settings (the server batches these)."""
        encoded = [_Encoded(i, self.encode(r.messages, r.params.enable_thinking), r) for i, r in enumerate(rows)]
        waves = [encoded]
        if self.prefix_store is not None:
            self._prefill_shared_head([e.ids for e in encoded])
            waves = repeats_last(encoded)
        results: list[Generation | None] = [None] * len(rows)
        for wave in waves:
            if self.prefix_store is not None:  # a repeat finds its prompt stored by the wave before
                wave = [_Encoded(e.index, e.ids, e.request, self.prefix_store.lookup(e.ids)) for e in wave]
            # Longest work first; with reuse, the work is the tokens still to run.
            wave.sort(key=lambda e: (e.new_tokens, len(e.ids)), reverse=True)
            for batch in self._micro_batches(wave):
                gens = self._generate_batch(batch)
                progress.add_tokens(sum(g.completion_tokens for g in gens))
                for item, gen in zip(batch, gens):
                    results[item.index] = gen
        return [g for g in results if g is not None]

    @property
    def context_tokens(self) -> int | None:
        """The most tokens (prompt + answer) the model attends over, from its config; None if unknown."""
        n = getattr(getattr(self.model, "config", None), "max_position_embeddings", None)
        return int(n) if isinstance(n, int) and n > 0 else None

    def _micro_batches(self, encoded: list[_Encoded]) -> list[list[_Encoded]]:
        """Cut length-sorted (longest first) rows into batches within both row and token limits.

        A batch's padded size is at most rows x its first (longest) row; a single row over the
        token budget still runs, alone.
        """
        batches: list[list[_Encoded]] = []
        for item in encoded:
            cur = batches[-1] if batches else None
            if (cur is None or len(cur) >= self.max_batch_size
                    or (len(cur) + 1) * max(len(cur[0].ids), len(item.ids)) > self.max_batch_tokens):
                batches.append([item])
            else:
                cur.append(item)
        return batches

    # -- internals -----------------------------------------------------------------------
    def render(self, messages: Sequence[Message], enable_thinking: bool = False) -> str:
        """The prompt text: the chat template with the assistant turn opened."""
        return self.encoder.render(messages, enable_thinking)

    def encode(self, messages: Sequence[Message], enable_thinking: bool = False) -> list[int]:
        return self.encoder.encode(messages, enable_thinking)

    def _generate_batch(self, batch: Sequence[_Encoded]) -> list[Generation]:
        from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

        past = max(e.match.length for e in batch)
        width = past + max(e.new_tokens for e in batch)
        ids_BW = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        mask_BW = torch.zeros((len(batch), width), dtype=torch.long)
        for b, e in enumerate(batch):  # [pad | reused | pad | new]: every row ends at the last column
            reused = e.match.length
            ids_BW[b, past - reused:past] = torch.tensor(e.ids[:reused], dtype=torch.long)
            mask_BW[b, past - reused:past] = 1
            ids_BW[b, width - e.new_tokens:] = torch.tensor(e.ids[reused:], dtype=torch.long)
            mask_BW[b, width - e.new_tokens:] = 1
        max_new = max(e.request.params.max_new_tokens for e in batch)
        sampler = PerRowSampler([
            RowSampling(e.request.params.temperature, e.request.params.top_p, e.request.params.top_k, e.request.seed)
            for e in batch
        ])
        # A fresh config: the checkpoint's own generation defaults (repetition penalty,
        # sampling knobs) must not silently change what the caller asked for.
        gen_cfg = GenerationConfig(do_sample=False, max_new_tokens=max_new, pad_token_id=self.pad_id,
                                   eos_token_id=list(self.stop_ids))
        device = _model_device(self.model)
        cache = self._padded_cache(batch, past, device) if self.prefix_store is not None else None
        streaming = any(e.request.on_token is not None for e in batch)
        streamer = _RowStreamer([e.request for e in batch], self.stop_ids) if streaming else None
        cancel = _CancelledRows([e.request for e in batch])
        with torch.inference_mode():
            out_BT = self.model.generate(input_ids=ids_BW.to(device), attention_mask=mask_BW.to(device),
                                         generation_config=gen_cfg, **cache_arg(cache), streamer=streamer,
                                         logits_processor=LogitsProcessorList([sampler]),
                                         stopping_criteria=StoppingCriteriaList([cancel]))
        new_BT = out_BT[:, width:].cpu()
        gens = [self._finish(e, new_BT[b].tolist(), cancel.stopped_at[b]) for b, e in enumerate(batch)]
        if cache is not None:
            self._store_rows(batch, gens, cache, mask_BW, new_BT)
        return gens

    def _padded_cache(self, batch: Sequence[_Encoded], past: int, device: torch.device) -> Any:
        """A DynamicCache holding each row's reused KV right-aligned in `past` columns (zeros before)."""
        from transformers import DynamicCache

        config = getattr(self.model, "config", None)
        if past == 0:
            return DynamicCache(config=config)
        template = next(e.match.entry for e in batch if e.match.entry is not None)
        layers = []
        for layer, (k_ref, v_ref) in enumerate(template.kv):
            k_BHPD = k_ref.new_zeros((len(batch), k_ref.shape[0], past, k_ref.shape[2]), device=device)
            v_BHPD = v_ref.new_zeros((len(batch), v_ref.shape[0], past, v_ref.shape[2]), device=device)
            for b, e in enumerate(batch):
                if e.match.entry is not None:
                    k_HLD, v_HLD = e.match.entry.kv[layer]
                    k_BHPD[b, :, past - e.match.length:] = k_HLD[:, :e.match.length]
                    v_BHPD[b, :, past - e.match.length:] = v_HLD[:, :e.match.length]
            layers.append((k_BHPD, v_BHPD))
        return DynamicCache(ddp_cache_data=layers, config=config)

    def _store_rows(self, batch: Sequence[_Encoded], gens: Sequence[Generation], cache: Any,
                    mask_BW: torch.Tensor, new_BT: torch.Tensor) -> None:
        """Keep each row's KV (prompt + the answer tokens whose KV exists) for later prompts.

        `generate` never runs the last token it samples, so KV exists for all but the final step.
        """
        assert self.prefix_store is not None
        steps = new_BT.shape[1]
        width = mask_BW.shape[1]
        for b, (e, gen) in enumerate(zip(batch, gens)):
            kept = min(gen.completion_tokens, steps - 1)
            positions = torch.cat([mask_BW[b].nonzero().squeeze(1), torch.arange(width, width + kept)])
            positions = positions.to(cache.layers[0].keys.device)
            kv = [(layer.keys[b][:, positions].clone(),
                   layer.values[b][:, positions].clone()) for layer in cache.layers]
            self.prefix_store.add(e.ids + new_BT[b, :kept].tolist(), kv, supersedes=e.match.entry)

    def _prefill_shared_head(self, prompts: Sequence[Sequence[int]]) -> None:
        """Run the opening all of a call's prompts share once, so that every row can reuse it.

        Skipped when the store already holds (almost) all of it, e.g. from an earlier call.
        """
        assert self.prefix_store is not None
        if len(prompts) < 2:
            return
        head = common_prefix_length(prompts)
        head = min(head, min(len(p) for p in prompts) - 1)
        if head < self.prefix_store.min_tokens:
            return
        known = self.prefix_store.peek(prompts[0][:head + 1])
        if known >= head:
            return
        from transformers import DynamicCache

        device = _model_device(self.model)
        cache = DynamicCache(config=getattr(self.model, "config", None))
        ids_1H = torch.tensor([list(prompts[0][:head])], dtype=torch.long, device=device)
        with torch.inference_mode():
            self.model(input_ids=ids_1H, attention_mask=torch.ones_like(ids_1H), **cache_arg(cache),
                       use_cache=True, logits_to_keep=1)
        kv = [(layer.keys[0].clone(), layer.values[0].clone()) for layer in cache.layers]
        self.prefix_store.add(list(prompts[0][:head]), kv, shared=True)

    def _finish(self, item: _Encoded, new_ids: list[int], cancelled_at: int | None = None) -> Generation:
        """Cut a row at its first stop token, its own max_new_tokens, or where it was cancelled; count
        what was generated."""
        limit = item.request.params.max_new_tokens if cancelled_at is None else cancelled_at
        ids = new_ids[:limit]
        finish = "length" if cancelled_at is None else CANCELLED
        for j, tok in enumerate(ids):
            if tok in self.stop_ids:
                ids, finish = ids[: j + 1], "stop"
                break
        text_ids = ids[:-1] if finish == "stop" else ids
        text = self.tokenizer.decode(text_ids, skip_special_tokens=False)
        # Counted like vLLM and llama.cpp: every generated token, the stop token included.
        return Generation(text=text, prompt_tokens=len(item.ids), completion_tokens=len(ids), finish_reason=finish)


class _CancelledRows:
    """A transformers stopping criterion: a row whose `cancelled()` turns true is finished there;
    `stopped_at[b]` is how many tokens it had (None: never cancelled)."""

    def __init__(self, rows: Sequence[RowRequest]) -> None:
        self.rows = rows
        self.stopped_at: list[int | None] = [None] * len(rows)
        self.steps = 0

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        self.steps += 1
        for b, row in enumerate(self.rows):
            if self.stopped_at[b] is None and row.cancelled is not None and row.cancelled():
                self.stopped_at[b] = self.steps
        return torch.tensor([s is not None for s in self.stopped_at], dtype=torch.bool, device=input_ids.device)


class _RowStreamer:
    """A transformers streamer that hands each row's new token to that row's `on_token`.

    `generate` calls `put` once with the prompt ids (B, W), then once per step with the
    sampled ids (B,). A row stops receiving after its stop token or its own max_new_tokens
    (the batch runs to the longest row's limit). A failing callback is logged, never allowed
    to fail the batch its row shares with others.
    """

    def __init__(self, rows: Sequence[RowRequest], stop_ids: frozenset[int]) -> None:
        self.rows = rows
        self.stop_ids = stop_ids
        self.steps = [0] * len(rows)
        self.done = [r.on_token is None for r in rows]
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        for b, token in enumerate(value.reshape(-1).tolist()):
            row = self.rows[b]
            if self.done[b] or (row.cancelled is not None and row.cancelled()):
                self.done[b] = True
                continue
            try:
                row.on_token(self.steps[b], token)  # type: ignore[misc]
            except Exception:  # noqa: BLE001 - one reader's failure is not its batch-mates'
                log.exception("streaming callback failed; the row's stream stops")
                self.done[b] = True
            self.steps[b] += 1
            if token in self.stop_ids or self.steps[b] >= row.params.max_new_tokens:
                self.done[b] = True

    def end(self) -> None:
        return None


def repeats_last(encoded: list[_Encoded]) -> list[list[_Encoded]]:
    """[first occurrences, repeats]: rows whose prompt another row of the call has too (the sampling seeds
    of one evaluation map) run after it, to find its KV in the prefix store and compute one token each."""
    seen: set[tuple[int, ...]] = set()
    firsts: list[_Encoded] = []
    repeats: list[_Encoded] = []
    for e in encoded:
        key = tuple(e.ids)
        (repeats if key in seen else firsts).append(e)
        seen.add(key)
    return [firsts, repeats] if repeats else [firsts]


def _pad_token_id(tokenizer: Any) -> int:
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return int(tid)
    raise ValueError("tokenizer has neither a pad nor an eos token to pad with")


def _model_device(model: Any) -> torch.device:
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError):
        return torch.device("cpu")
