"""Gateway intake under load, with a kill -9 mid-way: is every acknowledged trajectory stored exactly once?

    python benchmarks/gateway_load.py [--trajectories 2000] [--clients 32] [--kill-at 0.33,0.67] [--timeout 300]
                                      [--store sqlite|postgresql|both] [--gateways 2] [--pg-url URL]

The gateway runs as a child process (`python -m oel gateway responder=none`) on a
fresh SQLite store (WAL, synchronous=FULL: every acknowledgement waited for an fsync) on
127.0.0.1. `--clients` threads POST `--trajectories` trajectories to /v1/trajectories in all,
each with its own Idempotency-Key, on keep-alive connections. When each `--kill-at` fraction is
acknowledged the gateway gets SIGKILL and is restarted on the same port and store; clients
retry connection errors, 5xx and 429 with exponential backoff and the same key until
acknowledged. At the end the store is opened and its rows compared with the acknowledgements.

`--store postgresql` runs the same load on a PostgreSQL store (`--pg-url`, else a throwaway
cluster started like the tests' own, tests/pg_server.py) with `--gateways` gateway processes
writing it at once (clients split between them; the first one is the one killed); `both` runs
SQLite first, then PostgreSQL, in the same invocation so their throughputs compare.

After the load, `--keepalive-calls` sequential calls of the official `openai` client on one
kept-alive connection to gateway 0 are timed: GET /v1/models, then trajectory posts (stored and
checked like the load's own).

Printed: throughput (acknowledged trajectories per wall second, the kill and restart included),
p50/p99 latency from first attempt to acknowledgement and of single answered requests, counts
of requests, retries and status codes (connection errors by exception name), and the check.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_smoke_flag  # noqa: E402
from _serving import KEEPALIVE_WARMUP, keepalive_models, keepalive_note, keepalive_trajectory_posts  # noqa: E402
from oel.online.loadgen import (  # noqa: E402
    GatewayProcess,
    LoadResult,
    free_port,
    kill_and_restart_when,
    make_trajectory,
    run_load,
    verify,
)

KEY = "gateway-load-key-0123456789"
SMOKE_TRAJECTORIES = 8
SMOKE_CLIENTS = 2
SMOKE_KEEPALIVE_CALLS = 3
KEEPALIVE_CLIENT = -1
"""The client number of the keep-alive posts' trajectories (the load's clients count from 0)."""


def run_one(kind: str, store: str, workdir: Path, args: argparse.Namespace) -> bool:
    """One load run on `store` with the gateways `kind` calls for; prints its figures, returns PASS."""
    n = args.gateways if kind == "postgresql" else 1
    gateways = [GatewayProcess(store, free_port(), KEY, log_path=workdir / f"gateway-{kind}-{i}.log") for i in range(n)]
    for i, g in enumerate(gateways):
        print(f"{kind}: gateway {i} started in {g.start():.2f}s on 127.0.0.1:{g.port}; "
              f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}", flush=True)
    result, events = LoadResult(), []
    try:
        fractions = [float(f) for f in args.kill_at.split(",") if float(f) > 0]
        # Acknowledgements stall while the gateway is down, so each killer fires after the previous restart.
        killers = [kill_and_restart_when(gateways[0], result, int(args.trajectories * f), events) for f in fractions]
        run_load("127.0.0.1", [g.port for g in gateways], KEY, trajectories=args.trajectories, clients=args.clients,
                 timeout_s=args.timeout, result=result)
        for killer in killers:
            killer.join(timeout=args.timeout)
        summary = {"store": kind, "gateways": n, "trajectories": args.trajectories, "clients": args.clients,
                   **result.summary()}
        url = f"http://127.0.0.1:{gateways[0].port}/v1"
        keepalive = {"models": keepalive_models(url, KEY, args.keepalive_calls),
                     "trajectory_posts": keepalive_trajectory_posts(
                         url, KEY, lambda i: make_trajectory(KEEPALIVE_CLIENT, i), result.acked, args.keepalive_calls)}
    finally:
        for g in gateways:
            g.stop()
    for event in events:
        print(f"{kind}: gateway 0: {event}")
    print(json.dumps(summary, indent=2))
    for name, figures in keepalive.items():
        print(f"{kind}: {keepalive_note(name, figures)}")
    check = verify(store, result)
    print(json.dumps({"check": check}, indent=2))
    posted = args.trajectories + keepalive["trajectory_posts"]["calls"] + KEEPALIVE_WARMUP
    ok = check["exactly_once"] and not result.failed and len(result.acked) == posted
    print(f"{kind}: " + ("PASS: every acknowledged trajectory stored exactly once" if ok else "FAIL"), flush=True)
    return ok


def postgres_url(args: argparse.Namespace, stack: ExitStack) -> str:
    if args.pg_url:
        return args.pg_url
    sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
    import pg_server

    reason = pg_server.why_unavailable()
    if reason:
        sys.exit(f"no PostgreSQL server: {reason}")
    databases = pg_server.Databases(stack.enter_context(pg_server.cluster()))
    return databases.create()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trajectories", type=int, default=2000)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--kill-at", default="0.33,0.67",
                    help="comma-separated fractions acknowledged at which the gateway is SIGKILLed; 0 = no kill")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds before clients give up")
    ap.add_argument("--workdir", default="", help="where the store and gateway log go (default: a temp dir)")
    ap.add_argument("--store", choices=("sqlite", "postgresql", "both"), default="sqlite")
    ap.add_argument("--gateways", type=int, default=2, help="gateway processes on the PostgreSQL store")
    ap.add_argument("--pg-url", default="", help="an empty PostgreSQL database (default: a throwaway cluster)")
    ap.add_argument("--keepalive-calls", type=int, default=50, help="sequential openai-client calls timed on one "
                                                                     "kept-alive connection after the load (per kind)")
    add_smoke_flag(ap)
    args = ap.parse_args()
    if args.smoke:  # one kill and restart of one gateway on SQLite, a handful of trajectories
        args.trajectories, args.clients, args.kill_at, args.store = SMOKE_TRAJECTORIES, SMOKE_CLIENTS, "0.5", "sqlite"
        args.keepalive_calls = SMOKE_KEEPALIVE_CALLS
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="oel-gateway-load-"))
    workdir.mkdir(parents=True, exist_ok=True)
    results = []
    with ExitStack() as stack:
        for kind in (("sqlite", "postgresql") if args.store == "both" else (args.store,)):
            if kind == "sqlite":
                store = workdir / "store.sqlite"
                if store.exists():
                    sys.exit(f"{store}: exists; give a fresh --workdir")
                results.append(run_one(kind, str(store), workdir, args))
            else:
                results.append(run_one(kind, postgres_url(args, stack), workdir, args))
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
