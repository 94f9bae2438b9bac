"""The launcher's user-facing error types, reported by ``train.py`` without a stack trace.

* :class:`ConfigError` (exit status 2): a problem with the inputs, found before anything runs - an unknown
  key, a wrong value type, a missing data folder or pretrained file, an unavailable accelerator, a busy or
  used run directory. ``problems`` lists them one per line, each naming its config key.
* :class:`RunError` (exit status 1): something the user can fix that showed only once the run started,
  e.g. a data folder whose files are all unreadable.
"""
from __future__ import annotations

from typing import Sequence


class ConfigError(ValueError):
    """A configuration problem the user can fix (unknown key, missing value, bad file).

    ``train.py`` prints the message and exits with status 2 instead of showing a traceback.
    """

    def __init__(self, message: str, problems: Sequence[str] = ()) -> None:
        super().__init__(message)
        #: one line per problem (empty when the message is a single problem)
        self.problems: list[str] = list(problems) or [message]

    @classmethod
    def of(cls, problems: Sequence[str], heading: str = "invalid config") -> "ConfigError":
        """One error listing ``problems`` under ``heading``."""
        return cls(f"{heading}:\n  " + "\n  ".join(problems), problems)


class RunError(RuntimeError):
    """A user-fixable problem found after the run started (exit status 1, no traceback)."""
