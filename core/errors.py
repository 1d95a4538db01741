"""User-facing errors. The command line prints their message and exits 2, without a traceback.

Each message names the bad input and says how to fix it.
"""


class SuiteError(Exception):
    """Base of every error caused by the user's input or environment, not by a bug."""


class DataError(SuiteError):
    """Missing, corrupt or malformed data."""


class CheckpointError(SuiteError):
    """A checkpoint that cannot be read or does not fit the model."""


class ModelError(SuiteError):
    """An unknown or unsupported model."""


class RecordError(SuiteError):
    """A result record that does not follow the schema."""
