"""The store's refusals, as DataErrors a gateway can map to HTTP statuses without parsing messages.

Both are DataErrors (one line, naming what is wrong), so code that only knows oel.errors still
catches them; a gateway answers ConflictError with 409 and NotFoundError with 404, any other
DataError with 400.
"""

from oel.errors import DataError


class ConflictError(DataError):
    """The request contradicts what is stored: an idempotency key reused with another body, an ended session."""


class NotFoundError(DataError):
    """The request names a session or a round the store does not have."""
