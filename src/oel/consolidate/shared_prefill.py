"""One prefill of the student's prompts for both sampling and scoring (on-policy consolidation).

An on-policy step runs the student's prompts twice: once to sample the responses (no
gradients) and once more, with gradients, to score those responses. The prompt is the bulk
of both (hundreds of tokens against a handful of response tokens), and the two passes
compute the same thing: the prompt does not depend on the response. So we run it once:

1. `open_prompts`: the student's prompts, RIGHT-padded, run through the backbone WITH
   gradients; the KV cache and the hidden state that predicts each row's first response
   token are kept (still attached to the autograd graph);
2. `sample_responses`: decoding continues from a detached view of that cache, without
   gradients, with the same per-row seeded sampler as `generate_ids`;
3. `opened_response_logits`: the sampled responses run, with gradients, against the
   ATTACHED cache, so backward reaches the prompt's activations as in a plain scoring pass.

Layout of a row: `[prompt | pad | response]`: the prompt's pad columns are masked out and
positions continue from the row's own prompt length, so every query attends to exactly
the keys, at exactly the positions, it would in `response_logits` on `pack(prompts,
responses)`; the results are equal up to floating-point summation order (tested in fp32).

Why right padding: with left padding the pad positions at the start of a row would have no
key to attend to, and a fully masked attention row is NaN in some kernels, which a backward
pass spreads into every gradient.

Exact only where sampling and scoring see the same function: LoRA dropout 0 (sampling runs
in train mode here), no gradient checkpointing (it drops the KV cache), one process (the
backbone is called outside a DDP/FSDP wrapper's forward). `ConsolidateConfig` checks these.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from oel.backends.sampling import PerRowSampler, RowSampling
from oel.consolidate.scoring import causal_lm_parts, pack
from oel.models.kv_cache import cache_arg

Tensor = torch.Tensor


@dataclass
class OpenedPrompts:
    """The student's prompts after one forward pass with gradients."""

    kv: list[tuple[Tensor, Tensor]]
    """Per layer (keys, values), [B, heads, P, head_dim], attached to the autograd graph."""
    first_hidden_BH: Tensor
    """Last layer's hidden state at each row's last prompt token: it predicts response token 1."""
    prompt_mask_BP: Tensor
    """1 over each row's real prompt tokens (right-padded to P columns)."""
    lengths: list[int]

    @property
    def rows(self) -> int:
        return len(self.lengths)

    def cache(self, *, attached: bool, config: Any = None) -> Any:
        """A fresh DynamicCache over the prompt KV; `attached=False` detaches it (for sampling).

        The cache grows by concatenation (new tensors), so the prompt's own tensors, which the
        graph holds, are never modified by the passes that continue from it.
        """
        from transformers import DynamicCache

        layers = [(k, v) if attached else (k.detach(), v.detach()) for k, v in self.kv]
        return DynamicCache(ddp_cache_data=layers, config=config)


def open_prompts(model: Any, prompts: Sequence[Sequence[int]], *, pad_id: int, head_tokens: int = 0) -> OpenedPrompts:
    """Run the prompts (right-padded) through the backbone; keep their KV and last hidden states.

    `head_tokens` > 0: the prompts all open with these same tokens (template, instructions,
    rules); they run once (batch 1), their KV is repeated over the rows, and only the rest of
    each prompt runs per row. Gradients of the head sum over the rows, as in the plain pass.
    Runs under whatever grad mode and train/eval mode the caller set: the trainer calls it
    with gradients on and the student in train mode.
    """
    from transformers import DynamicCache

    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("open_prompts: every row needs at least one prompt token")
    backbone, head = causal_lm_parts(model)
    device = head.weight.device
    lengths = [len(p) for p in prompts]
    width = max(lengths)
    padded = pack(prompts, [[] for _ in prompts], pad_id=pad_id)  # right-padded
    ids_BP, mask_BP = padded.input_ids_BT, padded.attention_mask_BT
    shared_head = bool((ids_BP[:, :head_tokens] == ids_BP[:1, :head_tokens]).all())
    if head_tokens and not (0 < head_tokens < min(lengths) and shared_head):
        raise ValueError(f"head_tokens: {head_tokens} is not a shared opening of every prompt that leaves each "
                         "row at least one own token")
    ids_BP, mask_BP = ids_BP.to(device), mask_BP.to(device)
    cache = DynamicCache(config=getattr(model, "config", None))
    if head_tokens:
        head_1H = ids_BP[:1, :head_tokens]
        backbone(input_ids=head_1H, attention_mask=torch.ones_like(head_1H),
                 position_ids=torch.arange(head_tokens, device=device)[None], **cache_arg(cache), use_cache=True)
        cache.batch_repeat_interleave(len(prompts))
    rest_BS = ids_BP[:, head_tokens:]
    positions_BS = torch.arange(head_tokens, width, device=device).expand_as(rest_BS)
    out = backbone(input_ids=rest_BS, attention_mask=mask_BP, position_ids=positions_BS,
                   **cache_arg(cache), use_cache=True)
    last_B = torch.tensor([n - 1 - head_tokens for n in lengths], device=device)
    first_hidden_BH = out.last_hidden_state[torch.arange(len(prompts), device=device), last_B]
    kv = [(layer.keys, layer.values) for layer in cache.layers]
    return OpenedPrompts(kv, first_hidden_BH, mask_BP, lengths)


def sample_responses(model: Any, opened: OpenedPrompts, rows: Sequence[RowSampling], *,
                     stop_ids: frozenset[int], max_new_tokens: int) -> list[list[int]]:
    """Sample one response per row from the opened prompts; each cut after its first stop token.

    The same sampler as `oel.consolidate.scoring.generate_ids` (per-row seeded Gumbel-max on the
    float32 logits, one draw per row per step), so a row's random stream depends on its seed only
    (its text too, up to the rounding of batched kernels: docs/collection.md, "Batching and identical answers").
    Decoding stops when every row has stopped or after `max_new_tokens` tokens.
    """
    if len(rows) != opened.rows:
        raise ValueError(f"{opened.rows} opened prompts but {len(rows)} sampling rows")
    backbone, head = causal_lm_parts(model)
    device = opened.first_hidden_BH.device
    sampler = PerRowSampler(list(rows))
    responses: list[list[int]] = [[] for _ in rows]
    done = [False] * len(rows)
    mask_BW = opened.prompt_mask_BP
    next_pos_B = torch.tensor(opened.lengths, device=device)
    with torch.no_grad():
        cache = opened.cache(attached=False, config=getattr(model, "config", None))
        hidden_BH = opened.first_hidden_BH.detach()
        for _ in range(max_new_tokens):
            scores_BV = head(hidden_BH).float()
            tokens_B = sampler(None, scores_BV).argmax(dim=-1)
            for b, tok in enumerate(tokens_B.tolist()):
                if not done[b]:
                    responses[b].append(tok)
                    done[b] = tok in stop_ids
            if all(done):
                break
            mask_BW = torch.cat([mask_BW, torch.ones_like(mask_BW[:, :1])], dim=1)
            out = backbone(input_ids=tokens_B[:, None], attention_mask=mask_BW, position_ids=next_pos_B[:, None],
                           **cache_arg(cache), use_cache=True)
            hidden_BH = out.last_hidden_state[:, -1]
            next_pos_B = next_pos_B + 1
    return responses


def opened_response_logits(model: Any, opened: OpenedPrompts, responses: Sequence[Sequence[int]], *,
                           pad_id: int) -> Tensor:
    """Logits predicting each response token, packed `[N, V]` as `response_logits` returns them.

    Differentiable through the opened prompts: run with gradients on, backward reaches the
    prompt pass. The first token of each response is predicted by the prompt's last hidden
    state; the rest by this pass over the responses (all but their last token).
    """
    if len(responses) != opened.rows:
        raise ValueError(f"{opened.rows} opened prompts but {len(responses)} responses")
    if any(len(r) == 0 for r in responses):
        raise ValueError("every response needs at least one token to score")
    backbone, head = causal_lm_parts(model)
    device = opened.first_hidden_BH.device
    inputs = [list(r[:-1]) for r in responses]  # the last response token predicts nothing we score
    width = max(len(r) for r in inputs)
    if width == 0:
        return head(opened.first_hidden_BH)
    padded = pack(inputs, [[] for _ in inputs], pad_id=pad_id)  # right-padded
    ids_BR, mask_BR = padded.input_ids_BT.to(device), padded.attention_mask_BT.to(device)
    positions_BR = torch.tensor(opened.lengths, device=device)[:, None] + torch.arange(width, device=device)
    out = backbone(input_ids=ids_BR, attention_mask=torch.cat([opened.prompt_mask_BP, mask_BR], dim=1),
                   position_ids=positions_BR,
                   **cache_arg(opened.cache(attached=True, config=getattr(model, "config", None))),
                   use_cache=True)
    hidden_rows = [torch.cat([opened.first_hidden_BH[b:b + 1], out.last_hidden_state[b, :len(r)]])
                   for b, r in enumerate(inputs)]
    return head(torch.cat(hidden_rows))
