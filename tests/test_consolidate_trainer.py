"""The consolidation loop on a tiny random model: it learns what the context taught, and it
checkpoints, resumes, accumulates and aborts exactly as documented."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from oel import prompts
from oel.backends.hf import HFBackend
from oel.backends.tiny import save_tiny_chat_model, tiny_chat_model
from oel.config import to_dict
from oel.consolidate import ConsolidateCommandConfig, ConsolidateConfig, command_trainer, consolidate, consolidate_command, trainer
from oel.consolidate.checkpoint import list_checkpoints
from oel.consolidate.scoring import pack, response_logits
from oel.consolidate.teacher import teacher_messages
from oel.errors import TrainingError
from oel.models import ModelConfig
from oel.trajectory import Message, Prefix, Trajectory, Turn, write_trajectories

OBSERVATIONS = ["Turn 1\nP . .\n. H .\n. . G", "Turn 2\n. P .\n. H .\n. . G",
                "Turn 1\nP . H\n. . .\nH . G", "Turn 2\n. . H\nP . .\nH . G"]
KNOWLEDGE = "Answer R."
TARGET, OTHERS = "R", ("U", "D", "L")
PRETRAIN_STEPS = 60
PRETRAIN_LR = 1e-2


pytestmark = pytest.mark.usefixtures("one_thread")


def _prompt(obs: str) -> tuple[Message, ...]:
    return (Message(role="user", content=prompts.get("policy_grid_v1").render(observation=obs)),)


def _write_inputs(d: Path) -> tuple[Path, Path]:
    turns = [Turn(prompt=list(_prompt(o)), observation=o, response="[right]") for o in OBSERVATIONS]
    trajs = [Trajectory(id=f"t{i}", env_id="tiny", seed=i, model_id="tiny", turns=turns[2 * i:2 * i + 2],
                        outcome="failure", passed=False) for i in range(2)]
    write_trajectories(d / "trajectories.jsonl", trajs)
    (d / "knowledge.txt").write_text(KNOWLEDGE + "\n")
    return d / "trajectories.jsonl", d / "knowledge.txt"


def _pretrained_model(d: Path, *, knows: bool = True) -> str:
    """A tiny model taught, by construction, that WITH the knowledge the answer is R, and that
    without it any of U/D/L/R is equally likely. Consolidation must move the second toward the first.
    `knows=False`: uniform over U/D/L/R with the knowledge too (its own teacher teaches nothing)."""
    model, tok = tiny_chat_model(seed=0)
    model.float().train()
    enc = HFBackend(model, tok, model_id="tiny")
    letters = [tok.convert_tokens_to_ids(a) for a in (TARGET, *OTHERS)]
    with_k, without_k = [], []
    for obs in OBSERVATIONS:
        pre = Prefix("x", 0, _prompt(obs), obs)
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


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("distill")
    traj, know = _write_inputs(d)
    return {"traj": str(traj), "knowledge": str(know), "pretrained": _pretrained_model(d),
            "random": save_tiny_chat_model(d / "random", seed=5)}


def _config(world, out: Path, **kw) -> ConsolidateCommandConfig:
    base = dict(trajectories=world["traj"], knowledge=[world["knowledge"]], output_dir=str(out),
                model=ModelConfig(name=world["random"], dtype="float32", device="cpu"),
                steps=4, batch_size=4, micro_batch_size=2, max_new_tokens=3, lr=1e-2, save_every=2,
                keep_last=2, top_k=16, on_existing="error")
    base.update(kw)
    return ConsolidateCommandConfig(**base)


def _p_target(model_dir: str, *, knowledge: bool) -> float:
    """Mean probability of the first answer token being TARGET over the observations."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir).float().eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    enc = HFBackend(model, tok, model_id="tiny")
    target = tok.convert_tokens_to_ids(TARGET)
    probs = []
    for obs in OBSERVATIONS:
        pre = Prefix("x", 0, _prompt(obs), obs)
        msgs = teacher_messages(pre, KNOWLEDGE) if knowledge else list(pre.prompt)
        batch = pack([enc.encode(msgs)], [[target]], pad_id=tok.pad_token_id)
        with torch.no_grad():
            probs.append(torch.softmax(response_logits(model, batch).float(), -1)[0, target].item())
    return sum(probs) / len(probs)


@pytest.mark.parametrize("finetune,loss,lr", [("lora", "topk_reverse_kl", 1e-2), ("full", "reverse_kl", 3e-3)])
def test_student_learns_without_knowledge_what_the_teacher_knew(world, tmp_path, finetune, loss, lr):
    before_student = _p_target(world["pretrained"], knowledge=False)
    teacher = _p_target(world["pretrained"], knowledge=True)
    assert teacher > 0.9 and before_student < 0.5  # the construction worked
    cfg = _config(world, tmp_path / "run", model=ModelConfig(name=world["pretrained"], dtype="float32", device="cpu"),
                  steps=20, finetune=finetune, loss=loss, lr=lr, save_every=0)
    result = consolidate_command(cfg)
    after = _p_target(str(result.model_dir), knowledge=False)
    assert after > before_student + 0.3, (before_student, after)
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == list(range(1, 21))


def test_metrics_and_checkpoints(world, tmp_path):
    result = consolidate_command(_config(world, tmp_path / "run", steps=5, save_every=1, keep_last=2))
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    keys = {"loss", "student_topk_mass", "response_len_mean", "tokens_per_s", "grad_norm", "lr", "step_s",
            "reverse_kl_full"}
    assert all(f"consolidate/{k}" in r for r in records for k in keys)
    assert [s for s, _ in list_checkpoints(tmp_path / "run" / "checkpoints")] == [3, 4]
    assert (result.model_dir / "model.safetensors").is_file()
    assert (tmp_path / "run" / "config.yaml").is_file()


def _final_weights(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(model_dir / "model.safetensors"))


def _metric_losses(run: Path) -> list[float]:
    return [json.loads(x)["consolidate/loss"] for x in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("finetune", ["lora", "full"])
def test_resume_gives_the_uninterrupted_result(world, tmp_path, finetune):
    straight = consolidate_command(_config(world, tmp_path / "a", finetune=finetune))
    # Interrupted run: stop after step 3 (checkpoint at 2, step 3 logged, then "crash").
    t = command_trainer(_config(world, tmp_path / "b", finetune=finetune, steps=4))
    t.prepare_output()
    t.config.steps = 3
    with pytest.raises(RuntimeError, match="crash"):
        t.run(on_step=lambda step, m: (_ for _ in ()).throw(RuntimeError("crash")) if step == 3 else None)
    resumed = consolidate_command(_config(world, tmp_path / "b", finetune=finetune, on_existing="resume"))
    assert resumed.steps == straight.steps == 4
    assert _metric_losses(tmp_path / "a") == pytest.approx(_metric_losses(tmp_path / "b"), abs=1e-6)
    wa, wb = _final_weights(straight.model_dir), _final_weights(resumed.model_dir)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-6), k


def test_existing_run_dir_is_refused_unless_asked(world, tmp_path):
    consolidate_command(_config(world, tmp_path / "run", steps=1))
    with pytest.raises(TrainingError, match="already holds a run"):
        consolidate_command(_config(world, tmp_path / "run", steps=1))
    consolidate_command(_config(world, tmp_path / "run", steps=1, on_existing="overwrite"))


def test_nan_loss_aborts_the_step_and_writes_nothing(world, tmp_path, monkeypatch):
    t = command_trainer(_config(world, tmp_path / "run", steps=3, save_every=1))
    t.prepare_output()
    before = {n: p.detach().clone() for n, p in t.student.named_parameters()}
    real = trainer.LOSSES["topk_reverse_kl"]

    def nan_loss(s, tt, y, c):
        loss, m = real(s, tt, y, c)
        return loss * float("nan"), m

    monkeypatch.setitem(trainer.LOSSES, "topk_reverse_kl", nan_loss)
    with pytest.raises(TrainingError, match="non-finite loss"):
        t.run()
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
    assert list_checkpoints(tmp_path / "run" / "checkpoints") == []
    assert not (tmp_path / "run" / "model").exists()
    assert t.step == 0
    for n, p in t.student.named_parameters():
        assert torch.equal(p, before[n]), n


def test_gradient_accumulation_equals_one_big_batch(world, tmp_path, monkeypatch):
    """Micro-batches of 1 give the full batch's loss and gradient (compared before the AdamW
    step: Adam's first update is ~lr*sign(g), which amplifies rounding in near-zero entries)."""
    results = []
    for mb in (4, 1):
        t = command_trainer(_config(world, tmp_path / f"mb{mb}", micro_batch_size=mb, finetune="full"))
        t.prepare_output()
        monkeypatch.setattr(t.optimizer, "step", lambda: None)
        samples = t.sample(1)
        metrics = t.train_step(1)
        results.append((samples, metrics, {n: p.grad.clone() for n, p in t.student.named_parameters()}))
    (s4, m4, g4), (s1, m1, g1) = results
    assert [s.response for s in s4] == [s.response for s in s1]  # per-row seeds: same samples
    # equal up to float32 rounding (padding differs between the two layouts)
    assert m4["loss"] == pytest.approx(m1["loss"], rel=1e-5)
    assert m4["grad_norm"] == pytest.approx(m1["grad_norm"], rel=1e-4)
    for n in g4:
        assert torch.allclose(g4[n], g1[n], rtol=1e-3, atol=1e-6), n


@pytest.mark.parametrize("loss", ["forward_kl", "sft"])
def test_off_policy_baseline_trains_on_teacher_samples(world, tmp_path, loss):
    cfg = _config(world, tmp_path / "run", model=ModelConfig(name=world["pretrained"], dtype="float32", device="cpu"),
                  sampler="off_policy", loss=loss, steps=2, save_every=0)
    t = command_trainer(cfg)
    t.prepare_output()
    samples = t.sample(1)
    target = t.tokenizer.convert_tokens_to_ids(TARGET)
    # the pretrained teacher answers R with knowledge: the baseline trains on ITS answers
    assert sum(s.response[0] == target for s in samples) >= 3
    result = t.run()
    assert result.steps == 2 and (result.model_dir / "config.json").is_file()


def test_sampled_estimator_and_full_kl_run(world, tmp_path):
    import math

    for loss in ("sampled_reverse_kl", "reverse_kl"):
        m = consolidate_command(_config(world, tmp_path / loss, loss=loss, steps=1)).last_metrics
        assert math.isfinite(m["loss"]) and math.isfinite(m["grad_norm"]) and m["reverse_kl_full"] >= 0
        if loss == "reverse_kl":  # the loss IS the full-vocabulary KL that is logged beside every loss
            assert m["loss"] == pytest.approx(m["reverse_kl_full"], rel=1e-6)


def test_the_library_takes_its_inputs_as_arguments_and_knowledge_as_texts(world, tmp_path):
    """`consolidate(settings, model=, knowledge=, trajectories=, output_dir=)`: the knowledge is texts
    (no files to read), the model a config or the model already loaded (it carries its config)."""
    from oel.errors import DataError
    from oel.knowledge import Knowledge
    from oel.models import load_model

    settings = ConsolidateConfig(steps=1, batch_size=4, micro_batch_size=2, max_new_tokens=3, top_k=16)
    model = ModelConfig(name=world["random"], dtype="float32", device="cpu")
    result = consolidate(settings, model=load_model(model), knowledge=Knowledge.of([KNOWLEDGE, "Go down."]),
                         trajectories=world["traj"], output_dir=tmp_path / "s")
    assert result.steps == 1
    record = yaml.safe_load((tmp_path / "s" / "config.yaml").read_text())
    assert record["model"] == to_dict(model) and record["knowledge"] == [] and record["steps"] == 1
    assert record["output_dir"] == str(tmp_path / "s") and record["trajectories"] == world["traj"]
    with pytest.raises(DataError, match="every knowledge text must be non-empty"):
        consolidate(settings, model=model, knowledge=Knowledge.of(["  "]), trajectories=world["traj"],
                    output_dir=tmp_path / "blank")
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(DataError, match="empty"):
        consolidate_command(_config(world, tmp_path / "e", knowledge=[str(tmp_path / "empty.txt")], steps=1))


def test_the_run_record_keeps_the_keys_and_order_of_the_one_config_it_was(world, tmp_path):
    """config.yaml (and every checkpoint's config) reads as it did when the inputs were config keys:
    a run dir of either version resumes under the other."""
    cfg = _config(world, tmp_path / "run", steps=2, save_every=1, keep_last=1)
    consolidate_command(cfg)
    text = (tmp_path / "run" / "config.yaml").read_text()
    keys = list(yaml.safe_load(text))  # in file order
    old_order = ["trajectories", "knowledge", "output_dir", "model", *[k for k in ConsolidateConfig.model_fields]]
    old_order.insert(old_order.index("keep_last") + 1, "on_existing")
    assert keys == old_order
    assert yaml.safe_load(text) == {**to_dict(cfg), "knowledge": [world["knowledge"]]}
    # a checkpoint saved with a key since removed, and without one since added, still resumes
    from oel.consolidate import checkpoint

    (_, path), = list_checkpoints(tmp_path / "run" / "checkpoints")
    state = checkpoint.read_state(path)
    assert state["config"] == yaml.safe_load(text)
    state["config"]["a_removed_key"] = "x"
    del state["config"]["teacher_dtype"]
    (path / checkpoint.STATE_FILE).write_text(json.dumps(state))
    assert consolidate_command(_config(world, tmp_path / "run", steps=2, on_existing="resume")).steps == 2


def test_cli_runs_a_round_from_key_value_overrides(world, tmp_path, capsys):
    import argparse

    from oel.consolidate import cli

    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="command"))
    ns = parser.parse_args(["consolidate", f"trajectories={world['traj']}", f"knowledge=[{world['knowledge']}]",
                            f"output_dir={tmp_path / 'run'}", f"model.name={world['random']}", "model.dtype=float32",
                            "model.device=cpu", "steps=2", "batch_size=2", "micro_batch_size=1", "max_new_tokens=2"])
    assert ns.func(ns) == 0
    assert "consolidated model:" in capsys.readouterr().out
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 2


def test_resume_under_different_settings_is_refused(world, tmp_path):
    consolidate_command(_config(world, tmp_path / "run", steps=2, save_every=1, keep_last=1))
    with pytest.raises(TrainingError, match="lr="):
        consolidate_command(_config(world, tmp_path / "run", steps=4, lr=1e-3, on_existing="resume"))
    assert consolidate_command(_config(world, tmp_path / "run", steps=3, on_existing="resume")).steps == 3


def test_gradient_checkpointing_gives_the_same_gradients(world, tmp_path, monkeypatch):
    grads = []
    for ckpt in (False, True):
        t = command_trainer(_config(world, tmp_path / f"gc{ckpt}", gradient_checkpointing=ckpt))
        t.prepare_output()
        monkeypatch.setattr(t.optimizer, "step", lambda: None)
        t.train_step(1)
        grads.append({n: p.grad.clone() for n, p in t.student.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for n in grads[0]:
        assert torch.allclose(grads[0][n], grads[1][n], rtol=1e-4, atol=1e-7), n
    assert any(g.abs().sum() > 0 for g in grads[1].values())
