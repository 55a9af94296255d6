"""Rollout throughput: our batched collection vs naive one-episode-one-turn `model.generate`.

    python benchmarks/collect.py [--preset qwen2.5-coder-0.5b-instruct] [--episodes 64] [--repeats 3]

Both sides play the same FrozenLake maps (round 0's collection seeds) with the same prompt
template, the same chat template and the same sampling settings (T=0.7, top_p 0.8, top_k 20,
48 new tokens at most), on the same model object in one process:

- ours: `oel.collect.play.collect` with `HFBackend` (every unfinished episode's prompt in
  one left-padded, length-sorted batched call per turn; per-episode seeded sampling; each
  trajectory appended to a JSONL as it ends, as `oel collect` does), with its prefix KV
  store (each turn runs only the tokens after the previous turn's prompt + answer, and the
  opening every episode shares is run once); the store starts empty in every repetition;
- ours, no reuse: the same with the prefix store off (`prefix_cache_bytes=0`), to show what
  batching alone and KV reuse each contribute;
- naive: for each episode, for each turn, `model.generate(do_sample=True, ...)` on that one
  prompt, the way one would write it with plain Hugging Face.

Repetitions alternate (ours, naive, ours, naive, ...) after one warm-up call, so a change in
machine load hits both sides alike; medians over `--repeats` are reported with the torch thread
count and load average. Generated tokens are counted alike on both sides (up to and including
the stop token). The two sides sample with different random streams, so their episodes differ
in length; tokens/s and episodes/min are the comparable rates.

It also prints where prefill goes: the share of prompt tokens that merely repeat tokens already
seen (the prompt head shared by all episodes, and the previous turn's prompt of the same episode),
which prefix KV-cache reuse could skip.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DEFAULT_PRESET, add_smoke_flag, machine_state, median, ratio, smoke_model, state_note  # noqa: E402

TEMPERATURE = 0.7
TOP_P = 0.8
TOP_K = 20
MAX_NEW_TOKENS = 48
DEFAULT_EPISODES = 64
DEFAULT_REPEATS = 3
DEFAULT_IN_FLIGHT = 32
"""`oel collect`'s default batch_size (episodes in flight)."""
SECONDS_PER_MINUTE = 60
SMOKE_EPISODES = 2


@dataclass
class RunResult:
    episodes: int
    turns: int
    prompt_tokens: int
    generated_tokens: int
    seconds: float
    state: dict[str, Any]

    @property
    def tokens_per_s(self) -> float:
        return self.generated_tokens / self.seconds

    @property
    def episodes_per_min(self) -> float:
        return SECONDS_PER_MINUTE * self.episodes / self.seconds


def run_ours(backend: Any, episodes: int, in_flight: int) -> tuple[RunResult, list[Any]]:
    """`collect` into a fresh temporary file (so nothing is skipped as already done)."""
    from oel.backends.base import SamplingParams
    from oel.collect.play import CollectCommandConfig, collect_command
    from oel.trajectory import read_trajectories

    if backend.prefix_store is not None:
        backend.prefix_store.clear()  # no reuse of an earlier repetition's identical prompts
    with tempfile.TemporaryDirectory(prefix="oel-bench-rollout-") as tmp:
        cfg = CollectCommandConfig(num_seeds=episodes, batch_size=in_flight, out=f"{tmp}/t.jsonl",
                                   sampling=SamplingParams(temperature=TEMPERATURE, top_p=TOP_P, top_k=TOP_K,
                                                           max_new_tokens=MAX_NEW_TOKENS))
        state = machine_state()
        t0 = time.perf_counter()
        stats = collect_command(cfg, backend=backend)
        seconds = time.perf_counter() - t0
        trajs = read_trajectories(cfg.out)
    return RunResult(stats.episodes, stats.turns, stats.prompt_tokens, stats.response_tokens, seconds, state), trajs


def run_naive(model: Any, tokenizer: Any, episodes: int, seed: int) -> RunResult:
    """One episode at a time, one `generate` call per turn, batch size 1."""
    import torch
    from transformers import GenerationConfig

    from oel import prompts
    from oel.envs import EnvConfig, make_env
    from oel.collect.play import CollectConfig, Maps, select_jobs

    template = prompts.get("policy_grid_v1")
    jobs = select_jobs(CollectConfig(num_seeds=episodes), Maps())
    gen_cfg = GenerationConfig(do_sample=True, temperature=TEMPERATURE, top_p=TOP_P, top_k=TOP_K,
                               max_new_tokens=MAX_NEW_TOKENS, pad_token_id=tokenizer.eos_token_id,
                               eos_token_id=model.generation_config.eos_token_id)
    env = make_env(EnvConfig())
    torch.manual_seed(seed)
    turns = prompt_tokens = generated = 0
    state = machine_state()
    t0 = time.perf_counter()
    for job in jobs:
        observation, done = env.reset(job.seed), False
        while not done:
            chat = [{"role": "user", "content": template.render(observation=observation)}]
            # enable_thinking=False as our backend renders it (templates without the switch ignore it)
            ids = tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt",
                                                return_dict=True, enable_thinking=False)
            with torch.inference_mode():
                out = model.generate(**ids, generation_config=gen_cfg)
            new = out[0, ids["input_ids"].shape[1]:]
            text = tokenizer.decode(new, skip_special_tokens=True)
            result = env.step(text)
            observation, done = result.observation, result.done
            turns += 1
            prompt_tokens += ids["input_ids"].shape[1]
            generated += len(new)
    return RunResult(len(jobs), turns, prompt_tokens, generated, time.perf_counter() - t0, state)


def repeated_prefill_share(trajs: list[Any], encode: Any) -> dict[str, float]:
    """Share of prompt tokens that repeat tokens computed before (head shared by all, previous turn)."""
    from oel.backends.prefix_cache import common_prefix_length

    total = shared_head = previous_turn = 0
    first_prompts = [encode(t.turns[0].prompt) for t in trajs]
    head = common_prefix_length(first_prompts)
    for traj in trajs:
        before: list[int] = []
        for turn in traj.turns:
            ids = encode(turn.prompt)
            total += len(ids)
            from_prev = common_prefix_length([before, ids]) if before else 0
            shared_head += min(head, len(ids))
            previous_turn += max(from_prev - head, 0)
            before = ids
    return {"prompt_tokens": total, "head_tokens": head, "shared_head_share": shared_head / total,
            "previous_turn_share": previous_turn / total}


def profile_first_turn(backend: Any, episodes: int, repeats: int) -> dict[str, float]:
    """Where a turn's time goes: the first turn's prompts, prefill alone vs the whole generate call.

    Batched (all prompts in one padded pass, as ours) and one prompt alone (as naive);
    each figure a median of `repeats`.
    """
    import torch

    from oel import prompts
    from oel.envs import EnvConfig, make_env
    from oel.backends.base import SamplingParams
    from oel.collect.play import CollectConfig, Maps, select_jobs
    from oel.trajectory import Message

    env = make_env(EnvConfig())
    template = prompts.get("policy_grid_v1")
    chats = [[Message(role="user", content=template.render(observation=env.reset(j.seed)))]
             for j in select_jobs(CollectConfig(num_seeds=min(episodes, backend.max_batch_size)), Maps())]
    params = SamplingParams(temperature=TEMPERATURE, top_p=TOP_P, top_k=TOP_K, max_new_tokens=MAX_NEW_TOKENS)

    def prefill(rows: list[Any]) -> float:
        ids = [backend.encode(c) for c in rows]
        width = max(map(len, ids))
        ids_BT = torch.full((len(ids), width), backend.pad_id, dtype=torch.long)
        mask_BT = torch.zeros_like(ids_BT)
        for b, row in enumerate(ids):
            ids_BT[b, width - len(row):] = torch.tensor(row)
            mask_BT[b, width - len(row):] = 1
        t0 = time.perf_counter()
        with torch.inference_mode():
            backend.model(input_ids=ids_BT, attention_mask=mask_BT, logits_to_keep=1)
        return time.perf_counter() - t0

    def generate(rows: list[Any]) -> float:
        t0 = time.perf_counter()
        backend.chat(rows, params)
        return time.perf_counter() - t0

    out = {}
    for name, rows in (("batch", chats), ("single", chats[:1])):
        out[f"{name}_prefill_s"] = median([prefill(rows) for _ in range(repeats)])
        out[f"{name}_generate_s"] = median([generate(rows) for _ in range(repeats)])
    out["rows"] = len(chats)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default=DEFAULT_PRESET, help="model preset or directory")
    ap.add_argument("--episodes", type=int, default=DEFAULT_EPISODES, help="FrozenLake episodes per run")
    ap.add_argument("--repeats", type=int, default=DEFAULT_REPEATS, help="runs of each side (medians)")
    ap.add_argument("--in-flight", type=int, default=DEFAULT_IN_FLIGHT, help="ours: episodes in flight (collect "
                                                                             "batch_size)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--skip-no-reuse", action="store_true", help="leave out the store-off side (the slowest)")
    ap.add_argument("--cprofile", type=int, default=0, metavar="N",
                    help="instead of the comparison: run our side once under cProfile and print its N top functions")
    add_smoke_flag(ap)
    args = ap.parse_args()
    if args.smoke:
        args.preset, args.episodes, args.repeats, args.in_flight = smoke_model(), SMOKE_EPISODES, 1, SMOKE_EPISODES

    import torch

    from oel.models import ModelConfig, load_model
    from oel.backends.hf import HFBackend

    if args.threads:
        torch.set_num_threads(args.threads)
    lm = load_model(ModelConfig(name=args.preset))
    backend = HFBackend(lm.model, lm.tokenizer, model_id=lm.model_id)
    if args.cprofile:
        profile_ours(backend, args)
        return
    no_reuse = HFBackend(lm.model, lm.tokenizer, model_id=lm.model_id, prefix_cache_bytes=0)
    run_naive(lm.model, lm.tokenizer, 1, seed=0)  # warm-up (first-call costs), untimed
    sides: dict[str, list[RunResult]] = {"ours": [], "no-reuse": [], "naive": []}
    if args.skip_no_reuse:
        del sides["no-reuse"]
    trajs: list[Any] = []
    for rep in range(args.repeats):
        result, trajs = run_ours(backend, args.episodes, args.in_flight)
        sides["ours"].append(result)
        if "no-reuse" in sides:
            sides["no-reuse"].append(run_ours(no_reuse, args.episodes, args.in_flight)[0])
        sides["naive"].append(run_naive(lm.model, lm.tokenizer, args.episodes, seed=rep))
        for name, runs in sides.items():
            r = runs[-1]
            print(f"  rep {rep} {name:8s}: {r.episodes} episodes, {r.turns} turns, {r.generated_tokens} gen tokens, "
                  f"{r.prompt_tokens} prompt tokens, {r.seconds:.1f} s {state_note(r.state)}", flush=True)
    _report(args, sides)
    store = backend.prefix_store.stats() if backend.prefix_store is not None else {}
    print(f"prefix store after ours' runs: {store.get('reused_share', 0.0) * 100:.0f}% of looked-up prompt tokens "
          f"reused, {store.get('entries', 0)} entries, {store.get('bytes', 0) / 2**20:.0f} MiB held")
    prof = profile_first_turn(no_reuse, args.episodes, args.repeats)
    print(f"profile, first turn, medians of {args.repeats}: {prof['rows']} prompts batched: prefill "
          f"{prof['batch_prefill_s']:.2f} s of {prof['batch_generate_s']:.2f} s generate "
          f"({100 * prof['batch_prefill_s'] / prof['batch_generate_s']:.0f}%); one prompt alone: prefill "
          f"{prof['single_prefill_s']:.2f} s of {prof['single_generate_s']:.2f} s "
          f"({100 * prof['single_prefill_s'] / prof['single_generate_s']:.0f}%) {state_note(machine_state())}")
    share = repeated_prefill_share(trajs, backend.encode)
    print(f"prefill: {share['prompt_tokens']} prompt tokens in ours' last run; the head shared by every episode is "
          f"{share['head_tokens']} tokens = {100 * share['shared_head_share']:.0f}% of them, the previous turn's "
          f"prompt (beyond that head) another {100 * share['previous_turn_share']:.0f}%: prefix KV reuse could "
          "skip these")


def profile_ours(backend: Any, args: argparse.Namespace) -> None:
    """Where our side's time goes: one run under cProfile (after a warm-up), top functions by
    cumulative and by own time. The interesting lines are the backend's `generate` calls,
    transformers' `_prefill` within them, and torch's `linear` / `scaled_dot_product_attention`."""
    import cProfile
    import pstats

    run_ours(backend, min(args.episodes, 4), args.in_flight)  # warm-up, untimed
    prof = cProfile.Profile()
    prof.enable()
    result, _ = run_ours(backend, args.episodes, args.in_flight)
    prof.disable()
    print(f"ours: {result.episodes} episodes, {result.turns} turns, {result.seconds:.1f} s, "
          f"{result.tokens_per_s:.2f} gen tok/s {state_note(result.state)}")
    stats = pstats.Stats(prof)
    stats.sort_stats("cumulative").print_stats(args.cprofile)
    stats.sort_stats("tottime").print_stats(args.cprofile)


def _report(args: argparse.Namespace, sides: dict[str, list[RunResult]]) -> None:
    print(f"\n{args.preset}, {args.episodes} FrozenLake episodes, medians of {args.repeats} runs each "
          f"(ours: {args.in_flight} in flight); ratios against naive")
    naive = sides["naive"]
    rates = [("generated tokens/s", lambda r: r.tokens_per_s), ("episodes/min", lambda r: r.episodes_per_min),
             ("prompt tokens/s", lambda r: r.prompt_tokens / r.seconds)]
    for label, rate in rates:
        n = median([rate(r) for r in naive])
        cells = [f"{name} {median([rate(r) for r in runs]):8.2f} ({ratio(median([rate(r) for r in runs]), n):5.2f}x)"
                 for name, runs in sides.items() if name != "naive"]
        print(f"  {label:20s} " + "   ".join(cells) + f"   naive {n:8.2f}")
    print("  turns per episode    " + "   ".join(
        f"{name} {median([r.turns / r.episodes for r in runs]):.2f}" for name, runs in sides.items()))
    loads = [r.state["loadavg_1m"] for runs in sides.values() for r in runs]
    print(f"  torch threads {naive[0].state['torch_threads']}, load avg {min(loads)}-{max(loads)}")


if __name__ == "__main__":
    main()
