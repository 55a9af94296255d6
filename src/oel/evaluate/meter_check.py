"""Does the exact meter agree with sampling? Sample answers at the meter's own probe states.

Why: the meter (`oel.evaluate.meter`) replaces hundreds of sampled episodes by scoring the four
bracketed answers exactly. That is only worth trusting if it says what sampling says. Here the
model answers each probe state `samples_per_state` times at temperature 1 with no top-k / top-p
(the distribution the meter scores), and an answer counts as move m exactly when its tokens are
the meter's answer tokens for m, end-of-turn included (the same event the meter scores; any
other answer is outside the meter's coverage and is counted as `other`).

Sampled move quality is then the share of the counted answers on shortest-path moves, averaged
per state, per map, then over maps: the estimator whose expectation is the meter's E[mq]. What is
reported: both numbers, the meter's bootstrap CI over maps, the sampling noise of the estimate
(binomial standard error from the meter's own probabilities) and the seconds each took, so the
cost of reaching the meter's precision by sampling can be stated.

A diagnostic like the meter: never a training signal.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from oel.evaluate.meter import CANONICAL_MOVES, MeterResult, ProbeState, PromptVariant, answer_token_ids
from oel.evaluate.metrics import bootstrap_mean_ci
from oel.models.kv_cache import cache_arg, output_cache

SAMPLING_TEMPERATURE = 1.0
"""The model's own distribution: what the meter's log-probabilities describe."""

EXTRA_NEW_TOKENS = 2
"""Generated beyond the longest canonical answer: enough to see that a sample is not one of them."""

ONE_POINT = 0.01
"""The sampling standard error the cost estimate aims at (one point of move quality)."""


@dataclass
class StateSamples:
    """Sampled answers at one probe state: per canonical move how often, and how many were neither."""

    layout: str
    step: int
    counts: list[int]
    other: int
    optimal: tuple[bool, ...]

    @property
    def counted(self) -> int:
        return sum(self.counts)

    @property
    def mq(self) -> float | None:
        """Share of the counted answers on shortest-path moves (None when none was counted)."""
        if not self.counted:
            return None
        return sum(c for c, ok in zip(self.counts, self.optimal) if ok) / self.counted


@dataclass
class SampleCheck:
    """Sampled move quality next to the meter's E[mq] on the same states."""

    states: list[StateSamples]
    meter: MeterResult
    seconds: float
    meta: dict[str, Any] = field(default_factory=dict)

    def _kept(self) -> list[tuple[StateSamples, Any]]:
        """(samples, the meter's score) at every state where at least one answer was a move."""
        exact = {(s.layout, s.step): s for s in self.meter.states}
        return [(s, exact[(s.layout, s.step)]) for s in self.states if s.mq is not None]

    def summary(self) -> dict[str, Any]:
        samples = sum(s.counted + s.other for s in self.states)
        base = {"samples": samples, "states": len(self.states), "seconds": self.seconds,
                "meter_seconds": self.meter.seconds, **self.meta}
        kept = self._kept()
        if not kept:
            return {**base, "counted_moves": 0, "states_counted": 0, "sampled_mq": None, "within_meter_ci": False}
        by_layout: dict[str, list[tuple[StateSamples, Any]]] = {}
        for pair in kept:
            by_layout.setdefault(pair[0].layout, []).append(pair)
        groups = [by_layout[k] for k in sorted(by_layout)]
        sampled = float(np.mean([np.mean([s.mq for s, _ in g]) for g in groups]))
        exact = [float(np.mean([e.emq for _, e in g])) for g in groups]
        meter_mq = float(np.mean(exact))
        lo, hi = bootstrap_mean_ci(exact)
        # Maps fixed, the meter's p as the truth: each state's share is a binomial mean over its counted answers.
        se = math.sqrt(sum(e.emq * (1 - e.emq) / s.counted / (len(g) ** 2 * len(groups) ** 2)
                           for g in groups for s, e in g))
        needed = math.ceil(samples * (se / ONE_POINT) ** 2) if se > 0 else 0
        return {**base, "counted_moves": sum(s.counted for s in self.states), "states_counted": len(kept),
                "sampled_mq": sampled, "meter_emq": meter_mq, "meter_ci95": [lo, hi],
                "within_meter_ci": lo <= sampled <= hi,
                "sampling_se": se, "z": (sampled - meter_mq) / se if se > 0 else 0.0,
                "samples_for_one_point_se": needed, "seconds_for_one_point_se": needed * self.seconds / max(1, samples)}

    def to_dict(self) -> dict[str, Any]:
        """The summary and every state's counts (what `oel meter sample_check=N` writes)."""
        return {**self.summary(), "moves": list(CANONICAL_MOVES),
                "per_state": [{"layout": s.layout, "step": s.step, "counts": s.counts, "other": s.other}
                              for s in self.states]}


@torch.inference_mode()
def sample_state(model: Any, prompt_ids: Sequence[int], answers: Sequence[Sequence[int]], n: int,
                 seed: int) -> tuple[list[int], int]:
    """(counts per answer, others) of `n` answers sampled at temperature 1 after `prompt_ids`.

    The prompt is prefilled once and its KV cache expanded to `n` rows (what the meter does), then
    each row draws its next token from the full softmax: `generate(num_return_sequences=n)` would
    prefill the prompt n times over.
    """
    from transformers import DynamicCache

    device = next(model.parameters()).device
    width = max(len(a) for a in answers) + EXTRA_NEW_TOKENS
    gen = torch.Generator(device=device).manual_seed(seed)
    cache = DynamicCache()
    ids = torch.tensor([list(prompt_ids)], device=device)
    res = model(input_ids=ids, **cache_arg(cache), use_cache=True)
    cache, logits = output_cache(res), res.logits[:, -1].expand(n, -1)
    cache.batch_repeat_interleave(n)
    rows = torch.empty((n, width), dtype=torch.long, device=device)
    for k in range(width):
        probs = torch.softmax(logits.float() / SAMPLING_TEMPERATURE, -1)
        rows[:, k] = torch.multinomial(probs, 1, generator=gen).squeeze(1)
        if k + 1 < width:
            pos = torch.full((n, 1), len(prompt_ids) + k, device=device)
            res = model(input_ids=rows[:, k:k + 1], **cache_arg(cache), position_ids=pos, use_cache=True)
            cache, logits = output_cache(res), res.logits[:, -1]
    counts, other = [0] * len(answers), 0
    for row in rows.tolist():
        hit = [i for i, a in enumerate(answers) if row[:len(a)] == list(a)]
        if hit:
            counts[hit[0]] += 1
        else:
            other += 1
    return counts, other


def sample_check(model: Any, tokenizer: Any, states: Sequence[ProbeState], variant: PromptVariant,
                 meter: MeterResult, *, samples_per_state: int, seed: int = 0) -> SampleCheck:
    """Sample `samples_per_state` answers at every probe state under `variant` and set the
    result beside `meter` (the same variant's exact scores on the same states)."""
    t0 = time.perf_counter()
    out: list[StateSamples] = []
    for i, st in enumerate(states):
        prompt_ids, answers = answer_token_ids(tokenizer, variant.build(st.observation), CANONICAL_MOVES)
        counts, other = sample_state(model, prompt_ids, answers, samples_per_state, seed + i)
        out.append(StateSamples(st.layout, st.step, counts, other, st.optimal))
    return SampleCheck(out, meter, time.perf_counter() - t0,
                       {"setting": meter.setting, "samples_per_state": samples_per_state, "seed": seed,
                        "temperature": SAMPLING_TEMPERATURE})


def summary_line(s: dict[str, Any]) -> str:
    """One plain line from `SampleCheck.summary()`: do sampling and the meter agree, and what did each cost?"""
    if s["sampled_mq"] is None:
        return (f"sampling check ({s['setting']}): none of {s['samples']} sampled answers was one of the four "
                f"bracketed moves, so there is nothing to compare with the meter")
    agree = "inside" if s["within_meter_ci"] else "OUTSIDE"
    return (f"sampling check ({s['setting']}): {s['counted_moves']} sampled moves ({s['samples']} answers, "
            f"{s['samples_per_state']} per state, T=1) give move quality {100 * s['sampled_mq']:.1f}% vs the meter's "
            f"{100 * s['meter_emq']:.1f}% (95% CI over maps {100 * s['meter_ci95'][0]:.1f} to "
            f"{100 * s['meter_ci95'][1]:.1f}): "
            f"{agree} the meter's CI; sampling noise SE {100 * s['sampling_se']:.1f} points (z {s['z']:+.2f}); "
            f"sampling took {s['seconds']:.0f} s against the meter's {s['meter_seconds']:.0f} s, and a 1-point SE "
            f"would need ~{s['samples_for_one_point_se']} answers (~{s['seconds_for_one_point_se']:.0f} s)")
