"""User-facing errors.

Every error a researcher can cause (a bad param, a missing file, a corrupt
checkpoint) is a :class:`ModeconnError` whose message says what was wrong,
which file or key, and what to do. The stage commands print the message and
exit non-zero instead of showing a traceback.
"""


class ModeconnError(Exception):
    """An error caused by input (params, files, names), with a message for people."""


class DataError(ModeconnError):
    """A dataset could not be found, read or parsed."""


class ConfigError(ModeconnError):
    """A params.yaml key or a command option is missing or invalid."""


class CheckpointError(ModeconnError):
    """A checkpoint or stored artifact is missing, corrupt or incompatible."""


class TrainingError(ModeconnError):
    """Training diverged (NaN or infinite loss)."""
