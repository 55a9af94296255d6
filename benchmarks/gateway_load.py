"""Gateway intake under load, with a kill -9 mid-way: is every acknowledged trajectory stored exactly once?

    python benchmarks/gateway_load.py [--trajectories 2000] [--clients 32] [--kill-at 0.33,0.67] [--timeout 300]

The gateway runs as a child process (`python -m oel.online.gateway_cli responder=none`) on a
fresh SQLite store (WAL, synchronous=FULL: every acknowledgement waited for an fsync) on
127.0.0.1. `--clients` threads POST `--trajectories` trajectories to /v1/trajectories in all,
each with its own Idempotency-Key, on keep-alive connections. When each `--kill-at` fraction is
acknowledged the gateway gets SIGKILL and is restarted on the same port and store; clients
retry connection errors, 5xx and 429 with exponential backoff and the same key until
acknowledged. At the end the store is opened and its rows compared with the acknowledgements.

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
from pathlib import Path

from oel.online.loadgen import (
    GatewayProcess,
    LoadResult,
    free_port,
    kill_and_restart_when,
    run_load,
    verify,
)

KEY = "gateway-load-key-0123456789"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trajectories", type=int, default=2000)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--kill-at", default="0.33,0.67",
                    help="comma-separated fractions acknowledged at which the gateway is SIGKILLed; 0 = no kill")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds before clients give up")
    ap.add_argument("--workdir", default="", help="where the store and gateway log go (default: a temp dir)")
    args = ap.parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="oel-gateway-load-"))
    workdir.mkdir(parents=True, exist_ok=True)
    store = workdir / "store.sqlite"
    if store.exists():
        sys.exit(f"{store}: exists; give a fresh --workdir")
    port = free_port()
    gateway = GatewayProcess(store, port, KEY, log_path=workdir / "gateway.log")
    print(f"gateway: started in {gateway.start():.2f}s on 127.0.0.1:{port}, store {store}; "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}", flush=True)
    result, events = LoadResult(), []
    try:
        fractions = [float(f) for f in args.kill_at.split(",") if float(f) > 0]
        # Acknowledgements stall while the gateway is down, so each killer fires after the previous restart.
        killers = [kill_and_restart_when(gateway, result, int(args.trajectories * f), events) for f in fractions]
        run_load("127.0.0.1", port, KEY, trajectories=args.trajectories, clients=args.clients,
                 timeout_s=args.timeout, result=result)
        for killer in killers:
            killer.join(timeout=args.timeout)
    finally:
        gateway.stop()
    for event in events:
        print(f"gateway: {event}")
    print(json.dumps({"trajectories": args.trajectories, "clients": args.clients, **result.summary()}, indent=2))
    check = verify(store, result)
    print(json.dumps({"check": check}, indent=2))
    ok = check["exactly_once"] and not result.failed and len(result.acked) == args.trajectories
    print("PASS: every acknowledged trajectory stored exactly once" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
