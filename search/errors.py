"""User-facing errors.

Anything a user can get wrong (a name, a number, a path) raises :class:`SearchError`; the command-line
entry points turn it into a single ``error: ...`` line and exit code 2 instead of a traceback.
"""

from __future__ import annotations


class SearchError(Exception):
    """A problem with the user's input or environment, reported as one line."""


class RunInterrupted(Exception):
    """The user stopped a run (Ctrl-C) after it started; the message says how to resume. Exit 130."""
