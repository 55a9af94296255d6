"""The online mode's storage: what deployed agents' chats become, durably, until a round learns from it.

`oel.online.store.Store` is the SQLite store (exchanges, sessions, trajectories, rounds, idempotency
keys); `oel.online.sessions` holds the pure rules that stitch exchanges into conversations and
conversations into trajectories. The gateway and the scheduler build on these.
"""

from oel.online.errors import ConflictError, NotFoundError
from oel.online.rounds import Deleted, Round
from oel.online.store import Added, Recorded, Store

__all__ = ["Added", "ConflictError", "Deleted", "NotFoundError", "Recorded", "Round", "Store"]
