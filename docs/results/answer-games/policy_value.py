"""Blackjack: the exact chance that each model's [Hit]/[Stand] policy wins a hand, as scored and as
the games sample it (T 0.7, top-p 0.8, top-k 20 applied to the two answers), from its P([Hit]) at
240 canonical hands fed to the DP (`oel.evaluate.blackjack_meter`). No sampling noise.

    python docs/results/answer-games/policy_value.py NAME=model_dir_or_preset ... OUT=raw/bj-policy-value.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from oel.envs import EnvConfig
from oel.envs.blackjack import hand_start_value
from oel.evaluate.blackjack_meter import _fill, policy_value_meter
from oel.evaluate.meter import PromptVariant
from oel.evaluate.sharpen import sharpen
from oel.models import ModelConfig, load_model

TEMPERATURE, TOP_P, TOP_K = 0.7, 0.8, 20
args = dict(a.split("=", 1) for a in sys.argv[1:])
out_path = args.pop("OUT", None)
config = EnvConfig(game="blackjack")
policy = PromptVariant("policy_game_v1", "policy_game_v1")
results = {}
for name, model in args.items():
    loaded = load_model(ModelConfig(name=model))
    value = policy_value_meter(loaded.model, loaded.tokenizer, policy, config)
    sampled = {k: sharpen([p, 1 - p], TEMPERATURE, TOP_P, TOP_K)[0] for k, p in value.p_hit.items()}
    row = {**{k: v for k, v in value.to_dict().items() if k != "p_hit"},
           "win_rate_as_sampled": hand_start_value(_fill(sampled), config.max_turns),
           "mean_p_hit": sum(value.p_hit.values()) / len(value.p_hit),
           "mean_p_hit_as_sampled": sum(sampled.values()) / len(sampled), "p_hit": value.to_dict()["p_hit"]}
    results[name] = row
    print(name, json.dumps({k: round(v, 4) for k, v in row.items() if k != "p_hit"}), flush=True)
    del loaded
if out_path:
    Path(out_path).write_text(json.dumps(results, indent=1))
