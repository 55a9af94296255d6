"""The promotion gate's verdicts: is a round's candidate fit to publish?

Pure functions of two evaluation summaries (`oel.evaluate.Evaluation.summary()`), so that the
scheduler's decision can be tested, and read in `version.json`, without running a model.
"""

from __future__ import annotations

from typing import Any


def compare(check: str, metric: str, candidate: dict[str, Any], current: dict[str, Any],
            tolerance: float) -> dict[str, Any]:
    """The gate's verdict: passed when candidate >= current - tolerance on `metric` (missing = refused)."""
    new, old = candidate.get(metric), current.get(metric)
    verdict: dict[str, Any] = {"check": check, "metric": metric, "candidate": new, "current": old,
                               "tolerance": tolerance}
    if new is None or old is None:
        return {**verdict, "passed": False, "reason": f"{metric} missing from the evaluation"}
    passed = new >= old - tolerance
    reason = f"{metric} {new:.4f} {'>=' if passed else '<'} {old:.4f} - {tolerance}"
    return {**verdict, "passed": passed, "reason": reason}


def refuse_collapse(verdict: dict[str, Any], candidate: dict[str, Any], max_share: float) -> dict[str, Any]:
    """The verdict, refused when the candidate's meter puts `max_share` or more on one move (0 = off).

    A meter or move-quality gate alone can publish such a candidate: always [down] scores 50% E[mq]
    on FrozenLake's probe states, above a near-random start, and wins no game.
    """
    if max_share <= 0:
        return verdict
    share, sampled = candidate.get("meter_top_move_share"), candidate.get("meter_sampled_top_move_share")
    verdict = {**verdict, "top_move_share": share, "sampled_top_move_share": sampled, "max_move_share": max_share}
    if share is None:
        return {**verdict, "passed": False, "reason": "meter_top_move_share missing from the evaluation"}
    if share >= max_share:
        return {**verdict, "passed": False,
                "reason": f"collapsed: {100 * share:.0f}% of its move probability on one answer (>= "
                          f"{100 * max_share:.0f}%)"}
    if sampled is not None and sampled >= max_share:  # it will PLAY one answer (oel.evaluate.sharpen)
        return {**verdict, "passed": False,
                "reason": f"collapsed as the games sample: {100 * share:.0f}% of its move probability on one answer "
                          f"becomes {100 * sampled:.0f}% (>= {100 * max_share:.0f}%)"}
    return verdict
