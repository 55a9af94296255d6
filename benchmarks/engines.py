"""The stages that only read the model, on HF vs llama.cpp: collect, extract, evaluate, serve.

    python benchmarks/engines.py [--preset qwen2.5-coder-1.5b-instruct] [--hf-dtype auto|float32] [--repeats 2]

Each stage is run through the project's own stage function on Blackjack (the main job's game) with
the same settings on both engines, one engine after the other in every repetition (so a change of
machine load hits both), medians reported with the ratio HF time / llama.cpp time:

- collect: `oel.collect.play.collect`, 32 episodes of round 0's collection maps (the main job's size);
- extract: `oel.extract.accumulate.extract_round`, 2 runs x 2 trajectories, answers of up to 96 tokens;
- evaluate: `oel.evaluate.games.evaluate_games`, 64 held-out hands, one sampling seed;
- serve: one chat asking for a long answer, 128 new tokens at most (what one `oel serve` request does).

HF runs the dequantized weights in `--hf-dtype` (auto: bf16 where the CPU computes it natively, else
float32, as the stages do; float32 shows what an AVX2 machine runs); llama.cpp runs the preset's
GGUF (Q4_K_M). The CPU flags that decide this are printed with the results. Sampling is seeded the
same on both sides but the logits differ slightly, so episodes can differ in length: the per-stage
token counts are printed beside the times.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_smoke_flag, median, ratio, smoke_dir  # noqa: E402

MAIN_PRESET = "qwen2.5-coder-1.5b-instruct"
DEFAULT_REPEATS = 2
COLLECT_EPISODES, EVALUATE_HANDS, EXTRACT_RUNS, EXTRACT_STEPS = 32, 64, 2, 2
EXTRACT_NEW_TOKENS, SERVE_NEW_TOKENS, GAME_NEW_TOKENS = 96, 128, 16
MAX_BATCH_SIZE = 16
SMOKE_SIZES = {"collect": 2, "evaluate": 2, "extract_steps": 1, "new_tokens": 8}
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")


def cpu_flags() -> str:
    try:
        line = next(ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags"))
    except (OSError, StopIteration):
        return "unknown"
    have = set(line.split())
    return " ".join(f for f in CPU_FLAGS if f in have) or "none of " + ", ".join(CPU_FLAGS)


def stage_runs(backend: Any, work: Path, sizes: dict[str, int]) -> dict[str, tuple[float, int]]:
    """{stage: (seconds, tokens the engine generated)} for one engine."""
    from oel import progress
    from oel.backends.base import SamplingParams
    from oel.collect.play import CollectConfig, Maps, collect
    from oel.envs import EnvConfig
    from oel.evaluate.config import GamesConfig
    from oel.evaluate.games import evaluate_games
    from oel.extract.accumulate import extract_round
    from oel.extract.config import ExtractConfig
    from oel.trajectory import Message, read_trajectories

    env = EnvConfig(game="blackjack", max_turns=5)
    game_sampling = SamplingParams(max_new_tokens=sizes["new_tokens"] or GAME_NEW_TOKENS)
    extract_cfg = ExtractConfig(num_runs=EXTRACT_RUNS, num_trajectories=sizes["extract_steps"], budget_tokens=384,
                                sampling=SamplingParams(max_new_tokens=sizes["new_tokens"] or EXTRACT_NEW_TOKENS))
    chat = [Message(role="user", content="Explain the rules of Blackjack and a good basic strategy, in detail.")]
    stages = {
        "collect": lambda: collect(CollectConfig(num_seeds=sizes["collect"], batch_size=32, sampling=game_sampling),
                                   backend, env=env, maps=Maps("collect", 0), out=work / "collect.jsonl"),
        "extract": lambda: extract_round(extract_cfg, read_trajectories(work / "collect.jsonl"), backend,
                                         store=work / "store", tokenizer=backend.tokenizer),
        "evaluate": lambda: evaluate_games(backend, env, GamesConfig(num_maps=sizes["evaluate"], sampling_seeds=[0],
                                                                     batch_size=64, sampling=game_sampling),
                                           work / "games"),
        "serve": lambda: backend.chat([chat], SamplingParams(max_new_tokens=sizes["new_tokens"] or SERVE_NEW_TOKENS)),
    }
    out: dict[str, tuple[float, int]] = {}
    for stage, run in stages.items():
        with progress.task(f"bench {stage}") as counted:
            t0 = time.perf_counter()
            run()
            out[stage] = (time.perf_counter() - t0, counted.tokens)
    return out


def engines(preset: str, hf_dtype: str, smoke: bool) -> dict[str, Any]:
    """{engine name: zero-argument factory}."""
    from oel.backends.hf import HFBackend
    from oel.backends.select import llamacpp_backend
    from oel.models import ModelConfig

    if smoke:
        from oel.backends.tiny import tiny_chat_model, tiny_merging_tokenizer
        from oel.models.gguf_export import write_qwen2_gguf

        model, tok = tiny_chat_model(seed=0, tokenizer=tiny_merging_tokenizer())
        gguf = write_qwen2_gguf(model, tok, smoke_dir() / "tiny.gguf")
        hf = ModelConfig(name=str(gguf), dtype="float32", cache_dir=str(smoke_dir() / "cache"))
    else:
        hf = ModelConfig(name=preset, dtype=hf_dtype)
    return {"hf": lambda: HFBackend.from_model_config(hf, max_batch_size=MAX_BATCH_SIZE),
            "llama.cpp": lambda: llamacpp_backend(hf, max_batch_size=MAX_BATCH_SIZE)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default=MAIN_PRESET)
    ap.add_argument("--hf-dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    ap.add_argument("--repeats", type=int, default=DEFAULT_REPEATS)
    add_smoke_flag(ap)
    args = ap.parse_args()
    from oel.backends.select import engine_available
    from oel.models.loading import resolve_dtype
    from oel.threads import cpu_threads

    missing = engine_available()
    if missing is not None:
        print(f"llama.cpp engine not installed ({missing}): `make engine`; nothing to compare")
        return 0
    sizes = SMOKE_SIZES if args.smoke else {"collect": COLLECT_EPISODES, "evaluate": EVALUATE_HANDS,
                                            "extract_steps": EXTRACT_STEPS, "new_tokens": 0}
    repeats = 1 if args.smoke else args.repeats
    hf_dtype = "float32" if args.smoke else args.hf_dtype
    print(f"CPU flags: {cpu_flags()}; threads {cpu_threads()}; load avg {os.getloadavg()[0]:.2f}; "
          f"HF dtype {str(resolve_dtype(hf_dtype, 'cpu'))[6:]}; llama.cpp on the GGUF as shipped; "
          f"preset {'tiny (smoke)' if args.smoke else args.preset}")
    makers = engines(args.preset, hf_dtype, args.smoke)
    times: dict[str, dict[str, list[float]]] = {name: {} for name in makers}
    tokens: dict[str, dict[str, int]] = {name: {} for name in makers}
    for rep in range(repeats):
        for name, make in makers.items():
            backend = make()
            with tempfile.TemporaryDirectory() as work:
                for stage, (seconds, n) in stage_runs(backend, Path(work), sizes).items():
                    times[name].setdefault(stage, []).append(seconds)
                    tokens[name][stage] = n
            close = getattr(backend, "close", None)
            if close is not None:
                close()
            print(f"repeat {rep + 1}/{repeats} {name}: " + ", ".join(
                f"{s} {times[name][s][-1]:.1f}s" for s in times[name]), flush=True)
    print("\n| stage | HF s | llama.cpp s | HF / llama.cpp | tokens HF / llama.cpp |\n|---|---:|---:|---:|---|")
    for stage in times["hf"]:
        hf_s, ll_s = median(times["hf"][stage]), median(times["llama.cpp"][stage])
        print(f"| {stage} | {hf_s:.1f} | {ll_s:.1f} | {ratio(hf_s, ll_s):.2f}x | "
              f"{tokens['hf'][stage]} / {tokens['llama.cpp'][stage]} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
