"""The screen's gate (a) and (b) for the small-answer games: does M_0's answer depend on the state,
and do lessons move it? Exact meter on training-side seeds only (round 0's 'train' block).

    python docs/results/answer-games/screen.py MODEL=qwen2.5-coder-0.5b-instruct GAME=guess_number \
        EPISODES=24 [KNOWLEDGE=name:path,...] [TEACHER_TEMPLATE=teacher_game_v1] [OUT=file.json]

Prints one JSON line per setting (the policy prompt, then each lessons file read by the teacher
prompt), with E[ok] / E[good] / E[value] as scored and for the state-blind policy, the mutual
information between state and answer, and each lessons setting's paired gap over the policy prompt.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from oel.envs import EnvConfig
from oel.envs.seeds import round_seeds
from oel.evaluate.answer_meter import measure_answers, paired_answer_gap
from oel.evaluate.answer_probes import consistent_guesser, played_probes, uniform_answer
from oel.evaluate.meter import PromptVariant
from oel.models import ModelConfig, load_model

args = dict(a.split("=", 1) for a in sys.argv[1:])
model_name = args.get("MODEL", "qwen2.5-coder-0.5b-instruct")
game = args.get("GAME", "guess_number")
episodes = int(args.get("EPISODES", "24"))
policy_t = args.get("POLICY_TEMPLATE", "policy_game_v1")
teacher_t = args.get("TEACHER_TEMPLATE", "teacher_game_v1")
config = EnvConfig(game=game, max_turns=int(args.get("TURNS", "5")))
reference = consistent_guesser if game == "guess_number" else uniform_answer
probes = played_probes(config, round_seeds(0, "train", episodes), reference)
loaded = load_model(ModelConfig(name=model_name))
results = {}
base = measure_answers(loaded.model, loaded.tokenizer, probes, PromptVariant(policy_t, policy_t), setting="policy")
results["policy"] = base.summary()
print(json.dumps(results["policy"]), flush=True)
for item in filter(None, args.get("KNOWLEDGE", "").split(",")):
    name, path = item.split(":", 1)
    variant = PromptVariant(name, teacher_t, Path(path).read_text())
    r = measure_answers(loaded.model, loaded.tokenizer, probes, variant, setting=name)
    s = r.summary()
    s["gap_vs_policy"] = {m: paired_answer_gap(r, base, m) for m in ("ok", "good", "value")}
    results[name] = s
    print(json.dumps(s), flush=True)
if "OUT" in args:
    Path(args["OUT"]).write_text(json.dumps({"model": model_name, "game": game, "episodes": episodes,
                                             "policy_template": policy_t, "teacher_template": teacher_t,
                                             "results": results}, indent=1))
