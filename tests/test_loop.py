"""The OEL loop on a tiny random model: config rules, a full run, and kill -9 + resume.

The kill test runs `oel loop` in a subprocess, kills it with SIGKILL in the middle of each
stage in turn (collect, extract, evaluate, consolidate), reruns it, and checks that the
final artifacts equal those of an uninterrupted run with the same config.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from oel.backends.tiny import save_tiny_chat_model
from oel.config import load_config
from oel.errors import ConfigError
from oel.layout import MARKER
from oel.loop import LoopConfig, run_loop
from oel.loop.reuse import ReuseSource, copy_stage
from oel.loop.run import prepare_run_dir, stages_for_round
from oel.report import write_report

POLL_S = 0.01
KILL_TIMEOUT_S = 240


def tiny_overrides(model_dir: str, run_dir: Path) -> list[str]:
    """A one-round run small enough for CI, yet every stage has several units of work."""
    return [
        f"run_dir={run_dir}", "rounds=1", f"model.name={model_dir}", "model.dtype=float32", "model.device=cpu",
        "tensorboard=false",
        "collect.num_seeds=6", "collect.batch_size=2", "collect.sampling.max_new_tokens=6",
        "extract.kind=raw_trajectories", "extract.num_runs=2", "extract.num_trajectories=3", "extract.budget_tokens=3000",
        "consolidate.steps=4", "consolidate.batch_size=2", "consolidate.micro_batch_size=1",
        "consolidate.max_new_tokens=6", "consolidate.save_every=1",
        "evaluate.games.num_maps=4", "evaluate.games.sampling_seeds=[0,1]", "evaluate.games.batch_size=2",
        "evaluate.games.sampling.max_new_tokens=6", "evaluate.ifeval.num_prompts=2",
        "evaluate.ifeval.max_new_tokens=6", "evaluate.ifeval.batch_size=1",
    ]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    return save_tiny_chat_model(tmp_path_factory.mktemp("tiny") / "model", seed=3)


def test_loop_owned_fields_and_config_changes_are_refused(tmp_path):
    """A stage command's input key has no place in a loop config (the loop passes its own): one line says so."""
    with pytest.raises(ConfigError, match=r"^collect\.out: set by the loop; leave it out of a loop config \(set the "
                                          r"top-level model/env/run_dir instead\)$"):
        load_config(LoopConfig, None, ["collect.out=x.jsonl"])
    with pytest.raises(ConfigError, match=r"^consolidate\.model: set by the loop"):
        load_config(LoopConfig, None, ["consolidate.model.name=x"])
    for key, override in (("collect.env", "collect.env.game=sokoban"), ("extract.out_dir", "extract.out_dir=x"),
                          ("consolidate.knowledge", "consolidate.knowledge=[k.txt]"),
                          ("evaluate.out_dir", "evaluate.out_dir=x"), ("evaluate.model", "evaluate.model.name=x")):
        with pytest.raises(ConfigError, match=rf"^{re.escape(key)}: set by the loop"):
            load_config(LoopConfig, None, [override])
    with pytest.raises(ConfigError, match=r"^collect\.num_sed: unknown config key \(did you mean collect\.num_seeds\?\)"):
        load_config(LoopConfig, None, ["collect.num_sed=3"])
    from oel.online.config import OnlineConfig  # the scheduler's stage sections: the same rule

    with pytest.raises(ConfigError, match=r"^consolidate\.output_dir: set by the loop"):
        load_config(OnlineConfig, None, ["consolidate.output_dir=x"])
    base = load_config(LoopConfig, None, [f"run_dir={tmp_path}"])
    prepare_run_dir(base)
    changed = load_config(LoopConfig, None, [f"run_dir={tmp_path}", "consolidate.lr=0.5", "rounds=3"])
    with pytest.raises(ConfigError, match=r"different config \(consolidate\.lr, rounds\); .*force=true"):
        prepare_run_dir(changed)
    prepare_run_dir(load_config(LoopConfig, None, [f"run_dir={tmp_path}", "consolidate.lr=0.5", "force=true"]))
    # where finished stages may be copied from changes no result, so a run resumes with another
    prepare_run_dir(load_config(LoopConfig, None, [f"run_dir={tmp_path}", "consolidate.lr=0.5", "reuse_from=elsewhere"]))


def _run_cli(overrides: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "oel.cli", "loop", *overrides], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _nonempty(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 0


def _kill_when(proc: subprocess.Popen, started: Path, finished: Path) -> bool:
    """SIGKILL `proc` once `started` exists and before `finished` does; True if killed mid-stage."""
    deadline = time.monotonic() + KILL_TIMEOUT_S
    while time.monotonic() < deadline and proc.poll() is None:
        if _nonempty(started) and not finished.exists():
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(POLL_S)
    proc.wait()
    return False


def _trajectories(path: Path) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return sorted(rows, key=lambda r: r["id"])


def _artifacts(run: Path) -> dict:
    """What must not depend on whether the run was interrupted."""
    r0 = run / "round_0"
    out = {name: _trajectories(r0 / "collect" / name) for name in ("extract.jsonl", "train.jsonl")}
    out["knowledge"] = [(r0 / "extract" / f"knowledge_{k}.txt").read_text() for k in range(2)]
    for r in (0, 1):
        ev = json.loads((run / f"round_{r}" / "evaluate" / "evaluation.json").read_text())
        out[f"eval{r}"] = {part: (ev[part] or {}).get("metrics") for part in ("games", "games_knowledge")}
        out[f"ifeval{r}"] = ev["ifeval"]["scores"]
        out[f"eval{r}_trajectories"] = _trajectories(run / f"round_{r}" / "evaluate" / "games_no_knowledge" / "trajectories.jsonl")
    out["losses"] = [round(json.loads(line)["consolidate/loss"], 4)
                     for line in (r0 / "consolidate" / "metrics.jsonl").read_text().splitlines()]
    return out


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "round_0" / "consolidate" / "model" / "model.safetensors"))


@pytest.mark.slow
def test_full_loop_then_report(tiny_model, tmp_path):
    run = tmp_path / "run"
    config = load_config(LoopConfig, None, tiny_overrides(tiny_model, run))
    results = run_loop(config)
    assert set(results) == {"0", "1"}
    assert set(results["0"]) == {"collect", "extract", "evaluate", "consolidate"} and set(results["1"]) == {"evaluate"}
    for stage in ("collect", "extract", "evaluate", "consolidate"):
        assert (run / "round_0" / stage / MARKER).is_file()
    assert results["0"]["evaluate"]["game_episodes"] == 8 and "icl_pass_rate" in results["0"]["evaluate"]
    assert "icl_pass_rate" not in results["1"]["evaluate"]  # the last model has no knowledge of its own
    # the exact meter ran on held-out probe states in both rounds; the teacher gap only where there is knowledge
    assert all(0 <= results[r]["evaluate"]["meter_emq"] <= 1 for r in ("0", "1"))
    assert "gap_teacher_minus_control_ci_low" in results["0"]["evaluate"]
    assert "gap_teacher_minus_student" not in results["1"]["evaluate"]
    gap = json.loads((run / "round_0" / "evaluate" / "teacher_gap.json").read_text())
    assert gap["gaps"]["teacher_minus_student"]["diff"] == pytest.approx(results["0"]["evaluate"]["gap_teacher_minus_student"])
    # M_1 is a plain HF directory the next round loaded
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(run / "round_0" / "consolidate" / "model", use_safetensors=True)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("consolidate/loss" in r for r in rows) and any("evaluate/game_pass_rate" in r for r in rows)
    assert (run / "config.yaml").is_file()
    # a rerun of a finished run does nothing and returns the same summaries
    assert run_loop(config)["0"]["consolidate"] == results["0"]["consolidate"]
    report = write_report(run)
    text = report.read_text()
    assert "| 0 |" in text and "| 1 |" in text
    # the report's numbers are the stage markers' numbers, round by round
    for r in (0, 1):
        m = json.loads((run / f"round_{r}" / "evaluate" / MARKER).read_text())
        row = next(line for line in text.splitlines() if line.startswith(f"| {r} | "))
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[1].startswith(f"{100 * m['game_pass_rate']:.1f}% [{100 * m['game_ci_low']:.1f}, ")
        assert cells[3] == (f"{100 * m['game_move_quality']:.1f}% [{100 * m['game_move_quality_ci_low']:.1f}, "
                            f"{100 * m['game_move_quality_ci_high']:.1f}] (random {100 * m['game_random_move_quality']:.1f}%)")
        assert cells[4] == f"{m['game_tokens_per_turn']:.1f}"
        assert cells[6] == f"{100 * m['ifeval_prompt_strict']:.1f}%"
        if r == 0:
            assert cells[2].startswith(f"{100 * m['icl_pass_rate']:.1f}%")
    assert "Exact policy meter" not in text or "E[mq] - M_0" in text
    assert "| M_1 |" in text and "teacher gap (training maps)" in text
    for png in ("pass_rate.png", "kl_per_step.png", "tokens_per_turn.png", "ifeval.png", "meter.png", "teacher_gap.png"):
        assert (report.parent / png).stat().st_size > 1000
    # an in-context curve on round 0's store is picked up; another run is compared side by side
    from oel.evaluate.curve import CurveConfig, evaluate_curve
    from oel.backends.hf import HFBackend

    from oel.models import ModelConfig
    from oel.backends.base import SamplingParams

    evaluate_curve(CurveConfig(store=str(run / "round_0" / "extract" / "store"), round=0, steps=[0, 1], num_maps=2,
                               sampling=SamplingParams(temperature=0.0, max_new_tokens=4)),
                   HFBackend.from_model_config(ModelConfig(name=tiny_model, dtype="float32", device="cpu")))
    other = tmp_path / "other"
    shutil.copytree(run, other, ignore=shutil.ignore_patterns("report"))
    report = write_report(run, compare=[other])
    text = report.read_text()
    assert "## Comparison with other runs" in text and "| other | 1 |" in text
    for png in ("in_context_curve.png", "compare_pass_rate.png", "compare_move_quality.png"):
        assert (report.parent / png).stat().st_size > 1000


@pytest.mark.slow
def test_kill_in_each_stage_then_resume_gives_the_same_artifacts(tiny_model, tmp_path):
    ref, chaos = tmp_path / "ref", tmp_path / "chaos"
    reference = _run_cli(tiny_overrides(tiny_model, ref))
    assert reference.wait() == 0, reference.stderr.read()
    r0 = chaos / "round_0"
    kill_points = [
        (r0 / "collect" / "train.jsonl", r0 / "collect" / MARKER),
        (r0 / "extract" / "store" / "round_000" / "run_00" / "step_001.json", r0 / "extract" / MARKER),
        (r0 / "evaluate" / "games_no_knowledge" / "trajectories.jsonl", r0 / "evaluate" / MARKER),
        (r0 / "consolidate" / "metrics.jsonl", r0 / "consolidate" / MARKER),
    ]
    killed = 0
    for started, finished in kill_points:
        killed += _kill_when(_run_cli(tiny_overrides(tiny_model, chaos)), started, finished)
    assert killed >= 3, "the loop finished stages before the test could kill it mid-stage"
    final = _run_cli(tiny_overrides(tiny_model, chaos))
    assert final.wait() == 0, final.stderr.read()
    assert _artifacts(chaos) == _artifacts(ref)
    a, b = _weights(chaos), _weights(ref)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6)


def _tree(d: Path) -> dict[str, bytes]:
    """Every file under `d` by relative path, with its bytes."""
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def _metric_rows(run: Path, stages: tuple[str, ...]) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if (r["round"], r["stage"]) in {(0, s) for s in stages}]


@pytest.fixture(scope="module")
def source_run(tiny_model, tmp_path_factory) -> Path:
    """A finished one-round run that the reuse tests copy from."""
    run = tmp_path_factory.mktemp("source") / "run"
    run_loop(load_config(LoopConfig, None, tiny_overrides(tiny_model, run)))
    return run


@pytest.mark.slow
def test_reuse_from_copies_stages_with_identical_inputs_and_runs_the_rest(tiny_model, source_run, tmp_path):
    run = tmp_path / "ablation"
    config = load_config(LoopConfig, None, [*tiny_overrides(tiny_model, run), f"reuse_from={source_run}",
                                            "consolidate.lr=0.5"])
    events: list[tuple[str, int, str]] = []
    results = run_loop(config, on_event=lambda kind, e: events.append((kind, e["round"], e.get("stage", ""))))
    reused = ("collect", "extract", "evaluate")
    assert [(r, s) for kind, r, s in events if kind == "reuse"] == [(0, s) for s in reused]
    # another lr changes M_1, so consolidation and everything evaluated after it are this run's own
    assert [(r, s) for kind, r, s in events if kind == "start"] == [(0, "consolidate"), (1, "evaluate")]
    for stage in reused:
        assert _tree(run / "round_0" / stage) == _tree(source_run / "round_0" / stage)
    consolidated = yaml.safe_load((run / "round_0" / "consolidate" / "config.yaml").read_text())
    assert consolidated["lr"] == 0.5 and consolidated["output_dir"] == str(run / "round_0" / "consolidate")
    assert _metric_rows(run, reused) == _metric_rows(source_run, reused)
    assert not list((run / "round_0").glob(".*")), "a temporary copy was left behind"
    assert json.loads((run / "results.json").read_text()) == results
    assert set(results["0"]) == {"collect", "extract", "evaluate", "consolidate"} and "game_pass_rate" in results["1"]["evaluate"]
    # a rerun finds every stage complete
    events.clear()
    run_loop(config, on_event=lambda kind, e: events.append((kind, e["round"], e.get("stage", ""))))
    assert {kind for kind, _, _ in events} == {"skip"}


def test_reuse_from_with_another_collect_setting_reuses_nothing(tiny_model, source_run, tmp_path):
    def config(*extra: str) -> LoopConfig:
        return load_config(LoopConfig, None, [*tiny_overrides(tiny_model, tmp_path / "run"),
                                              f"reuse_from={source_run}", *extra])

    same = config()
    source = ReuseSource.open(same)
    assert source is not None
    stages = [(r, name) for r in range(same.rounds + 1) for name, _ in stages_for_round(same, r)]
    assert all(source.reusable(same, r, s) == source_run / f"round_{r}" / s for r, s in stages)
    other_collect = config("collect.num_seeds=4")
    assert [(r, s) for r, s in stages if source.reusable(other_collect, r, s)] == []
    # collection also plays the extraction maps, so their number is one of its inputs
    fewer_extraction_maps = config("extract.num_trajectories=2")
    assert source.reusable(fewer_extraction_maps, 0, "collect") is None
    # with two rounds, round 1's evaluate is an ordinary one (with knowledge), not the source's final one
    assert source.reusable(config("rounds=2"), 1, "evaluate") is None


def test_reuse_from_without_config_yaml_is_a_config_error(tmp_path):
    not_a_run = tmp_path / "not-a-run"
    not_a_run.mkdir()
    config = load_config(LoopConfig, None, [f"run_dir={tmp_path / 'run'}", f"reuse_from={not_a_run}"])
    with pytest.raises(ConfigError, match=rf"^reuse_from: {re.escape(str(not_a_run))} has no config\.yaml"):
        run_loop(config)
    assert not (tmp_path / "run").exists()


def test_copy_stage_replaces_a_partial_attempt_and_a_killed_copy(tmp_path):
    src, dest = tmp_path / "a" / "collect", tmp_path / "b" / "collect"
    src.mkdir(parents=True)
    (src / "train.jsonl").write_text("complete\n")
    (src / MARKER).write_text("{}\n")
    dest.mkdir(parents=True)
    (dest / "train.jsonl").write_text("partial")
    killed_copy = dest.with_name(".collect.reuse-tmp")
    killed_copy.mkdir()
    (killed_copy / "stale").write_text("x")
    copy_stage(src, dest)
    assert _tree(dest) == _tree(src) and not killed_copy.exists()


@pytest.mark.parametrize("path", sorted(str(p) for p in (Path(__file__).parent.parent / "configs").rglob("*.yaml")))
def test_every_shipped_config_is_valid(path):
    """`consolidate-*.yaml` are `oel consolidate` configs, `online.yaml` an `oel online run` one,
    `online-demo.yaml` an `oel online demo` one; every other file is an `oel loop` config."""
    name = Path(path).name
    if name.startswith("consolidate-"):
        from oel.consolidate.config import ConsolidateCommandConfig

        assert load_config(ConsolidateCommandConfig, path).batch_size >= 1
    elif name == "online.yaml":
        from oel.online.config import OnlineConfig

        assert load_config(OnlineConfig, path).run_dir.startswith("runs/")
    elif name == "online-demo.yaml":
        from oel.online.demo import DemoConfig

        assert load_config(DemoConfig, path).run_dir.startswith("runs/")
    else:
        assert load_config(LoopConfig, path).run_dir.startswith("runs/")


def test_knowledge_file_replaces_the_extracted_knowledge(tiny_model, tmp_path):
    """The controls (unrelated or hand-written lessons): every round's K texts are the file's text,
    and evaluate and consolidate read exactly that."""
    lessons = Path(__file__).resolve().parents[1] / "configs" / "knowledge" / "unrelated.txt"
    run = tmp_path / "run"
    overrides = tiny_overrides(tiny_model, run) + [f"knowledge_file={lessons}", "evaluate.ifeval.enabled=false",
                                                   "consolidate.steps=1"]
    results = run_loop(load_config(LoopConfig, None, overrides))
    text = lessons.read_text().strip()
    assert [(run / "round_0" / "extract" / f"knowledge_{k}.txt").read_text() for k in range(2)] == [text + "\n"] * 2
    assert results["0"]["extract"]["from_file"] == 1 and not (run / "round_0" / "extract" / "store").exists()
    evaluation = json.loads((run / "round_0" / "evaluate" / "evaluation.json").read_text())
    assert evaluation["games_knowledge"]["knowledge_texts"] == 2
    trained = yaml.safe_load((run / "round_0" / "consolidate" / "config.yaml").read_text())
    assert trained["knowledge"] == [str(run / "round_0" / "extract" / f"knowledge_{k}.txt") for k in range(2)]


def test_reuse_from_refuses_stages_whose_template_file_was_edited(tiny_model, source_run, tmp_path):
    """A user's template file keeps its path when edited, so the configs still match: the recorded
    sha256 (extract manifest, consolidate prompts.json) is what tells the two prompts apart."""
    from oel import prompts
    from oel.consolidate.teacher import prompt_records
    from oel.extract.store import manifest_path

    teacher, extraction = tmp_path / "teacher.txt", tmp_path / "extract.txt"
    teacher.write_text("Lessons:\n{knowledge}\n\nNow:\n{observation}")
    extraction.write_text("Known:\n{knowledge}\nGame:\n{trajectory}\nWrite a new rule.")
    source = tmp_path / "source"
    shutil.copytree(source_run, source)
    saved = yaml.safe_load((source / "config.yaml").read_text())
    saved["consolidate"]["teacher_template"] = str(teacher)
    saved["extract"].update(kind="extracted", prompt=str(extraction))
    (source / "config.yaml").write_text(yaml.safe_dump(saved))
    (source / "round_0" / "consolidate" / "prompts.json").write_text(json.dumps(prompt_records(str(teacher))))
    manifest = manifest_path(source / "round_0" / "extract" / "store", 0)
    recorded = json.loads(manifest.read_text())
    recorded["fingerprint"]["prompt"] = prompts.get(str(extraction)).record()
    manifest.write_text(json.dumps(recorded))

    config = load_config(LoopConfig, None, [*tiny_overrides(tiny_model, tmp_path / "run"), f"reuse_from={source}",
                                            f"consolidate.teacher_template={teacher}", "extract.kind=extracted",
                                            f"extract.prompt={extraction}"])
    reuse = ReuseSource.open(config)
    assert reuse is not None
    everything = [(0, "collect"), (0, "extract"), (0, "evaluate"), (0, "consolidate"), (1, "evaluate")]
    assert [rs for rs in everything if reuse.reusable(config, *rs)] == everything
    teacher.write_text("Earlier lessons:\n{knowledge}\n\n{observation}")
    assert [rs for rs in everything if reuse.reusable(config, *rs)] == [(0, "collect"), (0, "extract"), (0, "evaluate")]
    extraction.write_text("Known:\n{knowledge}\nRecord:\n{trajectory}\nWrite a rule.")
    assert [rs for rs in everything if reuse.reusable(config, *rs)] == [(0, "collect")]


def test_a_loop_seed_plays_other_training_maps_and_samples_anew_on_the_same_held_out_maps(tiny_model, source_run,
                                                                                          tmp_path):
    from oel.backends.sampling import derive_seed
    from oel.loop.reuse import stage_dependencies
    from oel.trajectory import read_trajectories

    run = tmp_path / "seed1"
    config = load_config(LoopConfig, None, [*tiny_overrides(tiny_model, run), f"reuse_from={source_run}", "seed=1"])
    events: list[tuple[str, int, str]] = []
    run_loop(config, on_event=lambda kind, e: events.append((kind, e["round"], e.get("stage", ""))))
    assert not [e for e in events if e[0] == "reuse"], "a stage of another seed was reused"

    def seeds(root: Path, name: str) -> set[int]:
        return {t.seed for t in read_trajectories(str(root / "round_0" / "collect" / name))}

    for name in ("train.jsonl", "extract.jsonl"):
        mine, source = seeds(run, name), seeds(source_run, name)
        assert len(mine) == len(source) and not mine & source
    saved = yaml.safe_load((run / "round_0" / "consolidate" / "config.yaml").read_text())
    assert saved["seed"] == derive_seed(0, 1) and config.stage_seed(7) == derive_seed(7, 1)
    assert LoopConfig().stage_seed(7) == 7 and LoopConfig().map_offset(16) == 0
    def held_out(root: Path) -> set[int]:
        return {t.seed for t in read_trajectories(str(root / "round_1" / "evaluate" / "games_no_knowledge" /
                                                      "trajectories.jsonl"))}

    assert held_out(run) == held_out(source_run)
    # M_0 played without lessons is the same whatever the run's seed: its evaluation is reusable across seeds
    assert "seed" in stage_dependencies("collect", 0) and "seed" not in stage_dependencies("evaluate", 0,
                                                                                            in_context=False)
    with pytest.raises(ConfigError, match=r"^seed: must be >= 0"):
        load_config(LoopConfig, None, ["seed=-1"])
    with pytest.raises(ConfigError, match=r"^seed: seed 9000 x 32 maps per round runs past"):
        load_config(LoopConfig, None, ["seed=9000"])


def test_evaluate_without_in_context_play_does_not_depend_on_the_lessons():
    from oel.loop.reuse import stage_dependencies

    with_icl = stage_dependencies("evaluate", 0)
    without = stage_dependencies("evaluate", 0, in_context=False)
    assert {"knowledge_file", "extract", "consolidate.teacher_model"} <= with_icl
    assert not {"knowledge_file", "extract", "extractor"} & without
    assert {"model", "env", "collect", "evaluate"} <= without
    # M_1 is made from round 0's lessons: round 1's evaluate depends on them whatever its own play
    assert "knowledge_file" in stage_dependencies("evaluate", 1, in_context=False)


@pytest.mark.slow
def test_evaluate_every_skips_evaluations_and_trains_the_same(tiny_model, tmp_path):
    def run(name: str, every: int) -> tuple[Path, dict]:
        overrides = [*tiny_overrides(tiny_model, tmp_path / name), "rounds=2", f"evaluate_every={every}",
                     "evaluate.ifeval.enabled=false", "consolidate.steps=2", f"keep_checkpoints={every == 1}"]
        config = load_config(LoopConfig, None, overrides)
        return tmp_path / name, run_loop(config)

    every, every_results = run("every", 1)
    ends, ends_results = run("ends", 2)
    assert [set(ends_results[r]) for r in ("0", "1", "2")] == [
        {"collect", "extract", "evaluate", "consolidate"}, {"collect", "extract", "consolidate"}, {"evaluate"}]
    assert not (ends / "round_1" / "evaluate").exists()
    # a completed round's checkpoints (save_every=1: one at step 1) are deleted unless kept
    assert not list(ends.glob("round_*/consolidate/checkpoints"))
    assert len(list(every.glob("round_*/consolidate/checkpoints/step-000001"))) == 2
    # no stage reads an evaluation: the trajectories, lessons and weights of M_2 are the same
    for rel in ("round_1/collect/train.jsonl", "round_1/extract/knowledge_0.txt"):
        assert (ends / rel).read_text() == (every / rel).read_text()
    weights = "round_1/consolidate/model/model.safetensors"
    a, b = load_file(str(ends / weights)), load_file(str(every / weights))
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0)
    assert ends_results["2"]["evaluate"]["game_pass_rate"] == every_results["2"]["evaluate"]["game_pass_rate"]
    # the report shows the rounds that were evaluated, and a finished run may be resumed with another setting
    text = write_report(ends).read_text()
    assert "| 0 |" in text and "| 2 |" in text and "| 1 |" not in text
    prepare_run_dir(load_config(LoopConfig, None, [*tiny_overrides(tiny_model, ends), "rounds=2", "evaluate_every=1",
                                                   "evaluate.ifeval.enabled=false", "consolidate.steps=2"]))
    with pytest.raises(ConfigError, match=r"^evaluate_every: must be >= 1, got 0"):
        load_config(LoopConfig, None, ["evaluate_every=0"])


def test_a_run_dir_saved_before_a_key_existed_resumes_with_its_default(tmp_path):
    base = load_config(LoopConfig, None, [f"run_dir={tmp_path}"])
    prepare_run_dir(base)
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    del saved["evaluate_every"], saved["env"]["hanoi_disks"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved))
    prepare_run_dir(base)  # the keys it lacks ran with today's defaults
    with pytest.raises(ConfigError, match=r"different config \(env\.hanoi_disks\)"):
        prepare_run_dir(load_config(LoopConfig, None, [f"run_dir={tmp_path}", "env.hanoi_disks=4"]))
    # and a source run of that age is still reused from
    source = ReuseSource.open(load_config(LoopConfig, None, [f"run_dir={tmp_path / 'other'}", f"reuse_from={tmp_path}"]))
    assert source is not None and source.config["env"]["hanoi_disks"] == base.env.hanoi_disks


SAVED_WITH_STAGE_INPUTS = Path(__file__).parent / "data" / "loop_config_with_stage_inputs.yaml"
"""A run dir's config.yaml as `oel loop` wrote it while the stage sections still held the run's
plumbing (collect.env, consolidate.model, consolidate.knowledge, evaluate.out_dir, ...): written by
commit 3303c9b for `run_dir=RUN_DIR` and every other key at its default."""


def test_a_run_dir_saved_with_the_stages_plumbing_keys_resumes_and_is_reused_from(tmp_path):
    saved = yaml.safe_load(SAVED_WITH_STAGE_INPUTS.read_text())
    assert "env" in saved["collect"] and "model" in saved["consolidate"] and "out_dir" in saved["evaluate"]
    run, source = tmp_path / "run", tmp_path / "source"
    for d in (run, source):
        d.mkdir()
        (d / "config.yaml").write_text(yaml.safe_dump({**saved, "run_dir": str(d)}, sort_keys=False))
    before = (run / "config.yaml").read_text()
    # engine=hf: the run was made before llama.cpp (a default engine=auto may pick it on this machine)
    prepare_run_dir(load_config(LoopConfig, None, [f"run_dir={run}", "engine=hf"]))  # keys in excess are dropped
    assert (run / "config.yaml").read_text() == before
    with pytest.raises(ConfigError, match=r"different config \(consolidate\.lr\)"):
        prepare_run_dir(load_config(LoopConfig, None, [f"run_dir={run}", "engine=hf", "consolidate.lr=0.5"]))
    for stage in ("collect", "extract"):
        (source / "round_0" / stage).mkdir(parents=True)
        (source / "round_0" / stage / MARKER).write_text("{}\n")
    config = load_config(LoopConfig, None, [f"run_dir={tmp_path / 'new'}", f"reuse_from={source}", "engine=hf"])
    reuse = ReuseSource.open(config)
    assert reuse is not None
    assert [reuse.reusable(config, 0, s) for s in ("collect", "extract")] == [source / "round_0" / s
                                                                           for s in ("collect", "extract")]
    other = load_config(LoopConfig, None, [f"run_dir={tmp_path / 'new'}", f"reuse_from={source}", "engine=hf",
                                           "collect.num_seeds=4"])
    assert reuse.reusable(other, 0, "collect") is None
