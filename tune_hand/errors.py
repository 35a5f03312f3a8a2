"""User-facing errors.

Every error a user can fix (bad data, bad config, a foreign checkpoint) is a
`TuneHandError` whose message is one line naming the file, field or value. The CLI
prints it without a traceback and exits non-zero; library callers catch it as usual.
"""


class TuneHandError(Exception):
    """An error the user can act on; `str(err)` is a complete one-line message."""


class ConfigError(TuneHandError):
    """A config or sweep-spec value is unknown, of the wrong type or out of range."""


class DataError(TuneHandError):
    """A dataset directory is missing, malformed or inconsistent."""


class CheckpointError(TuneHandError):
    """A checkpoint is unreadable, foreign, or does not match the model."""
