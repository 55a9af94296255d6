"""Evaluation: held-out play (pass rate, CI, move quality, length), IF-Eval offline, the exact meter.

The loop calls:

    from oel.evaluate import GamesConfig, IFEvalConfig, evaluate_games, evaluate_ifeval
    games = evaluate_games(backend, env_cfg, GamesConfig(num_maps=32), out_dir / "games")
    in_ctx = evaluate_games(backend, env_cfg, GamesConfig(num_maps=32), out_dir / "games_k", knowledge=texts)
    ife = evaluate_ifeval(backend, IFEvalConfig(num_prompts=50), out_dir / "ifeval")

or `evaluate(backend, EvaluateConfig(...), env=env_cfg, out_dir=out_dir, knowledge=Knowledge.of(texts))`
for all three and `evaluation.json`.
Every call is idempotent (a finished result with the same key is returned) and resumable.
Metric definitions: `oel.evaluate.metrics` and docs/evaluation.md.

The modules, by who uses them:

* the product of `oel evaluate` and the loop's evaluate stage: `config`, `evaluation` (the parts and
  `evaluation.json`), `games` (held-out play), `metrics` (pass rate, Wilson and Newcombe intervals,
  move quality), `ifeval` + `ifeval_offline` (IF-Eval without a hub), `meter` (the exact grid meter
  at held-out probe states), `answer_meter` + `answer_probes` (the same for the small-answer games),
  `sharpen` (the meter as the games sample it: the report's column, the online gate, the opening
  check);
* the product of `oel meter` and the loop's teacher gap: `gap` (student vs teacher vs control on
  the grid games), `answer_gap` (the same on the small-answer games: the screen of a new game);
* `oel experience curve`: `curve` (pass rate with e_i in context as i grows);
* research diagnostics behind options of `oel meter`, used by the published results pages:
  `meter_check` (`sample_check=`: does sampling agree with the meter?), `visited` (`visited=`: the
  grid states a trajectory file reached), `blackjack_meter` (`policy_value=true`: Blackjack's exact
  win chance of a model's [Hit]/[Stand] table).

None of it is a training signal: nothing here chooses what is trained on.
"""

from oel.evaluate.config import EvaluateCommandConfig, EvaluateConfig, GamesConfig, IFEvalConfig
from oel.evaluate.evaluation import Evaluation, evaluate, evaluation_table
from oel.evaluate.games import GameEval, evaluate_games
from oel.evaluate.ifeval import IFEvalResult, IFEvalScores, aggregate, evaluate_ifeval, score_response
from oel.evaluate.metrics import GameSummary, MoveQuality, episode_move_marks, move_quality, summarise, wilson_ci

__all__ = [
    "EvaluateCommandConfig", "EvaluateConfig", "GamesConfig", "IFEvalConfig", "Evaluation", "evaluate",
    "evaluation_table", "GameEval",
    "evaluate_games", "IFEvalResult", "IFEvalScores", "aggregate", "evaluate_ifeval", "score_response",
    "GameSummary", "MoveQuality", "episode_move_marks", "move_quality", "summarise", "wilson_ci",
]
