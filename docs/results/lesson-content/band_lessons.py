"""Which numbers a hidden-band run's lessons name, per round: inside the deployment's band or not.

Measurement only (it reads the band, which no stage of the loop ever sees). Usage, from the repo root:

    python docs/results/lesson-content/band_lessons.py runs/gb-1.5b-d0 runs/gb-1.5b-d1 runs/gb-1.5b-d6

A number counts where a lesson states it as a value: the game's own range ("between 1 and 20") and
counts ("3 turns", "4 games") are not values of the secret and are dropped before counting.
"""

from __future__ import annotations

import re
import sys

import yaml

from oel.envs import EnvConfig
from oel.envs.guess_number import deployment_band
from oel.layout import RunLayout

NOT_A_VALUE = re.compile(r"between \d+ and \d+|\d+\s+(?:turns?|guesses|games?|attempts?|tries|steps?|rounds?)",
                         re.IGNORECASE)
NUMBER = re.compile(r"\b\d+\b")


def named_numbers(text: str) -> list[int]:
    """The integers a lesson text states, less the game's range and counts."""
    return [int(n) for n in NUMBER.findall(NOT_A_VALUE.sub(" ", text))]


def main(run_dirs: list[str]) -> None:
    print("| run | band | round | lesson texts | numbers named | in the band | texts naming a band number |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for run_dir in run_dirs:
        layout = RunLayout(run_dir)
        env = yaml.safe_load(layout.config_file.read_text())["env"]
        band = deployment_band(EnvConfig(**env))
        if band is None:
            raise SystemExit(f"{layout.config_file}: env.guess_band is 0; expected a hidden-band run")
        low, high = band
        for r in layout.rounds():
            texts = [p.read_text() for p in layout.knowledge_files(r)]
            if not texts:
                continue
            numbers = [named_numbers(t) for t in texts]
            named = sum(len(n) for n in numbers)
            inside = sum(low <= x <= high for n in numbers for x in n)
            naming = sum(any(low <= x <= high for x in n) for n in numbers)
            print(f"| {layout.run_dir.name} | {low}-{high} | {r} | {len(texts)} | {named} | {inside} | {naming} |")


if __name__ == "__main__":
    main(sys.argv[1:])
