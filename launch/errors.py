"""The one error type of the launcher: a bad configuration, reported without a stack trace."""


class ConfigError(ValueError):
    """A configuration problem the user can fix (unknown key, missing value, bad file).

    ``train.py`` prints the message and exits with status 2 instead of showing a traceback.
    """
