"""`oel gateway`: run the online mode's recording gateway from the shell.

    oel gateway store=online/store.sqlite model.name=qwen2.5-coder-0.5b-instruct port=8100
    oel gateway store=online/store.sqlite responder=upstream upstream_url=http://127.0.0.1:8000/v1
    oel gateway store=online/store.sqlite versions_dir=online/versions      # hot-swaps on publish
    python -m oel gateway store=s.sqlite responder=none port=8100            # the same, without the console script

Clients send `Authorization: Bearer <key>` with a `client:key` from api_keys, api_keys_file or
$OEL_API_KEYS; /metrics takes an admin key (admin_api_keys, admin_api_keys_file, $OEL_ADMIN_KEYS).
"""

from __future__ import annotations

import argparse
import signal
import time
from typing import Any

from oel.commands import add_config_command
from oel.online.gateway import Gateway, GatewayConfig

READY_LINE = "oel gateway: serving at"
"""The line printed once the port is bound (scripts that start the gateway wait for it)."""


def run_gateway(config: Any, ns: argparse.Namespace | None = None) -> int:
    """Open the store, load the model, serve until SIGINT or SIGTERM."""
    gateway = Gateway(config).start()
    signal.signal(signal.SIGTERM, _raise_interrupt)
    auth = f"{len(gateway.api_keys)} client keys, {len(gateway.admin_keys)} admin keys" if gateway.api_keys \
        else "NO API KEY (loopback only)"
    print(f"{READY_LINE} {gateway.url} (responder {config.responder}, model version {gateway.version}, {auth}, "
          f"store {config.store})", flush=True)
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        print("oel gateway: stopped", flush=True)
    finally:
        gateway.close()
    return 0


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def register(subparsers: Any) -> None:
    add_config_command(
        subparsers, "gateway", GatewayConfig, run_gateway,
        help="an OpenAI-compatible gateway that records every exchange for online learning",
        description="Serve /v1/chat/completions (streaming too) from a model in process or an upstream server, "
                    "record every exchange durably in the SQLite store before answering, stitch conversations "
                    "(X-OEL-Session header or prefix matching), take ended sessions (POST /v1/sessions/{id}/end) "
                    "and whole trajectories (POST /v1/trajectories with Idempotency-Key); /metrics for operators; "
                    "hot-swap the served weights when versions_dir/current.json changes.",
    )
