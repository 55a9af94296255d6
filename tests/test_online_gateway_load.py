"""A bounded loopback load test: 400 trajectories, 16 clients, the gateway SIGKILLed and restarted mid-way.

The gateway is a child process (`python -m oel gateway`) on a real store file;
clients retry with their idempotency keys until acknowledged. Afterwards every acknowledged
trajectory is in the store exactly once. benchmarks/gateway_load.py runs the acceptance size.
"""

from __future__ import annotations

from pathlib import Path

from oel.online.loadgen import (
    GatewayProcess,
    LoadResult,
    free_port,
    kill_and_restart_when,
    run_load,
    verify,
)

KEY = "load-test-key-0123456789"
TRAJECTORIES = 400
CLIENTS = 16
KILL_AT = TRAJECTORIES // 3
TIMEOUT_S = 50.0
KILLED_SERVER_ERRORS = {"ConnectionRefusedError", "ConnectionResetError", "RemoteDisconnected", "BrokenPipeError",
                        "TimeoutError", "IncompleteRead", "BadStatusLine"}
"""What a client may see of a gateway SIGKILLed mid-request: refused while it restarts, a reset or
closed socket, a status line or body cut short (IncompleteRead: headers sent, body not). Any other
outcome (a 4xx/5xx, a parse error) is a bug."""


def test_kill9_mid_load_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    store = tmp_path / "store.sqlite"
    port = free_port()
    gateway = GatewayProcess(store, port, KEY, log_path=tmp_path / "gateway.log")
    gateway.start()
    result, events = LoadResult(), []
    try:
        killer = kill_and_restart_when(gateway, result, KILL_AT, events)
        run_load("127.0.0.1", port, KEY, trajectories=TRAJECTORIES, clients=CLIENTS, timeout_s=TIMEOUT_S, result=result)
        killer.join(timeout=TIMEOUT_S)
    finally:
        gateway.stop()
    assert gateway.starts == 2 and len(events) == 2, events
    check_outcome(store, result)


def test_two_gateways_on_one_postgresql_store_one_killed_mid_load(tmp_path: Path, pg_url: str) -> None:
    """Two gateway processes write one PostgreSQL database at once; one of them is SIGKILLed and restarted."""
    gateways = [GatewayProcess(pg_url, free_port(), KEY, log_path=tmp_path / f"gateway{i}.log") for i in range(2)]
    for g in gateways:
        g.start()
    result, events = LoadResult(), []
    try:
        killer = kill_and_restart_when(gateways[0], result, KILL_AT, events)
        run_load("127.0.0.1", [g.port for g in gateways], KEY, trajectories=TRAJECTORIES, clients=CLIENTS,
                 timeout_s=TIMEOUT_S, result=result)
        killer.join(timeout=TIMEOUT_S)
    finally:
        for g in gateways:
            g.stop()
    assert [g.starts for g in gateways] == [2, 1] and len(events) == 2, events
    check_outcome(pg_url, result)


def check_outcome(store: Path | str, result: LoadResult) -> None:
    assert not result.failed and len(result.acked) == TRAJECTORIES
    assert set(result.statuses) <= {"200", "201", *KILLED_SERVER_ERRORS}, result.statuses
    check = verify(store, result)
    assert check["exactly_once"] and check["stored_rows"] == TRAJECTORIES, check
