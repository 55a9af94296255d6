"""The exact meter for small-answer games: P(answer) over the game's whole answer set at probe states.

The grid meter (`oel.evaluate.meter`) scores four moves; here each game names its own answer
set (`TextArenaAnswerGame.answers()`: twenty numbers, or [Hit]/[Stand]) and its own oracle
(`oel.evaluate.oracles`), which labels every answer at a state with what the game's true state
says of it: `good` (what an optimal player would answer), `ok` (not a wasted answer: e.g. a
number that agrees with every hint), `invalid` (the game refuses it), and a `value` (e.g. the
expected return of the hand after that answer). Nothing is sampled for an immediate answer:
every answer is scored as the whole assistant turn through the chat template
(`oel.evaluate.meter.answer_token_ids`), and the distribution renormalised over the set.

The screen's first question is whether an answer depends on the state at all. `state_blind`
plays the setting's AVERAGE answer distribution at every state: a model whose `E[ok]` is no
higher than its state-blind `E[ok]` answers by prior, and lessons can only move that prior.
`dependence()` is the mutual information between state and answer (nats), averaged over probes.

Diagnostic only: never a training signal, never used to select lessons or data.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from oel.backends.hf import RowRequest
from oel.backends.sampling import derive_seed
from oel.errors import DataError
from oel.evaluate.meter import PromptVariant, answer_token_ids, score_answers_shared
from oel.evaluate.metrics import bootstrap_mean_ci


@dataclass(frozen=True)
class AnswerProbe:
    """One state of one game: what the model sees there and what the oracle says of each answer."""

    key: str
    """Groups probes for the bootstrap (one episode's states share a key)."""
    seed: int
    turn: int
    observation: str
    answers: tuple[str, ...]
    good: tuple[bool, ...]
    ok: tuple[bool, ...]
    invalid: tuple[bool, ...]
    value: tuple[float, ...]
    """The oracle's value of each answer (higher is better; game-specific units)."""


@dataclass
class AnswerScore:
    """The meter at one probe: log p of every answer in the set."""

    probe: AnswerProbe
    logp: list[float]

    @property
    def coverage(self) -> float:
        return float(sum(math.exp(x) for x in self.logp))

    @property
    def p(self) -> np.ndarray:
        x = np.asarray(self.logp, dtype=float)
        w = np.exp(x - x.max())
        return w / w.sum()

    def expect(self, labels: Sequence[float], p: np.ndarray | None = None) -> float:
        return float(np.dot(self.p if p is None else p, np.asarray(labels, dtype=float)))


METRICS: tuple[str, ...] = ("good", "ok", "invalid", "value")


@dataclass
class AnswerMeterResult:
    """Every probe's score under one setting (a model with one prompt)."""

    setting: str
    scores: list[AnswerScore]
    seconds: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)

    def average_distribution(self) -> dict[str, float]:
        """The mean distribution over answers, over every probe (answer sets must agree)."""
        acc: dict[str, list[float]] = {}
        for s in self.scores:
            for a, q in zip(s.probe.answers, s.p):
                acc.setdefault(a, []).append(float(q))
        n = len(self.scores)
        return {a: sum(v) / n for a, v in acc.items()}

    def per_key(self, metric: str, *, blind: bool = False) -> dict[str, float]:
        """Per-episode mean of E[metric] (as scored, or for the state-blind policy)."""
        avg = self.average_distribution() if blind else None
        acc: dict[str, list[float]] = {}
        for s in self.scores:
            p = np.array([avg.get(a, 0.0) for a in s.probe.answers]) if avg is not None else None
            if p is not None:
                p = p / max(p.sum(), 1e-12)
            acc.setdefault(s.probe.key, []).append(s.expect(getattr(s.probe, metric), p))
        return {k: float(np.mean(v)) for k, v in acc.items()}

    def mean(self, metric: str, *, blind: bool = False) -> float:
        return float(np.mean(list(self.per_key(metric, blind=blind).values())))

    def dependence(self) -> float:
        """Mutual information between probe state and answer, in nats: mean KL(p_state || p_average)."""
        avg = self.average_distribution()
        kls = []
        for s in self.scores:
            q = np.array([avg[a] for a in s.probe.answers])
            q = q / q.sum()
            p = s.p
            kls.append(float(np.sum(p * (np.log(np.maximum(p, 1e-300)) - np.log(np.maximum(q, 1e-300))))))
        return float(np.mean(kls))

    def blind_gap(self, metric: str = "ok") -> dict[str, Any]:
        """E[metric] as scored minus the state-blind policy's, with a bootstrap CI over episodes:
        above zero means the answers read the state."""
        a, b = self.per_key(metric), self.per_key(metric, blind=True)
        d = [a[k] - b[k] for k in sorted(a)]
        lo, hi = bootstrap_mean_ci(d)
        return {"metric": metric, "diff": float(np.mean(d)), "ci95": [lo, hi], "episodes": len(d)}

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"setting": self.setting, "probes": len(self.scores),
                               "episodes": len(self.per_key("ok")), "coverage": self.mean_coverage()}
        for m in METRICS:
            out[m] = self.mean(m)
            out[f"{m}_state_blind"] = self.mean(m, blind=True)
        out["dependence_nats"] = self.dependence()
        out["blind_gap_ok"] = self.blind_gap("ok")
        out["blind_gap_value"] = self.blind_gap("value")
        top = sorted(self.average_distribution().items(), key=lambda kv: -kv[1])[:3]
        out["top_answers"] = {a: round(q, 4) for a, q in top}
        out["seconds_per_probe"] = self.seconds / max(1, len(self.scores))
        return {**out, **self.meta}

    def mean_coverage(self) -> float:
        return float(np.mean([s.coverage for s in self.scores]))

    def to_json(self) -> dict[str, Any]:
        return {"summary": self.summary(),
                "per_probe": [{"key": s.probe.key, "seed": s.probe.seed, "turn": s.probe.turn,
                               "answers": list(s.probe.answers), "good": list(s.probe.good), "ok": list(s.probe.ok),
                               "invalid": list(s.probe.invalid), "value": list(s.probe.value), "logp": s.logp}
                              for s in self.scores]}

    @classmethod
    def from_saved(cls, saved: dict[str, Any], name: str) -> AnswerMeterResult:
        """Back from `to_json()` (the observation text is not saved: probes are keyed by episode and turn)."""
        scores = [AnswerScore(AnswerProbe(d["key"], d["seed"], d["turn"], "", tuple(d["answers"]), tuple(d["good"]),
                                          tuple(d["ok"]), tuple(d["invalid"]), tuple(d["value"])), list(d["logp"]))
                  for d in saved["per_probe"]]
        return cls(name, scores)


def measure_answers(model: Any, tokenizer: Any, probes: Sequence[AnswerProbe], variant: PromptVariant, *,
                    setting: str | None = None) -> AnswerMeterResult:
    """Score every answer of each probe's answer set under `variant` (exact; no sampling)."""
    t0 = time.perf_counter()
    order = sorted(range(len(probes)), key=lambda i: (probes[i].key, probes[i].turn))
    encoded = [answer_token_ids(tokenizer, variant.build(probes[i].observation), probes[i].answers) for i in order]
    logps = score_answers_shared(model, [e[0] for e in encoded], [e[1] for e in encoded])
    by_index = dict(zip(order, logps))
    scores = [AnswerScore(p, by_index[i]) for i, p in enumerate(probes)]
    return AnswerMeterResult(setting or variant.name, scores, time.perf_counter() - t0)


def paired_answer_gap(a: AnswerMeterResult, b: AnswerMeterResult, metric: str = "ok") -> dict[str, Any]:
    """Setting A minus setting B on the same probes: mean over episodes, bootstrap CI over episodes."""
    pa, pb = a.per_key(metric), b.per_key(metric)
    if pa.keys() != pb.keys():
        raise DataError(f"paired_answer_gap: {a.setting} and {b.setting} were measured on different probes")
    d = [pa[k] - pb[k] for k in sorted(pa)]
    lo, hi = bootstrap_mean_ci(d)
    return {"metric": metric, "diff": float(np.mean(d)), "ci95": [lo, hi], "episodes": len(d)}


ProbeMaker = Callable[..., list[AnswerProbe]]


# ---- the thought format: sample a thought, then score every answer exactly after it ----------


@dataclass
class ThoughtSample:
    """One sampled thought at a probe and the exact answer distribution after it."""

    thought: str
    logp: list[float]
    answered: bool
    """Whether the sampled reply itself ended in an answer (else the answers are scored after the
    whole reply: what the policy would need to add)."""
    tokens: int


def split_thought(response: str, parse: Callable[[str], str | None]) -> tuple[str, bool]:
    """(the thought, whether the reply ended in a parseable answer): the thought is everything
    before the last '[' that opens the reply's answer; with no answer, the whole reply."""
    answer = parse(response)
    if answer is None:
        return response.rstrip() + " ", False
    cut = response.rfind("[")
    while cut > 0 and parse(response[cut:]) is None:
        cut = response.rfind("[", 0, cut)
    return response[:max(cut, 0)], True


def measure_answers_thinking(backend: Any, probes: Sequence[AnswerProbe], variant: PromptVariant,
                             parse: Callable[[str], str | None], params: Any, *, samples: int = 4,
                             setting: str | None = None) -> tuple[AnswerMeterResult, list[list[ThoughtSample]]]:
    """The meter for a short thought before the answer: `samples` thoughts per probe sampled at the
    policy's settings (`params`, seeded), every answer scored exactly after each thought, and the
    probe's distribution the mean over its thoughts. An ESTIMATE (thoughts are sampled), unlike
    the immediate meter: its CI reflects both probes and thoughts."""
    model, tokenizer = backend.model, backend.tokenizer
    t0 = time.perf_counter()
    rows = [RowRequest(variant.build(p.observation), params, derive_seed(params.seed, i * samples + j))
            for i, p in enumerate(probes) for j in range(samples)]
    gens = backend.generate_rows(rows)
    scores: list[AnswerScore] = []
    per_probe: list[list[ThoughtSample]] = []
    for i, probe in enumerate(probes):
        messages = variant.build(probe.observation)
        drawn: list[ThoughtSample] = []
        for gen in gens[i * samples:(i + 1) * samples]:
            thought, answered = split_thought(gen.text, parse)
            prompt_ids, ids = answer_token_ids(tokenizer, messages, [thought + a for a in probe.answers])
            logp = score_answers_shared(model, [prompt_ids], [ids])[0]
            drawn.append(ThoughtSample(thought, logp, answered, gen.completion_tokens))
        per_probe.append(drawn)
        mean_p = np.mean([AnswerScore(probe, d.logp).p for d in drawn], axis=0)
        scores.append(AnswerScore(probe, [float(x) for x in np.log(np.maximum(mean_p, 1e-300))]))
    result = AnswerMeterResult(setting or variant.name, scores, time.perf_counter() - t0)
    result.meta = {"thought_samples": samples,
                   "answered_share": float(np.mean([d.answered for ds in per_probe for d in ds])),
                   "thought_tokens": float(np.mean([d.tokens for ds in per_probe for d in ds])),
                   "seconds_per_thought": (time.perf_counter() - t0) / max(1, len(rows))}
    return result, per_probe
