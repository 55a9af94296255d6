"""Scoring response tokens: logits only where the loss needs them, and batched sampling.

The teacher's prompt carries the whole game history plus the knowledge (hundreds to
thousands of tokens) while a response is a handful of tokens. A plain `model(...)` call
would project every prompt position onto the ~150k-token vocabulary ([batch, prompt_len,
vocab] floats: gigabytes for nothing). We instead run the backbone (the transformer
without its output head), keep the last layer's hidden states at the positions that
PREDICT response tokens (position j-1 predicts token j), and apply the output head to
those rows only. Logits come back packed, `[N, V]` with N = total response tokens of the
batch in row-major order, so a student batch and a teacher batch holding the same responses
(behind different prompts) line up row for row.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from oel.backends.prefix_cache import common_prefix_length
from oel.backends.sampling import PerRowSampler
from oel.models.kv_cache import cache_arg

Tensor = torch.Tensor


@dataclass(frozen=True)
class PackedBatch:
    """prompt + response rows, padded; `response_mask_BT` marks the response tokens."""

    input_ids_BT: Tensor
    attention_mask_BT: Tensor
    response_mask_BT: Tensor

    @property
    def response_tokens_N(self) -> Tensor:
        """The response token ids, packed in the same order as `response_logits`' rows."""
        return self.input_ids_BT[self.response_mask_BT]


def pack(prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], *, pad_id: int,
         side: str = "right") -> PackedBatch:
    """Concatenate each prompt with its response and pad the rows to one width.

    Right padding is the default for scoring; left padding is accepted too (position ids
    are derived from the attention mask, so either layout gives the same logits).
    """
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    rows = [list(p) + list(r) for p, r in zip(prompts, responses)]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(rows), width), dtype=torch.long)
    resp = torch.zeros((len(rows), width), dtype=torch.bool)
    for b, (p, r) in enumerate(zip(prompts, responses)):
        start = 0 if side == "right" else width - len(p) - len(r)
        ids[b, start:start + len(p) + len(r)] = torch.tensor(list(p) + list(r), dtype=torch.long)
        attn[b, start:start + len(p) + len(r)] = 1
        resp[b, start + len(p):start + len(p) + len(r)] = True
    return PackedBatch(ids, attn, resp)


def causal_lm_parts(model: Any) -> tuple[Any, Any]:
    """(backbone, output head) of a causal LM, looking through a peft wrapper.

    With peft the LoRA layers live inside the backbone's modules, so calling the backbone
    applies them (or not, under `disable_adapter()`).
    """
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = lm.get_output_embeddings()
    backbone = lm.get_decoder() if hasattr(lm, "get_decoder") else None
    if backbone is None or head is None:
        raise ValueError(f"{type(lm).__name__}: cannot find the backbone and output head of this model")
    return backbone, head


def position_ids_from_mask(attention_mask_BT: Tensor) -> Tensor:
    """0, 1, 2, ... over the real tokens of each row, whatever side the padding is on."""
    return (attention_mask_BT.long().cumsum(-1) - 1).clamp(min=0)


def response_logits(model: Any, batch: PackedBatch) -> Tensor:
    """Logits predicting each response token, packed `[N, V]` (N = response tokens in batch).

    Never materialises logits at prompt positions. Row n is the distribution over the
    n-th response token given everything before it. `model` is a causal LM (or peft
    wrapper), or a `ResponseScorer` around one (then its own forward runs, so that the
    hooks of DDP/FSDP wrappers fire).
    """
    if isinstance(model, ResponseScorer):
        return model(batch.input_ids_BT, batch.attention_mask_BT, batch.response_mask_BT)
    backbone, head = causal_lm_parts(model)
    device = head.weight.device
    attn = batch.attention_mask_BT.to(device)
    out = backbone(input_ids=batch.input_ids_BT.to(device), attention_mask=attn,
                   position_ids=position_ids_from_mask(attn), use_cache=False)
    hidden_BTH = out.last_hidden_state
    predicts_response_BT = batch.response_mask_BT[:, 1:].to(device)
    if bool(batch.response_mask_BT[:, 0].any()):
        raise ValueError("a row starts with a response token: nothing predicts it (empty prompt?)")
    hidden_NH = hidden_BTH[:, :-1][predicts_response_BT]
    return head(hidden_NH)


class ResponseScorer(torch.nn.Module):
    """A module whose forward IS `response_logits` of the causal LM it holds.

    `response_logits` calls the backbone and the output head separately, bypassing the
    model's own forward; DDP and FSDP only see what passes through a module's forward
    (DDP prepares its gradient reduction there, FSDP gathers the root's parameters there).
    Wrapping this module instead of the LM makes the scoring pass such a forward. It also
    exposes `generate` and `disable_adapter`, so samplers and the teacher can use it
    wherever they would use the LM.
    """

    def __init__(self, lm: Any) -> None:
        super().__init__()
        self.lm = lm

    def forward(self, input_ids_BT: Tensor, attention_mask_BT: Tensor, response_mask_BT: Tensor,
                head_tokens: int = 0) -> Tensor:
        """`response_logits`; with `head_tokens` > 0 (right-padded rows that all open with the same
        `head_tokens` tokens), the head runs once and its KV is shared by the rows, gradients included."""
        batch = PackedBatch(input_ids_BT, attention_mask_BT, response_mask_BT)
        if head_tokens > 0:
            return response_logits_shared_head(self.lm, batch, head_tokens)
        return response_logits(self.lm, batch)

    def generate(self, **kwargs: Any) -> Any:
        return self.lm.generate(**kwargs)

    def disable_adapter(self) -> Any:
        return self.lm.disable_adapter()


def model_device(model: Any) -> torch.device:
    """Where the model's (local shard of its) weights live: inputs go there."""
    return next(model.parameters()).device


def full_logits_reference(model: Any, batch: PackedBatch) -> Tensor:
    """The naive way (whole-sequence logits, then select): for tests only."""
    attn = batch.attention_mask_BT
    logits_BTV = model(input_ids=batch.input_ids_BT, attention_mask=attn,
                       position_ids=position_ids_from_mask(attn), use_cache=False).logits
    return logits_BTV[:, :-1][batch.response_mask_BT[:, 1:]]


def generate_ids(model: Any, prompts: Sequence[Sequence[int]], samplers: Sequence[Any], *, pad_id: int,
                 stop_ids: frozenset[int], max_new_tokens: int, synced: bool = False) -> list[list[int]]:
    """Sample one continuation per prompt (left-padded batch); each cut after its first stop token.

    `samplers` are `oel.backends.sampling.RowSampling`s, one per row: each row draws from its
    own seeded stream, so a response's randomness depends on its seed only, not on its
    batch-mates; with float32 logits (computed here) a resumed run, or a run split over ranks,
    samples what the uninterrupted single-process one did, up to the rare token a batched
    kernel's rounding flips (docs/collection.md, "Batching and identical answers").
    """
    from transformers import GenerationConfig, LogitsProcessorList

    width = max(len(p) for p in prompts)
    ids_BT = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    attn_BT = torch.zeros((len(prompts), width), dtype=torch.long)
    for b, p in enumerate(prompts):
        ids_BT[b, width - len(p):] = torch.tensor(list(p), dtype=torch.long)
        attn_BT[b, width - len(p):] = 1
    # A fresh config so the checkpoint's own defaults (top_k=20, repetition penalty, ...)
    # cannot change the distribution we train on.
    gen_cfg = GenerationConfig(do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=pad_id,
                               eos_token_id=sorted(stop_ids))
    device = model_device(model)
    # no_grad, not inference_mode: FSDP's gathered weights must stay usable by autograd later.
    # `synced`: every rank keeps stepping until all ranks are done (FSDP gathers weights in
    # every forward, so all ranks must run the same number of them).
    with torch.no_grad():
        out_BT = model.generate(input_ids=ids_BT.to(device), attention_mask=attn_BT.to(device),
                                generation_config=gen_cfg, synced_gpus=synced,
                                logits_processor=LogitsProcessorList([PerRowSampler(list(samplers))]))
    return [_cut_at_stop(row, stop_ids) for row in out_BT[:, width:].cpu().tolist()]


def _cut_at_stop(ids: list[int], stop_ids: frozenset[int]) -> list[int]:
    """Keep tokens up to and including the first stop token (the teacher judges stopping too)."""
    for j, tok in enumerate(ids):
        if tok in stop_ids:
            return ids[: j + 1]
    return ids


def response_logits_shared_head(model: Any, batch: PackedBatch, head_tokens: int) -> Tensor:
    """`response_logits` of a RIGHT-padded batch whose rows share their first `head_tokens` tokens.

    The head runs once (batch 1), its KV cache is repeated over the rows, and only the tails
    run per row. Differentiable: the head's gradient is the sum over the rows, as in the plain
    pass, so the student can use it too. Equal to `response_logits` up to float rounding.
    """
    from transformers import DynamicCache

    ids_BT, attn_BT, resp_BT = batch.input_ids_BT, batch.attention_mask_BT, batch.response_mask_BT
    rows = ids_BT.shape[0]
    if not 0 < head_tokens < ids_BT.shape[1]:
        raise ValueError(f"head_tokens: must be in 1..{ids_BT.shape[1] - 1}, got {head_tokens}")
    if not (bool(attn_BT[:, :head_tokens].all()) and bool((ids_BT[:, :head_tokens] == ids_BT[:1, :head_tokens]).all())):
        raise ValueError("head_tokens: the rows do not all open with the same real tokens (right padding needed)")
    if bool(resp_BT[:, :head_tokens + 1].any()):
        raise ValueError("head_tokens: a response token lies inside the shared head")
    backbone, head = causal_lm_parts(model)
    if backbone.training and any(getattr(m, "gradient_checkpointing", False) for m in backbone.modules()):
        raise ValueError("head_tokens: checkpointed layers would drop the shared head's KV cache")
    device = head.weight.device
    cache = DynamicCache(config=getattr(model, "config", None))
    head_ids_1P = ids_BT[:1, :head_tokens].to(device)
    backbone(input_ids=head_ids_1P, attention_mask=torch.ones_like(head_ids_1P), **cache_arg(cache), use_cache=True)
    cache.batch_repeat_interleave(rows)
    tail_ids_BS = ids_BT[:, head_tokens:].to(device)
    attn = attn_BT.to(device)
    positions_BS = head_tokens + torch.arange(tail_ids_BS.shape[1], device=device).expand_as(tail_ids_BS)
    out = backbone(input_ids=tail_ids_BS, attention_mask=attn, position_ids=positions_BS,
                   **cache_arg(cache), use_cache=True)
    predicts_response_BS = resp_BT[:, head_tokens + 1:].to(device)
    return head(out.last_hidden_state[:, :-1][predicts_response_BS])


# -- shared-prefix scoring (teacher only) ---------------------------------------------------
# The teacher's prompts of one step share a long head: the chat template's opening, the
# instruction line and the whole knowledge block, identical for every row that drew the same
# knowledge text. Scoring them one padded row each recomputes that head B times. Below, the
# head's keys/values are computed ONCE (batch 1), repeated over the rows, and only each row's
# own tail (rest of the prompt + response) runs through the model. The result equals
# `response_logits` up to floating-point reassociation (attention over a cached prefix adds
# the same terms in a different order). No gradient flows through it: a teacher-only tool.

MIN_SHARED_PREFIX_TOKENS = 1
"""Below this many shared tokens the cached path cannot save anything; plain scoring runs instead."""


def shared_prefix_length(prompts: Sequence[Sequence[int]]) -> int:
    """Length of the longest token prefix common to every prompt, leaving each row >= 1 own token.

    The last prompt token must stay in the per-row tail: its hidden state predicts the first
    response token.
    """
    if not prompts:
        return 0
    return max(min(common_prefix_length(prompts), min(len(p) for p in prompts) - 1), 0)


def response_logits_with_shared_prefix(model: Any, prompts: Sequence[Sequence[int]],
                                       responses: Sequence[Sequence[int]], *, pad_id: int,
                                       min_shared: int = MIN_SHARED_PREFIX_TOKENS) -> Tensor:
    """`response_logits(model, pack(prompts, responses))`, with the rows' common prefix run once.

    Rows: prompts[b] + responses[b]. The longest common prefix P of the prompts is encoded
    once into a KV cache, repeated over the B rows, and the tails (prompt[P:] + response,
    right-padded) are run against it. Returns packed `[N, V]` logits in the same row order
    as `response_logits`. Call under `torch.no_grad()` (the cache is built for inference).
    Falls back to plain scoring when fewer than `min_shared` tokens are shared.
    """
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    if any(len(r) == 0 for r in responses):
        raise ValueError("every response needs at least one token to score")
    shared = shared_prefix_length(prompts)
    if shared < max(min_shared, 1):
        return response_logits(model, pack(prompts, responses, pad_id=pad_id))
    return response_logits_after_head(model, head_kv(model, prompts[0][:shared]), prompts, responses, pad_id=pad_id)


def head_kv(model: Any, head_ids: Sequence[int]) -> Any:
    """The KV cache (batch 1) of `head_ids` run through the backbone: a prompt head to score many tails after."""
    from transformers import DynamicCache

    lm = model.lm if isinstance(model, ResponseScorer) else model
    backbone, head = causal_lm_parts(lm)
    ids_1P = torch.tensor([list(head_ids)], dtype=torch.long, device=head.weight.device)
    cache = DynamicCache(config=getattr(lm, "config", None))
    backbone(input_ids=ids_1P, attention_mask=torch.ones_like(ids_1P), **cache_arg(cache), use_cache=True)
    return cache


def response_logits_after_head(model: Any, head_cache: Any, prompts: Sequence[Sequence[int]],
                               responses: Sequence[Sequence[int]], *, pad_id: int) -> Tensor:
    """Packed `[N, V]` logits of prompts[b] + responses[b] when every prompt opens with the head whose
    KV `head_cache` holds (batch 1, left unchanged: a copy is repeated over the rows)."""
    lm = model.lm if isinstance(model, ResponseScorer) else model
    backbone, head = causal_lm_parts(lm)
    device = head.weight.device
    shared = head_cache.get_seq_length()
    cache = copy.deepcopy(head_cache)
    cache.batch_repeat_interleave(len(prompts))
    tails = pack([list(p[shared:]) for p in prompts], responses, pad_id=pad_id, side="right")
    tail_attn_BS = tails.attention_mask_BT.to(device)
    attn_BT = torch.cat([torch.ones((len(prompts), shared), dtype=tail_attn_BS.dtype, device=device),
                         tail_attn_BS], dim=1)
    positions_BS = shared + torch.arange(tail_attn_BS.shape[1], device=device).expand_as(tail_attn_BS)
    out = backbone(input_ids=tails.input_ids_BT.to(device), attention_mask=attn_BT, position_ids=positions_BS,
                   **cache_arg(cache), use_cache=True)
    hidden_BSH = out.last_hidden_state
    predicts_response_BS = tails.response_mask_BT[:, 1:].to(device)
    return head(hidden_BSH[:, :-1][predicts_response_BS])


class KeptHeads:
    """Each group's teacher prompt head, run once and kept from one step to the next (the frozen teacher's
    KV of the same knowledge text does not change during a round; what each step runs is only its rows'
    tails).

    `head_of(key)` names a group's head: the opening every prompt that group can ever hold shares (for a
    knowledge text: all of the round's prefixes read with it, `ConsolidationData.teacher_head`). Being
    fixed, it splits each row at the same place whichever rows a step (or a rank) draws, so one process
    and several compute the same sums. A group whose prompts do not all open with it is scored with its
    own shared prefix instead. Only for a model whose weights do not move while this object lives: one
    instance per consolidation run (`TrainingStep`).
    """

    def __init__(self, head_of: Callable[[Any], Sequence[int]], min_shared: int = MIN_SHARED_PREFIX_TOKENS) -> None:
        self.head_of = head_of
        self.min_shared = max(min_shared, 1)
        self._heads: dict[Any, Any] = {}

    def logits(self, model: Any, prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]],
               key: Any, *, pad_id: int) -> Tensor:
        """`response_logits_with_shared_prefix(model, prompts, responses)`, the head's KV run once per key."""
        head = list(self.head_of(key))
        fits = len(head) >= self.min_shared and all(len(p) > len(head) and list(p[:len(head)]) == head
                                                     for p in prompts)
        if not fits:
            return response_logits_with_shared_prefix(model, prompts, responses, pad_id=pad_id,
                                                      min_shared=self.min_shared)
        if key not in self._heads:
            self._heads[key] = head_kv(model, head)
        return response_logits_after_head(model, self._heads[key], prompts, responses, pad_id=pad_id)


def response_logits_by_shared_prefix_groups(model: Any, prompts: Sequence[Sequence[int]],
                                            responses: Sequence[Sequence[int]], group_keys: Sequence[Any], *,
                                            pad_id: int, kept: KeptHeads | None = None) -> Tensor:
    """`response_logits` of all rows, scoring each group of rows (same key) with its shared prefix once.

    Rows drawing the same knowledge text share their prompt head up to the end of the
    knowledge; rows of different texts share only the template's opening. Grouping by the
    knowledge index lets each group reuse its long head. Output rows are in the input's order.
    `kept`: the heads of earlier calls (same frozen model), so a step runs only its rows' tails.
    """
    if not len(prompts) == len(responses) == len(group_keys):
        raise ValueError(f"{len(prompts)} prompts, {len(responses)} responses, {len(group_keys)} group keys")
    groups: dict[Any, list[int]] = {}
    for i, key in enumerate(group_keys):
        groups.setdefault(key, []).append(i)
    per_row: list[Tensor | None] = [None] * len(prompts)
    for key, rows in groups.items():
        group_prompts, group_responses = [prompts[i] for i in rows], [responses[i] for i in rows]
        if kept is not None:
            logits_NV = kept.logits(model, group_prompts, group_responses, key, pad_id=pad_id)
        else:
            logits_NV = response_logits_with_shared_prefix(model, group_prompts, group_responses, pad_id=pad_id)
        for i, part in zip(rows, logits_NV.split([len(responses[i]) for i in rows])):
            per_row[i] = part
    return torch.cat([p for p in per_row if p is not None])
