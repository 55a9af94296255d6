"""Helpers of the serving benchmarks: keep-alive latency through the official `openai` client.

Not a benchmark itself. The `openai` client keeps its connection open between calls (httpx's
pool), as every deployed agent does; a server that delays each answer on a reused connection
(e.g. Nagle's algorithm meeting the client's delayed ACK: ~40 ms a call) shows here and nowhere
in a load of fresh connections. Each call is timed alone, one after the other, on one client.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

KEEPALIVE_CALLS = 50
KEEPALIVE_WARMUP = 3
"""Uncounted calls first: the connection is opened and the server's first-request costs paid."""
PERCENT = 100


def percentile_ms(seconds: list[float], p: int) -> float:
    """The p-th percentile of `seconds`, in milliseconds (inclusive method; nan when empty)."""
    if not seconds:
        return float("nan")
    if len(seconds) == 1:
        return 1000 * seconds[0]
    return 1000 * statistics.quantiles(seconds, n=PERCENT, method="inclusive")[p - 1]


def time_calls(call: Callable[[], Any], calls: int, warmup: int = KEEPALIVE_WARMUP) -> dict[str, float]:
    """p50/p99/max milliseconds of `calls` sequential calls, after `warmup` uncounted ones."""
    for _ in range(warmup):
        call()
    took = []
    for _ in range(calls):
        t0 = time.perf_counter()
        call()
        took.append(time.perf_counter() - t0)
    return {"calls": calls, "p50_ms": round(percentile_ms(took, 50), 2), "p99_ms": round(percentile_ms(took, 99), 2),
            "max_ms": round(1000 * max(took), 2)}


def openai_client(base_url: str, api_key: str) -> Any:
    import openai

    return openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=60.0)


def keepalive_models(base_url: str, api_key: str, calls: int = KEEPALIVE_CALLS) -> dict[str, float]:
    """GET /v1/models on one kept-alive connection of the official client: the server's own cost."""
    client = openai_client(base_url, api_key)
    try:
        return time_calls(lambda: client.models.list(), calls)
    finally:
        client.close()


def keepalive_chat(base_url: str, api_key: str, model: str, calls: int = KEEPALIVE_CALLS) -> dict[str, float]:
    """One-token chat completions on one kept-alive connection of the official client."""
    client = openai_client(base_url, api_key)
    messages = [{"role": "user", "content": "one word"}]
    try:
        return time_calls(lambda: client.chat.completions.create(model=model, messages=messages, max_tokens=1,
                                                                 temperature=0, seed=0), calls)
    finally:
        client.close()


def keepalive_trajectory_posts(base_url: str, api_key: str, body: Callable[[int], dict[str, Any]],
                               acked: dict[str, str], calls: int = KEEPALIVE_CALLS) -> dict[str, float]:
    """POST /v1/trajectories (each with its own Idempotency-Key) on one kept-alive connection of the client;
    `acked` gets key -> stored id of each (a store check then counts them as acknowledged)."""
    client = openai_client(base_url, api_key)
    sent = iter(range(calls + KEEPALIVE_WARMUP))

    def post() -> None:
        key = f"keepalive-{next(sent)}"
        answer = client.post("/trajectories", cast_to=dict, body=body(len(acked)),
                             options={"headers": {"Idempotency-Key": key}})  # a non-2xx answer raises
        acked[key] = answer["id"]

    try:
        return time_calls(post, calls)
    finally:
        client.close()


def keepalive_note(name: str, figures: dict[str, float]) -> str:
    return (f"keep-alive {name} (openai client, {figures['calls']} calls on one connection): "
            f"p50 {figures['p50_ms']:.2f} ms, p99 {figures['p99_ms']:.2f} ms, max {figures['max_ms']:.2f} ms")
