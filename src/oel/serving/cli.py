"""`oel serve`: a model behind the OpenAI-compatible HTTP layer, without a store.

    oel serve model.name=qwen2.5-coder-0.5b-instruct port=8000
"""

from __future__ import annotations

import argparse
from typing import Any

from oel.commands import add_config_command
from oel.serving.chat_server import ServeConfig, serve


def run_serve(config: Any, ns: argparse.Namespace) -> int:
    try:
        serve(config)
    except KeyboardInterrupt:
        print("oel serve: stopped")
    return 0


def register(subparsers: Any) -> None:
    add_config_command(
        subparsers, "serve", ServeConfig, run_serve,
        help="serve a model over an OpenAI-compatible /v1/chat/completions endpoint",
        description="An OpenAI-compatible server (GET /v1/models, POST /v1/chat/completions, streaming token by "
                    "token too, GET /metrics, GET /healthz) over the in-process HF backend: the gateway's HTTP "
                    "layer without a store; concurrent requests are generated in batches. Clients send "
                    "`Authorization: Bearer <key>` with a key from api_keys, api_keys_file or $OEL_API_KEYS "
                    "(`key` or `client:key` entries); without any key only a loopback host is served. "
                    "Bodies, max_tokens, prompt tokens, the queue, open connections and the time to send a "
                    "request are bounded (HTTP 413/400/503/408).",
    )
