"""An exact policy meter: the model's probability of each canonical move at fixed probe states.

Why: sampled move quality needs hundreds of episodes to resolve a few points, and sampling
noise hides whether a prompt (e.g. a teacher with lessons) plays better at all. Here nothing
is sampled. At every probe state we score the four canonical bracketed answers
("[up]", "[down]", "[left]", "[right]": what the policy emits and `oel.envs.actions.parse_action`
accepts) as the WHOLE assistant turn, end-of-turn token included, through the model's chat
template, and read off

* coverage     = total probability of the four answers (how much of the policy they describe);
* p_move       = the four probabilities renormalised over the four answers;
* E[mq]        = normalised mass on moves that lie on a shortest winning path (solver);
* P(invalid)   = normalised mass on moves the game refuses (edge / wall / blocked box);
* P(losing)    = normalised mass on moves into a hole (FrozenLake).

Probe states are one shortest path per layout, played through the REAL environment so that the
observation text (game history included) is exactly what the model would see at that point.
The game's true state (solver) is used only to label moves, never shown to the model.

It is a diagnostic: never a training signal, never used to select knowledge.

Cost: one prompt prefill per state (KV cache kept), then the four answers as one batch of four
short rows on top of the cached prompt (right-padded; causal attention means padding after an
answer never changes its own tokens' scores).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from oel import progress, prompts
from oel.envs import EnvConfig, make_env
from oel.envs.solver import GridState, LakeState, Status, is_optimal_move, optimal_actions, transition
from oel.errors import ConfigError, DataError
from oel.evaluate.metrics import bootstrap_mean_ci
from oel.trajectory import Message
from oel.models.kv_cache import cache_arg, output_cache

CANONICAL_MOVES: tuple[str, ...] = ("[up]", "[down]", "[left]", "[right]")
"""The four answers scored, in the solver's order."""


# ---- probe states ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ProbeState:
    """One state of a shortest path: what the model sees there and what each move does."""

    layout: str
    """A key naming the layout (same key = same map, whatever the seed)."""
    seed: int
    step: int
    """Moves already played on the shortest path (0 = the start)."""
    observation: str
    """Exactly the text the real environment shows at this point (history included)."""
    optimal: tuple[bool, ...]
    """Per canonical move: lies on a shortest winning path from here."""
    invalid: tuple[bool, ...]
    """Per canonical move: the game refuses it (the state would not change)."""
    losing: tuple[bool, ...]
    """Per canonical move: ends the game as a loss (a hole)."""


def layout_key(state: GridState) -> str:
    """A text key for the map (everything except the player's position)."""
    if isinstance(state, LakeState):
        return f"lake{state.size}:holes={sorted(state.holes)}:goal={state.goal}"
    return (f"box:walls={sorted(state.walls)}:targets={sorted(state.targets)}:boxes={sorted(state.boxes)}"
            f":start={state.player}")


def move_labels(state: GridState) -> tuple[tuple[bool, ...], tuple[bool, ...], tuple[bool, ...]]:
    """(optimal, invalid, losing) per canonical move at `state`, from the solver."""
    outcomes = [transition(state, m)[1] for m in CANONICAL_MOVES]
    return (tuple(is_optimal_move(state, m) for m in CANONICAL_MOVES),
            tuple(s is Status.INVALID for s in outcomes),
            tuple(s is Status.LOST for s in outcomes))


def probe_states(seeds: Sequence[int], env_config: EnvConfig | None = None, *, max_layouts: int | None = None,
                 distinct_layouts: bool = True) -> list[ProbeState]:
    """The states of one shortest path for each seed's map, with the real game's observation text.

    `distinct_layouts` skips a seed whose map was already probed (FrozenLake 3x3/2 holes has only
    19 solvable layouts, so many seeds repeat one); `max_layouts` stops after that many maps.
    Maps that cannot be won are skipped.
    """
    env_config = env_config or EnvConfig()
    env: Any = make_env(env_config)
    out: list[ProbeState] = []
    seen: set[str] = set()
    for seed in seeds:
        if max_layouts is not None and len(seen) >= max_layouts:
            break
        observation = env.reset(seed)
        state = env.solver_state()
        key = layout_key(state)
        plan = optimal_actions(state)
        if plan is None or (distinct_layouts and key in seen):
            continue
        seen.add(key)
        for step, move in enumerate(plan):
            opt, inv, lose = move_labels(state)
            out.append(ProbeState(key, seed, step, observation, opt, inv, lose))
            result = env.step(move)
            if result.action != move:
                raise DataError(f"probe_states: the game read {result.action!r} from {move!r} (seed {seed})")
            if result.done:
                break
            observation, state = result.observation, env.solver_state()
    return out


# ---- settings ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class PromptVariant:
    """How one setting turns an observation into chat messages: a template (`oel.prompts`
    rule: policy prompt, knowledge before / after the observation, or in a system message) and
    the knowledge it is filled with."""

    name: str
    template: str = prompts.POLICY_TEMPLATE
    knowledge: str | None = None

    def __post_init__(self) -> None:
        needs = "knowledge" in prompts.get(self.template).fields
        if needs != (self.knowledge is not None):
            raise ConfigError(f"meter: template {self.template!r} {'needs' if needs else 'takes no'} knowledge")

    def build(self, observation: str) -> list[Message]:
        fields = {"knowledge": self.knowledge} if self.knowledge is not None else {}
        return prompts.turn_messages(self.template, observation, **fields)


def policy_variant(template: str = prompts.POLICY_TEMPLATE) -> PromptVariant:
    """The student's prompt: the policy template, no lessons."""
    return PromptVariant(template, template)


def knowledge_variant(knowledge: str, template: str = prompts.TEACHER_TEMPLATE,
                      name: str | None = None) -> PromptVariant:
    """A teacher's prompt: `template` (one of `prompts.TEACHER_TEMPLATES`) filled with `knowledge`."""
    return PromptVariant(name or template, template, knowledge)


# ---- scoring --------------------------------------------------------------------------------


def _chat_text(tokenizer: Any, messages: Sequence[Message], *, answer: str | None = None) -> str:
    chat = [{"role": m.role, "content": m.content} for m in messages]
    if answer is None:
        return tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    return tokenizer.apply_chat_template(chat + [{"role": "assistant", "content": answer}], tokenize=False)


def answer_token_ids(tokenizer: Any, messages: Sequence[Message], answers: Sequence[str] = CANONICAL_MOVES
                     ) -> tuple[list[int], list[list[int]]]:
    """(prompt ids, per-answer ids) where each answer is the assistant turn up to and including
    the end-of-turn token, tokenised exactly as the full conversation would be.

    Raises DataError if the full conversation does not tokenise as prompt + answer (a merge across
    the boundary), since then the scored tokens would not be the ones the model emits.
    """
    eos = tokenizer.eos_token
    if not eos:
        raise ConfigError("meter: the tokenizer has no end-of-turn (eos) token")
    prompt_text = _chat_text(tokenizer, messages)
    prompt_ids = list(tokenizer(prompt_text, add_special_tokens=False)["input_ids"])
    out: list[list[int]] = []
    for ans in answers:
        full = _chat_text(tokenizer, messages, answer=ans)
        if not full.startswith(prompt_text):
            raise DataError(f"meter: the chat template does not render answer {ans!r} after the generation prompt")
        suffix = full[len(prompt_text):]
        cut = suffix.find(eos)
        if cut < 0:
            raise DataError(f"meter: no end-of-turn token {eos!r} after answer {ans!r}")
        suffix = suffix[:cut + len(eos)]
        full_ids = list(tokenizer(prompt_text + suffix, add_special_tokens=False)["input_ids"])
        if full_ids[:len(prompt_ids)] != prompt_ids:
            raise DataError(f"meter: answer {ans!r} merges with the prompt's last token")
        out.append(full_ids[len(prompt_ids):])
    return prompt_ids, out


@torch.inference_mode()
def _score_on_cache(model: Any, cache: Any, past: int, first_logits: torch.Tensor,
                    answers: Sequence[Sequence[int]]) -> list[float]:
    """Sum of log-probs of each answer given a cache holding `past` prompt tokens (consumed: expanded in place)."""
    device = first_logits.device
    first_lp = torch.log_softmax(first_logits.float(), -1)
    n, width = len(answers), max(len(a) for a in answers)
    cache.batch_repeat_interleave(n)
    rows = torch.zeros((n, width), dtype=torch.long, device=device)
    for i, a in enumerate(answers):
        rows[i, :len(a)] = torch.tensor(list(a), device=device)
    pos = torch.arange(past, past + width, device=device).unsqueeze(0).expand(n, -1)
    logits = model(input_ids=rows, **cache_arg(cache), position_ids=pos, use_cache=False).logits
    lp = torch.log_softmax(logits.float(), -1)
    totals: list[float] = []
    for i, a in enumerate(answers):
        total = float(first_lp[a[0]])
        for k in range(1, len(a)):
            total += float(lp[i, k - 1, a[k]])
        totals.append(total)
    return totals


@torch.inference_mode()
def score_answers(model: Any, prompt_ids: Sequence[int], answers: Sequence[Sequence[int]]) -> list[float]:
    """log p(answer | prompt), summed over every answer token, for each answer.

    One prefill of the prompt (cache kept), then all answers as one right-padded batch on top of
    the cache, expanded to the number of answers.
    """
    return score_answers_shared(model, [prompt_ids], [answers])[0]


@torch.inference_mode()
def score_answers_shared(model: Any, prompts_: Sequence[Sequence[int]],
                         answers: Sequence[Sequence[Sequence[int]]]) -> list[list[float]]:
    """`score_answers` for several prompts, reusing the KV cache of each prompt's common prefix
    with the previous one.

    Why: the states of one shortest path show a growing game history, so prompt k+1 starts with
    most of prompt k; ordering a layout's states by step makes prefill ~2-3x cheaper.
    """
    import copy

    from transformers import DynamicCache

    device = next(model.parameters()).device
    cache, held = DynamicCache(), []  # `held`: the token ids the cache currently holds
    out: list[list[float]] = []
    with progress.task("meter: probe states", total=len(prompts_)) as counted:
        for ids, ans in zip(prompts_, answers):
            ids = list(ids)
            lcp = 0
            while lcp < min(len(held), len(ids) - 1) and held[lcp] == ids[lcp]:
                lcp += 1
            if lcp < len(held):
                cache.crop(lcp - len(held))  # negative: tokens to remove (transformers 5 API)
            rest = torch.tensor([ids[lcp:]], device=device)
            pos = torch.arange(lcp, len(ids), device=device).unsqueeze(0)
            res = model(input_ids=rest, **cache_arg(cache), position_ids=pos, use_cache=True)
            cache, held = output_cache(res), ids
            out.append(_score_on_cache(model, copy.deepcopy(cache), len(ids), res.logits[0, -1], ans))
            progress.advance(counted)
    return out


# ---- results --------------------------------------------------------------------------------


@dataclass
class StateScore:
    """The meter at one probe state."""

    layout: str
    step: int
    logp: list[float]
    """log p of each canonical answer (unnormalised: the four need not sum to one)."""
    optimal: tuple[bool, ...]
    invalid: tuple[bool, ...]
    losing: tuple[bool, ...]

    @property
    def coverage(self) -> float:
        return float(sum(math.exp(x) for x in self.logp))

    @property
    def p_move(self) -> list[float]:
        m = max(self.logp)
        w = [math.exp(x - m) for x in self.logp]
        s = sum(w)
        return [x / s for x in w]

    def mass(self, mask: Sequence[bool]) -> float:
        return float(sum(p for p, b in zip(self.p_move, mask) if b))

    @property
    def emq(self) -> float:
        return self.mass(self.optimal)

    @property
    def p_invalid(self) -> float:
        return self.mass(self.invalid)

    @property
    def p_losing(self) -> float:
        return self.mass(self.losing)


@dataclass
class MeterResult:
    """Every probe state's score under one setting."""

    setting: str
    states: list[StateScore]
    seconds: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_saved(cls, saved: dict[str, Any], name: str) -> MeterResult:
        """Back from a saved meter file's per-state scores (`per_state`: what `oel evaluate` writes)."""
        return cls(name, [StateScore(s["layout"], s["step"], s["logp"], tuple(s["optimal"]), tuple(s["invalid"]),
                                     tuple(s["losing"])) for s in saved["per_state"]])

    def per_layout(self, metric: str) -> dict[str, float]:
        """The per-layout mean of `metric` ('emq', 'p_invalid', 'p_losing', 'coverage')."""
        acc: dict[str, list[float]] = {}
        for s in self.states:
            acc.setdefault(s.layout, []).append(float(getattr(s, metric)))
        return {k: float(np.mean(v)) for k, v in acc.items()}

    def mean(self, metric: str) -> float:
        """Mean over layouts of the per-layout mean (each map weighs the same)."""
        return float(np.mean(list(self.per_layout(metric).values())))

    def move_distribution(self) -> dict[str, float]:
        """The mean normalised distribution over the four moves, over all states."""
        p = np.mean([s.p_move for s in self.states], axis=0)
        return {m: float(x) for m, x in zip(CANONICAL_MOVES, p)}

    def top_move(self) -> tuple[str, float]:
        """The move this setting favours and its share of the mean distribution (a collapse shows here)."""
        return max(self.move_distribution().items(), key=lambda kv: kv[1])

    def state_blind_emq(self) -> float:
        """E[mq] of playing this setting's AVERAGE move distribution at every state, per-layout mean.

        Why: a prompt that only shifts the model toward one direction (on these boards [down] is
        optimal half the time) raises E[mq] without reading the board. A setting reads the board
        only where its E[mq] exceeds this.
        """
        return self.fixed_policy_emq(np.mean([s.p_move for s in self.states], axis=0))

    def fixed_policy_emq(self, p: Sequence[float]) -> float:
        """E[mq] of answering with the same move distribution `p` (canonical order) at every state."""
        acc: dict[str, list[float]] = {}
        for s in self.states:
            acc.setdefault(s.layout, []).append(float(np.dot(p, s.optimal)))
        return float(np.mean([np.mean(v) for v in acc.values()]))

    def summary(self) -> dict[str, Any]:
        return {"setting": self.setting, "layouts": len(self.per_layout("emq")), "states": len(self.states),
                "emq": self.mean("emq"), "state_blind_emq": self.state_blind_emq(),
                "p_invalid": self.mean("p_invalid"), "p_losing": self.mean("p_losing"),
                "coverage": self.mean("coverage"), "moves": self.move_distribution(),
                "top_move_share": self.top_move()[1],
                "seconds_per_state": self.seconds / max(1, len(self.states)), **self.meta}


def measure(model: Any, tokenizer: Any, states: Sequence[ProbeState], variant: PromptVariant, *,
            setting: str | None = None) -> MeterResult:
    """Score the four canonical answers at every probe state under `variant`."""
    t0 = time.perf_counter()
    order = sorted(range(len(states)), key=lambda i: (states[i].layout, states[i].step))
    encoded = [answer_token_ids(tokenizer, variant.build(states[i].observation)) for i in order]
    logps = score_answers_shared(model, [e[0] for e in encoded], [e[1] for e in encoded])
    by_index = dict(zip(order, logps))
    scores = [StateScore(st.layout, st.step, by_index[i], st.optimal, st.invalid, st.losing)
              for i, st in enumerate(states)]
    return MeterResult(setting or variant.name, scores, time.perf_counter() - t0)


@dataclass(frozen=True)
class PairedGap:
    """Setting A minus setting B on the same states, with a bootstrap CI over layouts."""

    metric: str
    diff: float
    lo: float
    hi: float
    layouts: int

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "diff": self.diff, "ci95": [self.lo, self.hi], "layouts": self.layouts}


def paired_gap(a: MeterResult, b: MeterResult, metric: str = "emq", *, level: float = 0.95) -> PairedGap:
    """Mean over layouts of (A - B) per-layout means, with a percentile bootstrap over layouts."""
    pa, pb = a.per_layout(metric), b.per_layout(metric)
    if pa.keys() != pb.keys():
        raise DataError(f"paired_gap: {a.setting} and {b.setting} were measured on different layouts")
    d = [pa[k] - pb[k] for k in sorted(pa)]
    lo, hi = bootstrap_mean_ci(d, level=level)
    return PairedGap(metric, float(np.mean(d)), lo, hi, len(d))


def reference_emq(states: Sequence[ProbeState]) -> dict[str, float]:
    """E[mq] of fixed policies on these states (per-layout mean): uniform random, and each move always."""
    def per_layout(values: Sequence[float]) -> float:
        acc: dict[str, list[float]] = {}
        for st, v in zip(states, values):
            acc.setdefault(st.layout, []).append(v)
        return float(np.mean([np.mean(v) for v in acc.values()]))

    out = {"uniform": per_layout([sum(st.optimal) / len(st.optimal) for st in states])}
    for i, move in enumerate(CANONICAL_MOVES):
        out[f"always {move}"] = per_layout([float(st.optimal[i]) for st in states])
    return out
