"""Error types shared by every stage.

UserError marks a failure the user can fix (bad config key, bad record, missing file): the CLI prints
its message on one line and exits with status 2 instead of a traceback.
"""


class UserError(Exception):
    """A failure caused by input the user controls; the message says what and where."""


class ConfigError(UserError):
    """An invalid configuration key or value."""


class RecordError(UserError):
    """An invalid record in a data file; the message names the file and line."""


class RunDirError(UserError):
    """A run directory that cannot be used as asked (finished and not to be overwritten, ...)."""
