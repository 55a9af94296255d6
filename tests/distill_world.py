"""A tiny world in which consolidation has something to learn, shared by the consolidation tests:
four grid observations, one lesson ("Answer R."), and a tiny model pretrained so that WITH the
lesson it answers R and without it any of U/D/L/R (`pretrained_model`); `p_target` measures it.
The `distill_world` fixture (tests/conftest.py) writes it to disk once per test module."""

from __future__ import annotations

from pathlib import Path

import torch

from oel import prompts
from oel.backends.hf import HFBackend
from oel.backends.tiny import tiny_chat_model
from oel.consolidate import ConsolidateCommandConfig
from oel.consolidate.scoring import pack, response_logits
from oel.consolidate.teacher import teacher_messages
from oel.models import ModelConfig
from oel.trajectory import Message, Prefix, Trajectory, Turn, write_trajectories

OBSERVATIONS = ["Turn 1\nP . .\n. H .\n. . G", "Turn 2\n. P .\n. H .\n. . G",
                "Turn 1\nP . H\n. . .\nH . G", "Turn 2\n. . H\nP . .\nH . G"]
KNOWLEDGE = "Answer R."
TARGET, OTHERS = "R", ("U", "D", "L")
PRETRAIN_STEPS = 60
PRETRAIN_LR = 1e-2



def grid_prompt(obs: str) -> tuple[Message, ...]:
    return (Message(role="user", content=prompts.get("policy_grid_v1").render(observation=obs)),)


def write_inputs(d: Path) -> tuple[Path, Path]:
    turns = [Turn(prompt=list(grid_prompt(o)), observation=o, response="[right]") for o in OBSERVATIONS]
    trajs = [Trajectory(id=f"t{i}", env_id="tiny", seed=i, model_id="tiny", turns=turns[2 * i:2 * i + 2],
                        outcome="failure", passed=False) for i in range(2)]
    write_trajectories(d / "trajectories.jsonl", trajs)
    (d / "knowledge.txt").write_text(KNOWLEDGE + "\n")
    return d / "trajectories.jsonl", d / "knowledge.txt"


def pretrained_model(d: Path, *, knows: bool = True) -> str:
    """A tiny model taught, by construction, that WITH the knowledge the answer is R, and that
    without it any of U/D/L/R is equally likely. Consolidation must move the second toward the first.
    `knows=False`: uniform over U/D/L/R with the knowledge too (its own teacher teaches nothing)."""
    model, tok = tiny_chat_model(seed=0)
    model.float().train()
    enc = HFBackend(model, tok, model_id="tiny")
    letters = [tok.convert_tokens_to_ids(a) for a in (TARGET, *OTHERS)]
    with_k, without_k = [], []
    for obs in OBSERVATIONS:
        pre = Prefix("x", 0, grid_prompt(obs), obs)
        with_k.append(enc.encode(teacher_messages(pre, KNOWLEDGE)))
        without_k.append(enc.encode(list(pre.prompt)))
    batch = pack(with_k + without_k, [[letters[0], tok.eos_token_id]] * (2 * len(OBSERVATIONS)), pad_id=tok.pad_token_id)
    # targets: with knowledge -> R; without -> uniform over the four letters (then the end token)
    target_NV = torch.zeros(len(batch.response_tokens_N), model.config.vocab_size)
    for row in range(2 * len(OBSERVATIONS)):
        if row < len(OBSERVATIONS) and knows:
            target_NV[2 * row, letters[0]] = 1.0
        else:
            target_NV[2 * row, letters] = 1.0 / len(letters)
        target_NV[2 * row + 1, tok.eos_token_id] = 1.0
    opt = torch.optim.Adam(model.parameters(), lr=PRETRAIN_LR)
    for _ in range(PRETRAIN_STEPS):
        logp_NV = torch.log_softmax(response_logits(model, batch), -1)
        loss = -(target_NV * logp_NV).sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    out = d / ("pretrained" if knows else "pretrained_ignorant")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


def command_config(world: dict[str, str], out: Path, **kw) -> ConsolidateCommandConfig:
    base = dict(trajectories=world["traj"], knowledge=[world["knowledge"]], output_dir=str(out),
                model=ModelConfig(name=world["random"], dtype="float32", device="cpu"),
                steps=4, batch_size=4, micro_batch_size=2, max_new_tokens=3, lr=1e-2, save_every=2,
                keep_last=2, top_k=16, on_existing="error")
    base.update(kw)
    return ConsolidateCommandConfig(**base)


def p_target(model_dir: str, *, knowledge: bool) -> float:
    """Mean probability of the first answer token being TARGET over the observations."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir).float().eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    enc = HFBackend(model, tok, model_id="tiny")
    target = tok.convert_tokens_to_ids(TARGET)
    probs = []
    for obs in OBSERVATIONS:
        pre = Prefix("x", 0, grid_prompt(obs), obs)
        msgs = teacher_messages(pre, KNOWLEDGE) if knowledge else list(pre.prompt)
        batch = pack([enc.encode(msgs)], [[target]], pad_id=tok.pad_token_id)
        with torch.no_grad():
            probs.append(torch.softmax(response_logits(model, batch).float(), -1)[0, target].item())
    return sum(probs) / len(probs)
