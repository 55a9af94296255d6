"""The online mode: deployed agents' chats become trajectories, and rounds learn from them while
the model keeps serving (docs/online.md).

    gateway.py, gateway_cli.py  `oel gateway`: the serving stack (oel.serving) with a store; hot swap
    store.py            the store: exchanges, sessions, trajectories, rounds, idempotency keys
    schema.py, pg.py    the store on SQLite (one file) or on a PostgreSQL server, one SQL for both
    intake.py, rounds.py  what arrives at the store; the rounds claimed from it
    scheduler.py        `oel online run`: claim a round, extract + consolidate (the loop's stages), gate, publish
    gate.py             the promotion gate's verdicts (pure functions)
    versions.py         published versions and the `current` pointer the gateway follows
    vllm_lora.py        the same hot swap for a vLLM server with LoRA adapters
    config.py           OnlineConfig (the scheduler's config)
    demo.py             `oel online demo`: gateway + scheduler + simulated users on one machine
    loadgen.py          a loopback load generator (tests and benchmarks/gateway_load.py)
    cli.py              `oel online ...`

The rules that stitch exchanges into conversations and trajectories are oel.sessions (the log
importers use them too).
"""

from oel.errors import ConflictError, NotFoundError
from oel.online.rounds import Deleted, Round
from oel.online.store import Added, Recorded, Store

__all__ = ["Added", "ConflictError", "Deleted", "NotFoundError", "Recorded", "Round", "Store"]
