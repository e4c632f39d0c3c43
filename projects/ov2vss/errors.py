"""Errors about the user's files and config: reported as one line, without a deep traceback."""


class SetupError(RuntimeError):
    """A problem with the user's files or config (a missing dataset, weights file, bad key)."""
