"""Teacher scoring with and without computing the shared knowledge prefix's KV cache once per batch.

    python benchmarks/teacher_kv.py [--preset qwen2.5-coder-0.5b-instruct] [--batches 4 8] [--repeats 5] \
        [--trajectories runs/quickstart/round_0/collect/train.jsonl] [--knowledge k0.txt k1.txt]

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
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DEFAULT_PRESET, machine_state, median, ratio, state_note  # noqa: E402
from consolidate import DEFAULT_KNOWLEDGE, DEFAULT_TRAJECTORIES  # noqa: E402

DEFAULT_BATCHES = (4, 8)
DEFAULT_REPEATS = 5
LOSS_TEMPERATURE = 0.7


def build_rows(args: argparse.Namespace, batch: int, tok: Any, encode: Any, k_texts: list[str],
               one_text: bool) -> tuple[list[list[int]], list[list[int]], list[int]]:
    """Teacher prompts, responses (recorded, tokenised, + end of turn) and knowledge indices of one batch."""
    from oel.distill.config import ConsolidateConfig
    from oel.distill.teacher import teacher_messages
    from oel.distill.trainer import Consolidator
    from oel.trajectory import prefixes, read_trajectories

    trajs = read_trajectories(args.trajectories)
    pre = prefixes(trajs)
    responses_by_key = {(t.id, i): turn.response for t in trajs for i, turn in enumerate(t.turns)}
    fake = SimpleNamespace(config=ConsolidateConfig(batch_size=batch), prefixes=pre, knowledge=k_texts)
    draws = Consolidator.draw(fake, 1)
    if one_text:
        draws = [(p, 0) for p, _ in draws]
    prompts = [encode(teacher_messages(pre[p], k_texts[k])) for p, k in draws]
    end = tok.convert_tokens_to_ids("<|im_end|>")
    responses = [list(tok(responses_by_key[(pre[p].trajectory_id, pre[p].turn)],
                          add_special_tokens=False)["input_ids"]) + [end] for p, _ in draws]
    return prompts, responses, [k for _, k in draws]


def compare(model: Any, prompts: list[list[int]], responses: list[list[int]], keys: list[int], pad_id: int,
            repeats: int) -> dict[str, Any]:
    import torch

    from oel.distill.scoring import pack, response_logits, response_logits_by_shared_prefix_groups

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
        alone = torch.cat([response_logits(model, pack([p], [r], pad_id=pad_id)) for p, r in zip(prompts, responses)]).float()

    def max_kl(x: torch.Tensor, y: torch.Tensor) -> float:
        logp_x = torch.log_softmax(x / LOSS_TEMPERATURE, -1)
        logp_y = torch.log_softmax(y / LOSS_TEMPERATURE, -1)
        return float((logp_y.exp() * (logp_y - logp_x)).sum(-1).max())

    return {"plain_s": median(times["plain"]), "shared_s": median(times["shared"]),
            "max_abs_diff": float((a - b).abs().max()), "max_kl": max_kl(a, b),
            "argmax_equal": bool(torch.equal(a.argmax(-1), b.argmax(-1))),
            "floor_abs_diff": float((a - alone).abs().max()), "floor_kl": max_kl(a, alone), "state": state}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default=DEFAULT_PRESET)
    ap.add_argument("--batches", type=int, nargs="+", default=list(DEFAULT_BATCHES))
    ap.add_argument("--repeats", type=int, default=DEFAULT_REPEATS)
    ap.add_argument("--trajectories", default=DEFAULT_TRAJECTORIES)
    ap.add_argument("--knowledge", nargs="*", default=[], help="knowledge text files (default: a built-in text, "
                    "and a second one made of its lines in reverse order)")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()

    import torch

    from oel.distill.scoring import shared_prefix_length
    from oel.distill.trainer import read_knowledge
    from oel.models import ModelConfig, load_model
    from oel.rollout.hf_backend import HFBackend

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.knowledge:
        k_texts = read_knowledge(args.knowledge)
    else:
        lines = DEFAULT_KNOWLEDGE.splitlines()
        k_texts = [DEFAULT_KNOWLEDGE, "\n".join(lines[::-1])]
    lm = load_model(ModelConfig(name=args.preset))
    lm.model.eval()
    backend = HFBackend(lm.model, lm.tokenizer, model_id=lm.model_id)
    print(f"{args.preset}: teacher scoring, medians of {args.repeats} alternating repetitions")
    print(f"{'batch':>5s} {'K':>2s} {'prompt':>6s} {'shared':>6s} {'plain s':>8s} {'shared s':>8s} {'speed-up':>8s} "
          f"{'max|dlogit|':>11s} {'max KL':>8s} argmax= {'floor|dl|':>9s} {'floor KL':>8s}  threads/load")
    print("(floor: plain scoring of each row alone vs in the batch -- bf16's own batch-composition noise)")
    for batch in args.batches:
        for one_text in (True, False):
            prompts, responses, keys = build_rows(args, batch, lm.tokenizer, backend.encode, k_texts, one_text)
            r = compare(lm.model, prompts, responses, keys, backend.pad_id, args.repeats)
            groups = {k: [p for p, kk in zip(prompts, keys) if kk == k] for k in set(keys)}
            head = median([shared_prefix_length(g) for g in groups.values()])
            k_used = len(set(keys))
            print(f"{batch:5d} {k_used:2d} {median([len(p) for p in prompts]):6.0f} {head:6.0f} {r['plain_s']:8.2f} "
                  f"{r['shared_s']:8.2f} {ratio(r['plain_s'], r['shared_s']):7.2f}x {r['max_abs_diff']:11.4f} "
                  f"{r['max_kl']:8.1e} {str(r['argmax_equal']):6s} {r['floor_abs_diff']:9.4f} {r['floor_kl']:8.1e}  "
                  f"{state_note(r['state'])}", flush=True)


if __name__ == "__main__":
    main()
