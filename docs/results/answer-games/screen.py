"""The screen's gate (a) and (b) for the small-answer games: does M_0's answer depend on the state,
and do lessons move it? Exact meter on training-side seeds only (round 0's 'train' block).

    python docs/results/answer-games/screen.py MODEL=qwen2.5-coder-0.5b-instruct GAME=guess_number \
        EPISODES=24 [TURNS=5] [FORMAT=immediate|think] [SAMPLES=4] [KNOWLEDGE=name:path,...] [OUT=file.json] \
        [any EnvConfig field, e.g. hanoi_disks=3 g2048_target=32]

GAME is any small-answer game (`oel.envs.ANSWER_GAMES`); the probe states are one episode per seed
played by the game's reference player (`oel.evaluate.answer_probes.reference_policy`), at most TURNS
states each.

FORMAT=think asks for a short thought before the answer (policy_game_think_v1 / teacher_game_think_v1),
samples SAMPLES thoughts per state at the games' sampling settings and scores every answer exactly
after each: an estimate, not exact.

Prints one JSON line per setting (the policy prompt, then each lessons file read by the teacher
prompt), with E[ok] / E[good] / E[value] as scored and for the state-blind policy, the mutual
information between state and answer, and each lessons setting's paired gap over the policy prompt.
"""

from __future__ import annotations

import json
import sys
from dataclasses import fields
from pathlib import Path

import yaml

from oel.backends.base import SamplingParams
from oel.backends.hf import HFBackend
from oel.envs import EnvConfig, make_env
from oel.envs.seeds import round_seeds
from oel.evaluate.answer_meter import measure_answers, measure_answers_thinking, paired_answer_gap
from oel.evaluate.answer_probes import played_probes, reference_policy
from oel.evaluate.meter import PromptVariant
from oel.models import ModelConfig, load_model

args = dict(a.split("=", 1) for a in sys.argv[1:])
model_name = args.get("MODEL", "qwen2.5-coder-0.5b-instruct")
game = args.get("GAME", "guess_number")
episodes = int(args.get("EPISODES", "24"))
think = args.get("FORMAT", "immediate") == "think"
policy_t = args.get("POLICY_TEMPLATE", "policy_game_think_v1" if think else "policy_game_v1")
teacher_t = args.get("TEACHER_TEMPLATE", "teacher_game_think_v1" if think else "teacher_game_v1")
samples = int(args.get("SAMPLES", "4"))
env_fields = {f.name for f in fields(EnvConfig)} - {"game", "max_turns"}
config = EnvConfig(game=game, max_turns=int(args.get("TURNS", "5")),
                   **{k: yaml.safe_load(v) for k, v in args.items() if k in env_fields})
probes = played_probes(config, round_seeds(0, "train", episodes), reference_policy(config))
loaded = load_model(ModelConfig(name=model_name))
backend = HFBackend(loaded.model, loaded.tokenizer, model_id=loaded.model_id)
parse = make_env(config).parse


def run(variant: PromptVariant, name: str):
    if not think:
        return measure_answers(loaded.model, loaded.tokenizer, probes, variant, setting=name)
    params = SamplingParams(max_new_tokens=int(args.get("THOUGHT_TOKENS", "96")))
    result, drawn = measure_answers_thinking(backend, probes, variant, parse, params, samples=samples, setting=name)
    examples.setdefault(name, [[d.thought for d in ds] for ds in drawn[:6]])
    return result


def value(variant: PromptVariant) -> dict:
    """Blackjack, VALUE=1: the exact win rate of the model's [Hit]/[Stand] table at 240 canonical hands."""
    from oel.evaluate.blackjack_meter import policy_value_meter

    v = policy_value_meter(loaded.model, loaded.tokenizer, variant, config).to_dict()
    return {k: v[k] for k in ("win_rate", "optimal", "always_stand", "random", "agreement")}


with_value = game == "blackjack" and args.get("VALUE", "0") == "1" and not think
examples: dict = {}
results = {}
base = run(PromptVariant(policy_t, policy_t), "policy")
results["policy"] = base.summary()
if with_value:
    results["policy"]["policy_value"] = value(PromptVariant(policy_t, policy_t))
print(json.dumps(results["policy"]), flush=True)
for item in filter(None, args.get("KNOWLEDGE", "").split(",")):
    name, path = item.split(":", 1)
    variant = PromptVariant(name, teacher_t, Path(path).read_text())
    r = run(variant, name)
    s = r.summary()
    s["gap_vs_policy"] = {m: paired_answer_gap(r, base, m) for m in ("ok", "good", "value")}
    if with_value:
        s["policy_value"] = value(variant)
    results[name] = s
    print(json.dumps(s), flush=True)
if "OUT" in args:
    Path(args["OUT"]).write_text(json.dumps({"model": model_name, "game": game, "episodes": episodes,
                                             "env": {f.name: getattr(config, f.name) for f in fields(EnvConfig)},
                                             "policy_template": policy_t, "teacher_template": teacher_t,
                                             "format": "think" if think else "immediate",
                                             "results": results, "thought_examples": examples}, indent=1))
