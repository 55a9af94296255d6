"""Consolidation on 2 CPU processes (gloo) equals one process on the same global batch.

One spawn of two ranks (torch.multiprocessing, 127.0.0.1, a free port) runs every
distributed job of this module in turn: DDP with LoRA, DDP with full fine-tuning, FSDP2
with both (and with the off-policy sampler, where the sharded teacher generates), FSDP
generation with ragged response lengths, FSDP in bf16 compute, and interrupted-then-resumed
DDP and FSDP runs. The tests then compare the written
models and metrics with single-process runs made here. One spawn, because starting a
process that imports torch + transformers costs seconds on this machine.
"""

from __future__ import annotations

import json
import os
import socket
import traceback
from pathlib import Path
from typing import Any

import pytest
import torch

from oel import prompts
from oel.backends.tiny import save_tiny_chat_model
from oel.consolidate import ConsolidateCommandConfig, command_trainer, consolidate_command
from oel.models import ModelConfig
from oel.trajectory import Message, Trajectory, Turn, write_trajectories

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]

WORLD = 2
STEPS = 3
ATOL = 1e-5
SPAWN_TIMEOUT_S = 180
OBSERVATIONS = [f"Turn {t}\nP . .\n. H .\n. . G{'.' * i}" for i in range(4) for t in (1, 2)]
# The single-process twin must compute the way the ranks do: FSDP ranks skip the prefix caches (so
# its jobs turn them off), and no multi-process run uses the shared student prefill (so `config`
# turns it off). Those paths' equality to the plain ones is tested in test_consolidate_shared_prefill.
NO_PREFIX_CACHES = dict(student_prefix_cache=False, teacher_prefix_cache=False)
# (name, overrides): each job runs distributed in the spawn and single-process in the tests.
JOBS: dict[str, dict[str, Any]] = {
    "ddp-lora": dict(parallel="ddp", finetune="lora"),
    "ddp-full": dict(parallel="ddp", finetune="full", loss="reverse_kl"),
    "fsdp-lora": dict(parallel="fsdp", finetune="lora", **NO_PREFIX_CACHES),
    "fsdp-full": dict(parallel="fsdp", finetune="full", loss="reverse_kl", **NO_PREFIX_CACHES),
    "fsdp-full-off-policy": dict(parallel="fsdp", finetune="full", sampler="off_policy", loss="forward_kl",
                                 **NO_PREFIX_CACHES),
}
# Half of the byte tokens made stop tokens: responses end after different numbers of steps on
# the two ranks, so FSDP's generation must keep the ranks stepping together (synced_gpus).
RAGGED = "fsdp-lora-ragged"
RAGGED_STOP_IDS = frozenset(range(0, 256, 2))
# FSDP computing in bf16 on float32 shards: no single-process twin, so a smoke run only.
MIXED = "fsdp-full-bf16"
# interrupted after step 2 (checkpoint at step 1), then resumed: {run name: job it must equal}
RESUMED = {"ddp-lora-resumed": "ddp-lora", "fsdp-full-resumed": "fsdp-full"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _inputs(d: Path) -> dict[str, str]:
    turns = [Turn(prompt=[Message(role="user", content=prompts.get("policy_grid_v1").render(observation=o))],
                  observation=o, response="[right]") for o in OBSERVATIONS]
    trajs = [Trajectory(id=f"t{i}", env_id="tiny", seed=i, model_id="tiny", turns=turns[2 * i:2 * i + 2],
                        outcome="failure", passed=False) for i in range(len(turns) // 2)]
    write_trajectories(d / "trajectories.jsonl", trajs)
    (d / "k0.txt").write_text("Answer R.\n")
    (d / "k1.txt").write_text("Avoid H.\n")
    return {"traj": str(d / "trajectories.jsonl"), "knowledge": [str(d / "k0.txt"), str(d / "k1.txt")],
            "model": save_tiny_chat_model(d / "model", seed=3)}


def config(inputs: dict[str, Any], out: Path, **kw: Any) -> ConsolidateCommandConfig:
    """4 prefixes per step, micro-batches of 1: each rank runs two micro-batches (accumulation)."""
    base = dict(trajectories=inputs["traj"], knowledge=inputs["knowledge"], output_dir=str(out),
                model=ModelConfig(name=inputs["model"], dtype="float32", device="cpu"),
                steps=STEPS, batch_size=4, micro_batch_size=1, max_new_tokens=4, lr=1e-3, top_k=16,
                save_every=0, on_existing="error", seed=7, shared_student_prefill=False)
    base.update(kw)
    return ConsolidateCommandConfig(**base)


def _crash_at(step: int):
    def on_step(s: int, metrics: dict[str, float]) -> None:
        if s == step:
            raise RuntimeError("crash")
    return on_step


def ragged_run(cfg: ConsolidateCommandConfig) -> Path:
    """Consolidate with many stop tokens, so response lengths differ from row to row."""
    import dataclasses

    t = command_trainer(cfg)
    t.generation = dataclasses.replace(t.generation, stop_ids=t.generation.stop_ids | RAGGED_STOP_IDS)
    try:
        t.prepare_output()
        t.run()
    finally:
        t.close()
    return Path(cfg.output_dir)


def _worker(rank: int, port: int, root: str, inputs: dict[str, Any]) -> None:
    """One rank: every job of JOBS, then the interrupted + resumed runs. Errors go to a file."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(WORLD), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    import torch.distributed as dist

    dist.init_process_group("gloo")  # the trainer reuses an existing group
    out = Path(root) / "dist"
    try:
        for name, kw in JOBS.items():
            consolidate_command(config(inputs, out / name, **kw))
        ragged_run(config(inputs, out / RAGGED, **JOBS["fsdp-lora"]))
        consolidate_command(config(inputs, out / MIXED, **JOBS["fsdp-full"], fsdp_mixed_precision=True))
        for name, job in RESUMED.items():
            kw = JOBS[job]
            first = command_trainer(config(inputs, out / name, **{**kw, "save_every": 1}))
            first.prepare_output()
            seen = {"world": first.topology.world_size, "strategy": type(first.parallel).__name__,
                    "rows": [s.prefix_index for s in first.sample(1)], "all_rows": [p for p, _ in first.draw(1)]}
            (out / name / f"rank{rank}.json").write_text(json.dumps(seen))
            try:
                first.run(on_step=_crash_at(2))  # checkpoint at 1, crash after step 2 is logged
            except RuntimeError:
                pass
            consolidate_command(config(inputs, out / name, **{**kw, "save_every": 1, "on_existing": "resume"}))
    except BaseException:
        (Path(root) / f"error-rank{rank}.txt").write_text(traceback.format_exc())
        raise
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Any]:
    import time

    import torch.multiprocessing as mp

    root = tmp_path_factory.mktemp("distributed")
    inputs = _inputs(root)
    t0 = time.perf_counter()
    ctx = mp.start_processes(_worker, args=(_free_port(), str(root), inputs), nprocs=WORLD, join=False,
                             start_method="spawn")
    deadline = time.monotonic() + SPAWN_TIMEOUT_S
    try:
        while not ctx.join(timeout=max(1.0, deadline - time.monotonic())):
            if time.monotonic() > deadline:
                raise TimeoutError(f"2-rank consolidation did not finish in {SPAWN_TIMEOUT_S}s")
    except Exception as e:
        errors = "\n".join(p.read_text() for p in sorted(root.glob("error-rank*.txt")))
        for proc in ctx.processes:
            if proc.is_alive():
                proc.kill()
        raise AssertionError(f"{e}\n{errors}") from None
    print(f"2-rank jobs took {time.perf_counter() - t0:.1f}s")
    return {"root": root, "inputs": inputs}



def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(model_dir / "model.safetensors"))


def _metrics(run: Path) -> list[dict[str, float]]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def _assert_same_run(single: Path, dist: Path, base_model: str) -> None:
    ms, md = _metrics(single), _metrics(dist)
    assert [m["step"] for m in md] == list(range(1, STEPS + 1))
    for a, b in zip(ms, md):
        for key in ("consolidate/loss", "consolidate/reverse_kl_full", "consolidate/response_tokens",
                    "consolidate/student_topk_mass", "consolidate/grad_norm"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (key, a["step"])
    ws, wd, w0 = _weights(single / "model"), _weights(dist / "model"), _weights(Path(base_model))
    assert ws.keys() == wd.keys()
    worst = max((ws[k] - wd[k]).abs().max().item() for k in ws)
    print(f"{dist.name}: max |w_single - w_2ranks| = {worst:.2e}")
    for k in ws:
        assert torch.allclose(ws[k], wd[k], atol=ATOL, rtol=0), (k, (ws[k] - wd[k]).abs().max().item())
    assert any(not torch.equal(ws[k], w0[k]) for k in ws if k in w0)  # training moved weights: not trivial


@pytest.mark.parametrize("name", list(JOBS))
def test_two_ranks_equal_one_process(runs, tmp_path, name):
    single = consolidate_command(config(runs["inputs"], tmp_path / name, **{**JOBS[name], "parallel": "none"}))
    assert single.steps == STEPS
    _assert_same_run(tmp_path / name, runs["root"] / "dist" / name, runs["inputs"]["model"])


def test_fsdp_generation_with_ragged_lengths_keeps_the_ranks_in_step(runs, tmp_path):
    single = ragged_run(config(runs["inputs"], tmp_path / RAGGED, **{**JOBS["fsdp-lora"], "parallel": "none"}))
    lengths = [m["consolidate/response_len_mean"] for m in _metrics(single)]
    assert any(x < 4 for x in lengths)  # some responses stopped early: the ranks' lengths differed
    _assert_same_run(single, runs["root"] / "dist" / RAGGED, runs["inputs"]["model"])


@pytest.mark.parametrize("name", list(RESUMED))
def test_interrupted_two_rank_run_resumes_to_the_uninterrupted_result(runs, tmp_path, name):
    consolidate_command(config(runs["inputs"], tmp_path / name, **{**JOBS[RESUMED[name]], "parallel": "none"}))
    _assert_same_run(tmp_path / name, runs["root"] / "dist" / name, runs["inputs"]["model"])


def test_each_rank_took_its_own_half_of_the_batch(runs):
    for name, strategy in (("ddp-lora-resumed", "DataParallel"), ("fsdp-full-resumed", "FullyShardedDataParallel")):
        seen = [json.loads((runs["root"] / "dist" / name / f"rank{r}.json").read_text()) for r in range(WORLD)]
        assert all(s["world"] == WORLD and s["strategy"] == strategy for s in seen)
        assert seen[0]["rows"] + seen[1]["rows"] == seen[0]["all_rows"] == seen[1]["all_rows"]
        assert len(seen[0]["rows"]) == len(seen[1]["rows"]) == 2


def test_fsdp_mixed_precision_trains_and_saves_float32_weights(runs):
    run = runs["root"] / "dist" / MIXED
    losses = [m["consolidate/loss"] for m in _metrics(run)]
    assert len(losses) == STEPS and all(x == x and abs(x) < float("inf") for x in losses)
    weights, base = _weights(run / "model"), _weights(Path(runs["inputs"]["model"]))
    assert all(w.dtype == torch.float32 for w in weights.values())
    assert any(not torch.equal(weights[k], base[k]) for k in weights if k in base)


def test_checkpoints_are_plain_hf_directories_written_once(runs):
    run = runs["root"] / "dist" / "fsdp-full-resumed"
    ckpts = sorted((run / "checkpoints").iterdir())
    assert [p.name for p in ckpts] == ["step-000001", "step-000002"]
    assert (ckpts[-1] / "model.safetensors").is_file() and (ckpts[-1] / "optimizer_fsdp.pt").is_file()
    assert not list(run.rglob(".tmp-*")) and not list(run.rglob(".old-*"))
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == STEPS  # one writer: no line doubled by the second rank
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(run / "model") is not None


def test_launcher_without_parallel_is_refused_and_no_launcher_means_one_process(monkeypatch):
    from oel.consolidate import distributed
    from oel.errors import ConfigError

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="parallel: 'none' under a launcher with WORLD_SIZE=2"):
        distributed.setup("none")
    monkeypatch.delenv("WORLD_SIZE")
    assert distributed.setup("fsdp") == distributed.Topology()  # no process group is created
    import torch.distributed as dist

    assert not dist.is_initialized()


def test_rows_are_split_into_disjoint_blocks_that_cover_the_batch():
    from oel.consolidate import distributed
    from oel.errors import ConfigError

    blocks = [list(distributed.my_rows(8, distributed.Topology(rank=r, world_size=4))) for r in range(4)]
    assert sum(blocks, []) == list(range(8))
    with pytest.raises(ConfigError, match="batch_size: 6 is not divisible by the 4 ranks"):
        distributed.my_rows(6, distributed.Topology(rank=0, world_size=4))
