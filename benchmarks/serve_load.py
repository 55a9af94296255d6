"""`oel serve` under a loopback load: latency, throughput and status counts; batch invariance.

    python benchmarks/serve_load.py [--requests 200] [--concurrency 16] [--max-tokens 8]
                                    [--dtype bfloat16] [--compare] [--invariance] [--time-limit-s 120]
                                    [--model smollm2-135m-instruct] [--max-queue 8 --max-connections 32]

A ChatServer over the tiny random chat model (oel.backends.tiny: two layers, no
download; or `--model`, any preset or HF directory) on 127.0.0.1, port 0, with one API key.
`--warmup` requests (default: one per client) go first and are not counted. `--concurrency` client threads each keep
one HTTP/1.1 connection (http.client, reconnecting after a `Connection: close`) and send
seeded requests of varied prompt length until `--requests` are sent or `--time-limit-s`
passes. Every answer's status is counted, so overload answers (503) show beside the 200s;
latencies are per request, client side. Clients and server share one process (and its
GIL; torch releases it while computing), which is the same for every mode compared.

After the load, `--keepalive-calls` sequential calls of the official `openai` client on one
kept-alive connection are timed (GET /v1/models, and a one-token chat): what every deployed
agent pays per call, which a load of many connections does not show.

`--compare` runs the default batched mode and `batch_invariant=true` (each request alone,
prefix store off) on the same requests, back to back: what the invariance costs.
`--invariance` measures how much a request's answer depends on its batch: the same seeded
requests alone and as one batch, at float32 and bf16 (texts that differ, and the largest
difference of a next-token logit).
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import add_smoke_flag, machine_state, state_note  # noqa: E402
from _serving import keepalive_chat, keepalive_models, keepalive_note  # noqa: E402

API_KEY = "bench-" + "k" * 32
PROMPT_LENGTHS = 7
"""Prompts cycle through this many lengths, so batches mix lengths as real traffic does."""
INVARIANCE_ROWS = 8
INVARIANCE_TOKENS = 32
CLIENT_TIMEOUT_S = 60.0
PERCENTILES = (50, 99)
SMOKE_REQUESTS = 4
SMOKE_KEEPALIVE_CALLS = 3


def load(args: argparse.Namespace) -> tuple[Any, Any, str]:
    """(model, tokenizer, id): the tiny random model, or `--model` through oel.models."""
    import torch

    if not args.model:
        from oel.backends.tiny import tiny_chat_model

        return (*tiny_chat_model(seed=0, dtype=getattr(torch, args.dtype)), "tiny")
    from oel.models import ModelConfig, load_model

    lm = load_model(ModelConfig(name=args.model, dtype=args.dtype))
    return lm.model, lm.tokenizer, lm.model_id


def build_server(lm: tuple[Any, Any, str], batch_invariant: bool, args: argparse.Namespace) -> Any:
    from oel.backends.hf import HFBackend
    from oel.serving.chat_server import ChatServer, ServeConfig

    model, tok, model_id = lm
    backend = HFBackend(model, tok, model_id=model_id, max_batch_size=args.max_batch_size,
                        **({"prefix_cache_bytes": 0} if batch_invariant else {}))
    limits = {k: v for k, v in (("max_queue", args.max_queue), ("max_connections", args.max_connections)) if v}
    config = ServeConfig(port=0, api_keys=[f"bench:{API_KEY}"], api_keys_env="", max_batch_size=args.max_batch_size,
                         batch_invariant=batch_invariant, **limits)
    return ChatServer(backend, config)


def request_body(i: int, max_tokens: int) -> bytes:
    content = "move left then down " * (1 + i % PROMPT_LENGTHS)
    return json.dumps({"messages": [{"role": "user", "content": content}], "max_tokens": max_tokens,
                       "temperature": 1.0, "seed": i}).encode()


class LoadClient:
    """Sends numbered requests from a shared counter until it runs out or time is up."""

    def __init__(self, address: tuple[str, int], total: int, max_tokens: int, deadline: float) -> None:
        self.address, self.total, self.max_tokens, self.deadline = address, total, max_tokens, deadline
        self._next = iter(range(total))
        self._lock = threading.Lock()
        self.statuses: Counter[int | str] = Counter()
        self.latencies_ok: list[float] = []

    def _take(self) -> int | None:
        with self._lock:
            return next(self._next, None) if time.monotonic() < self.deadline else None

    def run_worker(self) -> None:
        conn = http.client.HTTPConnection(*self.address, timeout=CLIENT_TIMEOUT_S)
        headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
        while (i := self._take()) is not None:
            t0 = time.perf_counter()
            try:
                conn.request("POST", "/v1/chat/completions", body=request_body(i, self.max_tokens), headers=headers)
                resp = conn.getresponse()
                resp.read()
                status: int | str = resp.status
            except (OSError, http.client.HTTPException) as e:
                status = type(e).__name__
                conn.close()
            elapsed = time.perf_counter() - t0
            with self._lock:
                self.statuses[status] += 1
                if status == 200:
                    self.latencies_ok.append(elapsed)
        conn.close()


def percentile(values: list[float], p: int) -> float:
    if not values:
        return float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[p - 1] if len(values) > 1 else values[0]


def drive(client: LoadClient, concurrency: int) -> float:
    """Run `concurrency` workers of `client` to the end; the wall time."""
    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for worker in [pool.submit(client.run_worker) for _ in range(concurrency)]:
            worker.result()
    return time.perf_counter() - t0


def run_load(args: argparse.Namespace, lm: tuple[Any, Any, str], batch_invariant: bool) -> dict[str, Any]:
    with build_server(lm, batch_invariant, args) as srv:
        address = srv.httpd.server_address[:2]
        warmup = args.concurrency if args.warmup is None else args.warmup
        drive(LoadClient(address, warmup, args.max_tokens, time.monotonic() + args.time_limit_s), args.concurrency)
        client = LoadClient(address, args.requests, args.max_tokens, time.monotonic() + args.time_limit_s)
        wall = drive(client, args.concurrency)
        keepalive = {"models": keepalive_models(srv.url, API_KEY, args.keepalive_calls),
                     "chat_1_token": keepalive_chat(srv.url, API_KEY, srv.served_name, args.keepalive_calls)}
    sent = sum(client.statuses.values())
    return {"mode": "batch_invariant" if batch_invariant else "batched", "requests": sent, "wall_s": wall,
            "throughput_rps": sent / wall, "ok_rps": client.statuses[200] / wall,
            **{f"p{p}_ms": 1000 * percentile(client.latencies_ok, p) for p in PERCENTILES},
            "statuses": dict(sorted(client.statuses.items(), key=str)), "keepalive": keepalive,
            "state": machine_state()}


def print_load(r: dict[str, Any], args: argparse.Namespace) -> None:
    print(f"{r['mode']:>15}: {r['requests']} requests, concurrency {args.concurrency}, max_tokens {args.max_tokens}, "
          f"{args.model or 'tiny'} {args.dtype}, max_batch_size {args.max_batch_size}, "
          f"max_queue {args.max_queue or 'default'}, max_connections {args.max_connections or 'default'}")
    print(f"{'':>15}  p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms (answered 200), "
          f"throughput {r['throughput_rps']:.1f} req/s ({r['ok_rps']:.1f} ok/s), wall {r['wall_s']:.2f} s")
    print(f"{'':>15}  statuses {r['statuses']}  {state_note(r['state'])}")
    for name, figures in r["keepalive"].items():
        print(f"{'':>15}  {keepalive_note(name, figures)}")


def measure_invariance(dtype_name: str) -> dict[str, Any]:
    """Seeded rows alone vs as one batch: differing texts and the largest next-token logit gap."""
    import torch

    from oel.backends.base import SamplingParams
    from oel.backends.hf import HFBackend, RowRequest
    from oel.backends.tiny import tiny_chat_model
    from oel.trajectory import Message

    model, tok = tiny_chat_model(seed=1, dtype=getattr(torch, dtype_name))
    rows = []
    for i in range(INVARIANCE_ROWS):
        params = SamplingParams(temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=INVARIANCE_TOKENS, seed=100 + i)
        rows.append(RowRequest([Message(role="user", content="hello there " * (1 + 3 * i))], params, params.seed))
    fresh = lambda: HFBackend(model, tok, model_id="tiny", prefix_cache_bytes=0)  # noqa: E731
    alone = [fresh().generate_rows([r])[0].text for r in rows]
    batched = [g.text for g in fresh().generate_rows(rows)]
    encoded = [fresh().encode(r.messages) for r in rows]
    return {"dtype": dtype_name, "texts_differ": sum(a != b for a, b in zip(alone, batched)), "rows": len(rows),
            "max_logit_gap": _max_logit_gap(model, encoded, fresh().pad_id)}


def _max_logit_gap(model: Any, encoded: list[list[int]], pad_id: int) -> float:
    import torch

    width = max(map(len, encoded))
    ids_BW = torch.full((len(encoded), width), pad_id)
    mask_BW = torch.zeros((len(encoded), width), dtype=torch.long)
    for b, ids in enumerate(encoded):
        ids_BW[b, width - len(ids):] = torch.tensor(ids)
        mask_BW[b, width - len(ids):] = 1
    with torch.inference_mode():
        batch_BV = model(input_ids=ids_BW, attention_mask=mask_BW).logits[:, -1].float()
        alone_BV = torch.stack([model(input_ids=torch.tensor([ids])).logits[0, -1].float() for ids in encoded])
    return float((batch_BV - alone_BV).abs().max())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=200, help="requests to send (at most)")
    ap.add_argument("--concurrency", type=int, default=16, help="client threads, one connection each")
    ap.add_argument("--max-tokens", type=int, default=8, help="max_tokens of every request")
    ap.add_argument("--max-batch-size", type=int, default=16, help="the server's max_batch_size")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"], help="the model's weights")
    ap.add_argument("--model", default="", help="a preset or HF directory instead of the tiny random model")
    ap.add_argument("--max-queue", type=int, default=0, help="the server's max_queue (0: its default)")
    ap.add_argument("--max-connections", type=int, default=0, help="the server's max_connections (0: its default)")
    ap.add_argument("--warmup", type=int, default=None, help="uncounted requests first (default: --concurrency)")
    ap.add_argument("--time-limit-s", type=float, default=120.0, help="stop sending after this long (per mode)")
    ap.add_argument("--keepalive-calls", type=int, default=50, help="sequential openai-client calls timed on one "
                                                                     "kept-alive connection (per mode and kind)")
    ap.add_argument("--compare", action="store_true", help="also run batch_invariant=true on the same requests")
    ap.add_argument("--invariance", action="store_true", help="measure alone-vs-batched answers at float32 and bf16")
    add_smoke_flag(ap)
    args = ap.parse_args()
    if args.smoke:  # every part, a few requests each
        args.requests, args.concurrency, args.max_tokens, args.warmup = SMOKE_REQUESTS, 2, 2, 1
        args.keepalive_calls = SMOKE_KEEPALIVE_CALLS
        args.compare = args.invariance = True
    lm = load(args)
    results = [run_load(args, lm, batch_invariant=False)]
    if args.compare:
        results.append(run_load(args, lm, batch_invariant=True))
    for r in results:
        print_load(r, args)
    if args.compare:
        print(f"batch_invariant costs {results[0]['ok_rps'] / max(results[1]['ok_rps'], 1e-9):.2f}x in ok throughput, "
              f"p50 {results[1]['p50_ms'] / results[0]['p50_ms']:.2f}x")
    if args.invariance:
        for dtype_name in ("float32", "bfloat16"):
            m = measure_invariance(dtype_name)
            print(f"invariance {m['dtype']:>8}: {m['texts_differ']}/{m['rows']} seeded texts differ alone vs batched, "
                  f"max |logit alone - logit batched| = {m['max_logit_gap']:.2g}")


if __name__ == "__main__":
    main()
