"""Sampling agrees with the exact meter: answers sampled at the probe states follow the scored probabilities."""

from __future__ import annotations

import math

import pytest
import torch

from oel.backends.tiny import tiny_chat_model
from oel.envs.seeds import round_seeds
from oel.evaluate.meter import CANONICAL_MOVES, answer_token_ids, measure, policy_variant, probe_states
from oel.evaluate.meter_check import sample_check, summary_line

TARGET = (0.1, 0.4, 0.2, 0.3)
"""The move distribution the tiny model is taught, so that the four answers carry most of its mass."""
SAMPLES = 200
TRAIN_STEPS = 10
SIGMAS = 5.0


@pytest.fixture(scope="module")
def taught():
    """A tiny random model trained for a few steps toward TARGET over the four answers at every probe state."""
    model, tok = tiny_chat_model(seed=5, dtype=torch.float32)
    states = probe_states(round_seeds(0, "train", 40), max_layouts=1)
    batches = []  # per state: the four full sequences, right-padded, and where each answer's tokens sit
    for st in states:
        prompt, answers = answer_token_ids(tok, policy_variant().build(st.observation))
        width = len(prompt) + max(len(a) for a in answers)
        ids = torch.zeros((len(answers), width), dtype=torch.long)
        for i, a in enumerate(answers):
            ids[i, :len(prompt) + len(a)] = torch.tensor(prompt + a)
        batches.append((ids, len(prompt), answers))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(TRAIN_STEPS):
        opt.zero_grad()
        loss = torch.zeros(())
        for ids, n, answers in batches:
            lp = torch.log_softmax(model(input_ids=ids).logits.float(), -1)
            for i, (a, w) in enumerate(zip(answers, TARGET)):
                loss = loss - w * lp[i, n - 1:n - 1 + len(a)].gather(1, torch.tensor(a).unsqueeze(1)).sum()
        (loss / len(batches)).backward()
        opt.step()
    model.eval()
    return model, tok, states


def test_sampled_answers_follow_the_meter_probabilities(taught, one_thread):
    model, tok, states = taught
    meter = measure(model, tok, states, policy_variant())
    assert min(s.coverage for s in meter.states) > 0.5  # the four answers are most of the policy
    check = sample_check(model, tok, states, policy_variant(), meter, samples_per_state=SAMPLES, seed=1)
    exact = {(s.layout, s.step): s for s in meter.states}
    for s in check.states:
        e = exact[(s.layout, s.step)]
        assert s.counted + s.other == SAMPLES
        for count, logp in zip(s.counts + [s.other], e.logp + [math.log(max(1e-12, 1 - e.coverage))]):
            p = math.exp(logp)  # each answer (and 'other') is a binomial draw with the scored probability
            assert abs(count - SAMPLES * p) <= SIGMAS * math.sqrt(SAMPLES * p * (1 - p)) + 1, (count, p)
    summary = check.summary()
    assert summary["samples"] == SAMPLES * len(states) and abs(summary["z"]) < SIGMAS
    assert summary["meter_emq"] == pytest.approx(meter.mean("emq"))
    assert summary["within_meter_ci"] == (summary["meter_ci95"][0] <= summary["sampled_mq"] <= summary["meter_ci95"][1])
    assert "sampled moves" in summary_line(summary) and str(SAMPLES) in summary_line(summary)


def test_same_seed_same_samples(taught, one_thread):
    model, tok, states = taught
    meter = measure(model, tok, states[:2], policy_variant())
    a = sample_check(model, tok, states[:2], policy_variant(), meter, samples_per_state=20, seed=7)
    b = sample_check(model, tok, states[:2], policy_variant(), meter, samples_per_state=20, seed=7)
    assert [s.counts for s in a.states] == [s.counts for s in b.states]
    assert len(CANONICAL_MOVES) == len(a.states[0].counts)


def test_oel_meter_sample_check_option(tmp_path, capsys):
    import json

    from oel.cli import main
    from oel.backends.tiny import save_tiny_chat_model

    model_dir = save_tiny_chat_model(tmp_path / "tiny", seed=1)
    lessons = tmp_path / "lessons.txt"
    lessons.write_text("- from the top row never answer [up]\n")
    out = tmp_path / "gap.json"
    assert main(["meter", f"model.name={model_dir}", "model.dtype=float32", "model.device=cpu", "control=false",
                 f"knowledge_file={lessons}", "max_layouts=1", "num_seeds=30", "sample_check=4", f"out={out}"]) == 0
    assert "sampling check (student)" in capsys.readouterr().out
    data = json.loads(out.read_text())["sample_check"]
    assert data["samples_per_state"] == 4 and data["samples"] == 4 * data["states"] == 4 * len(data["per_state"])
    assert main(["meter", f"model.name={model_dir}", f"knowledge_file={lessons}", "sample_check=-1"]) == 2
