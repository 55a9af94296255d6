"""The consolidation loop on a tiny random model: it learns what the context taught, and it
checkpoints, resumes, accumulates and aborts exactly as documented."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from distill_world import KNOWLEDGE, TARGET, command_config, p_target
from oel.config import to_dict
from oel.consolidate import ConsolidateConfig, command_trainer, consolidate, consolidate_command, trainer
from oel.consolidate.checkpoint import list_checkpoints
from oel.errors import TrainingError
from oel.models import ModelConfig

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("finetune,loss,lr", [("lora", "topk_reverse_kl", 1e-2), ("full", "reverse_kl", 3e-3)])
def test_student_learns_without_knowledge_what_the_teacher_knew(distill_world, tmp_path, finetune, loss, lr):
    before_student = p_target(distill_world["pretrained"], knowledge=False)
    teacher = p_target(distill_world["pretrained"], knowledge=True)
    assert teacher > 0.9 and before_student < 0.5  # the construction worked
    cfg = command_config(distill_world, tmp_path / "run", model=ModelConfig(name=distill_world["pretrained"], dtype="float32", device="cpu"),
                  steps=20, finetune=finetune, loss=loss, lr=lr, save_every=0)
    result = consolidate_command(cfg)
    after = p_target(str(result.model_dir), knowledge=False)
    assert after > before_student + 0.3, (before_student, after)
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == list(range(1, 21))


def test_metrics_and_checkpoints(distill_world, tmp_path):
    result = consolidate_command(command_config(distill_world, tmp_path / "run", steps=5, save_every=1, keep_last=2))
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
def test_resume_gives_the_uninterrupted_result(distill_world, tmp_path, finetune):
    straight = consolidate_command(command_config(distill_world, tmp_path / "a", finetune=finetune))
    # Interrupted run: stop after step 3 (checkpoint at 2, step 3 logged, then "crash").
    t = command_trainer(command_config(distill_world, tmp_path / "b", finetune=finetune, steps=4))
    t.prepare_output()
    t.config.steps = 3
    with pytest.raises(RuntimeError, match="crash"):
        t.run(on_step=lambda step, m: (_ for _ in ()).throw(RuntimeError("crash")) if step == 3 else None)
    resumed = consolidate_command(command_config(distill_world, tmp_path / "b", finetune=finetune, on_existing="resume"))
    assert resumed.steps == straight.steps == 4
    assert _metric_losses(tmp_path / "a") == pytest.approx(_metric_losses(tmp_path / "b"), abs=1e-6)
    wa, wb = _final_weights(straight.model_dir), _final_weights(resumed.model_dir)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-6), k


def test_existing_run_dir_is_refused_unless_asked(distill_world, tmp_path):
    consolidate_command(command_config(distill_world, tmp_path / "run", steps=1))
    with pytest.raises(TrainingError, match="already holds a run"):
        consolidate_command(command_config(distill_world, tmp_path / "run", steps=1))
    consolidate_command(command_config(distill_world, tmp_path / "run", steps=1, on_existing="overwrite"))


def test_nan_loss_aborts_the_step_and_writes_nothing(distill_world, tmp_path, monkeypatch):
    t = command_trainer(command_config(distill_world, tmp_path / "run", steps=3, save_every=1))
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


def test_gradient_accumulation_equals_one_big_batch(distill_world, tmp_path, monkeypatch):
    """Micro-batches of 1 give the full batch's loss and gradient (compared before the AdamW
    step: Adam's first update is ~lr*sign(g), which amplifies rounding in near-zero entries)."""
    results = []
    for mb in (4, 1):
        t = command_trainer(command_config(distill_world, tmp_path / f"mb{mb}", micro_batch_size=mb, finetune="full"))
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
def test_off_policy_baseline_trains_on_teacher_samples(distill_world, tmp_path, loss):
    cfg = command_config(distill_world, tmp_path / "run", model=ModelConfig(name=distill_world["pretrained"], dtype="float32", device="cpu"),
                  sampler="off_policy", loss=loss, steps=2, save_every=0)
    t = command_trainer(cfg)
    t.prepare_output()
    samples = t.sample(1)
    target = t.tokenizer.convert_tokens_to_ids(TARGET)
    # the pretrained teacher answers R with knowledge: the baseline trains on ITS answers
    assert sum(s.response[0] == target for s in samples) >= 3
    result = t.run()
    assert result.steps == 2 and (result.model_dir / "config.json").is_file()


def test_sampled_estimator_and_full_kl_run(distill_world, tmp_path):
    import math

    for loss in ("sampled_reverse_kl", "reverse_kl"):
        m = consolidate_command(command_config(distill_world, tmp_path / loss, loss=loss, steps=1)).last_metrics
        assert math.isfinite(m["loss"]) and math.isfinite(m["grad_norm"]) and m["reverse_kl_full"] >= 0
        if loss == "reverse_kl":  # the loss IS the full-vocabulary KL that is logged beside every loss
            assert m["loss"] == pytest.approx(m["reverse_kl_full"], rel=1e-6)


def test_the_library_takes_its_inputs_as_arguments_and_knowledge_as_texts(distill_world, tmp_path):
    """`consolidate(settings, model=, knowledge=, trajectories=, output_dir=)`: the knowledge is texts
    (no files to read), the model a config or the model already loaded (it carries its config)."""
    from oel.errors import DataError
    from oel.knowledge import Knowledge
    from oel.models import load_model

    settings = ConsolidateConfig(steps=1, batch_size=4, micro_batch_size=2, max_new_tokens=3, top_k=16)
    model = ModelConfig(name=distill_world["random"], dtype="float32", device="cpu")
    result = consolidate(settings, model=load_model(model), knowledge=Knowledge.of([KNOWLEDGE, "Go down."]),
                         trajectories=distill_world["traj"], output_dir=tmp_path / "s")
    assert result.steps == 1
    record = yaml.safe_load((tmp_path / "s" / "config.yaml").read_text())
    assert record["model"] == to_dict(model) and record["knowledge"] == [] and record["steps"] == 1
    assert record["output_dir"] == str(tmp_path / "s") and record["trajectories"] == distill_world["traj"]
    with pytest.raises(DataError, match="every knowledge text must be non-empty"):
        consolidate(settings, model=model, knowledge=Knowledge.of(["  "]), trajectories=distill_world["traj"],
                    output_dir=tmp_path / "blank")
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(DataError, match="empty"):
        consolidate_command(command_config(distill_world, tmp_path / "e", knowledge=[str(tmp_path / "empty.txt")], steps=1))


def test_the_run_record_keeps_the_keys_and_order_of_the_one_config_it_was(distill_world, tmp_path):
    """config.yaml (and every checkpoint's config) reads as it did when the inputs were config keys:
    a run dir of either version resumes under the other."""
    cfg = command_config(distill_world, tmp_path / "run", steps=2, save_every=1, keep_last=1)
    consolidate_command(cfg)
    text = (tmp_path / "run" / "config.yaml").read_text()
    keys = list(yaml.safe_load(text))  # in file order
    old_order = ["trajectories", "knowledge", "output_dir", "model", *[k for k in ConsolidateConfig.model_fields]]
    old_order.insert(old_order.index("keep_last") + 1, "on_existing")
    assert keys == old_order
    assert yaml.safe_load(text) == {**to_dict(cfg), "knowledge": [distill_world["knowledge"]]}
    # a checkpoint saved with a key since removed, and without one since added, still resumes
    from oel.consolidate import checkpoint

    (_, path), = list_checkpoints(tmp_path / "run" / "checkpoints")
    state = checkpoint.read_state(path)
    assert state["config"] == yaml.safe_load(text)
    state["config"]["a_removed_key"] = "x"
    del state["config"]["teacher_dtype"]
    (path / checkpoint.STATE_FILE).write_text(json.dumps(state))
    assert consolidate_command(command_config(distill_world, tmp_path / "run", steps=2, on_existing="resume")).steps == 2


def test_cli_runs_a_round_from_key_value_overrides(distill_world, tmp_path, capsys):
    import argparse

    from oel.consolidate import cli

    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="command"))
    ns = parser.parse_args(["consolidate", f"trajectories={distill_world['traj']}", f"knowledge=[{distill_world['knowledge']}]",
                            f"output_dir={tmp_path / 'run'}", f"model.name={distill_world['random']}", "model.dtype=float32",
                            "model.device=cpu", "steps=2", "batch_size=2", "micro_batch_size=1", "max_new_tokens=2"])
    assert ns.func(ns) == 0
    assert "consolidated model:" in capsys.readouterr().out
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 2


def test_resume_under_different_settings_is_refused(distill_world, tmp_path):
    consolidate_command(command_config(distill_world, tmp_path / "run", steps=2, save_every=1, keep_last=1))
    with pytest.raises(TrainingError, match="lr="):
        consolidate_command(command_config(distill_world, tmp_path / "run", steps=4, lr=1e-3, on_existing="resume"))
    assert consolidate_command(command_config(distill_world, tmp_path / "run", steps=3, on_existing="resume")).steps == 3


def test_gradient_checkpointing_gives_the_same_gradients(distill_world, tmp_path, monkeypatch):
    grads = []
    for ckpt in (False, True):
        t = command_trainer(command_config(distill_world, tmp_path / f"gc{ckpt}", gradient_checkpointing=ckpt))
        t.prepare_output()
        monkeypatch.setattr(t.optimizer, "step", lambda: None)
        t.train_step(1)
        grads.append({n: p.grad.clone() for n, p in t.student.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for n in grads[0]:
        assert torch.allclose(grads[0][n], grads[1][n], rtol=1e-4, atol=1e-7), n
    assert any(g.abs().sum() > 0 for g in grads[1].values())
