"""The small error hierarchy of oel.

Every error that reaches a user names *where* the problem is (a config key, a file and
line, a model preset) and *what was expected*, in one line. Library code raises these;
the CLI catches :class:`OELError` and prints its message without a traceback.
"""


class OELError(Exception):
    """Base class of every error oel raises on purpose."""


class ConfigError(OELError):
    """A config file or override is invalid; the message names the full dotted key."""


class DataError(OELError):
    """A data file (trajectories, experience, metrics) is malformed; the message is `file:line: why`."""


class ConflictError(DataError):
    """The request contradicts what is stored: an idempotency key reused with another body, an ended session.

    A DataError (one line, naming what is wrong), so code that only knows DataError still catches
    it; the serving stack answers it with HTTP 409."""


class NotFoundError(DataError):
    """The request names a session or a round the store does not have (HTTP 404)."""


class ModelLoadError(OELError):
    """A model could not be loaded (missing extra, hash mismatch, bad path)."""


class EnvironmentTextError(OELError):
    """An environment's text is not what we expect (e.g. TextArena changed its rules text)."""


class TrainingError(OELError):
    """A training step produced a non-finite loss or another unrecoverable numeric problem."""
