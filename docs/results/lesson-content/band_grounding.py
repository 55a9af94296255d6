"""How often a hidden-band run's writer states a number it never read, and whether its lessons name
the secrets its games revealed. Measurement only. Usage, from the repo root:

    python docs/results/lesson-content/band_grounding.py runs/gb-1.5b-d6-s1 runs/gb-1.5b-grounded-d6-s1 ...

Per run, over every extraction step of every round (all accumulation runs):
- written: the lessons the writer wrote that were new (not repeats); with extract.grounded_numbers
  on, those it dropped as ungrounded are counted too;
- unseen: of those, lessons stating a number that appears nowhere in what the writer read (the
  game's record and the lessons before it), by `oel.extract.text.split_grounded`; in a run without
  the check they were kept, in a run with it they were dropped;
- names a secret: kept lessons that state the secret of the game they were written after, and those
  that state some number but not that secret. The secret is read from the game's last line, which
  the writer was shown ("The secret number was 9."), never from the game's state.
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from pathlib import Path

from oel.extract import read_experience
from oel.extract.text import split_grounded
from oel.layout import RunLayout
from oel.trajectory import Trajectory, read_trajectories

sys.path.insert(0, str(Path(__file__).parent))  # band_lessons.py sits beside this script
from band_lessons import named_numbers  # noqa: E402

SECRET = re.compile(r"secret number (?:was )?(\d+)")


def shown_text(traj: Trajectory) -> str:
    """Every number the record of `traj` can show: its observations, answers, replies and last line."""
    turns = " ".join(f"{t.observation} {t.response} {t.feedback}" for t in traj.turns)
    return f"{turns} {traj.outcome or ''}"


def count_run(run_dir: str) -> Counter:
    layout = RunLayout(run_dir)
    c: Counter = Counter()
    for r in layout.rounds():
        store = layout.store_dir(r)
        if not layout.extract_trajectories(r).exists() or not store.exists():
            continue
        trajs = {t.id: t for t in read_trajectories(layout.extract_trajectories(r))}
        for path in sorted(store.glob("round_*/run_*/step_*.json")):
            step = read_experience(path)
            rec = step.record
            if rec is None:
                continue
            traj = trajs[rec.trajectory_id]
            before = " ".join(it.text for it in step.items if it.step_added < step.step)
            written = rec.new_items + rec.ungrounded_dropped
            _, unseen = split_grounded(written, f"{shown_text(traj)} {before}")
            c["written"] += len(written)
            c["unseen"] += len(unseen)
            c["dropped"] += len(rec.ungrounded_dropped)
            m = SECRET.search(traj.outcome or "")
            for item in rec.new_items:
                named = named_numbers(item)
                if m and int(m.group(1)) in named:
                    c["names_secret"] += 1
                elif named:
                    c["names_other"] += 1
    return c


def main(run_dirs: list[str]) -> None:
    print("| run | lessons written | state a number never read | of them dropped | kept, naming the game's secret "
          "| kept, naming numbers but not it |")
    print("|---|---:|---:|---:|---:|---:|")
    for run_dir in run_dirs:
        c = count_run(run_dir)
        print(f"| {RunLayout(run_dir).run_dir.name} | {c['written']} | {c['unseen']} | {c['dropped']} "
              f"| {c['names_secret']} | {c['names_other']} |")


if __name__ == "__main__":
    main(sys.argv[1:])
