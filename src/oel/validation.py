"""One way to report a pydantic validation error: its first problem, as `where: what is wrong`.

Configs (`oel.config`), trajectories (`oel.trajectory`), the experience store, the online
sessions and the HTTP request bodies are all validated by pydantic; every one of them names the
bad field the same way, `turns[0].prompt[1].role`, through these helpers, and each caller adds
its own context in front (a file and line, a dotted config key, an item's id).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from pydantic import ValidationError
from pydantic_core import ErrorDetails

VALUE_ERROR_PREFIX = "Value error, "
"""What pydantic puts before the message of a ValueError raised by a validator."""


def location(loc: Sequence[int | str], skip: Collection[str] = ()) -> str:
    """('turns', 0, 'prompt') -> 'turns[0].prompt'; parts in `skip` (a union's branch tags) are left out."""
    path = ""
    for part in loc:
        if isinstance(part, str) and part in skip:
            continue
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def first_error(e: ValidationError) -> ErrorDetails:
    """The error to report: pydantic lists them in field order, so the first is the earliest field."""
    return e.errors(include_url=False)[0]


def error_text(err: ErrorDetails) -> str:
    """The error's message, without pydantic's prefix for a validator's ValueError."""
    return str(err["msg"]).removeprefix(VALUE_ERROR_PREFIX)


def describe(e: ValidationError, skip: Collection[str] = ()) -> str:
    """`where: what` for the first error (just `what` when it concerns the whole object)."""
    err = first_error(e)
    where = location(err["loc"], skip)
    return f"{where}: {error_text(err)}" if where else error_text(err)
