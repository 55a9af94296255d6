"""IF-Eval of two models on the same prompts, paired: the prompt-level difference with a bootstrap CI.

Usage: python docs/results/xsize/ifeval_paired.py A/ifeval/ifeval_responses.jsonl B/ifeval/ifeval_responses.jsonl
(the answers `oel evaluate` saved; both must answer the same prompts). Re-scores every answer with
IF-Eval's own checkers (offline, as `oel evaluate` does) and prints B - A.
"""

from __future__ import annotations

import json
import sys

import numpy as np

from oel.evaluate.ifeval import PromptVerdict, score_response
from oel.evaluate.ifeval_offline import load_prompts
from oel.evaluate.metrics import bootstrap_mean_ci


def verdicts(path: str) -> dict[int, PromptVerdict]:
    prompts = {p.key: p for p in load_prompts()}
    with open(path, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return {r["key"]: score_response(prompts[r["key"]], r["response"]) for r in rows}


def main(a_path: str, b_path: str) -> None:
    a, b = verdicts(a_path), verdicts(b_path)
    if sorted(a) != sorted(b):
        sys.exit(f"{b_path}: answers other prompts than {a_path}")
    keys = sorted(a)
    for level in ("strict", "loose"):
        fa = [float(all(getattr(a[k], level))) for k in keys]
        fb = [float(all(getattr(b[k], level))) for k in keys]
        lo, hi = bootstrap_mean_ci([y - x for x, y in zip(fa, fb)])
        print(f"prompt-level {level}: {100 * np.mean(fa):.1f}% -> {100 * np.mean(fb):.1f}%, difference "
              f"{100 * (np.mean(fb) - np.mean(fa)):+.1f} points [{100 * lo:+.1f}, {100 * hi:+.1f}] over {len(keys)} prompts")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
