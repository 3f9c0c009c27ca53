"""Exceptions that the command line turns into a one-line message and a non-zero exit."""


class DfcilError(Exception):
    """Base class of every user-facing error (bad config, bad data, bad run directory)."""


class ConfigError(DfcilError):
    """A configuration key is unknown, has the wrong type, or an out-of-range value."""


class DataError(DfcilError):
    """A dataset is missing, corrupt, or cannot serve the requested scenario."""


class RunDirError(DfcilError):
    """A run directory or checkpoint does not belong to the requested run."""
