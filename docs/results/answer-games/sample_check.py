"""Does the exact meter agree with sampling on Blackjack? At every state M_0's own held-out games
reached (replayed from their seeds and answers through the real game), score [Hit]/[Stand] exactly,
apply the games' sampling (T 0.7, top-p 0.8, top-k 20) to the two answers, and compare the predicted
share of [Hit] with the answers the games actually sampled there.

    python docs/results/answer-games/sample_check.py runs/bj-1.5b/round_0/evaluate/games_no_knowledge/trajectories.jsonl [GAMES=300]
"""

from __future__ import annotations

import json
import sys

from oel.envs import EnvConfig
from oel.evaluate.answer_meter import measure_answers
from oel.evaluate.answer_probes import visited_probes
from oel.evaluate.meter import PromptVariant
from oel.evaluate.metrics import wilson_interval
from oel.evaluate.sharpen import sharpen
from oel.models import ModelConfig, load_model
from oel.trajectory import read_trajectories

path = sys.argv[1]
args = dict(a.split("=", 1) for a in sys.argv[2:])
trajs = read_trajectories(path)[: int(args.get("GAMES", "300"))]
probes = visited_probes(EnvConfig(game="blackjack"), trajs)
actions = [t.action for traj in trajs for t in traj.turns][: len(probes)]
loaded = load_model(ModelConfig(name=args.get("MODEL", trajs[0].model_id.split("@")[0])))
result = measure_answers(loaded.model, loaded.tokenizer, probes, PromptVariant("policy_game_v1", "policy_game_v1"))
scored = [float(s.p[0]) for s in result.scores]
sampled = [sharpen([p, 1 - p], 0.7, 0.8, 20)[0] for p in scored]
hits = sum(a == "[Hit]" for a in actions)
lo, hi = wilson_interval(hits, len(actions))
print(json.dumps({"games": len(trajs), "decisions": len(actions), "observed_hit_share": hits / len(actions),
                  "observed_ci95": [lo, hi], "meter_p_hit_scored": sum(scored) / len(scored),
                  "meter_p_hit_as_sampled": sum(sampled) / len(sampled)}))
