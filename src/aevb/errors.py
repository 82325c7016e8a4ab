"""The errors aevb reports to a user as one line (``aevb: error: ...``, exit code 2).

At the bottom of the import graph: every module may raise them, and this one imports nothing of aevb's.
"""


class UsageError(Exception):
    """A problem with the user's input (flags, files, data, a model reference): one line, exit code 2."""


class DataError(UsageError):
    """Missing, unreadable, corrupt or ill-shaped data."""
