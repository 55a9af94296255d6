"""Evaluation: held-out play (pass rate, CI, move quality, length) and IF-Eval, offline.

The loop calls:

    from oel.evaluate import GamesConfig, IFEvalConfig, evaluate_games, evaluate_ifeval
    games = evaluate_games(backend, env_cfg, GamesConfig(num_maps=32), out_dir / "games")
    in_ctx = evaluate_games(backend, env_cfg, GamesConfig(num_maps=32), out_dir / "games_k", knowledge=texts)
    ife = evaluate_ifeval(backend, IFEvalConfig(num_prompts=50), out_dir / "ifeval")

or `evaluate(backend, EvaluateConfig(...), env=env_cfg, out_dir=out_dir, knowledge=Knowledge.of(texts))`
for all three and `evaluation.json`.
Every call is idempotent (a finished result with the same key is returned) and resumable.
Metric definitions: `oel.evaluate.metrics` and docs/evaluation.md.
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
