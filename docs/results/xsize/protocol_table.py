"""The full-protocol table of this page, from `oel evaluate`'s evaluation.json files.

Usage: python docs/results/xsize/protocol_table.py NAME=PATH/evaluation.json [NAME=PATH ...]
e.g. python docs/results/xsize/protocol_table.py M0=docs/results/xsize/summary/evaluation-M0.json
     M3-smallstep=docs/results/xsize/summary/evaluation-M3-handwritten-smallstep.json

Per file: held-out pass with its Wilson 95% CI, sampled move quality with its CI over maps,
tokens per turn, how the games ended, the first moves, IF-Eval prompt- and instruction-level
strict / loose; and, when the file holds an in-context evaluation (knowledge_file), the same
game numbers for the model reading the knowledge.
"""

from __future__ import annotations

import sys

from oel.io import read_json


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def games_row(name: str, m: dict) -> str:
    ends = ", ".join(f"{k} {v}" for k, v in sorted(m["end_reasons"].items()))
    first = ", ".join(f"{k} {v}" for k, v in sorted(m["first_moves"].items(), key=lambda kv: -kv[1]))
    return (f"| {name} | {m['passed']}/{m['episodes']} = {pct(m['pass_rate'])} ({pct(m['ci_low'])}-{pct(m['ci_high'])}) "
            f"| {pct(m['move_quality'])} [{100 * m['move_quality_ci_low']:.1f}, {100 * m['move_quality_ci_high']:.1f}] "
            f"| {m['tokens_per_turn']:.2f} | {ends} | {first} |")


def main(specs: list[str]) -> None:
    print("| model | held-out pass (95% CI, Wilson) | move quality, sampled [CI] | tokens/turn | endings | first moves |")
    print("|---|---|---|---|---|---|")
    ifeval = []
    for spec in specs:
        name, _, path = spec.partition("=")
        e = read_json(path, "evaluation file")
        print(games_row(name, e["games"]["metrics"]))
        if e.get("games_knowledge"):
            print(games_row(f"{name} + knowledge ({e['games_knowledge']['template']})", e["games_knowledge"]["metrics"]))
        if e.get("ifeval"):
            s = e["ifeval"]["scores"]
            ifeval.append(f"{name}: IF-Eval ({s['prompts']} prompts) prompt-level strict {pct(s['prompt_strict'])} / loose "
                          f"{pct(s['prompt_loose'])}, instruction-level {pct(s['instruction_strict'])} / {pct(s['instruction_loose'])}")
    print()
    print("\n".join(ifeval))


if __name__ == "__main__":
    if len(sys.argv) < 2 or any("=" not in a for a in sys.argv[1:]):
        sys.exit(__doc__)
    main(sys.argv[1:])
