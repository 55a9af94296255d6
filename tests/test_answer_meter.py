"""The small-answer meter: exact scores against per-token brute force, the state-blind comparison
and the mutual information against hand-computed cases, the thought format's splitting."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from oel.backends.base import SamplingParams
from oel.backends.hf import HFBackend
from oel.backends.tiny import tiny_chat_model
from oel.envs import EnvConfig, make_env
from oel.envs.seeds import round_seeds
from oel.evaluate.answer_meter import (AnswerMeterResult, AnswerProbe, AnswerScore, measure_answers,
                                       measure_answers_thinking, paired_answer_gap, split_thought)
from oel.evaluate.answer_probes import consistent_guesser, played_probes
from oel.evaluate.meter import PromptVariant, answer_token_ids

POLICY = PromptVariant("policy_game_v1", "policy_game_v1")


@pytest.fixture(scope="module")
def tiny():
    return tiny_chat_model(seed=5, dtype=torch.float32)


@pytest.fixture(scope="module")
def probes():
    return played_probes(EnvConfig(game="guess_number"), round_seeds(0, "train", 2), consistent_guesser)


def brute_logp(model, prompt_ids, answer_ids) -> float:
    total = 0.0
    with torch.inference_mode():
        for k, tok in enumerate(answer_ids):
            logits = model(input_ids=torch.tensor([list(prompt_ids) + list(answer_ids[:k])])).logits[0, -1].float()
            total += float(torch.log_softmax(logits, -1)[tok])
    return total


def test_scores_match_brute_force(tiny, probes):
    model, tok = tiny
    result = measure_answers(model, tok, probes[1:2], POLICY)
    for score in result.scores:
        prompt_ids, answers = answer_token_ids(tok, POLICY.build(score.probe.observation), score.probe.answers)
        for got, ids in list(zip(score.logp, answers))[:6]:
            assert got == pytest.approx(brute_logp(model, prompt_ids, ids), abs=2e-4)
        assert score.p.sum() == pytest.approx(1.0)


def probe(key: str, answers=("[a]", "[b]"), ok=(True, False), value=(1.0, 0.0)) -> AnswerProbe:
    return AnswerProbe(key, 0, 0, "obs", answers, ok, ok, (False, False), value)


def test_state_blind_gap_and_information_by_hand():
    # state 1: answer a is right; state 2: answer b is right. A reader of the state puts .9 on the right one.
    s1 = AnswerScore(probe("k1", ok=(True, False)), [math.log(0.9), math.log(0.1)])
    s2 = AnswerScore(probe("k2", ok=(False, True)), [math.log(0.1), math.log(0.9)])
    reader = AnswerMeterResult("reader", [s1, s2])
    assert reader.mean("ok") == pytest.approx(0.9)
    assert reader.mean("ok", blind=True) == pytest.approx(0.5)  # its average is (.5, .5) everywhere
    expected_mi = 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)
    assert reader.dependence() == pytest.approx(expected_mi)
    # a prior: the same answer everywhere reads nothing, whatever it scores
    prior = AnswerMeterResult("prior", [AnswerScore(s1.probe, [math.log(0.8), math.log(0.2)]),
                                        AnswerScore(s2.probe, [math.log(0.8), math.log(0.2)])])
    assert prior.dependence() == pytest.approx(0.0, abs=1e-12)
    assert prior.blind_gap("ok")["diff"] == pytest.approx(0.0, abs=1e-12)
    gap = paired_answer_gap(reader, prior, "ok")
    assert gap["diff"] == pytest.approx(0.9 - 0.5)


def test_split_thought():
    parse = make_env(EnvConfig(game="guess_number")).parse
    assert split_thought("It said higher than 10, so [15]", parse) == ("It said higher than 10, so ", True)
    assert split_thought("[Player] [15] and [GAME]", parse) == ("[Player] ", True)
    assert split_thought("no idea", parse) == ("no idea ", False)


def test_thought_meter_on_a_tiny_model(tiny, probes):
    model, tok = tiny
    backend = HFBackend(model, tok, model_id="tiny")
    variant = PromptVariant("policy_game_think_v1", "policy_game_think_v1")
    parse = make_env(EnvConfig(game="guess_number")).parse
    params = SamplingParams(max_new_tokens=8, seed=1)
    result, drawn = measure_answers_thinking(backend, probes[:2], variant, parse, params, samples=2)
    assert len(result.scores) == 2 and all(len(d) == 2 for d in drawn)
    for score, samples in zip(result.scores, drawn):
        assert score.p.sum() == pytest.approx(1.0)
        expected = np.mean([AnswerScore(score.probe, d.logp).p for d in samples], axis=0)
        assert score.p == pytest.approx(expected)
    again, _ = measure_answers_thinking(backend, probes[:2], variant, parse, params, samples=2)
    flat = lambda r: [x for s in r.scores for x in s.logp]  # noqa: E731
    assert flat(again) == pytest.approx(flat(result))  # seeded: the same thoughts
