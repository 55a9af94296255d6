"""Pass 1's grouping of model calls into conversations, kept small: a log's calls are never held in memory.

The rule (docs/online.md, "Importing logs"): calls are grouped by the session the log gives (a
session id, or a trace that holds several calls); within a group, and among calls without one, a
call continues the conversation whose earlier request plus its response its own request starts
with (the gateway's stitching, `oel.sessions`), a call whose request repeats an earlier one exactly
is a retry of it, and any other call starts a new conversation. So a trace that holds a
query-rewrite generation and an answer generation gives two trajectories, and a session's
conversation that continues across traces gives one.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from oel.collect.importers.base import Call
from oel.errors import DataError
from oel.sessions import Candidate, Exchange, choose_conversation, conversation_key, prefix_keys, tail_key

LINE_BITS, INDEX_BITS = 24, 16
"""A call's place packed in one int: record key (byte offset), line number (< 2**24), index in the record."""
KEY_BYTES = 16
"""A stitching key in 16 bytes (128 bits of a sha256): pass 1 keeps about two per call."""


def pack(key: int, lineno: int, index: int) -> int:
    if lineno >= 1 << LINE_BITS or index >= 1 << INDEX_BITS:
        raise DataError(f"line {lineno}: more than {1 << LINE_BITS} lines or {1 << INDEX_BITS} calls in one record")
    return (key << (LINE_BITS + INDEX_BITS)) | (lineno << INDEX_BITS) | index


def unpack(place: int) -> tuple[int, int, int]:
    return (place >> (LINE_BITS + INDEX_BITS), (place >> INDEX_BITS) & ((1 << LINE_BITS) - 1),
            place & ((1 << INDEX_BITS) - 1))


def _short(key: str, group: str | None) -> bytes:
    """A key of this group only (calls of different groups never join)."""
    if group is None:
        return bytes.fromhex(key[: 2 * KEY_BYTES])
    return hashlib.sha256(group.encode("utf-8", "surrogatepass") + b"\0" + bytes.fromhex(key)).digest()[:KEY_BYTES]


@dataclass(slots=True)
class Conversation:
    group: str | None
    places: list[int] = field(default_factory=list)
    """Its calls' places (`pack`), in file order."""

    @property
    def calls(self) -> list[tuple[int, int, int]]:
        """(record key, line number, index of the call among the record's items)."""
        return [unpack(p) for p in self.places]


class Grouper:
    """Conversations, and the stitching index: tail keys -> (conversation, call) packed in an int."""

    def __init__(self) -> None:
        self.conversations: list[Conversation] = []
        self._by_tail: dict[bytes, int | list[int]] = {}
        self._by_request: dict[bytes, int] = {}
        self._latest: list[int] = []

    def add(self, call: Call, where: tuple[int, int, int]) -> None:
        keys = prefix_keys(call.messages)
        candidates = [Candidate(c, key, self._latest[c] == n) for key in keys
                      for c, n in self._entries(_short(key, call.group))]
        conv = choose_conversation(keys, candidates)
        request = _short(conversation_key(call.messages), call.group)
        if conv is None:
            conv = self._by_request.get(request)
        if conv is None:
            conv = self._new(call.group)
        self._by_request.setdefault(request, conv)
        number = len(self.conversations[conv].places)
        self._remember(_short(tail_key(Exchange(call.messages, call.response)), call.group), (conv << 32) | number)
        self._latest[conv] = number
        self.conversations[conv].places.append(pack(*where))

    def _entries(self, key: bytes) -> list[tuple[int, int]]:
        found = self._by_tail.get(key)
        packed = [] if found is None else found if isinstance(found, list) else [found]
        return [(p >> 32, p & 0xFFFFFFFF) for p in packed]

    def _remember(self, key: bytes, packed: int) -> None:
        found = self._by_tail.get(key)
        if found is None:
            self._by_tail[key] = packed
        elif isinstance(found, list):
            found.append(packed)
        else:
            self._by_tail[key] = [found, packed]

    def _new(self, group: str | None) -> int:
        self.conversations.append(Conversation(group))
        self._latest.append(-1)
        return len(self.conversations) - 1
