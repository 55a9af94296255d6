"""Teacher scoring with and without computing the shared knowledge prefix's KV cache once per batch.

    python benchmarks/teacher_kv.py [--preset qwen2.5-coder-0.5b-instruct] [--batches 4 8] [--repeats 5] \
        [--trajectories runs/fl-0.5b-teacher-1.5b/round_0/collect/train.jsonl] [--knowledge k0.txt k1.txt]

The teacher's prompt is: chat-template opening, instruction line, the knowledge, then the game
so far. Rows of a step that drew the same knowledge text share everything up to the game text.
- plain:  `response_logits(model, pack(teacher_prompts, responses))`: every row runs in full;
- shared: `response_logits_by_shared_prefix_groups(...)`: per knowledge text, the common head
  runs once (batch 1), its keys/values are repeated over the group's rows, and only each row's
  tail (game text + response) runs.
Rows are the prefixes our trainer draws for its first steps (`Consolidator.draw`, seed 0), with
each prefix's recorded response as the scored tokens. Two settings: all rows with ONE knowledge
text (K=1), and the trainer's own draw over `--knowledge` (K texts, one at random per row).
Timings alternate plain/shared after a warm-up, medians of `--repeats`; exactness is the max |
difference| of the logits and the KL between the two distributions (bf16 model, T=0.7).

Which one is closer to the truth? The same rows are also scored by the same (bf16-rounded)
weights computing in float32 (plain scoring): the "vs fp32" columns give each bf16 path's own error,
max and mean over tokens of KL(fp32 || bf16 path). Comparing the two bf16 paths with each other only says how far apart
they are, not which is wrong; against float32, the shared path is acceptable if its error is
of the size plain bf16 scoring already makes. `--no-fp32` skips this (it loads a second,
float32 copy of the model).

The same check for the student's side (`oel.consolidate.shared_prefill`, on by default): the rows'
student prompts (no knowledge) scored plainly, and through one prefill whose KV the responses
continue from, with and without the shared opening run once (`student_prefix_cache`).
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (DEFAULT_PRESET, add_smoke_flag, machine_state, median, ratio, smoke_model,  # noqa: E402
                     smoke_trajectories, state_note)
from consolidate import DEFAULT_KNOWLEDGE, DEFAULT_TRAJECTORIES  # noqa: E402

DEFAULT_BATCHES = (4, 8)
DEFAULT_REPEATS = 5
LOSS_TEMPERATURE = 0.7


def build_rows(args: argparse.Namespace, batch: int, tok: Any, encode: Any, k_texts: list[str],
               one_text: bool) -> tuple[list[list[int]], list[list[int]], list[int], list[list[int]]]:
    """Teacher prompts, responses (recorded, tokenised, + end of turn), knowledge indices and student
    prompts of one batch."""
    from oel.consolidate.config import ConsolidateConfig
    from oel.consolidate.data import draw
    from oel.consolidate.teacher import teacher_messages
    from oel.trajectory import prefixes, read_trajectories

    trajs = read_trajectories(args.trajectories)
    pre = prefixes(trajs)
    responses_by_key = {(t.id, i): turn.response for t in trajs for i, turn in enumerate(t.turns)}
    draws = draw(ConsolidateConfig().seed, 1, len(pre), len(k_texts), batch)
    if one_text:
        draws = [(p, 0) for p, _ in draws]
    prompts = [encode(teacher_messages(pre[p], k_texts[k])) for p, k in draws]
    end = tok.convert_tokens_to_ids("<|im_end|>")
    responses = [list(tok(responses_by_key[(pre[p].trajectory_id, pre[p].turn)],
                          add_special_tokens=False)["input_ids"]) + [end] for p, _ in draws]
    student_prompts = [encode(list(pre[p].prompt)) for p, _ in draws]  # the same rows without knowledge
    return prompts, responses, [k for _, k in draws], student_prompts


def kl_to(reference: Any, other: Any) -> Any:
    """Per-token KL(reference || other) at the loss temperature."""
    import torch

    logp_ref = torch.log_softmax(reference / LOSS_TEMPERATURE, -1)
    logp_other = torch.log_softmax(other / LOSS_TEMPERATURE, -1)
    return (logp_ref.exp() * (logp_ref - logp_other)).sum(-1)


def compare(model: Any, prompts: list[list[int]], responses: list[list[int]], keys: list[int], pad_id: int,
            repeats: int, reference_model: Any = None) -> dict[str, Any]:
    import torch

    from oel.consolidate.scoring import pack, response_logits, response_logits_by_shared_prefix_groups

    def plain() -> torch.Tensor:
        return response_logits(model, pack(prompts, responses, pad_id=pad_id))

    def shared() -> torch.Tensor:
        return response_logits_by_shared_prefix_groups(model, prompts, responses, keys, pad_id=pad_id)

    times: dict[str, list[float]] = {"plain": [], "shared": []}
    with torch.no_grad():
        a, b = plain().float(), shared().float()  # warm-up, and the exactness check
        state = machine_state()
        for _ in range(repeats):
            for name, fn in (("plain", plain), ("shared", shared)):
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
        # The noise floor of plain scoring itself: each row scored alone vs inside the batch.
        alone = torch.cat([response_logits(model, pack([p], [r], pad_id=pad_id))
                           for p, r in zip(prompts, responses)]).float()

    def max_kl(x: torch.Tensor, y: torch.Tensor) -> float:
        return float(kl_to(y, x).max())

    vs_fp32: dict[str, float] = {}
    if reference_model is not None:
        with torch.no_grad():
            ref = response_logits(reference_model, pack(prompts, responses, pad_id=pad_id)).float()
        for name, logits in (("plain", a), ("shared", b)):
            kl = kl_to(ref, logits)
            vs_fp32[f"{name}_fp32_max_kl"], vs_fp32[f"{name}_fp32_mean_kl"] = float(kl.max()), float(kl.mean())
    return {**vs_fp32, "plain_s": median(times["plain"]), "shared_s": median(times["shared"]),
            "max_abs_diff": float((a - b).abs().max()), "max_kl": max_kl(a, b),
            "argmax_equal": bool(torch.equal(a.argmax(-1), b.argmax(-1))),
            "floor_abs_diff": float((a - alone).abs().max()), "floor_kl": max_kl(a, alone), "state": state}


def student_exactness(model: Any, reference_model: Any, prompts: list[list[int]], responses: list[list[int]],
                      pad_id: int) -> dict[str, tuple[float, float]]:
    """KL(fp32 plain || bf16 path), (max, mean) over response tokens, for the student's scoring paths."""
    import torch

    from oel.consolidate.scoring import pack, response_logits, shared_prefix_length
    from oel.consolidate.shared_prefill import open_prompts, opened_response_logits

    def prefilled(head: int) -> torch.Tensor:
        opened = open_prompts(model, prompts, pad_id=pad_id, head_tokens=head)
        return opened_response_logits(model, opened, responses, pad_id=pad_id)

    with torch.no_grad():
        ref = response_logits(reference_model, pack(prompts, responses, pad_id=pad_id)).float()
        paths = {"plain": response_logits(model, pack(prompts, responses, pad_id=pad_id)),
                 "shared prefill": prefilled(0), "shared prefill + head": prefilled(shared_prefix_length(prompts))}
    out = {}
    for name, logits in paths.items():
        kl = kl_to(ref, logits.float())
        out[name] = (float(kl.max()), float(kl.mean()))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default=DEFAULT_PRESET)
    ap.add_argument("--batches", type=int, nargs="+", default=list(DEFAULT_BATCHES))
    ap.add_argument("--repeats", type=int, default=DEFAULT_REPEATS)
    ap.add_argument("--trajectories", default=DEFAULT_TRAJECTORIES)
    ap.add_argument("--knowledge", nargs="*", default=[], help="knowledge text files (default: a built-in text, "
                    "and a second one made of its lines in reverse order)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--no-fp32", action="store_true", help="skip the float32 reference")
    add_smoke_flag(ap)
    args = ap.parse_args()
    if args.smoke:
        args.preset, args.trajectories, args.batches, args.repeats = smoke_model(), smoke_trajectories(), [2], 1

    import torch

    from oel.consolidate.scoring import shared_prefix_length
    from oel.knowledge import Knowledge
    from oel.models import ModelConfig, load_model
    from oel.backends.hf import HFBackend

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.knowledge:
        k_texts = list(Knowledge.read(args.knowledge).texts)
    else:
        lines = DEFAULT_KNOWLEDGE.splitlines()
        k_texts = [DEFAULT_KNOWLEDGE, "\n".join(lines[::-1])]
    lm = load_model(ModelConfig(name=args.preset))
    lm.model.eval()
    backend = HFBackend(lm.model, lm.tokenizer, model_id=lm.model_id)
    # The SAME bf16 weights, computed in float32: the reference isolates the arithmetic's error
    # (a float32 load of the original checkpoint would also differ by the weights' rounding).
    reference = None if args.no_fp32 else copy.deepcopy(lm.model).float().eval()
    print(f"{args.preset}: teacher scoring, medians of {args.repeats} alternating repetitions")
    print(f"{'batch':>5s} {'K':>2s} {'prompt':>6s} {'shared':>6s} {'plain s':>8s} {'shared s':>8s} {'speed-up':>8s} "
          f"{'max|dlogit|':>11s} {'max KL':>8s} argmax= {'floor|dl|':>9s} {'floor KL':>8s}  threads/load")
    print("(floor: plain scoring of each row alone vs in the batch -- bf16's own batch-composition noise)")
    fp32_rows, student_rows = [], []
    for batch in args.batches:
        for one_text in (True, False):
            prompts, responses, keys, student_prompts = build_rows(args, batch, lm.tokenizer, backend.encode, k_texts,
                                                                   one_text)
            r = compare(lm.model, prompts, responses, keys, backend.pad_id, args.repeats, reference)
            groups = {k: [p for p, kk in zip(prompts, keys) if kk == k] for k in set(keys)}
            head = median([shared_prefix_length(g) for g in groups.values()])
            k_used = len(set(keys))
            print(f"{batch:5d} {k_used:2d} {median([len(p) for p in prompts]):6.0f} {head:6.0f} {r['plain_s']:8.2f} "
                  f"{r['shared_s']:8.2f} {ratio(r['plain_s'], r['shared_s']):7.2f}x {r['max_abs_diff']:11.4f} "
                  f"{r['max_kl']:8.1e} {str(r['argmax_equal']):6s} {r['floor_abs_diff']:9.4f} {r['floor_kl']:8.1e}  "
                  f"{state_note(r['state'])}", flush=True)
            if reference is not None:
                fp32_rows.append((batch, k_used, r))
                if not one_text:
                    student_rows.append((batch, student_exactness(lm.model, reference, student_prompts, responses,
                                                                  backend.pad_id)))
    if fp32_rows:
        print("\neach bf16 path against float32 plain scoring: KL(fp32 || bf16), max / mean over response tokens")
        print(f"{'batch':>5s} {'K':>2s} {'plain max':>10s} {'plain mean':>10s} {'shared max':>10s} "
              f"{'shared mean':>11s}")
        for batch, k_used, r in fp32_rows:
            print(f"{batch:5d} {k_used:2d} {r['plain_fp32_max_kl']:10.1e} {r['plain_fp32_mean_kl']:10.1e} "
                  f"{r['shared_fp32_max_kl']:10.1e} {r['shared_fp32_mean_kl']:11.1e}")
    for batch, paths in student_rows:
        print(f"\nstudent side, batch {batch}: KL(fp32 plain || bf16 path), max / mean over response tokens")
        for name, (kl_max, kl_mean) in paths.items():
            print(f"  {name:24s} {kl_max:9.1e} {kl_mean:9.1e}")


if __name__ == "__main__":
    main()
